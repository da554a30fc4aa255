"""The runner under faults, with real processes: a stop in the middle of a slow batch, a transient
fault that stalls an agent, and a storm of dead letters. Each test runs its own stack on its own
embedded broker."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from conftest import Stack, eventually, own_stack

from wacrm.core import procs
from wacrm.whatsapp import simulate

pytestmark = pytest.mark.skipif(bool(os.environ.get("KAFKA_BOOTSTRAP_SERVERS")),
                                reason="needs a broker of its own: the embedded one")


def message_id(body: bytes) -> str:
    return orjson.loads(body)["entry"][0]["changes"][0]["value"]["messages"][0]["id"]


async def dlq_letters(bootstrap: str) -> list[dict[str, Any]]:
    """Every dead letter in ``wa.dlq`` so far."""
    consumer = AIOKafkaConsumer("wa.dlq", bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest",
                                enable_auto_commit=False)
    await consumer.start()
    letters: list[dict[str, Any]] = []
    try:
        while True:
            batches = await consumer.getmany(timeout_ms=1500)
            if not batches:
                return letters
            letters += [orjson.loads(r.value) for rs in batches.values() for r in rs]
    finally:
        await consumer.stop()


async def wait_exit(stack: Stack, name: str, timeout: float = 60) -> int:
    """The exit code of one of the stack's processes, once it exited by itself (or after a signal).
    One still running after ``timeout`` is killed (it is no longer the stack's to stop) and the test fails."""
    proc = stack.procs.pop(name)
    try:
        return await asyncio.to_thread(proc.wait, timeout)
    except subprocess.TimeoutExpired:
        procs.stop(proc, signal.SIGKILL, 10)
        raise AssertionError(f"{name} did not exit within {timeout:.0f}s") from None


async def answered_once(stack: Stack, db: asyncpg.Connection, ids: list[str]) -> bool:
    stored = await db.fetchval("SELECT count(*) FROM messages WHERE provider_message_id = ANY($1)", ids)
    replied = {message_id for _, message_id in await stack.answered()}
    return stored == len(ids) and set(ids) <= replied


async def test_sigterm_during_a_slow_batch_leaves_it_unacked_and_a_stall_shows(
        make_database: Callable[[], str], tmp_path: Path) -> None:
    """SIGTERM while the inbound agent is blocked on the database: the batch in hand is neither
    finished nor acked, so the next worker handles every message, exactly once. That worker, with
    the database still locked and a short statement timeout, retries in place and says so in
    ``wacrm_agent_stalled_seconds``; back to 0 once the lock is gone."""
    async with own_stack(make_database, tmp_path, STOP_GRACE_SECONDS="1") as (stack, _):
        db = await asyncpg.connect(stack.database_url)
        locker = await asyncpg.connect(stack.database_url)
        lock = locker.transaction()
        try:
            await lock.start()
            await locker.execute("LOCK TABLE conversations IN ACCESS EXCLUSIVE MODE")
            bodies = [simulate.dumps(simulate.text_body(text=f"during the stop {n}", wa_id=f"155500{n:05d}"))
                      for n in range(5)]
            ids = [message_id(b) for b in bodies]
            for body in bodies:
                assert (await stack.post(body))[0] == 200

            async def inbound_blocked() -> bool:  # the ingest agent (not the reply timer) waits, its batch in hand
                return bool(await db.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND wait_event_type = 'Lock' AND query LIKE '%conversation_key%' AND pid <> $1",
                    locker.get_server_pid()))

            await eventually(inbound_blocked, 60, "the ingest agent to block on the locked table")
            stack.procs["worker"].send_signal(signal.SIGTERM)
            assert await wait_exit(stack, "worker") == 0
            assert "ingest: stopped before finishing" in (stack.logs / "worker.log").read_text()
            assert await db.fetchval("SELECT count(*) FROM messages WHERE provider_message_id = ANY($1)", ids) == 0

            # The next worker: still locked out, each statement times out after 1 s and is retried in place.
            stack.start("worker", env_overrides={"DB_TIMEOUT_SECONDS": "1"})
            await stack.wait_worker()

            async def stalled() -> float:
                return await stack.worker_metric("wacrm_agent_stalled_seconds", 'agent="ingest"')

            first = await eventually(stalled, 90, "the stall gauge to rise while the database is locked")
            await eventually(lambda: _above(stalled, first), 60, "the stall gauge to grow while the agent waits")
            assert await stack.worker_metric("wacrm_agent_retries_total", 'agent="ingest"') >= 1
        finally:
            await lock.rollback()
            await locker.close()
        try:
            await eventually(lambda: answered_once(stack, db, ids), 90, "every message stored and answered")

            async def flowing() -> bool:
                return await stack.worker_metric("wacrm_agent_stalled_seconds", 'agent="ingest"') == 0

            await eventually(flowing, 30, "the stall gauge back to 0")
            assert await db.fetchval("SELECT count(*) FROM messages WHERE provider_message_id = ANY($1)", ids) == 5
            for mid in ids:
                assert len(await stack.replies_to(mid)) == 1
        finally:
            await db.close()


async def _above(metric: Callable[[], Any], floor: float) -> bool:
    return await metric() > floor


async def test_a_storm_of_dead_letters_stops_the_worker_and_loses_nothing(
        make_database: Callable[[], str], tmp_path: Path) -> None:
    """Undecodable values straight on ``wa.inbound``: three are dead-lettered, the fourth trips
    ``DLQ_LIMIT_CONSECUTIVE=3``: the worker exits non-zero with an ERROR line, the fourth is not
    dead-lettered. Restarted with the limit raised, every poison value is in ``wa.dlq`` and a
    message posted while the worker was down is stored and answered."""
    async with own_stack(make_database, tmp_path, DLQ_LIMIT_CONSECUTIVE="3") as (stack, _):
        producer = AIOKafkaProducer(bootstrap_servers=stack.bootstrap)
        await producer.start()
        try:
            offsets = [(await producer.send_and_wait("wa.inbound", b"not a record %d" % n, key=b"storm",
                                                     partition=0)).offset for n in range(6)]
        finally:
            await producer.stop()
        code = await wait_exit(stack, "worker", 90)
        log = (stack.logs / "worker.log").read_text()
        assert code != 0, log[-3000:]
        assert "STOPPING THE WORKER" in log and "too many dead letters" in log and "DLQ_LIMIT_CONSECUTIVE=3" in log
        poisoned = {d["source_offset"] for d in await dlq_letters(stack.bootstrap)
                    if d["source_topic"] == "wa.inbound" and d["source_partition"] == 0}
        assert poisoned == set(offsets[:3])  # the worker is gone: nothing more can be written
        body = simulate.dumps(simulate.text_body(text="after the storm", wa_id="15550077777"))
        assert (await stack.post(body))[0] == 200  # accepted while no worker runs

        stack.start("worker", env_overrides={"DLQ_LIMIT_CONSECUTIVE": "100"})
        await stack.wait_worker()

        async def all_dead_lettered() -> bool:
            return {d["source_offset"] for d in await dlq_letters(stack.bootstrap)
                    if d["source_topic"] == "wa.inbound" and d["source_partition"] == 0} >= set(offsets)

        await eventually(all_dead_lettered, 60, "every poison value in wa.dlq")
        db = await asyncpg.connect(stack.database_url)
        try:
            await eventually(lambda: answered_once(stack, db, [message_id(body)]), 60, "the message after the storm")
        finally:
            await db.close()
        assert len(await stack.replies_to(message_id(body))) == 1
        assert stack.procs["worker"].poll() is None
