"""The system under measurement, started and stopped by the benchmark: embedded PostgreSQL and broker,
``wacrm serve``, ``wacrm worker`` processes in one consumer group, and fake-meta as the Graph API,
launched through :mod:`wacrm.system`.

Contract: every process is a child of this one, started with :meth:`Bench.start` (it dies with this
process) and stopped by :meth:`Bench.stop_all`; traffic goes to 127.0.0.1 only; every wait is bounded
and raises :class:`BenchError` (or the launcher's :class:`~wacrm.system.LaunchError`) when it runs out.
The phases (:mod:`bench.phases`) use a :class:`Bench` and record what they measured in :attr:`Bench.results`.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import time
from pathlib import Path
from typing import Any

import asyncpg

from bench import probes
from bench.bodies import BUSINESS_NUMBERS
from bench.plan import Plan
from harness.databases import create_database
from wacrm.core import procs
from wacrm.core.embedded import EmbeddedBroker, EmbeddedPostgres, free_port
from wacrm.storage import numbers
from wacrm.system import (
    LOCAL,
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
        self.processes = Processes(self.logs, cwd=CHECKOUT)
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

    @property
    def children(self) -> dict[str, subprocess.Popen]:
        """The running processes by name."""
        return self.processes.running

    def wiring(self, *, defaults: bool = False) -> Wiring:
        """What the pipeline's processes are told: no deliberate waiting (burst window) and no Graph API
        pacing; ``defaults``: the shipped settings for those instead."""
        assert self.broker is not None
        settings = {"WHATSAPP_PHONE_NUMBER_ID": BUSINESS_NUMBERS[0][0], "BROKER_SESSION_TIMEOUT": "6"}
        return Wiring(self.db_url, self.broker.bootstrap,
                      Secrets(self.secret, "bench-verify", "bench-access-token", self.token_key),
                      self.ports["serve"], self.worker_ports[0], fake_meta_url=self.url("fake-meta"),
                      group_id=self.group, media_dir=self.work / "media",
                      settings=settings if defaults else {**settings, **PIPELINE_ONLY})

    def env(self, *, defaults: bool = False) -> dict[str, str]:
        """The processes' environment (:meth:`wiring`); with ``defaults`` none of :data:`PIPELINE_ONLY`
        is passed on, not even from this process's own environment."""
        base = procs.env_with(**dict.fromkeys(PIPELINE_ONLY)) if defaults else None
        return self.wiring(defaults=defaults).environ(base)

    def url(self, name: str, path: str = "") -> str:
        """``path`` on the port of ``name`` (one of :attr:`ports`)."""
        return f"http://{LOCAL}:{self.ports[name]}{path}"

    # --- storage -------------------------------------------------------------------------

    def start_storage(self) -> None:
        """PostgreSQL (fresh, with pg_stat_statements for the budget phase), its databases migrated, the
        business numbers added; and a broker with every topic."""
        log("starting embedded PostgreSQL and broker")
        self.pg = EmbeddedPostgres(self.work / "pg" / "data", config={
            "shared_preload_libraries": "pg_stat_statements", "pg_stat_statements.track": "top"})
        self.pg.start()
        asyncio.run(self._storage())

    async def _storage(self) -> None:
        assert self.pg is not None
        await self.new_broker()
        self.db_url = await create_database(self.pg.url, "wacrm_bench")
        self.ceiling_db = await create_database(self.pg.url, "wacrm_bench_ceiling")
        await self.add_numbers()
        conn = await asyncpg.connect(self.db_url)
        try:
            await conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            self.results["postgres_version"] = (await conn.fetchval("SELECT version()")).split(",")[0]
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
        await create_topics_on(self.broker.bootstrap)

    # --- processes -----------------------------------------------------------------------

    def start(self, name: str, cmd: list[str], port: int | None = None, *, defaults: bool = False,
              env: dict[str, str] | None = None) -> subprocess.Popen:
        """Start ``name`` with :meth:`env` and ``env`` (its output in ``logs/<name>.log``); with ``port``,
        wait until it listens."""
        return self.processes.start(name, cmd, {**self.env(defaults=defaults), **(env or {})}, port=port)

    def ensure_fake_meta(self) -> None:
        """fake-meta as Meta behaves: the three statuses of every reply it takes posted to the webhook."""
        if "fake-meta" not in self.children:
            self.start("fake-meta", self.fake_meta_cmd("fake-meta", "serve"), self.ports["fake-meta"])

    def fake_meta_cmd(self, name: str, webhook: str) -> list[str]:
        """fake-meta on ``name``'s port, posting the statuses to the webhook on ``webhook``'s."""
        return fake_meta_cmd(self.ports[name], self.url(webhook, "/webhooks/whatsapp"), "--app-secret", self.secret)

    def stop(self, name: str) -> None:
        self.processes.stop(name)

    def stop_all(self) -> None:
        self.processes.stop_all()
        if self.broker is not None:
            self.broker.stop()
        if self.pg is not None:
            self.pg.stop()

    def worker_names(self) -> list[str]:
        return [n for n in self.children if n == "worker" or n.startswith("worker-")]

    def start_workers(self, count: int, *, defaults: bool = False) -> None:
        """``count`` ``wacrm worker`` processes in one consumer group, each with its own metrics port."""
        for n in range(count):
            self.start("worker" if n == 0 else f"worker-{n + 1}", worker_cmd(), defaults=defaults,
                       env={"WORKER_METRICS_PORT": str(self.worker_ports[n])})

    def stop_workers(self) -> None:
        for name in self.worker_names():
            self.stop(name)

    def worker_urls(self) -> list[str]:
        """The running workers' ``/metrics``."""
        return [metrics_url(self.worker_ports[n]) for n in range(len(self.worker_names()))]

    async def wait_workers(self, timeout: float = 90) -> None:
        """Every worker has joined the group and holds partitions; :class:`~wacrm.system.LaunchError` as
        soon as one exits, or after ``timeout``."""
        await wait_ready(self.processes, workers=self.worker_urls(), watch=self.worker_names(), timeout=timeout)

    async def wait_ready(self, name: str, timeout: float = 60) -> None:
        """The server on ``name``'s port answers 200 at ``/readyz``, within ``timeout``."""
        await wait_ready(self.processes, readyz=self.url(name, "/readyz"), watch=[], timeout=timeout)

    async def restart_pipeline(self, *, defaults: bool = False) -> None:
        """``serve`` and the workers (re)started on a fresh, empty broker, ready and joined.

        The embedded broker keeps every message in memory and needs more CPU the more it holds, so each
        judged phase starts from an empty one, as a production Kafka with retention would be.
        ``defaults``: the workers run with the shipped settings."""
        self.stop_workers()
        self.stop("serve")
        await self.new_broker()
        many = ["--processes", str(self.serve_processes)] if self.serve_processes > 1 else []
        self.start("serve", serve_cmd(*many), self.ports["serve"])
        self.start_workers(self.workers, defaults=defaults)
        await self.wait_ready("serve")
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
