"""`wacrm replay` on the real embedded broker: by offset, by time (its offsets_for_times answers 0, so the
timestamp search is used), by key, a dry run; and a replay of all of wa.webhook.raw during live traffic
changes nothing (each message stored once, answered once)."""

from __future__ import annotations

import asyncio
import subprocess
import time
from datetime import UTC, datetime

import asyncpg
import orjson
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from conftest import Stack, eventually

from wacrm.core import procs
from wacrm.core.embedded import free_port
from wacrm.topics import RAW, scan
from wacrm.whatsapp import simulate

T0 = 1_800_000_000.0  # the test records' timestamps: T0 + i seconds for record i of a partition


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat()


def _replay(stack: Stack, *args: str, db: bool = False) -> subprocess.CompletedProcess:
    env = stack.env()
    if not db:
        env.pop("DATABASE_URL")
    return subprocess.run(procs.python_cmd("replay", *args), env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture
async def topic(stack: Stack) -> str:
    """A topic of 2 partitions: 10 records each, keys a/b alternating, record i at T0 + i."""
    name = f"replay-test-{free_port()}"
    admin = AIOKafkaAdminClient(bootstrap_servers=stack.bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, 2, 1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=stack.bootstrap, linger_ms=50)  # batches: end_offsets goes wrong
    await producer.start()
    try:
        for p in range(2):
            for i in range(10):
                await producer.send(name, f"p{p}-{i}".encode(), key=b"ab"[i % 2:i % 2 + 1], partition=p,
                                    timestamp_ms=int((T0 + i) * 1000))
        await producer.flush()
    finally:
        await producer.stop()
    return name


async def _values(stack: Stack, name: str) -> list[str]:
    return [r.value.decode() for r in sorted(await scan.every({"bootstrap_servers": stack.bootstrap}, name, 10),
                                             key=lambda r: (r.partition, r.offset))]


async def test_dry_run_counts_per_partition_and_produces_nothing(stack: Stack, topic: str) -> None:
    done = _replay(stack, "--topic", topic, "--from-offset", "3", "--to-offset", "5", "--dry-run")
    assert done.returncode == 0, done.stderr
    assert "partition 0: offsets 3..5 (3 records" in done.stdout and "partition 1: offsets 3..5" in done.stdout
    assert "would replay 6 records" in done.stdout
    assert len(await _values(stack, topic)) == 20


async def test_by_offset_produces_the_range_again(stack: Stack, topic: str) -> None:
    done = _replay(stack, "--topic", topic, "--from-offset", "8")
    assert done.returncode == 0, done.stderr
    assert "replayed 4 records" in done.stdout and "read" in done.stderr  # the progress line
    values = await _values(stack, topic)
    assert values[10:12] == ["p0-8", "p0-9"] and values[-2:] == ["p1-8", "p1-9"] and len(values) == 24


async def test_by_time_finds_the_range_by_the_records_timestamps(stack: Stack, topic: str) -> None:
    done = _replay(stack, "--topic", topic, "--from-time", _iso(T0 + 4.5), "--to-time", _iso(T0 + 6), "--dry-run")
    assert done.returncode == 0, done.stderr
    assert "offsets 5..6 (2 records, start found by search)" in done.stdout  # the broker's answer was 0
    assert "would replay 4 records" in done.stdout


async def test_by_key_replays_only_that_keys_records(stack: Stack, topic: str) -> None:
    done = _replay(stack, "--topic", topic, "--from-offset", "0", "--key", "b")
    assert done.returncode == 0, done.stderr
    assert "replayed 10 records" in done.stdout
    values = await _values(stack, topic)
    assert values[10:15] == [f"p0-{i}" for i in (1, 3, 5, 7, 9)]


def test_usage_errors_are_clear(stack: Stack) -> None:
    for args, says in ((["--topic", RAW], "--from-offset or --from-time"),
                       (["--topic", RAW, "--from-time", "yesterday"], "ISO 8601")):
        done = _replay(stack, *args)
        assert done.returncode == 2 and says in done.stderr and "Traceback" not in done.stderr
    done = _replay(stack, "--topic", "no-such-topic-here", "--from-offset", "0", "--dry-run")
    assert done.returncode == 1 and "no topic" in done.stderr


async def test_replaying_everything_during_live_traffic_changes_nothing(stack: Stack, db: asyncpg.Connection) -> None:
    ids: list[str] = []

    async def traffic(until: float) -> None:
        i = 0
        while time.monotonic() < until or i < 5:
            body = simulate.dumps(simulate.text_body(text=f"live during replay {i}", wa_id=f"155500920{i % 10:02d}"))
            ids.append(orjson.loads(body)["entry"][0]["changes"][0]["value"]["messages"][0]["id"])
            assert (await stack.post(body))[0] == 200
            i += 1
            await asyncio.sleep(0.3)

    sends_before = len(await stack.sent())
    live = asyncio.create_task(traffic(time.monotonic() + 6))
    done = await asyncio.to_thread(_replay, stack, "--topic", RAW, "--from-offset", "0", "--settle", "20", db=True)
    await live
    assert done.returncode == 0, done.stderr
    for mid in ids:
        await eventually(lambda mid=mid: stack.replies_to(mid), 60, f"the reply to {mid}")
    stored = await db.fetch("SELECT provider_message_id, count(*) n FROM messages WHERE provider_message_id = ANY($1) "
                            "GROUP BY 1", ids)
    assert sorted(r["provider_message_id"] for r in stored) == sorted(ids) and {r["n"] for r in stored} == {1}

    async def settled() -> bool:  # the replayed raw bodies are all handled: the sends stop moving
        n = len(await stack.sent())
        await asyncio.sleep(3)
        return n == len(await stack.sent())

    await eventually(settled, 60, "the sends to settle")
    for mid in ids:
        assert len(await stack.replies_to(mid)) == 1
    assert len(await stack.sent()) - sends_before == len(ids)  # no extra send for any replayed event

    again = await asyncio.to_thread(_replay, stack, "--topic", RAW, "--from-offset", "0", "--settle", "20", db=True)
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip().endswith("nothing changed"), again.stdout
