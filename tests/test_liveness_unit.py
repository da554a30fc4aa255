"""The worker's /livez fails when its event loop stops beating, while /metrics on the same port
still answers (so Prometheus sees the heartbeat grow old): a real server, a real loop that blocks."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
from conftest import eventually

from wacrm.core import liveness
from wacrm.core.embedded import free_port


class BeatingLoop:
    """An event loop on a thread of its own that beats every 0.05 s, as the worker's does."""

    def __init__(self, heartbeat: liveness.Heartbeat) -> None:
        self.loop = asyncio.new_event_loop()
        self._heartbeat = heartbeat
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    async def _beat(self) -> None:
        while True:
            self._heartbeat.beat()
            await asyncio.sleep(0.05)

    def start(self) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._beat(), self.loop)

    def block(self, seconds: float) -> None:
        """A callback that holds the loop, as a blocking call in an agent would."""
        self.loop.call_soon_threadsafe(time.sleep, seconds)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


@pytest.fixture
def served() -> Iterator[tuple[str, liveness.Heartbeat, BeatingLoop]]:
    heartbeat = liveness.Heartbeat(stale_after_s=1.0)
    port = free_port()
    httpd = liveness.serve(port, "127.0.0.1", heartbeat)
    loop = BeatingLoop(heartbeat)
    try:
        yield f"http://127.0.0.1:{port}", heartbeat, loop
    finally:
        loop.stop()
        httpd.shutdown()
        httpd.server_close()


async def get(url: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as s, s.get(url) as r:
        return r.status, (await r.json() if r.content_type == "application/json" else await r.text())


async def test_livez_is_503_until_the_first_beat_then_200(served: tuple[str, liveness.Heartbeat, BeatingLoop]) -> None:
    base, _, loop = served
    status, body = await get(f"{base}/livez")
    assert (status, body["code"]) == (503, "STARTING")
    loop.start()
    status, body = await eventually(lambda: _livez(base, 200), 10, "/livez to answer 200")
    assert body["ok"] is True and 0 <= body["heartbeat_age_seconds"] < 1.0


async def test_a_blocked_loop_fails_livez_while_metrics_still_answers(
        served: tuple[str, liveness.Heartbeat, BeatingLoop]) -> None:
    base, _, loop = served
    loop.start()
    await eventually(lambda: _livez(base, 200), 10, "/livez to answer 200")
    loop.block(6.0)
    status, body = await eventually(lambda: _livez(base, 503), 10, "/livez to fail while the loop is blocked")
    assert body["ok"] is False and body["code"] == "LOOP_STUCK" and "last beat" in body["error"]
    status, text = await get(f"{base}/metrics")
    assert status == 200
    beat = float(next(line.split()[-1] for line in text.splitlines()
                      if line.startswith("wacrm_worker_heartbeat_timestamp_seconds ")))
    assert time.time() - beat > 1.0  # the gauge a scrape reads is as old as the last beat
    await eventually(lambda: _livez(base, 200), 15, "/livez to recover once the loop runs again")


async def _livez(base: str, want: int) -> tuple[int, Any] | None:
    status, body = await get(f"{base}/livez")
    return (status, body) if status == want else None
