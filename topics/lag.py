"""Consumer lag: per topic and partition, the log's end minus the group's committed offset.

The end is the high-water mark a fetch returns, which is right on Kafka and on the embedded
broker alike; ``end_offsets`` (ListOffsets) is wrong on the embedded broker as soon as producers
batch (it answers the last batch's base offset + 1, see the embedded-broker reference). When a
partition's fetch brings no high-water mark, ``end_offsets`` stands in and the figure is marked
unreliable instead of being passed off as right. The probe reads at most a few bytes a partition
from the committed offset, and nothing between samples; it joins no group and commits nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class PartitionLag:
    topic: str
    partition: int
    committed: int
    end: int
    reliable: bool  # False: the end is ``end_offsets``' answer, not a fetched high-water mark

    @property
    def lag(self) -> int:
        return max(0, self.end - self.committed)


def lag_of(committed: Mapping[Any, int], highwater: Mapping[Any, int | None],
           end_offsets: Mapping[Any, int]) -> list[PartitionLag]:
    """Per partition (``TopicPartition``-like keys): the fetched high-water mark where there is one,
    else ``end_offsets``' answer, marked unreliable."""
    out = []
    for tp in sorted(set(committed) | set(highwater) | set(end_offsets), key=lambda t: (t.topic, t.partition)):
        hw = highwater.get(tp)
        end, reliable = (hw, True) if hw is not None else (end_offsets.get(tp, 0), False)
        out.append(PartitionLag(tp.topic, tp.partition, committed.get(tp, 0), end, reliable))
    return out


def per_topic(lags: list[PartitionLag]) -> dict[str, int]:
    total: dict[str, int] = {}
    for p in lags:
        total[p.topic] = total.get(p.topic, 0) + p.lag
    return total


class LagProbe:
    """Samples a group's lag on ``topics`` (``client``: aiokafka connection arguments)."""

    def __init__(self, group: str, topics: list[str], **client: Any) -> None:
        self.group, self.topics, self._client = group, topics, client
        self._consumer: Any = None
        self._admin: Any = None
        self._tps: list[Any] = []

    async def start(self) -> None:
        from aiokafka import AIOKafkaConsumer, TopicPartition
        from aiokafka.admin import AIOKafkaAdminClient

        self._consumer = AIOKafkaConsumer(group_id=None, enable_auto_commit=False, max_partition_fetch_bytes=1024,
                                          fetch_max_wait_ms=50, auto_offset_reset="earliest", **self._client)
        await self._consumer.start()
        self._admin = AIOKafkaAdminClient(**self._client)
        await self._admin.start()
        for topic in self.topics:
            for p in sorted(self._consumer.partitions_for_topic(topic) or ()):
                self._tps.append(TopicPartition(topic, p))
        self._consumer.assign(self._tps)
        self._consumer.pause(*self._tps)

    async def sample(self) -> list[PartitionLag]:
        raw = await self._admin.list_consumer_group_offsets(self.group, partitions=self._tps)
        committed = {tp: (om.offset if om is not None and om.offset >= 0 else 0) for tp, om in raw.items()}
        for tp in self._tps:
            self._consumer.seek(tp, committed.get(tp, 0))
        self._consumer.resume(*self._tps)
        await self._consumer.getmany(*self._tps, timeout_ms=300, max_records=1)
        self._consumer.pause(*self._tps)  # no background fetching between samples: it would load the broker
        highwater = {tp: self._consumer.highwater(tp) for tp in self._tps}
        missing = [tp for tp, hw in highwater.items() if hw is None]
        ends = await self._consumer.end_offsets(missing) if missing else {}
        return lag_of(committed, highwater, ends)

    async def sample_per_topic(self) -> dict[str, int]:
        return per_topic(await self.sample())

    async def stop(self) -> None:
        for client in (self._consumer, self._admin):
            if client is not None:
                with contextlib.suppress(Exception):  # shutting down a probe: nothing to do about it
                    await asyncio.wait_for(client.stop() if client is self._consumer else client.close(), 5)
