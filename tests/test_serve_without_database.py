"""A PostgreSQL outage does not take the webhook out of rotation: ``wacrm serve --only webhook`` stays
ready and accepting while its database is stopped, and starts with it down (or with no DATABASE_URL at
all); the combined server reports its two halves apart and stays in rotation (200, ``degraded``) while
only its inbox half is down; the inbox alone is not ready, and every half is ready again once the
database is back. Real ``wacrm serve`` processes against a private PostgreSQL that the test stops."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from conftest import Stack, eventually, run_sync

from wacrm.core import procs
from wacrm.core.embedded import EmbeddedPostgres, free_port, wait_for_port
from wacrm.core.settings import load
from wacrm.inbox.server import DATABASE_NOT_READY
from wacrm.storage.migrate import run_migrations
from wacrm.topics.admin import create_topics

EMPTY = b'{"object":"whatsapp_business_account","entry":[]}'  # valid, and nothing for a worker to do
READY = {"status": "ready"}
INBOX_DOWN = {"status": "not_ready", "problems": {"database": DATABASE_NOT_READY}}


@pytest.fixture
def private_pg(tmp_path: Path) -> Iterator[EmbeddedPostgres]:
    """A PostgreSQL of this test's own, migrated, which the test stops and starts again."""
    pg = EmbeddedPostgres(tmp_path / "pg" / "data")
    pg.start()
    try:
        run_sync(run_migrations(pg.url, 10.0, out=lambda m: None))
        yield pg
    finally:
        pg.stop()


class Servers:
    """``wacrm serve`` processes started by one test, all stopped at its end."""

    def __init__(self, tmp: Path, broker: str) -> None:
        self.tmp, self.broker = tmp, broker
        self.procs: list[subprocess.Popen] = []

    def start(self, *args: str, database_url: str | None) -> Stack:
        stack = Stack(database_url or "", self.broker, self.tmp / "logs")
        stack.port = free_port()
        stack.logs.mkdir(parents=True, exist_ok=True)
        env = stack.env()
        if database_url is None:
            env.pop("DATABASE_URL", None)
        proc = procs.spawn(procs.python_cmd("serve", *args), log_path=stack.logs / f"serve-{stack.port}.log",
                           env=env)
        self.procs.append(proc)
        wait_for_port(stack.port, 60, proc)
        return stack

    def stop(self) -> None:
        for proc in self.procs:
            procs.stop(proc, signal.SIGTERM, 20)


@pytest.fixture
def servers(broker: str, tmp_path: Path) -> Iterator[Servers]:
    run_sync(create_topics(load({"KAFKA_BOOTSTRAP_SERVERS": broker}, "dev"), out=lambda m: None))
    s = Servers(tmp_path, broker)
    try:
        yield s
    finally:
        s.stop()


async def readyz(stack: Stack) -> tuple[int, dict[str, Any], bytes]:
    async with aiohttp.ClientSession() as s, s.get(f"{stack.base}/readyz") as r:
        body = await r.read()
        return r.status, orjson.loads(body), body


async def reads(stack: Stack, status: int, report: dict[str, Any]) -> bytes:
    """Wait until ``/readyz`` answers ``status`` with ``report``; the raw body."""
    async def check() -> bytes | None:
        got = await readyz(stack)
        return got[2] if got[:2] == (status, report) else None

    return await eventually(check, 60, f"/readyz of :{stack.port} to answer {status} {report}")


def combined(status: str, inbox: dict[str, Any]) -> dict[str, Any]:
    return {"status": status, "webhook": READY, "inbox": inbox}


async def test_the_webhook_stays_ready_and_accepting_while_postgresql_is_down(
        private_pg: EmbeddedPostgres, servers: Servers) -> None:
    webhook = servers.start("--only", "webhook", database_url=private_pg.url)
    both = servers.start(database_url=private_pg.url)
    await reads(webhook, 200, READY)
    await reads(both, 200, combined("ready", READY))

    private_pg.stop()  # up, then down
    for stack in (webhook, both):
        assert await stack.post(EMPTY) == (200, {"status": "accepted"})
    await reads(webhook, 200, READY)
    body = await reads(both, 200, combined("degraded", INBOX_DOWN))
    assert str(private_pg.port).encode() not in body and b"Error" not in body and b"refused" not in body

    # Started while it is down: the webhook with a DATABASE_URL that does not answer, and with none.
    late_webhook = servers.start("--only", "webhook", database_url=private_pg.url)
    no_database = servers.start("--only", "webhook", database_url=None)
    late_both = servers.start(database_url=private_pg.url)
    late_inbox = servers.start("--only", "inbox", database_url=private_pg.url)
    for stack in (late_webhook, no_database):
        await reads(stack, 200, READY)
        assert await stack.post(EMPTY) == (200, {"status": "accepted"})
    await reads(late_both, 200, combined("degraded", INBOX_DOWN))
    assert await late_both.post(EMPTY) == (200, {"status": "accepted"})
    await reads(late_inbox, 503, INBOX_DOWN)

    private_pg.start()  # back: every inbox half answers again, without a restart
    for stack in (both, late_both):
        await reads(stack, 200, combined("ready", READY))
    await reads(late_inbox, 200, READY)


async def test_the_combined_server_is_out_of_rotation_when_its_webhook_half_is_not_ready(
        private_pg: EmbeddedPostgres, servers: Servers) -> None:
    nowhere = Servers(servers.tmp, f"127.0.0.1:{free_port()}")  # a broker that is not there
    try:
        both = nowhere.start(database_url=private_pg.url)
        status, report, body = await readyz(both)
        assert status == 503 and report == {
            "status": "not_ready", "inbox": READY, "webhook": {"status": "not_ready", "problems": {
                "broker": "not reachable (check KAFKA_BOOTSTRAP_SERVERS and the broker; details in the log)"}}}
        assert b"Error" not in body
    finally:
        nowhere.stop()
