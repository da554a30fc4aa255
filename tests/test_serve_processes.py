"""`wacrm serve --processes N`: N processes on one port (SO_REUSEPORT), one /metrics for all of them,
stopped together by SIGTERM, and all stopped (non-zero exit) when one of them dies."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from conftest import APP_SECRET, Stack, eventually

from wacrm.core import procs
from wacrm.core.embedded import free_port, wait_for_port
from wacrm.whatsapp import signature, simulate

PROCESSES = 2


def _children(pid: int) -> list[int]:
    """The live (not zombie) child processes of ``pid``."""
    return [c for c in procs.children(pid) if _state(c) not in ("Z", "")]


def _state(pid: int) -> str:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat[stat.rfind(")") + 2:].split()[0]


def _alive(pid: int) -> bool:
    return os.path.exists(f"/proc/{pid}")


def _log(stack: Stack) -> str:
    return (stack.logs / "serve.log").read_text()


async def _all_started(proc: subprocess.Popen) -> list[int] | None:
    children = _children(proc.pid)
    return children if len(children) == PROCESSES else None


@pytest.fixture
def served(database_url: str, broker: str, tmp_path: Path) -> Iterator[tuple[subprocess.Popen, Stack]]:
    stack = Stack(database_url, broker, tmp_path / "logs")
    stack.port = free_port()
    stack.logs.mkdir(parents=True)
    proc = procs.spawn(procs.python_cmd("serve", "--only", "webhook", "--processes", str(PROCESSES)),
                       log_path=stack.logs / "serve.log", env=stack.env())
    try:
        wait_for_port(stack.port, 60, proc)
        yield proc, stack
    finally:
        procs.stop(proc, signal.SIGTERM, 30)


async def test_the_processes_share_the_port_and_one_metrics_page_counts_them_all(
        served: tuple[subprocess.Popen, Stack]) -> None:
    proc, stack = served
    await eventually(lambda: _all_started(proc), 30, f"{PROCESSES} serve processes")
    bodies = [simulate.dumps(simulate.text_body(text=f"hello {n}", wa_id="15550061000")) for n in range(40)]
    # a new connection per request, so the kernel spreads them over the processes
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s:
        for body in bodies:
            headers = {"Content-Type": "application/json", "X-Hub-Signature-256": signature.sign(APP_SECRET, body)}
            async with s.post(stack.webhook, data=body, headers=headers) as r:
                assert r.status == 200, await r.text()

        async def accepted() -> float:
            async with s.get(f"{stack.base}/metrics") as r:
                text = await r.text()
            return sum(float(line.split()[-1]) for line in text.splitlines()
                       if line.startswith('wacrm_webhook_requests_total{outcome="accepted"}'))

        for _ in range(10):  # whichever process answers the scrape, it reports every process's requests
            assert await accepted() == len(bodies)

    children = _children(proc.pid)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    assert not any(_alive(c) for c in children)  # each drained, stopped and reaped


async def test_one_process_dying_stops_the_others_and_the_exit_says_so(
        served: tuple[subprocess.Popen, Stack]) -> None:
    proc, _ = served
    children = await eventually(lambda: _all_started(proc), 30, f"{PROCESSES} serve processes")
    os.kill(children[0], signal.SIGKILL)
    assert proc.wait(30) != 0  # the supervisor above restarts the whole service
    assert not any(_alive(c) for c in children[1:])  # stopped and reaped before it exited
    assert "exited with code" in _log(served[1])
