"""The pure part of ``wacrm replay``: which offsets a range covers and the first offset at a time,
both when the broker's ``offsets_for_times`` is right (Kafka) and when it answers 0 (the embedded broker)."""

from __future__ import annotations

import pytest

from wacrm.topics.replay import clamp, first_at_or_after, offset_at

# offset -> record timestamp (seconds) of a partition holding offsets 10..19; two records share t=104
TIMES = {10: 100.0, 11: 101.0, 12: 102.0, 13: 103.0, 14: 104.0, 15: 104.0, 16: 106.0, 17: 107.0, 18: 108.0, 19: 109.0}


class Partition:
    def __init__(self) -> None:
        self.looked_at: list[int] = []

    async def timestamp_at(self, offset: int) -> float | None:
        self.looked_at.append(offset)
        return next((TIMES[o] for o in sorted(TIMES) if o >= offset), None)


def test_clamp_selects_the_inclusive_offset_range_within_the_partition() -> None:
    assert clamp(10, 20, None, None) == (10, 20)
    assert clamp(10, 20, 12, 15) == (12, 16)
    assert clamp(10, 20, 0, 100) == (10, 20)
    assert clamp(10, 20, 25, None) == (20, 20)
    assert clamp(10, 20, 15, 12) == (15, 15)


@pytest.mark.parametrize(("target", "expected"), [(99.0, 10), (100.0, 10), (100.5, 11), (104.0, 14), (105.0, 16),
                                                  (109.0, 19), (109.5, 20)])
async def test_search_finds_the_first_record_at_or_after_the_time(target: float, expected: int) -> None:
    p = Partition()
    assert await first_at_or_after(p.timestamp_at, 10, 20, target) == expected
    assert len(p.looked_at) <= 4  # a binary search: log2(10) fetches, not a scan


async def test_a_right_broker_answer_is_used() -> None:
    p = Partition()
    assert await offset_at(p.timestamp_at, 16, 10, 20, 105.0) == (16, "broker")
    assert await offset_at(p.timestamp_at, None, 10, 20, 200.0) == (20, "broker")


@pytest.mark.parametrize("target", [100.5, 104.0, 105.0, 109.5])
async def test_the_embedded_brokers_zero_falls_back_to_the_search(target: float) -> None:
    p = Partition()
    expected = await first_at_or_after(Partition().timestamp_at, 10, 20, target)
    assert await offset_at(p.timestamp_at, 0, 10, 20, target) == (expected, "search")


async def test_a_broker_answer_one_too_late_is_not_trusted() -> None:
    # 15 has the time asked for, but 14 has it too: the first is 14
    assert await offset_at(Partition().timestamp_at, 15, 10, 20, 104.0) == (14, "search")
    # None ("nothing at or after") while 19 is after it
    assert await offset_at(Partition().timestamp_at, None, 10, 20, 108.5) == (19, "search")
