"""``wacrm bench``: run the system in its production shape on this machine and measure it.

Order: embedded PostgreSQL (fresh, in a temporary directory) and broker; the ceilings (raw
produce, PostgreSQL statements of the inbound path, a bare aiohttp handler); the webhook
alone (``wacrm serve``, durable publish in the path) at fixed offered rates and in a search
for the highest rate with p99 within the bound; then a fresh broker and the whole pipeline
(``serve``, ``worker``, ``fake-meta``) end to end: the latency a customer sees at low load,
rising steps until one fails, the highest clean step's rate held for ``sustain_s`` (stepping
down if it does not hold), a py-spy profile of the worker at that rate, a soak at a quarter
of it for memory, consumer lag and CPU over time, and the latency a customer sees with the
shipped settings. In the full run each of those phases starts on a fresh broker: the embedded
one keeps every message in memory and slows down as they pile up. Every end-to-end run records
the CPU each process used.
Everything started here is stopped here (and dies with this process); traffic goes to
127.0.0.1 only; every phase is bounded in time.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson

from bench import inbox, plots, probes, report, stats, wrk
from bench.bodies import BUSINESS_NUMBERS, BodyFactory
from harness.machine import machine
from wacrm import received
from wacrm.core import procs
from wacrm.core.embedded import EmbeddedBroker, EmbeddedPostgres, free_port, wait_for_port
from wacrm.storage import repo
from wacrm.storage.numbers import new_key
from wacrm.topics.lag import LagProbe
from wacrm.whatsapp import fake_meta, signature

WEBHOOK_P99_BOUND_S = 0.010  # issue #12: p99 ≤ 10 ms
E2E_P99_BOUND_S = 1.0
# Where `python -m bench.*` subprocesses find the bench package: the checkout, which is not installed.
CHECKOUT = Path(__file__).resolve().parents[1]
OWN_CODE = ("(agents/", "(storage/", "(whatsapp/", "(topics/", "(orchestrator/", "(webhook/")


@dataclass(frozen=True)
class Plan:
    name: str
    ceiling_s: float
    ingest_rates: tuple[int, ...]
    ingest_step_s: float
    search_steps: int
    search_step_s: float
    e2e_rates: tuple[int, ...]  # bodies/s; the steps stop at the first that fails
    e2e_step_s: float
    drain_s: float
    customer_rate: int
    customer_s: float
    sustain_s: float  # the highest clean step's rate held this long (stepping down when it fails)
    soak_s: float  # memory and lag at a quarter of the sustained rate
    profile_s: float
    budget_rate: int  # bodies/s: the fixed rate at which the CPU each message costs is measured
    budget_s: float
    wrk_s: float  # each closed-loop run of the webhook
    serve_processes: tuple[int, ...]  # the webhook's closed-loop runs: `wacrm serve --processes` of each
    deadline_s: float
    fresh_broker_per_phase: bool  # a short run adds too little to the embedded broker to slow it down


QUICK = Plan("quick", ceiling_s=2, ingest_rates=(1000, 5000, 10000), ingest_step_s=2, search_steps=4,
             search_step_s=2, e2e_rates=(100, 200, 300, 500, 750), e2e_step_s=6, drain_s=20, customer_rate=5,
             customer_s=4, sustain_s=10, soak_s=15, profile_s=5, budget_rate=200, budget_s=15, wrk_s=4,
             serve_processes=(1, 2), deadline_s=600,
             fresh_broker_per_phase=False)
FULL = Plan("full", ceiling_s=5, ingest_rates=(1000, 5000, 10000, 15000), ingest_step_s=5, search_steps=6,
            search_step_s=4, e2e_rates=(100, 150, 200, 250, 300, 400, 500, 750, 1000, 1500, 2000),
            e2e_step_s=15, drain_s=60,
            customer_rate=10, customer_s=15, sustain_s=60, soak_s=600, profile_s=20, budget_rate=200, budget_s=30,
            wrk_s=10, serve_processes=(1, 2), deadline_s=2000,
            fresh_broker_per_phase=True)
WRK_CONNECTIONS = 32  # as the issue that set the webhook target measured it
SUSTAIN_TRIES = 3
MAX_WORKERS = 4
DRAIN_BACKLOG = (1000, 6)  # `--only budget`'s backlog: bodies/s for seconds, put on the bus with the workers stopped
# The deliberate waiting switched off to measure the pipeline itself (the issue asks for that).
PIPELINE_ONLY = {"BURST_WINDOW_SECONDS": "0", "RATE_LIMIT_PER_SECOND": "1000", "PAIR_INTERVAL_SECONDS": "0"}
SUSTAIN_STEP_DOWN = 0.85
STATUSES_PER_REPLY = 3  # fake-meta posts sent, delivered and read for every send it takes, as Meta does
STATUS_METRIC = "wacrm_statuses_total"
STATUS_BACKLOG = (400, 5)  # the status line's replies: bodies/s for seconds, their statuses held back
INBOX_DEADLINE_S = 900  # seeding a million messages, migrations, the load


class BenchError(Exception):
    """The benchmark could not run (a process did not start, a phase overran its bound)."""


class _Deadline(BaseException):
    pass


def _log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Bench:
    def __init__(self, plan: Plan, work: Path) -> None:
        self.plan = plan
        self.work = work
        self.logs = work / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.secret = secrets.token_hex(16)
        self.token_key = new_key()  # TOKEN_ENCRYPTION_KEY: the second business number's token is stored with it
        self.pg: EmbeddedPostgres | None = None
        self.broker: EmbeddedBroker | None = None
        self.children: dict[str, subprocess.Popen] = {}
        self.ports = {"serve": free_port(), "fake-meta": free_port(), "bare": free_port(), "inbox": free_port(),
                      "minimal": free_port(), "fake-meta-minimal": free_port()}
        self.worker_ports = [free_port() for _ in range(MAX_WORKERS)]  # each worker's /metrics
        self.serve_processes = 1  # `wacrm serve --processes` of the pipeline
        self.workers = 1  # `wacrm worker` processes of the pipeline, one consumer group
        self.db_url = ""
        self.group = f"wacrm-bench-{os.getpid()}"
        self.results: dict[str, Any] = {"plan": plan.name}
        self._step = 0

    # --- processes -----------------------------------------------------------------------

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

    async def add_numbers(self) -> None:
        """The bodies' business numbers other than the environment's, each with a token of its own
        (stored as ``wacrm numbers add`` stores it): a body for a number not configured is skipped."""
        from wacrm.storage import numbers

        cipher = numbers.TokenCipher(self.token_key)
        conn = await asyncpg.connect(self.db_url)
        try:
            for number, display in BUSINESS_NUMBERS[1:]:
                await numbers.add(conn, numbers.NewNumber(number, "100000000000001", f"bench-token-{number}",
                                                          display_phone_number=display), cipher)
        finally:
            await conn.close()

    def start(self, name: str, cmd: list[str], port: int | None = None, *, defaults: bool = False,
              env: dict[str, str] | None = None) -> subprocess.Popen:
        proc = procs.spawn(cmd, log_path=self.logs / f"{name}.log", env={**self.env(defaults=defaults), **(env or {})},
                           cwd=CHECKOUT)
        self.children[name] = proc
        if port is not None:
            wait_for_port(port, 60, proc)
        return proc

    def ensure_fake_meta(self) -> None:
        """fake-meta as Meta behaves: the three statuses of every reply it takes posted to the webhook."""
        if "fake-meta" not in self.children:
            self.start("fake-meta", self._fake_meta_cmd("fake-meta", "serve"), self.ports["fake-meta"])

    def _fake_meta_cmd(self, name: str, webhook: str) -> list[str]:
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

    async def new_broker(self) -> None:
        """A fresh embedded broker with every topic (the previous phase's data gone with the old one)."""
        if self.broker is not None:
            self.broker.stop()
        self._step += 1
        self.broker = EmbeddedBroker(log_path=self.logs / f"tansu-{self._step}.log")
        self.broker.start()
        from wacrm.core.settings import load
        from wacrm.topics.admin import create_topics

        settings = load({"KAFKA_BOOTSTRAP_SERVERS": self.broker.bootstrap}, "dev")
        await create_topics(settings, out=lambda m: None)

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

    def _worker_urls(self) -> list[str]:
        return [f"http://127.0.0.1:{self.worker_ports[n]}/metrics" for n in range(len(self.worker_names()))]

    async def _wait_worker(self, timeout: float = 90) -> None:
        """Every worker has joined the group and holds partitions."""
        from wacrm.core.procs import worker_joined

        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as s:
            while time.monotonic() < deadline:
                for name in self.worker_names():
                    if self.children[name].poll() is not None:
                        raise BenchError(f"{name} exited; see {self.logs / (name + '.log')}")
                joined = 0
                for url in self._worker_urls():
                    try:
                        async with s.get(url) as r:
                            joined += worker_joined(await r.text())
                    except aiohttp.ClientError:
                        pass
                if joined == len(self.worker_names()):
                    return
                await asyncio.sleep(0.2)
        raise BenchError(f"the workers did not join their group within {timeout:.0f}s")

    async def _metric(self, name: str, labels: str = "", *, every_label: bool = False) -> float:
        """A counter summed over every worker (``every_label``: over all its label sets)."""
        prefix = f"{name}{{" if every_label else f"{name}{{{labels}}} " if labels else f"{name} "
        total = 0.0
        async with aiohttp.ClientSession() as s:
            for url in self._worker_urls():
                async with s.get(url) as r:
                    text = await r.text()
                total += sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(prefix))
        return total

    # --- the load generator --------------------------------------------------------------

    async def load(self, url_port: int, rate: float, seconds: float, *, tag: str, connections: int = 64,
                   ids: bool = False, during: Any = None) -> tuple[dict[str, Any], Path | None]:
        """The generator at ``rate`` bodies/s; with ``ids`` (the pipeline's runs) customer messages only: their
        statuses are the real ones fake-meta posts for each reply."""
        out = self.work / f"load-{tag}.json"
        ids_out = self.work / f"ids-{tag}.tsv" if ids else None
        cmd = [sys.executable, "-m", "bench.loadgen", "--url", f"http://127.0.0.1:{url_port}/webhooks/whatsapp",
               "--secret", self.secret, "--rate", str(rate), "--duration", str(seconds), "--tag", tag,
               "--connections", str(connections), "--out", str(out)]
        if ids_out:
            cmd += ["--ids-out", str(ids_out), "--status-share", "0"]
        proc = procs.spawn(cmd, log_path=self.logs / "loadgen.log", cwd=CHECKOUT)
        self.children["loadgen"] = proc
        limit = time.monotonic() + seconds + 90
        try:
            while proc.poll() is None:
                if time.monotonic() > limit:
                    raise BenchError(f"the load generator overran its bound at {rate}/s")
                if during is not None:
                    await during()
                await asyncio.sleep(0.25)
        finally:
            self.stop("loadgen")
        if proc.returncode != 0 or not out.exists():
            raise BenchError(f"the load generator failed (code {proc.returncode}); see {self.logs / 'loadgen.log'}")
        return orjson.loads(out.read_bytes()), ids_out

    async def fixed_and_search(self, port: int, label: str) -> dict[str, Any]:
        p = self.plan
        fixed = []
        for rate in p.ingest_rates:
            result, _ = await self.load(port, rate, p.ingest_step_s, tag=f"{label}{rate}")
            _log(f"{label} {rate}/s: {_brief(result)}")
            fixed.append(result)
        search = stats.RateSearch(start=2000, ceiling=40000, max_steps=p.search_steps, resolution=0.08)
        trials = []
        while (trial_rate := search.next_rate()) is not None:
            result, _ = await self.load(port, trial_rate, p.search_step_s, tag=f"{label}s{int(trial_rate)}")
            passed = _ingest_passes(result)
            search.record(trial_rate, passed)
            trials.append(result)
            _log(f"{label} search {trial_rate:.0f}/s: {'pass' if passed else 'fail'} {_brief(result)}")
        best = max((t for t in trials if _ingest_passes(t)), key=lambda t: t["offered_rate"], default=None)
        return {"fixed": fixed, "search": trials, "best": best}

    # --- phases --------------------------------------------------------------------------

    def start_storage(self) -> None:
        _log("starting embedded PostgreSQL and broker")
        # pg_stat_statements: the statements each message costs, in the budget phase
        self.pg = EmbeddedPostgres(self.work / "pg" / "data", config={
            "shared_preload_libraries": "pg_stat_statements", "pg_stat_statements.track": "top"})
        self.pg.start()
        asyncio.run(self.new_broker())

        async def prepare() -> str:
            conn = await asyncpg.connect(self.pg.url)  # type: ignore[union-attr]
            try:
                for db in ("wacrm_bench", "wacrm_bench_ceiling"):
                    await conn.execute(f'CREATE DATABASE "{db}"')
                return await conn.fetchval("SELECT version()")
            finally:
                await conn.close()

        self.results["postgres_version"] = asyncio.run(prepare()).split(",")[0]
        from wacrm.storage.migrate import run_migrations

        base = self.pg.url.rsplit("/", 1)[0]
        self.db_url = f"{base}/wacrm_bench"
        self.ceiling_db = f"{base}/wacrm_bench_ceiling"
        for url in (self.db_url, self.ceiling_db):
            asyncio.run(run_migrations(url, 10, out=lambda m: None))
        asyncio.run(self.add_numbers())

        async def statements() -> None:
            conn = await asyncpg.connect(self.db_url)
            try:
                await conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            finally:
                await conn.close()

        asyncio.run(statements())

    def ceilings(self) -> None:
        assert self.broker is not None
        p = self.plan
        _log("ceiling: raw produce")
        self.results["produce"] = self._json_child(
            "ceiling-produce", [sys.executable, "-m", "bench.ceilings", "produce", "--bootstrap", self.broker.bootstrap,
                                "--topic", "bench.ceiling", "--seconds", str(p.ceiling_s)], p.ceiling_s * 2 + 60)
        _log(f"  {self.results['produce']}")
        _log("ceiling: PostgreSQL, inbound statements")
        self.results["postgres"] = self._json_child(
            "ceiling-postgres", [sys.executable, "-m", "bench.ceilings", "postgres", "--database-url",
                                 self.ceiling_db, "--seconds", str(p.ceiling_s)], p.ceiling_s * 2 + 60)
        _log(f"  {self.results['postgres']}")

    def _json_child(self, name: str, cmd: list[str], timeout: float) -> dict[str, Any]:
        """Run a measuring child to completion (bounded); its last output line is its JSON result."""
        log = self.logs / f"{name}.log"
        proc = procs.spawn(cmd, log_path=log, env=self.env())
        self.children[name] = proc
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise BenchError(f"{name} overran its bound of {timeout:.0f}s; see {log}") from None
        finally:
            self.stop(name)
        lines = log.read_text(errors="replace").strip().splitlines()
        if proc.returncode != 0 or not lines:
            raise BenchError(f"{name} failed (code {proc.returncode}); see {log}")
        return orjson.loads(lines[-1])

    async def http_ceiling(self) -> None:
        _log("ceiling: bare aiohttp handler")
        self.start("bare", [sys.executable, "-m", "bench.bare", "--port", str(self.ports["bare"])],
                   self.ports["bare"])
        try:
            self.results["bare"] = await self.fixed_and_search(self.ports["bare"], "bare")
        finally:
            self.stop("bare")

    async def webhook(self) -> None:
        _log("webhook ingest: wacrm serve alone, acks=all publish in the path; fresh broker")
        await self.new_broker()  # the produce ceiling filled the last one, and the embedded broker slows as it fills
        self.start("serve", procs.python_cmd("serve"), self.ports["serve"])
        await _wait_ready(f"http://127.0.0.1:{self.ports['serve']}/readyz")
        try:
            self.results["webhook"] = await self.fixed_and_search(self.ports["serve"], "webhook")
        finally:
            self.stop("serve")

    async def webhook_closed_loop(self) -> None:
        """``wrk`` against ``wacrm serve --only webhook`` with 1 and more processes, alone and with the worker
        consuming beside it, each on a fresh broker: the webhook's throughput when the server saturates."""
        p = self.plan
        binary = wrk.ensure()
        if binary is None:
            _log("webhook under wrk: skipped, wrk is not installed and apt-get could not install it")
            self.results["wrk"] = {"skipped": "wrk is not installed and apt-get could not install it"}
            return
        body = BodyFactory("wrk").messages_body(1, int(time.time())).raw
        lua = wrk.script(body, self.secret, self.work / "post.lua")
        url = f"http://127.0.0.1:{self.ports['serve']}/webhooks/whatsapp"
        minimal = await self._wrk_minimal(binary, lua)
        runs = []
        for processes in p.serve_processes:
            for consuming in (False, True):
                await self.new_broker()
                self.start("serve", procs.python_cmd("serve", "--only", "webhook", "--processes", str(processes)),
                           self.ports["serve"])
                await _wait_ready(f"http://127.0.0.1:{self.ports['serve']}/readyz")
                if consuming:
                    self.ensure_fake_meta()
                    self.start_workers(1)
                    await self._wait_worker()
                assert self.broker is not None and self.broker.proc is not None
                parts: probes.Tracked = {"serve": [(self.children["serve"].pid, True)],
                                         "broker": [(self.broker.proc.pid, False)]}
                if consuming:
                    parts["worker"] = [(self.children["worker"].pid, False)]
                try:
                    await asyncio.to_thread(wrk.run, binary, url, lua, WRK_CONNECTIONS, 1, self.logs / "wrk.log")
                    cpu = probes.CpuMeter(parts)
                    run = await asyncio.to_thread(wrk.run, binary, url, lua, WRK_CONNECTIONS, p.wrk_s,
                                                  self.logs / "wrk.log")
                    run["cpu_cores"] = cpu.cores()
                finally:
                    self.stop_workers()
                    self.stop("serve")
                run.update(processes=processes, worker=consuming)
                runs.append(run)
                lat = run["latency_s"]
                _log(f"wrk, serve --processes {processes}{', worker consuming' if consuming else ''}: "
                     f"{run['rps']:,.0f} req/s, p50 {ms_(lat['p50'])} ms, p99 {ms_(lat['p99'])} ms, "
                     f"non-2xx {run['non_2xx']}, socket errors {run['socket_errors']}")
        self.results["wrk"] = {"runs": runs, "connections": WRK_CONNECTIONS, "minimal": minimal}

    async def _wrk_minimal(self, binary: str, lua: Path) -> dict[str, Any]:
        """wrk against the minimal durable handler (:mod:`bench.minimal`'s webhook), one process, fresh broker."""
        await self.new_broker()
        assert self.broker is not None and self.broker.proc is not None
        self.start("minimal", [sys.executable, "-m", "bench.minimal", "webhook", "--port", str(self.ports["minimal"]),
                               "--bootstrap", self.broker.bootstrap, "--secret", self.secret], self.ports["minimal"])
        url = f"http://127.0.0.1:{self.ports['minimal']}/webhooks/whatsapp"
        try:
            await asyncio.to_thread(wrk.run, binary, url, lua, WRK_CONNECTIONS, 1, self.logs / "wrk.log")
            cpu = probes.CpuMeter({"minimal": [(self.children["minimal"].pid, False)],
                                   "broker": [(self.broker.proc.pid, False)]})
            run = await asyncio.to_thread(wrk.run, binary, url, lua, WRK_CONNECTIONS, self.plan.wrk_s,
                                          self.logs / "wrk.log")
            run["cpu_cores"] = cpu.cores()
        finally:
            self.stop("minimal")
        _log(f"wrk, minimal durable handler: {run['rps']:,.0f} req/s, p99 {ms_(run['latency_s']['p99'])} ms")
        return run

    async def pipeline(self) -> None:
        p = self.plan
        _log("end to end: fresh broker; serve, worker, fake-meta")
        from wacrm.core.settings import load

        st = load(self.env())
        self.results["settings"] = {
            "CONSUMER_FETCH_WAIT_MS": st.consumer_fetch_wait_ms,
            "CONSUMER_FETCH_MIN_BYTES": st.consumer_fetch_min_bytes,
            "BATCH_SIZE": st.batch_size, "BATCH_WAIT_MS": st.batch_wait_ms, "BATCH_LANES": st.batch_lanes,
            "TOPIC_PARTITIONS": st.topic_partitions, "WACRM_EVENT_LOOP": os.environ.get("WACRM_EVENT_LOOP", "uvloop")}
        self.ensure_fake_meta()
        await self.fresh_pipeline()
        self.results["customer"] = await self.e2e_step(p.customer_rate, p.customer_s, "cust", connections=8)
        _log(f"customer view at {p.customer_rate}/s: {_brief_e2e(self.results['customer'])}")
        steps = []
        best = None
        for rate in p.e2e_rates:
            step = await self.e2e_step(rate, p.e2e_step_s, f"e{rate}")
            steps.append(step)
            _log(f"e2e {rate}/s: {_brief_e2e(step)}")
            if _e2e_passes(step):
                best = rate
            else:
                break
        self.results["e2e"] = steps
        sustained = await self.sustain(best or max(10, p.e2e_rates[0] // 4))
        await self.budget()  # after the steps: the customers have written before, as in a running business
        await self.drain()
        await self.status_backlog()
        await self.minimal()
        await self.fresh_pipeline()  # the minimal pipeline ran on a broker of its own
        await self.soak(max(10, round((sustained or best or p.e2e_rates[0] // 4) / 4)))
        await self.customer_with_defaults()
        await self.media()

    async def budget_only(self) -> None:
        """``--only budget``: the pipeline started and its CPU budget measured, nothing else (a minute)."""
        self.ensure_fake_meta()
        await self.fresh_pipeline()
        _log("CPU budget: warm-up, every customer writes once (not judged)")
        await self.e2e_step(400, 12, "bwarm")
        await self.budget()
        await self.drain()
        await self.status_backlog()
        await self.minimal()

    async def media(self) -> None:
        """Media downloads/s and the worker's peak RSS during a 100 MB document (bench/media.py)."""
        from bench import media

        self.ensure_fake_meta()
        await self.fresh_pipeline()
        images = 50 if self.plan.name == "quick" else 300
        _log(f"media: {images} images downloaded at once, then one 100 MB document with the worker's RSS sampled")
        result = await media.measure(self.db_url, f"http://127.0.0.1:{self.ports['serve']}/webhooks/whatsapp",
                                     f"http://127.0.0.1:{self.ports['fake-meta']}", self.secret,
                                     self.children["worker"].pid, images=images, timeout_s=180)
        self.results["media"] = result
        _log(f"media: {result['downloads_per_s']:.0f} downloads/s ({result['stored']} of {images}); 100 MB "
             f"document in {result['document_seconds']:.1f}s, worker RSS {result['worker_rss_before'] / 2**20:.0f}"
             f" → {result['worker_rss_peak'] / 2**20:.0f} MiB at the peak")

    async def drain(self) -> None:
        """What the pipeline behind the webhook carries: a backlog put on the raw topic with the workers
        stopped, then the messages/s from the moment they have joined until the last reply is at the Graph
        API. The webhook and the generator do not share the cores meanwhile (they are done)."""
        rate, seconds = DRAIN_BACKLOG
        _log(f"drain: a backlog of {rate * seconds} bodies with the workers stopped, then the replies/s")
        self.stop_workers()
        fake = f"http://127.0.0.1:{self.ports['fake-meta']}"
        async with aiohttp.ClientSession() as s, s.delete(f"{fake}/__sent") as r:
            r.raise_for_status()
        load, ids_path = await self.load(self.ports["serve"], rate, seconds, tag="drain", ids=True)
        assert ids_path is not None
        expected = len(ids_path.read_text().splitlines())
        self.start_workers(self.workers)
        await self._wait_worker()
        started = time.monotonic()
        cpu = probes.CpuMeter(self.tracked())
        done = 0.0
        while time.monotonic() - started < self.plan.drain_s * 3:
            done = await self._metric("wacrm_sends_total", 'outcome="sent"')
            if done >= expected:
                break
            await asyncio.sleep(0.1)
        took = time.monotonic() - started
        cores = cpu.cores()
        self.results["drain"] = {"messages": expected, "replied": done, "seconds": took,
                                 "messages_per_s": done / max(took, 1e-9), "cpu_cores": cores,
                                 "webhook_errors": load["errors"]}
        _log(f"drain: {done:.0f} of {expected} messages answered in {took:.1f}s: {done / max(took, 1e-9):.0f}/s; "
             "CPU (cores): " + ", ".join(f"{k} {v:.2f}" for k, v in cores.items()))

    async def status_backlog(self) -> None:
        """Status processing alone: replies sent with fake-meta's statuses held back, then their statuses
        (three a reply, one a body as Meta posts them) put on the raw topic with the workers stopped; the
        statuses/s the workers apply from the moment they have joined."""
        rate, seconds = STATUS_BACKLOG
        fake = f"http://127.0.0.1:{self.ports['fake-meta']}"
        async with aiohttp.ClientSession() as s:
            async with s.post(f"{fake}/__statuses", json={"enabled": False}) as r:
                r.raise_for_status()
            try:
                async with s.delete(f"{fake}/__sent") as r:
                    r.raise_for_status()
                sent_before = await self._metric("wacrm_sends_total", 'outcome="sent"')
                _, ids_path = await self.load(self.ports["serve"], rate, seconds, tag="sback", ids=True)
                assert ids_path is not None
                expected = len(ids_path.read_text().splitlines())
                until = time.monotonic() + self.plan.drain_s
                while time.monotonic() < until:
                    if await self._metric("wacrm_sends_total", 'outcome="sent"') - sent_before >= expected:
                        break
                    await asyncio.sleep(0.25)
                async with s.get(f"{fake}/__sent") as r:
                    sent = orjson.loads(await r.read())
            finally:
                async with s.post(f"{fake}/__statuses", json={"enabled": True}) as r:
                    r.raise_for_status()
        now = int(time.time())
        bodies = [orjson.dumps(fake_meta.status_webhook(x["body"], x["phone_number_id"], x["answered"]["id"], st,
                                                         now))
                  for x in sent if "id" in (x.get("answered") or {}) for st in ("sent", "delivered", "read")]
        _log(f"status backlog: {len(bodies)} statuses of {expected} replies, put on the bus with the workers stopped")
        self.stop_workers()
        await _post_all(f"http://127.0.0.1:{self.ports['serve']}/webhooks/whatsapp", bodies, self.secret)
        self.start_workers(self.workers)
        await self._wait_worker()
        started = time.monotonic()
        cpu = probes.CpuMeter(self.tracked())
        applied = await self._wait_statuses(0.0, len(bodies), started + self.plan.drain_s * 3)
        took = time.monotonic() - started
        self.results["status_backlog"] = {"statuses": len(bodies), "applied": applied, "seconds": took,
                                          "statuses_per_s": applied / max(took, 1e-9), "cpu_cores": cpu.cores()}
        _log(f"status backlog: {applied:.0f} of {len(bodies)} applied in {took:.1f}s: "
             f"{applied / max(took, 1e-9):.0f}/s")

    async def minimal(self) -> None:
        """The minimal pipeline (:mod:`bench.minimal`) on a fresh broker and the same PostgreSQL, with its own
        fake-meta posting the statuses back: the CPU a message at the budget's rate, and a backlog's rate."""
        assert self.broker is not None
        p = self.plan
        _log("minimal pipeline: fresh broker; its webhook, consumers and fake-meta")
        self.stop_workers()
        self.stop("serve")
        await self.new_broker()
        from wacrm.core.settings import load

        partitions = load(self.env()).topic_partitions
        assert self.broker is not None
        self.start("fake-meta-minimal", self._fake_meta_cmd("fake-meta-minimal", "minimal"),
                   self.ports["fake-meta-minimal"])
        self.start("minimal", [sys.executable, "-m", "bench.minimal", "webhook", "--port", str(self.ports["minimal"]),
                               "--bootstrap", self.broker.bootstrap, "--secret", self.secret,
                               "--partitions", str(partitions)], self.ports["minimal"])
        try:
            self._start_minimal_consumers()
            await self.minimal_step(20, 3, "mwarm")
            budget = await self.minimal_step(p.budget_rate, p.budget_s, "mbudget")
            _log(f"minimal pipeline, budget: {_brief_e2e(budget)}; CPU-ms per message: "
                 + ", ".join(f"{k} {v:.2f}" for k, v in budget["cpu_ms_per_message"].items()))
            backlog = await self.minimal_backlog()
        finally:
            for name in [n for n in self.children if n.startswith("minimal")] + ["fake-meta-minimal"]:
                self.stop(name)
        self.results["minimal"] = {"budget": budget, "backlog": backlog, "consumers": self.workers,
                                   "partitions": partitions}

    def _start_minimal_consumers(self) -> None:
        assert self.broker is not None
        for n in range(self.workers):
            self.start(f"minimal-consumer-{n + 1}",
                       [sys.executable, "-m", "bench.minimal", "consumer", "--bootstrap", self.broker.bootstrap,
                        "--group", f"{self.group}-minimal", "--database-url", self.ceiling_db,
                        "--graph", f"http://127.0.0.1:{self.ports['fake-meta-minimal']}"])

    def _minimal_tracked(self) -> probes.Tracked:
        assert self.broker is not None and self.pg is not None and self.broker.proc and self.pg.proc
        return {"serve": [(self.children["minimal"].pid, False)],
                "worker": [(proc.pid, False) for n, proc in self.children.items() if n.startswith("minimal-consumer")],
                "fake-meta": [(self.children["fake-meta-minimal"].pid, False)],
                "broker": [(self.broker.proc.pid, False)], "postgres": [(self.pg.proc.pid, True)]}

    async def _minimal_counts(self, conn: asyncpg.Connection, tag: str) -> asyncpg.Record:
        return await conn.fetchrow(
            """SELECT count(*) FILTER (WHERE l.state = 'sent') AS sent, min(m.received_at) AS first_stored,
                      max(l.updated_at) FILTER (WHERE l.state = 'sent') AS last_sent,
                      (SELECT count(*) FROM minimal_statuses s JOIN minimal_ledger x ON x.wamid = s.wamid
                       WHERE x.reply_to LIKE $1) AS statuses
               FROM minimal_messages m LEFT JOIN minimal_ledger l ON l.reply_to = m.provider_message_id
               WHERE m.provider_message_id LIKE $1""", f"wamid.BENCH\\_{tag}\\_%")

    async def minimal_step(self, rate: float, seconds: float, tag: str) -> dict[str, Any]:
        """As :meth:`e2e_step`, against the minimal pipeline: every message answered once, its statuses stored."""
        fake = f"http://127.0.0.1:{self.ports['fake-meta-minimal']}"
        async with aiohttp.ClientSession() as s, s.delete(f"{fake}/__sent") as r:
            r.raise_for_status()
        cpu = probes.CpuMeter(self._minimal_tracked())
        load, ids_path = await self.load(self.ports["minimal"], rate, seconds, tag=tag, ids=True)
        assert ids_path is not None
        sent_at = {mid: float(at) for mid, _, at in (x.partition("\t") for x in ids_path.read_text().splitlines())}
        expected = len(sent_at)
        conn = await asyncpg.connect(self.ceiling_db)
        try:
            until = time.monotonic() + self.plan.drain_s
            while time.monotonic() < until:
                c = await self._minimal_counts(conn, tag)
                if c["sent"] >= expected and c["statuses"] >= STATUSES_PER_REPLY * c["sent"]:
                    break
                await asyncio.sleep(0.25)
            cores = cpu.cores()
            span = max(cpu.span, 1e-9)
            cores["generator"] = load["generator_cpu_s"] / span
            await asyncio.sleep(0.5)  # a duplicate would come right behind
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as s, \
                    s.get(f"{fake}/__sent") as r:
                sent = orjson.loads(await r.read())
            rows = await conn.fetch("SELECT provider_message_id FROM minimal_messages "
                                    "WHERE provider_message_id LIKE $1", f"wamid.BENCH\\_{tag}\\_%")
            c = await self._minimal_counts(conn, tag)
        finally:
            await conn.close()
        replies = [(x["body"]["context"]["message_id"], x["received_at"]) for x in sent
                   if "id" in (x.get("answered") or {}) and isinstance(x.get("body"), dict)]
        delivery = stats.count_delivery(sent_at, (m for m, _ in replies), {r[0]: 1 for r in rows})
        summary = stats.summarize(stats.latencies(sent_at, replies))
        return {"offered_rate": rate, "duration_s": seconds, "load": load, "messages": expected,
                "messages_per_s": expected / seconds, "cpu_cores": cores,
                "cpu_ms_per_message": {k: v * span * 1000 / max(expected, 1) for k, v in cores.items()},
                "lost": delivery.lost, "duplicated": delivery.duplicated, "replies_per_s": 0.0,
                "latency_s": {"p50": summary.p50, "p95": summary.p95, "p99": summary.p99, "max": summary.max},
                "statuses": {"expected": STATUSES_PER_REPLY * c["sent"], "applied": c["statuses"]}}

    async def minimal_backlog(self) -> dict[str, Any]:
        """The minimal pipeline's consumers from a backlog (as :meth:`drain`): messages/s from the first
        message stored to the last reply sent."""
        rate, seconds = DRAIN_BACKLOG
        for name in [n for n in self.children if n.startswith("minimal-consumer")]:
            self.stop(name)
        _, ids_path = await self.load(self.ports["minimal"], rate, seconds, tag="mdrain", ids=True)
        assert ids_path is not None
        expected = len(ids_path.read_text().splitlines())
        self._start_minimal_consumers()
        conn = await asyncpg.connect(self.ceiling_db)
        try:
            until = time.monotonic() + self.plan.drain_s * 3
            while True:
                c = await self._minimal_counts(conn, "mdrain")
                if c["sent"] >= expected or time.monotonic() >= until:
                    break
                await asyncio.sleep(0.1)
        finally:
            await conn.close()
        took = (c["last_sent"] - c["first_stored"]).total_seconds() if c["last_sent"] else math.nan
        result = {"messages": expected, "replied": c["sent"], "seconds": took,
                  "messages_per_s": c["sent"] / took if took and not math.isnan(took) else 0.0}
        _log(f"minimal pipeline, backlog: {c['sent']} of {expected} answered in {took:.1f}s: "
             f"{result['messages_per_s']:.0f}/s")
        return result

    async def budget(self) -> None:
        """The CPU each message costs every process, at a fixed rate inside what the pipeline carries, from
        customers who have written before (as in a running business): the figure each change to the hot
        path is judged by; with the SQL statements and the WAL each message cost."""
        p = self.plan
        if p.fresh_broker_per_phase:  # the customers stay in PostgreSQL
            await self.fresh_pipeline()
        _log(f"CPU budget: {p.budget_rate} bodies/s for {p.budget_s:.0f}s")
        conn = await asyncpg.connect(self.db_url)
        try:
            await conn.execute("SELECT pg_stat_statements_reset()")
            wal_before = await conn.fetchval("SELECT pg_current_wal_lsn()")
            step = await self.e2e_step(p.budget_rate, p.budget_s, "budget")
            wal_bytes = await conn.fetchval("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), $1)", wal_before)
            rows = await conn.fetch(
                """SELECT regexp_replace(query, '\\s+', ' ', 'g') AS query, calls, total_exec_time
                   FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
                   ORDER BY total_exec_time DESC""")
        finally:
            await conn.close()
        n = max(step["messages"], 1)
        step["wal_bytes_per_message"] = float(wal_bytes) / n  # PostgreSQL's write volume (every database)
        step["statements"] = [{"query": r["query"][:160], "per_message": r["calls"] / n,
                               "ms_per_message": r["total_exec_time"] / n} for r in rows]
        self.results["budget"] = step
        _log(f"CPU budget: {_brief_e2e(step)}; CPU-ms per message: "
             + ", ".join(f"{k} {v:.2f}" for k, v in step["cpu_ms_per_message"].items())
             + f"; {sum(x['per_message'] for x in step['statements']):.1f} statements and "
             f"{step['wal_bytes_per_message'] / 1024:.1f} KiB of WAL per message")
        for x in step["statements"][:15]:
            _log(f"  {x['per_message']:5.2f}/msg {x['ms_per_message']:6.3f} ms/msg  {x['query'][:110]}")

    async def fresh_pipeline(self, *, defaults: bool = False) -> None:
        """``serve`` and ``worker`` (re)started on a fresh, empty broker, joined and warmed up.

        The embedded broker keeps every message in memory and needs more CPU the more it holds,
        so each judged phase starts from an empty one, as a production Kafka with retention
        would be. ``defaults``: the worker runs with the shipped settings.
        """
        self.stop_workers()
        self.stop("serve")
        await self.new_broker()
        many = ["--processes", str(self.serve_processes)] if self.serve_processes > 1 else []
        self.start("serve", procs.python_cmd("serve", *many), self.ports["serve"])
        self.start_workers(self.workers, defaults=defaults)
        await _wait_ready(f"http://127.0.0.1:{self.ports['serve']}/readyz")
        await self._wait_worker()
        await self.e2e_step(20, 3, f"warm{self._step}", connections=8)  # contacts, plans, connections; not judged

    async def customer_with_defaults(self) -> None:
        """The latency a customer sees with the shipped settings: burst window, rate limits, pacing."""
        p = self.plan
        _log("customer view with the default settings: fresh broker, worker without the bench's overrides")
        await self.fresh_pipeline(defaults=True)
        self.results["customer_default"] = await self.e2e_step(p.customer_rate, p.customer_s, "custd",
                                                               connections=8)
        _log(f"customer view, default settings: {_brief_e2e(self.results['customer_default'])}")

    async def sustain(self, rate: float) -> float | None:
        """Hold the highest clean step's rate for ``sustain_s``, stepping down when it fails; then
        profile the worker in a short run at the rate that held. Returns that rate, if any."""
        p = self.plan
        tries: list[dict[str, Any]] = []
        held = None
        for _ in range(SUSTAIN_TRIES):
            _log(f"sustained: {rate:.0f}/s for {p.sustain_s:.0f}s")
            if p.fresh_broker_per_phase:
                await self.fresh_pipeline()
            step = await self.e2e_step(rate, p.sustain_s, f"sus{len(tries)}")
            tries.append(step)
            _log(f"sustained {rate:.0f}/s: {_brief_e2e(step)}")
            if _e2e_passes(step):
                held = rate
                break
            rate = round(rate * SUSTAIN_STEP_DOWN)
        self.results["sustained"] = tries
        await self.profile(held or rate)
        return held

    async def profile(self, rate: float) -> None:
        """py-spy on the worker for ``profile_s`` in a run of its own at ``rate`` (the profiler costs
        CPU, so it stays out of the runs that are judged)."""
        p = self.plan
        _log(f"profile: the worker at {rate:.0f}/s for {p.profile_s:.0f}s")
        if p.fresh_broker_per_phase:
            await self.fresh_pipeline()
        out = self.work / "worker-profile.txt"
        profile_at = time.monotonic() + 2
        profiler: subprocess.Popen | None = None

        async def during() -> None:
            nonlocal profiler
            if profiler is None and time.monotonic() >= profile_at:
                profiler = probes.start_profile(self.children["worker"].pid, p.profile_s, out, self.logs / "py-spy.log")
                if profiler is not None:
                    self.children["py-spy"] = profiler

        try:
            self.results["profiled"] = await self.e2e_step(rate, p.profile_s + 4, "prof", during=during)
        finally:
            if profiler is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    profiler.wait(p.profile_s + 30)
                self.stop("py-spy")
        self.results["profile"] = _profile(out, p.profile_s)

    def tracked(self) -> probes.Tracked:
        """The pipeline's processes by name: (pid, whether to count its children too)."""
        assert self.broker is not None and self.pg is not None and self.broker.proc and self.pg.proc
        out: probes.Tracked = {"serve": [(self.children["serve"].pid, True)],  # with its --processes
                               "worker": [(self.children[n].pid, False) for n in self.worker_names()],
                               "fake-meta": [(self.children["fake-meta"].pid, False)],
                               "broker": [(self.broker.proc.pid, False)],
                               "postgres": [(self.pg.proc.pid, True)]}  # the server and its backends
        return out

    async def e2e_step(self, rate: float, seconds: float, tag: str, connections: int = 32,
                       during: Any = None) -> dict[str, Any]:
        fake = f"http://127.0.0.1:{self.ports['fake-meta']}"
        async with aiohttp.ClientSession() as s, s.delete(f"{fake}/__sent") as r:
            r.raise_for_status()
        sent_before = await self._metric("wacrm_sends_total", 'outcome="sent"')
        statuses_before = await self._metric(STATUS_METRIC, every_label=True)
        cpu = probes.CpuMeter(self.tracked())
        load, ids_path = await self.load(self.ports["serve"], rate, seconds, tag=tag, connections=connections,
                                         ids=True, during=during)
        assert ids_path is not None
        sent_at: dict[str, float] = {}
        for line in ids_path.read_text().splitlines():
            mid, _, at = line.partition("\t")
            sent_at[mid] = float(at)
        expected = len(sent_at)
        drain_started = time.monotonic()
        done = 0.0
        while time.monotonic() - drain_started < self.plan.drain_s:
            done = await self._metric("wacrm_sends_total", 'outcome="sent"') - sent_before
            if done >= expected:
                break
            await asyncio.sleep(0.25)
        drain = time.monotonic() - drain_started
        statuses = await self._wait_statuses(statuses_before, STATUSES_PER_REPLY * done,
                                             drain_started + self.plan.drain_s)
        cores = cpu.cores()  # over the load and the drain: the work these messages caused
        span = max(cpu.span, 1e-9)
        cores["generator"] = load["generator_cpu_s"] / span
        cpu_ms = {name: c * span * 1000 / max(expected, 1) for name, c in cores.items()}
        await asyncio.sleep(0.5)  # a duplicate would come right behind
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as s, s.get(f"{fake}/__sent") as r:
            sent = orjson.loads(await r.read())
        conn = await asyncpg.connect(self.db_url)
        try:
            answers = await repo.answered_messages(conn, received.ledger_rows(sent))
            replies = [(message_id, x["received_at"]) for x, message_id in received.replies(sent, answers)]
            rows = await conn.fetch(
                """SELECT provider_message_id, count(*) AS n FROM messages
                   WHERE direction = 'inbound' AND provider_message_id LIKE $1 GROUP BY 1""",
                f"wamid.BENCH\\_{tag}\\_%")  # "_" escaped: in LIKE it matches any character
            # Messages without a reply of their own that a reply to a later message of the same
            # conversation covered (one reply per burst, when the burst window is on).
            unreplied = list(set(sent_at) - {m for m, _ in replies})
            together = await conn.fetchval(
                """SELECT count(*) FROM messages m JOIN conversations c ON c.id = m.conversation_id
                   WHERE m.provider_message_id = ANY($1) AND c.reply_upto_message_id >= m.id
                     AND EXISTS (SELECT 1 FROM messages o WHERE o.conversation_id = m.conversation_id
                                 AND o.direction = 'inbound' AND o.id > m.id AND o.id <= c.reply_upto_message_id
                                 AND o.provider_message_id LIKE $2)""",
                unreplied, f"wamid.BENCH\\_{tag}\\_%") if unreplied else 0
        finally:
            await conn.close()
        delivery = stats.count_delivery(sent_at, (m for m, _ in replies), {r[0]: r[1] for r in rows})
        summary = stats.summarize(stats.latencies(sent_at, replies))
        timeline = stats.timeline(sent_at, replies)
        first = min(sent_at.values(), default=0.0)
        last_reply = max((at for m, at in replies if m in sent_at), default=first)
        return {"offered_rate": rate, "duration_s": seconds, "load": load, "messages": expected,
                "messages_per_s": expected / seconds, "cpu_cores": cores, "cpu_ms_per_message": cpu_ms,
                "delivery": _asdict(delivery), "lost": delivery.lost, "duplicated": delivery.duplicated,
                "latency_s": {"p50": summary.p50, "p95": summary.p95, "p99": summary.p99, "max": summary.max},
                "replies_per_s": delivery.replied / max(last_reply - first, 1e-9), "drain_s": drain,
                "answered_together": together, "timeline": timeline,
                "statuses": {"expected": STATUSES_PER_REPLY * done, "applied": statuses}}

    async def _wait_statuses(self, before: float, expected: float, until: float) -> float:
        """The statuses the workers took since ``before``, once ``expected`` of them (or ``until``)."""
        applied = 0.0
        while True:
            applied = await self._metric(STATUS_METRIC, every_label=True) - before
            if applied >= expected or time.monotonic() >= until:
                return applied
            await asyncio.sleep(0.25)

    async def soak(self, rate: float) -> None:
        """Memory, consumer lag and CPU over ``soak_s`` at a fixed rate (a quarter of the sustained one)."""
        p = self.plan
        _log(f"soak: {rate}/s for {p.soak_s:.0f}s (memory, lag)")
        assert self.broker is not None and self.pg is not None and self.pg.proc
        lag = LagProbe(self.group, ["wa.webhook.raw", "wa.inbound", "wa.outbound", "wa.status"],
                       bootstrap_servers=self.broker.bootstrap)
        await lag.start()
        samples: list[dict[str, Any]] = []
        interval = max(1.0, p.soak_s / 60)
        started = time.monotonic()
        next_sample = started
        meter = probes.CpuMeter(self.tracked())

        async def during() -> None:
            nonlocal next_sample, meter
            now = time.monotonic()
            if now >= next_sample:
                next_sample += interval
                row: dict[str, Any] = {"t": now - started, "cpu": meter.cores() if meter.span >= 0.5 else {}}
                meter = probes.CpuMeter(self.tracked())
                for name, entries in self.tracked().items():
                    row[name] = probes.pss_tree(entries[0][0]) if name == "postgres" else probes.rss_of(entries)
                try:
                    row["lag"] = await asyncio.wait_for(lag.sample_per_topic(), 3)
                except Exception as exc:  # a missed sample is reported as missing, the soak goes on
                    row["lag"] = {"error": repr(exc)}
                samples.append(row)

        try:
            step = await self.e2e_step(rate, p.soak_s, "soak", during=during)
        finally:
            await lag.stop()
        _log(f"soak: {_brief_e2e(step)}; CPU (cores): "
             + ", ".join(f"{k} {v:.2f}" for k, v in step["cpu_cores"].items()))
        self.results["soak"] = step
        self.results["samples"] = samples
        memory = {}
        for name in ("serve", "worker", "fake-meta", "broker", "postgres"):
            series = [r[name] for r in samples if r.get(name)]
            g = stats.growth(series)
            memory[name] = {"start": g.start, "end": g.end, "peak": g.peak, "growth": g.ratio}
        self.results["memory"] = memory


    async def inbox(self, seed: inbox.Seed, load: inbox.Load) -> None:
        """The inbox phase (:mod:`bench.inbox`): a database of its own, migrated and seeded, then
        ``wacrm serve --only inbox`` on it under ``seed.agents`` people; no worker runs."""
        assert self.pg is not None
        self.stop_workers()
        for name in ("serve", "fake-meta"):  # the pipeline's phases are over; they would share the cores
            self.stop(name)
        _log(f"inbox: seeding {seed.conversations:,} conversations, {seed.messages:,} messages")
        from wacrm.storage.migrate import run_migrations

        conn = await asyncpg.connect(self.pg.url)
        try:
            await conn.execute('CREATE DATABASE "wacrm_bench_inbox"')
        finally:
            await conn.close()
        dsn = f"{self.pg.url.rsplit('/', 1)[0]}/wacrm_bench_inbox"
        await run_migrations(dsn, 10, out=lambda m: None)
        conn = await asyncpg.connect(dsn)
        try:
            users, tokens = await inbox.create_agents(conn, seed.agents)
            seeded = await inbox.seed(conn, seed, users, _log)
        finally:
            await conn.close()
        _log(f"inbox: seeded in {seeded['seconds']:.0f}s")
        port = self.ports["inbox"]
        proc = procs.spawn(procs.python_cmd("serve", "--only", "inbox"), log_path=self.logs / "inbox.log",
                           env={**self.env(), "DATABASE_URL": dsn, "PORT": str(port)}, cwd=CHECKOUT)
        self.children["inbox"] = proc
        try:
            wait_for_port(port, 60, proc)
            await _wait_ready(f"http://127.0.0.1:{port}/readyz")
            _log(f"inbox: {seed.agents} people for {load.seconds:.0f}s")
            assert self.pg.proc is not None
            metrics_url = f"http://127.0.0.1:{port}/metrics"
            before = await _text(metrics_url)
            cpu = probes.CpuMeter({"serve": [(proc.pid, False)], "postgres": [(self.pg.proc.pid, True)],
                                   "bench": [(os.getpid(), False)]})
            result = await inbox.run_load(f"http://127.0.0.1:{port}", tokens, dsn, seed, load)
            result["cpu_cores"] = cpu.cores()
            result["server"] = inbox.server_times(before, await _text(metrics_url))
        finally:
            self.stop("inbox")
        result["seed"] = {**seeded, "conversations": seed.conversations, "messages": seed.messages}
        result["aim"] = inbox.aim_met(result["routes"], result["sse"])
        self.results["inbox"] = result
        for name, r in result["routes"].items():
            _log(f"  {name}: p50 {r['p50'] * 1000:.1f} ms, p99 {r['p99'] * 1000:.1f} ms, "
                 f"{r['requests']} requests, {r['errors']} errors")
        sse = result["sse"]
        _log(f"  event after its message: p50 {sse['p50'] * 1000:.0f} ms, p99 {sse['p99'] * 1000:.0f} ms "
             f"({sse['count']} events, {sse['missed']} missed)")


def _profile(path: Path, seconds: float) -> dict[str, Any] | None:
    """The worker's profile (collapsed stacks) as shares: by package, innermost frames, our functions."""
    if not path.exists():
        return None
    lines = path.read_text(errors="replace").splitlines()
    return {"seconds": seconds,
            "samples": sum(int(x.rsplit(" ", 1)[1]) for x in lines if x.rsplit(" ", 1)[-1].isdigit()),
            "leaf": stats.top_costs(lines, 8), "packages": stats.costs_by_package(lines, 8),
            "own": stats.inclusive_costs(lines, OWN_CODE, 12)}


def _asdict(d: stats.Delivery) -> dict[str, int]:
    return {k: getattr(d, k) for k in d.__slots__}  # type: ignore[attr-defined]


def _ingest_passes(result: dict[str, Any]) -> bool:
    lat = result["latency_s"]
    return (result["errors"] == 0 and result["ok"] > 0 and lat["p99"] <= WEBHOOK_P99_BOUND_S
            and result["achieved_rps"] >= 0.95 * result["offered_rate"])


def _e2e_passes(step: dict[str, Any]) -> bool:
    p99 = step["latency_s"]["p99"]
    return (step["lost"] == 0 and step["duplicated"] == 0 and step["load"]["errors"] == 0
            and not math.isnan(p99) and p99 <= E2E_P99_BOUND_S)


def ms_(seconds: float | None) -> str:
    return "?" if seconds is None or math.isnan(seconds) else f"{seconds * 1000:.1f}"


def _brief(r: dict[str, Any]) -> str:
    lat = r["latency_s"]
    return (f"{r['achieved_rps']:.0f} rps, p50 {lat['p50'] * 1000:.1f} ms, p99 {lat['p99'] * 1000:.1f} ms, "
            f"errors {r['errors']}, generator behind {r['generator_behind_s'] * 1000:.0f} ms")


def _brief_e2e(s: dict[str, Any]) -> str:
    lat = s["latency_s"]
    return (f"{s['messages']} msgs, replies {s['replies_per_s']:.0f}/s, p50 {lat['p50'] * 1000:.0f} ms, "
            f"p99 {lat['p99'] * 1000:.0f} ms, lost {s['lost']}, dup {s['duplicated']}, "
            f"webhook errors {s['load']['errors']}")


async def _post_all(url: str, bodies: list[bytes], secret: str, concurrency: int = 32) -> None:
    """POST every body, signed, ``concurrency`` at a time; each must be accepted."""
    queue = iter(bodies)

    async def one(s: aiohttp.ClientSession) -> None:
        for raw in queue:
            async with s.post(url, data=raw, headers={"Content-Type": "application/json",
                                                      "X-Hub-Signature-256": signature.sign(secret, raw)}) as r:
                if r.status != 200:
                    raise BenchError(f"the webhook answered {r.status} to a status body: {await r.text()}")

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as s:
        await asyncio.gather(*(one(s) for _ in range(concurrency)))


async def _text(url: str) -> str:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as s, s.get(url) as r:
        return await r.text()


async def _wait_ready(url: str, timeout: float = 60) -> None:
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


def run(quick: bool, out: Path, command: str, only: str | None = None,
        seed: inbox.Seed | None = None, think_s: float | None = None, *,
        serve_processes: int | None = None, workers: int | None = None) -> int:
    """Run the whole benchmark (or ``only`` its inbox phase) and write the report to ``out``; 0 on success.
    ``seed``, ``think_s``: the inbox phase's seed and people's mean pause instead of the plan's."""
    plan = QUICK if quick else FULL
    seed = seed or (inbox.QUICK_SEED if quick else inbox.FULL_SEED)
    load = inbox.QUICK_LOAD if quick else inbox.FULL_LOAD
    if think_s is not None:
        load = dataclasses.replace(load, think_s=think_s)
    work = Path(tempfile.mkdtemp(prefix="wacrm-bench-"))
    bench = Bench(plan, work)
    if serve_processes is None or workers is None:
        from wacrm.dev import default_processes

        dev_serve, dev_workers = default_processes()
        serve_processes, workers = serve_processes or dev_serve, workers or dev_workers
    bench.serve_processes, bench.workers = serve_processes, workers
    bench.results["processes"] = {"serve": bench.serve_processes, "workers": bench.workers}
    started = time.time()

    def on_alarm(signum: int, frame: Any) -> None:
        raise _Deadline

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGALRM, on_alarm)
    signal.signal(signal.SIGTERM, on_term)
    with_inbox = only not in ("pipeline", "budget", "webhook", "media")
    bound = (INBOX_DEADLINE_S if with_inbox else 0) + (0 if only == "inbox" else plan.deadline_s)
    signal.alarm(int(bound))
    ok = False
    try:
        bench.start_storage()
        if only == "budget":
            asyncio.run(bench.budget_only())
        elif only == "media":
            asyncio.run(bench.media())
        elif only == "webhook":
            asyncio.run(bench.webhook())
            asyncio.run(bench.webhook_closed_loop())
        elif only != "inbox":
            bench.ceilings()
            asyncio.run(bench.http_ceiling())
            asyncio.run(bench.webhook())
            asyncio.run(bench.webhook_closed_loop())
            asyncio.run(bench.pipeline())
        if with_inbox:
            asyncio.run(bench.inbox(seed, load))
        ok = True
    except _Deadline:
        print(f"wacrm bench: the run overran its bound of {bound:.0f}s; stopped", file=sys.stderr)
    except (BenchError, OSError, ValueError, asyncpg.PostgresError) as exc:
        print(f"wacrm bench: {exc}", file=sys.stderr)
    except KeyboardInterrupt:
        print("wacrm bench: interrupted", file=sys.stderr)
    finally:
        signal.alarm(0)
        bench.stop_all()
    bench.results["took_s"] = time.time() - started
    bench.results["machine"] = machine(bench.results.get("postgres_version"))
    bench.results["command"] = command
    bench.results["complete"] = ok
    bench.results["only"] = only
    (work / "results.json").write_bytes(orjson.dumps(bench.results, option=orjson.OPT_INDENT_2))
    pictures_dir = Path("docs") / "benchmarks"  # relative to the report, which links them
    drawn, why = plots.draw(bench.results, out.parent / pictures_dir)
    bench.results["pictures"] = [(title, str(pictures_dir / name)) for title, name in drawn]
    if why:
        bench.results["pictures_missing"] = why
    out.write_text(report.render(bench.results))
    _log(f"report written to {out} (raw results in {work / 'results.json'})")
    if ok:
        shutil.rmtree(work / "pg", ignore_errors=True)
    else:
        print(f"wacrm bench: logs kept in {bench.logs}", file=sys.stderr)
    return 0 if ok else 1
