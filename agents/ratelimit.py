"""Rate limits of the Graph API, kept per worker process.

- per business number: a token bucket (``RATE_LIMIT_PER_SECOND``, bursts of one second's worth);
  a send waits for its token — the limit is for the whole number, so waiting holds up nothing
  that could go faster;
- per recipient: pacing for Meta's pair limit (``PAIR_INTERVAL_SECONDS`` apart, bursts of
  ``PAIR_BURST``); a send that would break it is not waited for in the stream but moved to a
  retry topic, so other recipients go on.

With several workers each keeps its own buckets: set the rate per worker accordingly.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable


class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` saved up."""

    def __init__(self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate, self.burst, self._clock = rate, burst, clock
        self._tokens, self._at = burst, clock()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now

    def reserve(self) -> float:
        """Take a token; return how long to wait before using it (0: now)."""
        self._refill()
        self._tokens -= 1
        return 0.0 if self._tokens >= 0 else -self._tokens / self.rate

    def available_in(self) -> float:
        """Seconds until a token is free, without taking one."""
        self._refill()
        return 0.0 if self._tokens >= 1 else (1 - self._tokens) / self.rate

    def take_if_free(self) -> bool:
        if self.available_in() == 0.0:
            self._tokens -= 1
            return True
        return False


class PairPacer:
    """One bucket per recipient (least recently used forgotten past ``max_recipients``)."""

    def __init__(self, interval_s: float, burst: int, max_recipients: int = 100_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._interval, self._burst, self._max, self._clock = interval_s, burst, max_recipients, clock
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def wait_s(self, recipient: str) -> float:
        """Seconds before this recipient may get another message (0: now), without counting a send."""
        if self._interval <= 0:
            return 0.0
        bucket = self._buckets.get(recipient)
        return 0.0 if bucket is None else bucket.available_in()

    def try_send(self, recipient: str) -> float:
        """0 and the send counts, or the seconds to wait before this recipient may get another message."""
        if self._interval <= 0:
            return 0.0
        bucket = self._buckets.get(recipient)
        if bucket is None:
            bucket = self._buckets[recipient] = TokenBucket(1 / self._interval, self._burst, self._clock)
            if len(self._buckets) > self._max:
                self._buckets.popitem(last=False)
        self._buckets.move_to_end(recipient)
        return 0.0 if bucket.take_if_free() else bucket.available_in()
