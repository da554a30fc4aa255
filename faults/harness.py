"""The system under test and the faults done to it: real processes on this machine.

A :class:`Harness` owns one embedded PostgreSQL server for the whole run (it may be stopped
or killed by a scenario and is started again). Each scenario gets a :class:`System`: a fresh
database, a fresh embedded broker with every topic, ``wacrm fake-meta``, ``wacrm serve`` and
one or more ``wacrm worker`` processes (launched by :mod:`wacrm.system`), and (when asked) the
fake LLM in this process. The fault methods signal those processes as an operator or the kernel
would. :meth:`System.count` reads the outcome from PostgreSQL, fake-meta's ``/__sent`` and the
``wa.dlq`` topic.

Blocking calls (waiting for a process to exit, starting PostgreSQL) run in a thread so the
load generator in this event loop keeps its rate. Everything started here is stopped here.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson

from faults.count import Tally, answered_messages, ledger_rows, tally
from faults.load import HOME
from harness.databases import create_database
from wacrm.core import procs
from wacrm.core.embedded import EmbeddedBroker, EmbeddedPostgres, free_port
from wacrm.orchestrator.fake_llm import FakeLlm
from wacrm.storage import ledger_send
from wacrm.storage.numbers import new_key
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
from wacrm.topics import DLQ

# The pipeline's own deliberate waiting made short, so that a scenario measures delivery, not
# patience: no burst window unless the scenario needs one, fast retries, short pauses.
BASE_ENV = {"BURST_WINDOW_SECONDS": "0", "RATE_LIMIT_PER_SECOND": "1000", "PAIR_INTERVAL_SECONDS": "0",
            "RETRY_BASE_SECONDS": "0.5", "RETRY_MULTIPLIER": "2", "PAUSE_SECONDS": "3",
            "PUBLISH_TIMEOUT_SECONDS": "2", "BROKER_SESSION_TIMEOUT": "6", "LOG_LEVEL": "INFO",
            # a send left in doubt by a kill is settled by its status or, past this, becomes a task
            "AMBIGUOUS_SETTLE_SECONDS": "20"}
IN_FLIGHT = ("queued", "sending", "retry_wait", "ambiguous")
HOME_NUMBER = HOME  # the default WHATSAPP_PHONE_NUMBER_ID and its display number
HOME_TOKEN = "faults-access-token"  # its WHATSAPP_ACCESS_TOKEN
WABA_ID = "100000000000001"
# the longest a row in doubt waits to be settled: stuck `sending` past GRAPH_TIMEOUT_SECONDS (10) + 15 s,
# then `ambiguous` for AMBIGUOUS_SETTLE_SECONDS (20), with the settle timer's second
SETTLE_WAIT_S = 60.0


class HarnessError(Exception):
    """The system could not be brought up or counted (not a verdict on the pipeline)."""


def log(msg: str) -> None:
    print(f"[faults {time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Harness:
    """One PostgreSQL server for a run, and a work directory for logs and data."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.work.mkdir(parents=True, exist_ok=True)
        self.pg = EmbeddedPostgres(work / "pg" / "data")
        self._systems = 0

    def start(self) -> None:
        self.pg.start()

    def stop(self) -> None:
        self.pg.stop()

    async def system(self, name: str, env: dict[str, str] | None = None) -> System:
        """A fresh system for scenario ``name`` (not started yet: call :meth:`System.start`)."""
        self._systems += 1
        if self.pg.proc is None or self.pg.proc.poll() is not None:
            await asyncio.to_thread(self.pg.start)
        url = await create_database(self.pg.url, f"faults_{self._systems}_{name}")
        return System(self, name, url, self.work / f"{self._systems:02d}-{name}", dict(env or {}))


class System:
    """One running wacrm for one scenario, and the faults that can be done to it."""

    def __init__(self, harness: Harness, name: str, database_url: str, work: Path, env: dict[str, str]) -> None:
        self.harness, self.name, self.database_url, self.work = harness, name, database_url, work
        self.logs = work / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.extra_env = env
        self.secret = secrets.token_hex(16)
        self.broker = EmbeddedBroker(log_path=self.logs / "tansu.log")
        self.port, self.fake_port, self.metrics_port = free_port(), free_port(), free_port()
        self.group = f"wacrm-faults-{self.port}"
        self.processes = Processes(self.logs)
        self.llm: FakeLlm | None = None
        self.letters: Counter[str] = Counter()  # wa.dlq by source topic and reason, as last counted
        self.token_key = new_key()  # TOKEN_ENCRYPTION_KEY: the added numbers' tokens are stored with it
        self.tokens: dict[str, str] = {}  # phone_number_id → the access token fake-meta accepts for it

    # --- lifetime ----------------------------------------------------------------------

    @property
    def webhook(self) -> str:
        return f"http://127.0.0.1:{self.port}/webhooks/whatsapp"

    @property
    def fake_meta(self) -> str:
        return f"http://127.0.0.1:{self.fake_port}"

    @property
    def media_dir(self) -> Path:
        return self.work / "media"

    def env(self, **more: str) -> dict[str, str]:
        """A process's environment: the system's wiring, :data:`BASE_ENV`, the scenario's, ``more``."""
        wiring = Wiring(self.database_url, self.broker.bootstrap,
                        Secrets(self.secret, "faults-verify", HOME_TOKEN, self.token_key), self.port, self.metrics_port,
                        fake_meta_url=self.fake_meta, group_id=self.group, media_dir=self.media_dir,
                        settings={**BASE_ENV, **self.extra_env})
        return wiring.environ(**more)

    async def start(self, *, workers: int = 1, llm_delay_s: float | None = None,
                    numbers: Sequence[tuple[str, str]] = ()) -> None:
        """Broker and topics, fake-meta (and the fake LLM), serve and ``workers`` workers, joined.
        ``numbers``: business numbers added (``wacrm numbers add``) beside the environment's one, each
        with a token of its own that fake-meta checks, as it checks the environment's."""
        await asyncio.to_thread(self.broker.start)
        await create_topics_on(self.broker.bootstrap)
        if llm_delay_s is not None:
            await self._start_llm(llm_delay_s)
        # fake-meta posts Meta's signed sent/delivered/read statuses back to our webhook, as Meta does:
        # they settle sends whose answer never came (ambiguous) and move messages forward
        self.tokens = {HOME_NUMBER[0]: HOME_TOKEN} if numbers else {}
        self.tokens |= {number: f"faults-{number}-{secrets.token_hex(12)}" for number, _ in numbers}
        checks = [f"--token={number}={value}" for number, value in self.tokens.items()]
        self.spawn("fake-meta", fake_meta_cmd(self.fake_port, self.webhook, "--app-secret", self.secret, *checks),
                   self.fake_port)
        self.spawn("serve", serve_cmd(), self.port)
        await self._wait_ready()
        for number, _ in numbers:
            await self.add_number(number, self.tokens[number])
        for i in range(workers):
            await self.start_worker(i)

    async def _start_llm(self, delay_s: float) -> None:
        self.llm = FakeLlm(api_key="faults-llm-key")
        self.llm.default_delay = delay_s
        await self.llm.start()
        defaults = Path(__file__).parents[1] / "orchestrator" / "default_rules.json"
        rules = json.loads(defaults.read_text())
        rules["llm"].update(timeout_seconds=max(8.0, delay_s * 3))
        path = self.work / "rules.json"
        path.write_text(json.dumps(rules))
        self.extra_env.update(RULES_FILE=str(path), LLM_API_BASE_URL=self.llm.base_url,
                              LLM_API_KEY="faults-llm-key", LLM_MODEL="faults-model")

    def spawn(self, name: str, cmd: list[str], port: int | None = None,
              env: dict[str, str] | None = None) -> subprocess.Popen:
        return self.processes.start(name, cmd, self.env(**(env or {})), port=port)

    @staticmethod
    def worker_name(i: int) -> str:
        return "worker" if i == 0 else f"worker{i + 1}"

    async def start_worker(self, i: int = 0, *, group: str | None = None, wait: bool = True) -> None:
        """Worker ``i`` (0 has the metrics port; the others none); waits until it holds partitions
        when it is worker 0 and ``wait``."""
        name = self.worker_name(i)
        env = {"WORKER_METRICS_PORT": "0"} if i else {}
        if group:
            env["KAFKA_GROUP_ID"] = group
        self.spawn(name, worker_cmd(), env=env)
        if i == 0 and wait:
            await self.wait_worker()

    async def wait_worker(self, timeout: float = 120) -> None:
        try:
            await wait_ready(self.processes, workers=[metrics_url(self.metrics_port)], watch=["worker"],
                             timeout=timeout)
        except LaunchError as exc:
            raise HarnessError(f"the worker did not join its group: {exc}") from None

    async def _wait_ready(self, timeout: float = 60) -> None:
        try:
            await wait_ready(self.processes, readyz=f"http://127.0.0.1:{self.port}/readyz", watch=["serve"],
                             timeout=timeout)
        except LaunchError as exc:
            raise HarnessError(f"wacrm serve not ready: {exc}") from None

    async def stop(self) -> None:
        await asyncio.to_thread(self.processes.stop_all, 30)
        if self.broker.proc is not None and self.broker.proc.poll() is None:
            os.kill(self.broker.proc.pid, signal.SIGCONT)  # a paused broker cannot take its SIGTERM
        await asyncio.to_thread(self.broker.stop)
        if self.llm is not None:
            await self.llm.stop()

    async def stop_child(self, name: str, sig: int = signal.SIGTERM, timeout: float = 30) -> int | None:
        return await asyncio.to_thread(self.processes.stop, name, sig, timeout)

    async def add_number(self, number: str, token: str) -> None:
        """``wacrm numbers add NUMBER`` with ``token`` on standard input, as an operator does."""
        proc = await asyncio.create_subprocess_exec(
            *procs.python_cmd("numbers", "add", number, "--waba-id", WABA_ID), env=self.env(),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        _, err = await asyncio.wait_for(proc.communicate(token.encode() + b"\n"), 60)
        if proc.returncode != 0:
            raise HarnessError(f"wacrm numbers add {number}: exit {proc.returncode}: {err.decode()[-500:]}")

    # --- faults ------------------------------------------------------------------------

    async def kill_worker(self, i: int = 0, sig: int = signal.SIGTERM) -> None:
        """Stop worker ``i`` with ``sig`` (SIGTERM: a graceful stop; SIGKILL: a crash) and wait for it."""
        await self.stop_child(self.worker_name(i), sig, 60)

    async def postgres_stop(self) -> None:
        """A clean stop (fast shutdown: clients rolled back and disconnected)."""
        await asyncio.to_thread(self.harness.pg.stop)

    async def postgres_crash(self) -> None:
        """kill -9 of the postmaster and every backend: every connection drops, nothing is checkpointed."""
        pg = self.harness.pg
        assert pg.proc is not None
        tree = [pg.proc.pid, *procs.children(pg.proc.pid)]
        for pid in tree:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        await asyncio.to_thread(pg.proc.wait)
        await asyncio.to_thread(_wait_gone, tree, 30)

    async def postgres_start(self) -> None:
        await asyncio.to_thread(self.harness.pg.start, 120)

    def media_store_away(self) -> None:
        """The media directory cannot be written: a file where it was (root ignores permissions)."""
        self.media_dir.mkdir(parents=True, exist_ok=True)
        self.media_dir.rename(self.media_dir.with_name("media.away"))
        self.media_dir.write_text("the media store is away")

    def media_store_back(self) -> None:
        self.media_dir.unlink()
        self.media_dir.with_name("media.away").rename(self.media_dir)

    def broker_pause(self) -> None:
        assert self.broker.proc is not None
        os.kill(self.broker.proc.pid, signal.SIGSTOP)

    def broker_resume(self) -> None:
        assert self.broker.proc is not None
        os.kill(self.broker.proc.pid, signal.SIGCONT)

    async def meta(self, path: str, payload: Any) -> None:
        """A control request to fake-meta (``/__fail``, ``/__script``)."""
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as s, \
                s.post(f"{self.fake_meta}{path}", data=orjson.dumps(payload)) as r:
            if r.status != 200:
                raise HarnessError(f"fake-meta {path}: {r.status} {await r.text()}")

    # --- reading the outcome -----------------------------------------------------------

    async def sent(self) -> list[dict[str, Any]]:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as s, \
                s.get(f"{self.fake_meta}/__sent") as r:
            return orjson.loads(await r.read())

    async def _db(self) -> asyncpg.Connection:
        return await asyncpg.connect(self.database_url, timeout=30)

    async def progress(self, ids: Sequence[str]) -> tuple[int, int, set[str], int]:
        """(stored of ``ids``, ledger rows still in flight, ids replied to, requests fake-meta took)."""
        conn = await self._db()
        try:
            stored = await conn.fetchval("SELECT count(*) FROM messages WHERE direction = 'inbound' "
                                         "AND provider_message_id = ANY($1)", list(ids))
            busy = await conn.fetchval("SELECT count(*) FROM outbound_log WHERE state = ANY($1)", list(IN_FLIGHT))
            sent = await self.sent()
            replied = await self.replies_to(conn, sent)
        finally:
            await conn.close()
        return stored, busy, set(replied), len(sent)

    async def replies_to(self, conn: asyncpg.Connection, sent: list[dict[str, Any]]) -> list[str]:
        """The message each send Meta took answers, from the ledger rows the sends name."""
        return answered_messages(sent, await ledger_send.answered_messages(conn, ledger_rows(sent)))

    async def drain(self, units: Sequence[Sequence[str]], timeout: float, quiet_s: float = 4.0,
                    stall_s: float = 20.0) -> float:
        """Wait until the system is quiet, or ``timeout``; returns the seconds it took.

        Quiet: fake-meta took no new request for ``quiet_s``, and either every posted message is
        stored, every unit answered and no ledger row is in flight (queued, sending, waiting to
        retry), or nothing has moved for ``stall_s`` while the worker group has no consumer lag (every
        input consumed and committed: what is missing now will not come, and a row still in flight
        is stuck; :meth:`in_flight` names them).
        """
        started = time.monotonic()
        ids = [m for u in units for m in u]
        last_sent, last_change = -1, time.monotonic()
        last_progress: tuple[int, int, int] = (-1, -1, -1)
        progress_at = time.monotonic()
        while time.monotonic() - started < timeout:
            stored, busy, replied, n_sent = await self.progress(ids)
            now = time.monotonic()
            if n_sent != last_sent:
                last_sent, last_change = n_sent, now
            if (stored, len(replied), busy) != last_progress:
                last_progress, progress_at = (stored, len(replied), busy), now
            quiet = now - last_change >= quiet_s
            done = stored == len(ids) and all(any(m in replied for m in u) for u in units)
            if quiet and busy == 0 and done:
                break
            # rows in doubt wait for the settle timer: give them its bound before calling them stuck
            if quiet and now - progress_at >= stall_s + (SETTLE_WAIT_S if busy else 0):
                lag = await self.lag()
                if lag is not None and not any(lag.values()):
                    log(f"  nothing moved for {now - progress_at:.0f}s with no consumer lag: "
                        f"{len(ids) - stored} posted messages not stored, {busy} ledger rows left in flight")
                    break
            await asyncio.sleep(min(5.0, 1.0 + n_sent / 10_000))  # /__sent grows: poll it less often
        return time.monotonic() - started

    async def number_state(self, number: str) -> str | None:
        """A business number's state (active, token_rejected, disabled), ``None`` when it has no row."""
        conn = await self._db()
        try:
            return await conn.fetchval("SELECT state FROM business_numbers WHERE phone_number_id = $1", number)
        finally:
            await conn.close()

    async def in_flight(self) -> dict[str, int]:
        """Ledger rows not settled (queued, sending, waiting to retry, ambiguous) by state."""
        conn = await self._db()
        try:
            rows = await conn.fetch("SELECT state, count(*) AS n FROM outbound_log WHERE state = ANY($1) "
                                    "GROUP BY 1 ORDER BY 1", list(IN_FLIGHT))
            return {r["state"]: int(r["n"]) for r in rows}
        finally:
            await conn.close()

    async def stored(self, ids: Sequence[str]) -> set[str]:
        """Which of ``ids`` are inbound messages in ``messages``."""
        conn = await self._db()
        try:
            return {r[0] for r in await conn.fetch("SELECT provider_message_id FROM messages WHERE "
                                                   "direction = 'inbound' AND provider_message_id = ANY($1)",
                                                   list(ids))}
        finally:
            await conn.close()

    async def count(self, units: Sequence[Sequence[str]]) -> Tally:
        ids = [m for u in units for m in u]
        conn = await self._db()
        try:
            stored = [r[0] for r in await conn.fetch(
                "SELECT provider_message_id FROM messages WHERE direction = 'inbound' "
                "AND provider_message_id = ANY($1)", ids)]
            with_task = [r[0] for r in await conn.fetch(
                "SELECT m.provider_message_id FROM messages m WHERE m.provider_message_id = ANY($1) "
                "AND EXISTS (SELECT 1 FROM tasks t WHERE t.conversation_id = m.conversation_id)", ids)]
            settled, left = await ambiguous(conn)
            replied = await self.replies_to(conn, await self.sent())
        finally:
            await conn.close()
        letters = self.letters = await self.dead_letters()
        return tally(units, stored, replied, dead_lettered=sum(letters.values()),
                     ambiguous_settled=settled, ambiguous_left=left, with_task=with_task)

    async def lag(self) -> dict[str, int] | None:
        """The worker group's consumer lag per input topic (None when it cannot be read): 0 with
        messages lost means the committed offsets passed events that were never handled."""
        from wacrm.topics import INBOUND, OUTBOUND, RAW, STATUS
        from wacrm.topics.lag import LagProbe

        probe = LagProbe(self.group, [RAW, INBOUND, OUTBOUND, STATUS], bootstrap_servers=self.broker.bootstrap)
        try:
            await asyncio.wait_for(probe.start(), 20)
            return await asyncio.wait_for(probe.sample_per_topic(), 20)
        except Exception as exc:  # a diagnostic only: the counts stand without it
            log(f"  (consumer lag not readable: {type(exc).__name__}: {exc})")
            return None
        finally:
            await probe.stop()

    async def ambiguous_now(self) -> int:
        """Ledger rows in state ``ambiguous`` or ever marked so, now (for the count per kill)."""
        conn = await self._db()
        try:
            has_since = await _has_column(conn, "outbound_log", "ambiguous_since")
            where = "ambiguous_since IS NOT NULL OR state = 'ambiguous'" if has_since else "state = 'ambiguous'"
            return int(await conn.fetchval(f"SELECT count(*) FROM outbound_log WHERE {where}"))
        finally:
            await conn.close()

    async def dead_letters(self, timeout: float = 20) -> Counter[str]:
        """Records in ``wa.dlq`` from offset 0 by source topic and reason (read until two empty
        polls in a row)."""
        from aiokafka import AIOKafkaConsumer

        consumer = AIOKafkaConsumer(DLQ, bootstrap_servers=self.broker.bootstrap, group_id=None,
                                    enable_auto_commit=False, auto_offset_reset="earliest",
                                    max_partition_fetch_bytes=8 * 1024 * 1024)
        await consumer.start()
        found: Counter[str] = Counter()
        empty = 0
        deadline = time.monotonic() + timeout
        try:
            while empty < 2 and time.monotonic() < deadline:
                batch = await consumer.getmany(timeout_ms=1500)
                records = [r for rs in batch.values() for r in rs]
                for r in records:
                    found[_letter_kind(r.value)] += 1
                empty = 0 if records else empty + 1
        finally:
            await consumer.stop()
        return found


def _letter_kind(value: bytes | None) -> str:
    try:
        letter = orjson.loads(value or b"")
        return f"{letter.get('source_topic', '?')}: {letter.get('reason', '?')}"
    except (orjson.JSONDecodeError, AttributeError):
        return "not a DeadLetter record"


async def _has_column(conn: asyncpg.Connection, table: str, column: str) -> bool:
    return bool(await conn.fetchval("SELECT EXISTS (SELECT 1 FROM information_schema.columns "
                                    "WHERE table_name = $1 AND column_name = $2)", table, column))


async def ambiguous(conn: asyncpg.Connection) -> tuple[int | None, int | None]:
    """(settled, left) from ``outbound_log``; (None, None) before migration 0006 adds ``ambiguous_since``."""
    if not await _has_column(conn, "outbound_log", "ambiguous_since"):
        return None, None
    row = await conn.fetchrow(
        "SELECT count(*) FILTER (WHERE ambiguous_since IS NOT NULL AND state <> 'ambiguous') AS settled, "
        "count(*) FILTER (WHERE state = 'ambiguous') AS left FROM outbound_log")
    return int(row["settled"]), int(row["left"])




def _wait_gone(pids: list[int], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = []
        for pid in pids:
            try:
                os.kill(pid, 0)
                alive.append(pid)
            except ProcessLookupError:
                pass
        if not alive:
            return
        time.sleep(0.1)
