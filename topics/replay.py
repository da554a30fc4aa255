"""``wacrm replay``: produce a range of a topic's records again into the same topic.

Every effect of the pipeline is idempotent in PostgreSQL, so replaying events already handled
changes nothing; replaying events that were lost or mishandled handles them now.

The pure part (which offsets a range covers, the first offset at a time) is apart from the Kafka
I/O (:class:`PartitionReader`, :func:`replay`). By time, the broker's ``offsets_for_times`` is
used when its answer checks out against the records' timestamps; the embedded broker answers 0
for any time (``reference/embedded_broker.md``), so a wrong answer falls back to a binary search
over the timestamps. ``end_offsets`` is wrong there too: a partition's end is the high-water mark
of a real fetch.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

EMPTY_FETCH_MS = 700  # a fetch that waits this long and brings nothing: the end of the partition
READ_BATCH = 500

#: the record timestamp (epoch seconds) of the first record at or after an offset; None past the end
TimestampAt = Callable[[int], Awaitable[float | None]]


# --- pure: planning ----------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Span:
    """Offsets ``start`` (inclusive) to ``end`` (exclusive) of one partition, and how ``start`` was found."""

    partition: int
    start: int
    end: int
    found_by: str = "offset"  # offset | broker (offsets_for_times) | search (timestamps)

    @property
    def size(self) -> int:
        return max(0, self.end - self.start)


def clamp(first: int, end: int, from_offset: int | None, to_offset: int | None) -> tuple[int, int]:
    """The offsets ``[start, end)`` of a partition holding ``[first, end)`` that ``--from-offset`` and the
    inclusive ``--to-offset`` select (an empty range when they select nothing)."""
    start = first if from_offset is None else min(max(first, from_offset), end)
    stop = end if to_offset is None else min(end, to_offset + 1)
    return start, max(start, stop)


async def first_at_or_after(timestamp_at: TimestampAt, lo: int, hi: int, target: float) -> int:
    """The first offset in ``[lo, hi)`` whose record is at or after ``target`` (``hi`` when none is): a binary
    search, for record timestamps that do not go back in time within a partition."""
    while lo < hi:
        mid = (lo + hi) // 2
        ts = await timestamp_at(mid)
        if ts is None or ts >= target:
            hi = mid
        else:
            lo = mid + 1
    return lo


async def answer_checks_out(timestamp_at: TimestampAt, answer: int | None, lo: int, hi: int, target: float) -> bool:
    """Whether a broker's ``offsets_for_times`` answer (None: no record at or after ``target``) is the first
    offset in ``[lo, hi)`` at or after ``target``, judged by the records' own timestamps."""
    if answer is None:
        last = await timestamp_at(hi - 1) if hi > lo else None
        return last is None or last < target
    if not lo <= answer <= hi:
        return False
    if answer < hi:
        ts = await timestamp_at(answer)
        if ts is None or ts < target:
            return False
    if answer > lo:
        before = await timestamp_at(answer - 1)
        if before is not None and before >= target:
            return False
    return True


async def offset_at(timestamp_at: TimestampAt, broker_answer: int | None, lo: int, hi: int,
                    target: float) -> tuple[int, str]:
    """The first offset in ``[lo, hi)`` at or after ``target``, and whether the ``broker`` said so or the
    ``search`` found it (when the broker's answer does not check out)."""
    if await answer_checks_out(timestamp_at, broker_answer, lo, hi, target):
        return (hi if broker_answer is None else broker_answer), "broker"
    return await first_at_or_after(timestamp_at, lo, hi, target), "search"


@dataclass(frozen=True, slots=True)
class Selection:
    """What ``wacrm replay`` was asked for: one bound of each end, by offset or by time (epoch seconds)."""

    from_offset: int | None = None
    to_offset: int | None = None  # inclusive
    from_time: float | None = None
    to_time: float | None = None  # inclusive: records up to and including this time
    key: bytes | None = None


# --- Kafka I/O --------------------------------------------------------------------------------

class PartitionReader:
    """Reads one partition of a topic with an unassigned consumer (no group, nothing committed)."""

    def __init__(self, consumer: AIOKafkaConsumer, topic: str, partition: int) -> None:
        self.consumer = consumer
        self.tp = TopicPartition(topic, partition)

    async def _fetch(self, offset: int, max_records: int) -> list[Any]:
        self.consumer.seek(self.tp, offset)
        batch = await self.consumer.getmany(self.tp, timeout_ms=EMPTY_FETCH_MS, max_records=max_records)
        return [r for r in batch.get(self.tp, []) if r.offset >= offset]

    async def bounds(self) -> tuple[int, int]:
        """The first offset and the real end: the high-water mark a fetch reports (not ``end_offsets``)."""
        first = (await self.consumer.beginning_offsets([self.tp]))[self.tp]
        await self._fetch(first, 1)
        high = self.consumer.highwater(self.tp)
        return first, max(first, high if high is not None else first)

    async def timestamp_at(self, offset: int) -> float | None:
        records = await self._fetch(offset, 1)
        return records[0].timestamp / 1000 if records else None

    async def broker_offset_for_time(self, at: float) -> int | None:
        found = await self.consumer.offsets_for_times({self.tp: int(at * 1000)})
        answer = found.get(self.tp)
        return None if answer is None else answer.offset

    async def span(self, sel: Selection) -> Span:
        first, end = await self.bounds()
        start, stop = clamp(first, end, sel.from_offset, sel.to_offset)
        found_by = "offset"
        if sel.from_time is not None and start < stop:
            broker = await self.broker_offset_for_time(sel.from_time)
            start, found_by = await offset_at(self.timestamp_at, broker, start, stop, sel.from_time)
        if sel.to_time is not None and start < stop:
            after = sel.to_time + 0.001  # the first record after the inclusive end time
            broker = await self.broker_offset_for_time(after)
            stop, _ = await offset_at(self.timestamp_at, broker, start, stop, after)
        return Span(self.tp.partition, start, stop, found_by)

    async def records(self, span: Span) -> Any:
        """The records of ``span``, in order."""
        position = span.start
        while position < span.end:
            batch = await self._fetch(position, READ_BATCH)
            if not batch:
                return  # the records are gone (retention) or the end moved back
            for r in batch:
                if r.offset >= span.end:
                    return
                yield r
                position = r.offset + 1


@dataclass(frozen=True, slots=True)
class PartitionResult:
    span: Span
    matched: int  # records in the span (with the key, if one was given), replayed unless a dry run
    produced_end: int | None = None  # the offset after the last record this replay produced


Progress = Callable[[int, int], None]  # (records read so far, records in every span)


async def replay(client: dict[str, Any], topic: str, sel: Selection, dry_run: bool,
                 progress: Progress = lambda done, total: None) -> list[PartitionResult]:
    """Produce the selected records of ``topic`` again into the same partition, with their key, value and
    headers; a dry run only counts them. Raises :class:`LookupError` for a topic the broker does not have."""
    consumer = AIOKafkaConsumer(**client, enable_auto_commit=False, group_id=None)
    await consumer.start()
    producer = None
    try:
        topics = await consumer.topics()
        if topic not in topics:
            raise LookupError(f"no topic {topic!r} on the broker")
        readers = [PartitionReader(consumer, topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        consumer.assign([r.tp for r in readers])
        spans = [await r.span(sel) for r in readers]
        total = sum(s.size for s in spans)
        if not dry_run:
            producer = AIOKafkaProducer(**client, linger_ms=5)
            await producer.start()
        results, done = [], 0
        for reader, span in zip(readers, spans, strict=True):
            matched, last = 0, None
            async for r in reader.records(span):
                done += 1
                if sel.key is None or r.key == sel.key:
                    matched += 1
                    if producer is not None:
                        last = await producer.send(topic, r.value, key=r.key, partition=span.partition,
                                                   headers=list(r.headers or ()))
                progress(done, total)
            results.append(PartitionResult(span, matched, None if last is None else (await last).offset + 1))
        return results
    finally:
        if producer is not None:
            await producer.stop()
        await consumer.stop()


async def consumed(client: dict[str, Any], group: str, topic: str, results: list[PartitionResult],
                   timeout: float, poll_s: float = 0.5) -> bool:
    """Wait until consumer ``group`` has committed past every record the replay produced (at most ``timeout``);
    whether it did."""
    ends = {TopicPartition(topic, r.span.partition): r.produced_end for r in results if r.produced_end is not None}
    if not ends:
        return True
    deadline = time.monotonic() + timeout
    admin = AIOKafkaAdminClient(**client)
    await admin.start()
    try:
        while True:
            committed = await admin.list_consumer_group_offsets(group, partitions=list(ends))
            if all((c := committed.get(tp)) is not None and c.offset >= end for tp, end in ends.items()):
                return True
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(poll_s)
    finally:
        await admin.close()


# --- what changed in PostgreSQL ---------------------------------------------------------------

#: the tables whose row counts tell what a replay changed
COUNTED = ("messages", "outbound_log", "message_status_events", "tasks")
COUNTS_SQL = "SELECT " + ", ".join(f"(SELECT count(*) FROM {t}) AS {t}" for t in COUNTED)


async def counts(conn: Any) -> dict[str, int]:
    return dict(await conn.fetchrow(COUNTS_SQL))


async def settled_counts(conn: Any, timeout: float, quiet_s: float = 3.0, poll_s: float = 0.5,
                         read: Callable[[Any], Awaitable[dict[str, int]]] = counts) -> tuple[dict[str, int], bool]:
    """The counts (:func:`counts`, or ``read``) once they have not moved for ``quiet_s`` (the pipeline
    has drained), or at ``timeout``; the flag says whether they settled."""
    deadline = time.monotonic() + timeout
    last = await read(conn)
    since = time.monotonic()
    while time.monotonic() < deadline:
        await asyncio.sleep(poll_s)
        now = await read(conn)
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return last, True
    return last, False


def changes(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """The tables whose row count moved, and by how much."""
    return {t: after[t] - before[t] for t in before if after.get(t, before[t]) != before[t]}
