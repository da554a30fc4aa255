"""Rate limits with a fake clock: the number's token bucket and per-recipient pair pacing."""

from __future__ import annotations

import pytest

from wacrm.agents.ratelimit import PairPacer, TokenBucket


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_token_bucket_allows_a_burst_then_spaces_sends() -> None:
    clock = Clock()
    bucket = TokenBucket(rate=80, burst=80, clock=clock)
    assert [bucket.reserve() for _ in range(80)] == [0.0] * 80
    assert bucket.reserve() == pytest.approx(1 / 80)
    assert bucket.reserve() == pytest.approx(2 / 80)
    clock.t += 1.0
    assert bucket.reserve() == 0.0


def test_pair_pacing_is_per_recipient() -> None:
    clock = Clock()
    pacer = PairPacer(interval_s=6, burst=3, clock=clock)
    assert [pacer.try_send("+1") for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = pacer.try_send("+1")
    assert wait == pytest.approx(6.0)
    assert pacer.try_send("+2") == 0.0  # another recipient is not held up
    clock.t += 6.0
    assert pacer.try_send("+1") == 0.0
    assert pacer.try_send("+1") > 0


def test_pacing_off_and_memory_bounded() -> None:
    assert PairPacer(interval_s=0, burst=1).try_send("+1") == 0.0
    pacer = PairPacer(interval_s=6, burst=1, max_recipients=2, clock=Clock())
    for r in ("+1", "+2", "+3"):
        pacer.try_send(r)
    assert pacer.try_send("+1") == 0.0  # forgotten, so it starts afresh
