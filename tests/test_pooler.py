"""PostgreSQL behind a transaction pooler: the whole system runs with ``DATABASE_URL`` pointing at
Debian's PgBouncer in ``pool_mode=transaction`` (``DATABASE_POOLER=transaction``) and ``DIRECT_URL`` at
PostgreSQL itself. PgBouncer hands out its server connections round robin, so consecutive statements
of one client connection run on different server connections: a prepared statement looked for on
another server connection than the one that prepared it would fail.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import tempfile
import urllib.parse
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from conftest import Stack, eventually, run_sync
from inbox_client import customer_says, latest_conversation, make_user, phone, sign_in
from test_inbox_api import _sse

from wacrm.core import procs
from wacrm.core.embedded import EmbeddedBroker, as_user_kwargs, free_port, wait_for_port
from wacrm.core.settings import load
from wacrm.storage.db import connect, create_pool
from wacrm.topics.admin import create_topics

PGBOUNCER = shutil.which("pgbouncer") or next((p for p in ("/usr/sbin/pgbouncer",) if os.access(p, os.X_OK)), None)
pytestmark = pytest.mark.skipif(PGBOUNCER is None, reason="Debian's pgbouncer is not installed (make pgbouncer "
                                "installs it with apt-get when it can)")

SERVER_CONNECTIONS = 4


def _pgbouncer_ini(database_url: str, port: int, userlist: Path) -> str:
    """Transaction mode in front of the server of ``database_url``; trust for the users in ``userlist``."""
    url = urllib.parse.urlsplit(database_url)
    server = f"host={url.hostname} port={url.port or 5432}" + (f" password={url.password}" if url.password else "")
    return f"""[databases]
* = {server}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = trust
auth_file = {userlist}
pool_mode = transaction
server_round_robin = 1
default_pool_size = {SERVER_CONNECTIONS}
min_pool_size = {SERVER_CONNECTIONS}
max_client_conn = 500
"""


@dataclass(frozen=True)
class Pooled:
    url: str  # through PgBouncer
    direct_url: str
    log: Path

    def clients(self) -> int:
        """Client logins PgBouncer logged so far."""
        return self.log.read_text(errors="replace").count("login attempt:")


@pytest.fixture(scope="module")
def pooled_database(make_database: Callable[[], str]) -> Iterator[Pooled]:
    """A fresh, migrated database, behind a PgBouncer of its own."""
    from wacrm.storage.migrate import run_migrations

    direct = make_database()
    run_sync(run_migrations(direct, 10.0, out=lambda m: None))
    url = urllib.parse.urlsplit(direct)
    port = free_port()
    pooled = urllib.parse.urlunsplit(url._replace(netloc=f"{url.username or 'postgres'}@127.0.0.1:{port}"))
    with tempfile.TemporaryDirectory(prefix="wacrm-pgbouncer-") as tmp:  # readable by the unprivileged user
        here = Path(tmp)
        here.chmod(0o755)
        userlist = here / "userlist.txt"
        userlist.write_text(f'"{url.username or "postgres"}" ""\n')
        ini = here / "pgbouncer.ini"
        ini.write_text(_pgbouncer_ini(direct, port, userlist))
        for f in (userlist, ini):
            f.chmod(0o644)
        assert PGBOUNCER is not None
        log = here / "pgbouncer.log"
        proc = procs.spawn([PGBOUNCER, str(ini)], log_path=log, **as_user_kwargs())
        try:
            wait_for_port(port, 30, proc)
            yield Pooled(pooled, direct, log)
        finally:
            procs.stop(proc, signal.SIGTERM, 10)


async def test_the_same_statement_runs_on_different_server_connections(pooled_database: Pooled) -> None:
    pool = await create_pool(pooled_database.url, timeout=10, min_size=SERVER_CONNECTIONS,
                             max_size=SERVER_CONNECTIONS, pooled=True)
    try:  # every server connection opened (held at once), then one client connection's statements
        await asyncio.gather(*(pool.fetchval("SELECT pg_sleep(0.2)") for _ in range(SERVER_CONNECTIONS)))
        async with pool.acquire() as conn:
            backends = [await conn.fetchval("SELECT pg_backend_pid() + $1::int", 0) for _ in range(8)]
            rows = [await conn.fetchval("SELECT $1::jsonb", {"n": n}) for n in range(3)]  # the codecs, too
    finally:
        await pool.close()
    assert len(set(backends)) > 1, "one client connection's statements all ran on one server connection"
    assert rows == [{"n": 0}, {"n": 1}, {"n": 2}]


@pytest.fixture
async def pooled_stack(pooled_database: Pooled, tmp_path: Path) -> AsyncIterator[Stack]:
    """The system on the pooled database, with a broker of its own: the session's broker holds every other
    test's replies, which a worker of this fresh database would read from the start as intents without a row."""
    pooled, direct = pooled_database.url, pooled_database.direct_url
    broker = EmbeddedBroker(log_path=tmp_path / "tansu.log")
    broker.start()
    stack = Stack(direct, broker.bootstrap, tmp_path / "logs",
                  extra_env={"DATABASE_URL": pooled, "DIRECT_URL": direct, "DATABASE_POOLER": "transaction"})
    try:
        await create_topics(load({"KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap}, "dev"), out=lambda m: None)
        stack.start()
        await stack.wait_worker()
        yield stack
    finally:
        stack.stop()
        broker.stop()


async def test_the_whole_pipeline_runs_through_a_transaction_pooler(pooled_stack: Stack,
                                                                   pooled_database: Pooled) -> None:
    stack = pooled_stack
    clients_before = pooled_database.clients()
    db = await connect(stack.database_url, timeout=10)
    try:
        user = await make_user(db, "agent")
        api = await sign_in(stack.base, user.email)
        wa_id = phone()
        async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as s, \
                s.get(f"{stack.base}/api/v1/events", headers={"Cookie": api.cookie or ""}) as r:
            events = _sse(r)
            assert (await asyncio.wait_for(events.__anext__(), 30))[0] == "ready"
            message_id = await customer_says(stack, wa_id, "do you ship to Lisbon?")

            async def live_message() -> None:
                async for kind, _, data in events:
                    if kind == "message" and data["conversation_id"] == await latest_conversation(db, wa_id):
                        return
                raise AssertionError("the event stream ended")

            await asyncio.wait_for(live_message(), 60)  # LISTEN over DIRECT_URL

        replies = await eventually(lambda: stack.replies_to(message_id), 60, "the reply at the fake Graph API")
        assert len(replies) == 1
        wamid = replies[0]["answered"]["id"]

        async def delivered() -> str | None:  # fake-meta's statuses, applied by the status agent
            status = await db.fetchval("SELECT status FROM messages WHERE provider_message_id = $1", wamid)
            return status if status in ("delivered", "read") else None

        await eventually(delivered, 60, "the reply's delivery status")
        cid = await latest_conversation(db, wa_id)
        listed = (await api.get("conversations?status=all"))["conversations"]
        assert [c["contact"]["wa_id"] for c in listed if c["id"] == cid] == [wa_id]
        thread = (await api.get(f"conversations/{cid}"))["conversation"]
        assert [m["direction"] for m in thread["messages"]] == ["inbound", "outbound"]
        assert thread["messages"][0]["body"] == "do you ship to Lisbon?"
    finally:
        await db.close()
    assert pooled_database.clients() > clients_before  # serve's and the worker's pools came through PgBouncer
    for name in ("serve", "worker"):
        log = (stack.logs / f"{name}.log").read_text()
        assert "prepared statement" not in log and "Traceback" not in log, log[-3000:]


async def test_session_features_need_direct_url(pooled_database: Pooled) -> None:
    env = procs.env_with(DATABASE_URL=pooled_database.url, DATABASE_POOLER="transaction", DIRECT_URL=None)
    for command in (["migrate"], ["serve", "--only", "inbox"], ["users", "list"]):
        proc = await asyncio.create_subprocess_exec(*procs.python_cmd(*command), env=env,
                                                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 2, (command, out, err)
        assert b"DIRECT_URL: required with DATABASE_POOLER=transaction" in err and b"Traceback" not in err
