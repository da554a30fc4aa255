"""Reading records back from the bus for a person (``wacrm trace``): no consumer group, nothing committed.

On the embedded broker ``end_offsets`` is wrong (see ``reference/embedded_broker.md``), so a scan
reads until a fetch comes back empty or the deadline passes, whichever is first.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from wacrm.topics.records import request_id_of

EMPTY_FETCH_MS = 700  # a fetch that waits this long and brings nothing: the end of the topic


@dataclass(frozen=True, slots=True)
class BusRecord:
    topic: str
    partition: int
    offset: int
    timestamp: float  # epoch seconds
    value: bytes
    request_id: str | None
    key: bytes | None = None
    headers: tuple[tuple[str, bytes], ...] = ()


def _record(r: Any) -> BusRecord:
    return BusRecord(r.topic, r.partition, r.offset, r.timestamp / 1000, r.value or b"", request_id_of(r.headers),
                     r.key, tuple((name, bytes(value or b"")) for name, value in (r.headers or ())))


async def _consumer(client: dict[str, Any], timeout: float) -> AIOKafkaConsumer:
    consumer = AIOKafkaConsumer(**client, enable_auto_commit=False, group_id=None,
                                request_timeout_ms=int(timeout * 1000) + 1000)
    await asyncio.wait_for(consumer.start(), timeout)
    return consumer


async def with_request_id(client: dict[str, Any], topic: str, request_id: str, timeout: float) -> list[BusRecord]:
    """Every record of ``topic`` whose ``wacrm-request-id`` header is ``request_id`` (read from the start)."""
    return [rec for rec in await every(client, topic, timeout) if rec.request_id == request_id]


async def every(client: dict[str, Any], topic: str, timeout: float) -> list[BusRecord]:
    """Every record of ``topic``, read from the start of each partition to its end (or ``timeout``)."""
    deadline = time.monotonic() + timeout
    consumer = await _consumer(client, timeout)
    found: list[BusRecord] = []
    try:
        await consumer.topics()  # loads the cluster's metadata
        partitions = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        if not tps:
            return []
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=EMPTY_FETCH_MS, max_records=1000)
            if not batch:
                break
            found += [_record(r) for records in batch.values() for r in records]
    finally:
        await consumer.stop()
    return found


async def at(client: dict[str, Any], topic: str, partition: int, offset: int, timeout: float) -> BusRecord | None:
    """The record at ``topic:partition@offset``, or None when it is not there (any more) within ``timeout``."""
    deadline = time.monotonic() + timeout
    consumer = await _consumer(client, timeout)
    try:
        tp = TopicPartition(topic, partition)
        consumer.assign([tp])
        consumer.seek(tp, offset)
        while time.monotonic() < deadline:
            batch = await consumer.getmany(tp, timeout_ms=EMPTY_FETCH_MS, max_records=10)
            if not batch:
                return None
            for r in batch.get(tp, []):
                if r.offset == offset:
                    return _record(r)
                if r.offset > offset:
                    return None
    finally:
        await consumer.stop()
    return None
