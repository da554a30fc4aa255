"""Session fixtures: a real PostgreSQL and a real Kafka-protocol broker, and wacrm's own processes.

PostgreSQL: ``DATABASE_URL`` if set, else the embedded server. Each session works in fresh
databases it creates and drops. Broker: ``KAFKA_BOOTSTRAP_SERVERS`` if set, else an
embedded tansu. ``wacrm serve``, ``wacrm worker`` and ``wacrm fake-meta`` run as real
processes, as in production; everything started here is stopped here.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import re
import secrets
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import asyncpg
import pytest

from harness.databases import create_database
from wacrm.core.embedded import EmbeddedBroker, EmbeddedPostgres, free_port
from wacrm.received import ledger_rows, replies
from wacrm.storage import ledger_send
from wacrm.storage.db import connect
from wacrm.storage.migrate import run_migrations
from wacrm.system import (
    LaunchError,
    Processes,
    Secrets,
    Wiring,
    create_topics_on,
    fake_meta_cmd,
    metrics_url,
    serve_cmd,
    wait_ready,
    worker_cmd,
)
from wacrm.whatsapp import signature

# The inbox tests' signed-in `agent` and `admin` fixtures live with the API client.
pytest_plugins = ["inbox_client"]

FIXTURES = Path(__file__).parent / "fixtures" / "whatsapp"
APP_SECRET = "test_app_secret_do_not_use"  # the secret the fixtures' manifest signatures use
VERIFY_TOKEN = "test-verify-token"
ACCESS_TOKEN = "test-access-token"
WABA_ID = "100000000000001"  # the fixtures' WhatsApp Business Account (tests/fixtures/whatsapp/README.md)

T = TypeVar("T")


def fresh(body: bytes) -> bytes:
    """The fixture body with its 2026-01-01 timestamps moved to the last minutes, order kept.

    Replies go out only inside the 24-hour window that starts at the customer's message.
    """
    now = int(time.time()) - 600
    return re.sub(rb'"timestamp": ?"(17672\d{5})"',
                  lambda m: b'"timestamp": "%d"' % (now + int(m.group(1)) % 600), body)


async def eventually(check: Callable[[], Awaitable[T]], timeout: float = 30.0, what: str = "condition") -> T:
    """Poll ``check`` until it returns a truthy value; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        await asyncio.sleep(0.1)


def run_sync(coro: Awaitable[T]) -> T:
    """Run a coroutine to completion from sync code, even when an event loop runs in this thread."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A PostgreSQL server URL (admin database)."""
    url = os.environ.get("DATABASE_URL")
    if url:
        yield url
        return
    pg = EmbeddedPostgres(tmp_path_factory.mktemp("pg") / "data")
    pg.start()
    try:
        yield pg.url
    finally:
        pg.stop()


@pytest.fixture(scope="session")
def make_database(pg_server: str) -> Iterator[Callable[[], str]]:
    """A factory of fresh, empty databases on the test server, dropped at the end of the session."""
    created: list[str] = []

    def make() -> str:
        name = f"wacrm_test_{secrets.token_hex(4)}"
        url = run_sync(create_database(pg_server, name, migrate=False))
        created.append(name)
        return url

    yield make

    async def drop() -> None:
        conn = await asyncpg.connect(pg_server)
        try:
            for name in created:
                await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()

    run_sync(drop())


@pytest.fixture(scope="session")
def database_url(make_database: Callable[[], str]) -> str:
    """A migrated database for the session's shared system."""
    url = make_database()
    run_sync(run_migrations(url, 10.0, out=lambda m: None))
    return url


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    servers = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if servers:
        yield servers
        return
    b = EmbeddedBroker(log_path=tmp_path_factory.mktemp("tansu") / "tansu.log")
    b.start()
    try:
        yield b.bootstrap
    finally:
        b.stop()


# The tests' settings: the pipeline's deliberate waits made short, a small body limit, the fixtures' account.
TEST_SETTINGS = {"WEBHOOK_MAX_BODY_BYTES": str(256 * 1024), "PUBLISH_TIMEOUT_SECONDS": "2",
                 "BROKER_SESSION_TIMEOUT": "6", "LOG_LEVEL": "INFO", "BURST_WINDOW_SECONDS": "1",
                 "RETRY_BASE_SECONDS": "0.4", "RETRY_MULTIPLIER": "2", "WHATSAPP_BUSINESS_ACCOUNT_ID": WABA_ID}


@dataclass
class Stack:
    """One running wacrm: fake-meta, serve and worker processes against a database and a broker."""

    database_url: str
    bootstrap: str
    logs: Path
    extra_env: dict[str, str] = field(default_factory=dict)
    port: int = 0
    fake_port: int = 0
    worker_metrics_port: int = 0
    processes: Processes = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.processes = Processes(self.logs)

    @property
    def procs(self) -> dict[str, subprocess.Popen]:
        """The running processes by name (``worker2``: a second worker of the group)."""
        return self.processes.running

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def webhook(self) -> str:
        return f"{self.base}/webhooks/whatsapp"

    @property
    def fake_meta(self) -> str:
        return f"http://127.0.0.1:{self.fake_port}"

    @property
    def media_dir(self) -> Path:
        return self.logs / "media"

    @property
    def worker_metrics(self) -> str:
        return metrics_url(self.worker_metrics_port)

    def wiring(self) -> Wiring:
        return Wiring(self.database_url, self.bootstrap, Secrets(APP_SECRET, VERIFY_TOKEN, ACCESS_TOKEN),
                      self.port, self.worker_metrics_port, fake_meta_url=self.fake_meta,
                      group_id=f"wacrm-test-{self.port}", media_dir=self.media_dir,
                      settings={**TEST_SETTINGS, **self.extra_env})  # a test's own settings win

    def env(self) -> dict[str, str]:
        return self.wiring().environ()

    def start(self, *names: str, env_overrides: dict[str, str] | None = None) -> None:
        if not self.port:
            self.port, self.fake_port, self.worker_metrics_port = free_port(), free_port(), free_port()
        commands = {"fake-meta": fake_meta_cmd(self.fake_port, self.webhook), "serve": serve_cmd(),
                    "worker": worker_cmd()}
        for name in names or ("fake-meta", "serve", "worker"):
            env = self.env()
            if name.startswith("worker") and name != "worker":  # more workers of the same group, no metrics port
                env["WORKER_METRICS_PORT"] = "0"
            env.update(env_overrides or {})
            self.processes.start(name, commands[name.rstrip("0123456789")], env)
        for name, port in (("fake-meta", self.fake_port), ("serve", self.port)):
            if name in (names or ("fake-meta", "serve")):
                self.processes.wait_listening(name, port, 30)

    async def wait_worker(self, timeout: float = 60) -> None:
        try:
            await wait_ready(self.processes, workers=[self.worker_metrics], watch=["worker"], timeout=timeout)
        except LaunchError as exc:
            raise AssertionError(f"waiting for the worker to join its consumer group: {exc}: "
                                 f"{self.processes.log('worker').read_text()[-3000:]}") from None

    def stop(self, *names: str) -> None:
        """``names``, or every process (the last started first)."""
        for name in names:
            self.processes.stop(name)
        if not names:
            self.processes.stop_all()

    # --- helpers the tests use --------------------------------------------------------

    async def post(self, body: bytes, *, sign_with: str | None = APP_SECRET,
                   headers: dict[str, str] | None = None) -> tuple[int, Any]:
        h = {"Content-Type": "application/json", **(headers or {})}
        if sign_with is not None:
            h["X-Hub-Signature-256"] = signature.sign(sign_with, body)
        async with aiohttp.ClientSession() as s, s.post(self.webhook, data=body, headers=h) as r:
            text = await r.text()
            try:
                return r.status, await r.json(content_type=None)
            except ValueError:
                return r.status, text

    async def sent(self) -> list[dict[str, Any]]:
        async with aiohttp.ClientSession() as s, s.get(f"{self.fake_meta}/__sent") as r:
            return await r.json()

    async def answered(self) -> list[tuple[dict[str, Any], str]]:
        """Each send fake-meta took (not a scripted error) that answers a customer message, with that
        message's id: a send names its ledger row (``biz_opaque_callback_data``), whose intent says
        what it answers, quoted or not. Counted by :func:`wacrm.received.replies`."""
        sent = await self.sent()
        conn = await connect(self.database_url, timeout=10)
        try:
            answers = await ledger_send.answered_messages(conn, ledger_rows(sent))
        finally:
            await conn.close()
        return [(dict(x), message_id) for x, message_id in replies(sent, answers)]

    async def replies_to(self, message_id: str) -> list[dict[str, Any]]:
        return [x for x, answered in await self.answered() if answered == message_id]

    async def worker_metric(self, name: str, labels: str = "") -> float:
        async with aiohttp.ClientSession() as s, s.get(self.worker_metrics) as r:
            text = await r.text()
        # Without labels: the sum over every series of the metric.
        prefixes = (f"{name}{{{labels}}} ",) if labels else (f"{name} ", f"{name}{{")
        return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(prefixes))


@contextlib.asynccontextmanager
async def own_stack(make_database: Callable[[], str], tmp: Path,
                    **extra_env: str) -> AsyncIterator[tuple[Stack, EmbeddedBroker]]:
    """A running system on a fresh database and an embedded broker of its own (for tests that stop,
    kill or reconfigure parts of it); everything is stopped on the way out."""
    url = make_database()
    await run_migrations(url, 10.0, out=lambda m: None)
    broker = EmbeddedBroker(log_path=tmp / "tansu.log")
    broker.start()
    stack = Stack(url, broker.bootstrap, tmp / "logs", extra_env=dict(extra_env))
    try:
        await create_topics_on(broker.bootstrap)
        stack.start()
        await stack.wait_worker()
        yield stack, broker
    finally:
        stack.stop()
        broker.stop()


@pytest.fixture(scope="session")
def stack(database_url: str, broker: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The session's shared running system."""
    run_sync(create_topics_on(broker))
    s = Stack(database_url, broker, tmp_path_factory.mktemp("stack"))
    s.start()
    try:
        run_sync(s.wait_worker())
        yield s
    finally:
        s.stop()


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await connect(database_url, timeout=10)  # decodes json/jsonb like the application
    try:
        yield conn
    finally:
        await conn.close()
