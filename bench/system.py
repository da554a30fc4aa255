"""The system under measurement, started and stopped by the benchmark: embedded PostgreSQL and broker,
``wacrm serve``, ``wacrm worker`` processes in one consumer group, and fake-meta as the Graph API.

Contract: every process is a child of this one, started with :meth:`Bench.start` (it dies with this
process) and stopped by :meth:`Bench.stop_all`; traffic goes to 127.0.0.1 only; every wait is bounded
and raises :class:`BenchError` when it runs out. The phases (:mod:`bench.phases`) use a :class:`Bench`
and record what they measured in :attr:`Bench.results`.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from bench import probes
from bench.bodies import BUSINESS_NUMBERS
from bench.plan import Plan
from wacrm.core import procs
from wacrm.core.embedded import EmbeddedBroker, EmbeddedPostgres, free_port, wait_for_port
from wacrm.core.settings import load as load_settings
from wacrm.storage import numbers
from wacrm.storage.migrate import run_migrations
from wacrm.topics.admin import create_topics

# Where `python -m bench.*` subprocesses find the bench package: the checkout, which is not installed.
CHECKOUT = Path(__file__).resolve().parents[1]
MAX_WORKERS = 4
# The deliberate waiting switched off to measure the pipeline itself (the issue asks for that).
PIPELINE_ONLY = {"BURST_WINDOW_SECONDS": "0", "RATE_LIMIT_PER_SECOND": "1000", "PAIR_INTERVAL_SECONDS": "0"}


class BenchError(Exception):
    """The benchmark could not run (a process did not start, a phase overran its bound)."""


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Bench:
    """The system's processes and storage, and the run's plan and results."""

    def __init__(self, plan: Plan, work: Path) -> None:
        self.plan = plan
        self.work = work
        self.logs = work / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.secret = secrets.token_hex(16)
        self.token_key = numbers.new_key()  # TOKEN_ENCRYPTION_KEY: the second business number's token is stored with it
        self.pg: EmbeddedPostgres | None = None
        self.broker: EmbeddedBroker | None = None
        self.children: dict[str, subprocess.Popen] = {}
        self.ports = {"serve": free_port(), "fake-meta": free_port(), "bare": free_port(), "inbox": free_port(),
                      "minimal": free_port(), "fake-meta-minimal": free_port()}
        self.worker_ports = [free_port() for _ in range(MAX_WORKERS)]  # each worker's /metrics
        self.serve_processes = 1  # `wacrm serve --processes` of the pipeline
        self.workers = 1  # `wacrm worker` processes of the pipeline, one consumer group
        self.db_url = ""
        self.ceiling_db = ""  # the database of the PostgreSQL ceiling and of the minimal pipeline
        self.group = f"wacrm-bench-{os.getpid()}"
        self.results: dict[str, Any] = {"plan": plan.name}
        self.brokers = 0  # brokers started so far

    def env(self, *, defaults: bool = False) -> dict[str, str]:
        """The processes' environment: the pipeline itself, with no deliberate waiting (burst
        window) and no Graph API pacing; ``defaults``: the shipped settings for those instead."""
        assert self.broker is not None
        env = procs.env_with(
            DATABASE_URL=self.db_url, KAFKA_BOOTSTRAP_SERVERS=self.broker.bootstrap,
            WHATSAPP_APP_SECRET=self.secret, WHATSAPP_VERIFY_TOKEN="bench-verify",
            WHATSAPP_ACCESS_TOKEN="bench-access-token", TOKEN_ENCRYPTION_KEY=self.token_key,
            WHATSAPP_PHONE_NUMBER_ID=BUSINESS_NUMBERS[0][0],
            WHATSAPP_API_BASE_URL=f"http://127.0.0.1:{self.ports['fake-meta']}",
            PORT=str(self.ports["serve"]), HOST="127.0.0.1", WORKER_METRICS_PORT=str(self.worker_ports[0]),
            KAFKA_GROUP_ID=self.group, BROKER_SESSION_TIMEOUT="6", PYTHONUNBUFFERED="1",
            MEDIA_DIR=str(self.work / "media"), **PIPELINE_ONLY)
        if defaults:
            for name in PIPELINE_ONLY:
                env.pop(name, None)
        return env

    # --- storage -------------------------------------------------------------------------

    def start_storage(self) -> None:
        """PostgreSQL (fresh, with pg_stat_statements for the budget phase), its databases migrated, the
        business numbers added; and a broker with every topic."""
        log("starting embedded PostgreSQL and broker")
        self.pg = EmbeddedPostgres(self.work / "pg" / "data", config={
            "shared_preload_libraries": "pg_stat_statements", "pg_stat_statements.track": "top"})
        self.pg.start()
        asyncio.run(self.new_broker())
        self.results["postgres_version"] = asyncio.run(self._create_databases()).split(",")[0]
        base = self.pg.url.rsplit("/", 1)[0]
        self.db_url = f"{base}/wacrm_bench"
        self.ceiling_db = f"{base}/wacrm_bench_ceiling"
        for url in (self.db_url, self.ceiling_db):
            asyncio.run(run_migrations(url, 10, out=lambda m: None))
        asyncio.run(self.add_numbers())
        asyncio.run(self._track_statements())

    async def _create_databases(self) -> str:
        conn = await asyncpg.connect(self.pg.url)  # type: ignore[union-attr]
        try:
            for db in ("wacrm_bench", "wacrm_bench_ceiling"):
                await conn.execute(f'CREATE DATABASE "{db}"')
            return await conn.fetchval("SELECT version()")
        finally:
            await conn.close()

    async def _track_statements(self) -> None:
        conn = await asyncpg.connect(self.db_url)
        try:
            await conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        finally:
            await conn.close()

    async def add_numbers(self) -> None:
        """The bodies' business numbers other than the environment's, each with a token of its own
        (stored as ``wacrm numbers add`` stores it): a body for a number not configured is skipped."""
        cipher = numbers.TokenCipher(self.token_key)
        conn = await asyncpg.connect(self.db_url)
        try:
            for number, display in BUSINESS_NUMBERS[1:]:
                await numbers.add(conn, numbers.NewNumber(number, "100000000000001", f"bench-token-{number}",
                                                          display_phone_number=display), cipher)
        finally:
            await conn.close()

    async def new_broker(self) -> None:
        """A fresh embedded broker with every topic (the previous phase's data gone with the old one)."""
        if self.broker is not None:
            self.broker.stop()
        self.brokers += 1
        self.broker = EmbeddedBroker(log_path=self.logs / f"tansu-{self.brokers}.log")
        self.broker.start()
        settings = load_settings({"KAFKA_BOOTSTRAP_SERVERS": self.broker.bootstrap}, "dev")
        await create_topics(settings, out=lambda m: None)

    # --- processes -----------------------------------------------------------------------

    def start(self, name: str, cmd: list[str], port: int | None = None, *, defaults: bool = False,
              env: dict[str, str] | None = None) -> subprocess.Popen:
        """Start ``name`` (its output in ``logs/<name>.log``); with ``port``, wait until it listens."""
        proc = procs.spawn(cmd, log_path=self.logs / f"{name}.log", env={**self.env(defaults=defaults), **(env or {})},
                           cwd=CHECKOUT)
        self.children[name] = proc
        if port is not None:
            wait_for_port(port, 60, proc)
        return proc

    def ensure_fake_meta(self) -> None:
        """fake-meta as Meta behaves: the three statuses of every reply it takes posted to the webhook."""
        if "fake-meta" not in self.children:
            self.start("fake-meta", self.fake_meta_cmd("fake-meta", "serve"), self.ports["fake-meta"])

    def fake_meta_cmd(self, name: str, webhook: str) -> list[str]:
        """fake-meta on ``name``'s port, posting the statuses to the webhook on ``webhook``'s."""
        return procs.python_cmd("fake-meta", "--port", str(self.ports[name]), "--app-secret", self.secret,
                                "--webhook-url", f"http://127.0.0.1:{self.ports[webhook]}/webhooks/whatsapp")

    def stop(self, name: str) -> None:
        procs.stop(self.children.pop(name, None), signal.SIGTERM, 20)

    def stop_all(self) -> None:
        for name in list(self.children)[::-1]:
            self.stop(name)
        if self.broker is not None:
            self.broker.stop()
        if self.pg is not None:
            self.pg.stop()

    def worker_names(self) -> list[str]:
        return [n for n in self.children if n == "worker" or n.startswith("worker-")]

    def start_workers(self, count: int, *, defaults: bool = False) -> None:
        """``count`` ``wacrm worker`` processes in one consumer group, each with its own metrics port."""
        for n in range(count):
            self.start("worker" if n == 0 else f"worker-{n + 1}", procs.python_cmd("worker"), defaults=defaults,
                       env={"WORKER_METRICS_PORT": str(self.worker_ports[n])})

    def stop_workers(self) -> None:
        for name in self.worker_names():
            self.stop(name)

    def worker_urls(self) -> list[str]:
        """The running workers' ``/metrics``."""
        return [f"http://127.0.0.1:{self.worker_ports[n]}/metrics" for n in range(len(self.worker_names()))]

    async def wait_workers(self, timeout: float = 90) -> None:
        """Every worker has joined the group and holds partitions."""
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as s:
            while time.monotonic() < deadline:
                for name in self.worker_names():
                    if self.children[name].poll() is not None:
                        raise BenchError(f"{name} exited; see {self.logs / (name + '.log')}")
                joined = 0
                for url in self.worker_urls():
                    try:
                        async with s.get(url) as r:
                            joined += procs.worker_joined(await r.text())
                    except aiohttp.ClientError:
                        pass
                if joined == len(self.worker_names()):
                    return
                await asyncio.sleep(0.2)
        raise BenchError(f"the workers did not join their group within {timeout:.0f}s")

    async def restart_pipeline(self, *, defaults: bool = False) -> None:
        """``serve`` and the workers (re)started on a fresh, empty broker, ready and joined.

        The embedded broker keeps every message in memory and needs more CPU the more it holds, so each
        judged phase starts from an empty one, as a production Kafka with retention would be.
        ``defaults``: the workers run with the shipped settings."""
        self.stop_workers()
        self.stop("serve")
        await self.new_broker()
        many = ["--processes", str(self.serve_processes)] if self.serve_processes > 1 else []
        self.start("serve", procs.python_cmd("serve", *many), self.ports["serve"])
        self.start_workers(self.workers, defaults=defaults)
        await wait_ready(f"http://127.0.0.1:{self.ports['serve']}/readyz")
        await self.wait_workers()

    def tracked(self) -> probes.Tracked:
        """The pipeline's processes by name: (pid, whether to count its children too)."""
        assert self.broker is not None and self.pg is not None and self.broker.proc and self.pg.proc
        out: probes.Tracked = {"serve": [(self.children["serve"].pid, True)],  # with its --processes
                               "worker": [(self.children[n].pid, False) for n in self.worker_names()],
                               "fake-meta": [(self.children["fake-meta"].pid, False)],
                               "broker": [(self.broker.proc.pid, False)],
                               "postgres": [(self.pg.proc.pid, True)]}  # the server and its backends
        return out


async def wait_ready(url: str, timeout: float = 60) -> None:
    """``url`` answers 200 (a ``/readyz``), within ``timeout``."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as s, s.get(url) as r:
                if r.status == 200:
                    return
        except (OSError, aiohttp.ClientError, TimeoutError) as exc:
            last = str(exc)
        await asyncio.sleep(0.2)
    raise BenchError(f"{url} not ready within {timeout:.0f}s: {last}")
