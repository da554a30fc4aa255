"""Pure arithmetic of the benchmark suite: no I/O, no clocks, unit-tested.

- :func:`percentile` / :func:`summarize`: latency percentiles (nearest rank, the definition
  that never reports a latency no request had).
- :func:`count_delivery`: every inbound id sent against the replies the Graph API stand-in
  recorded and the rows in PostgreSQL: lost and duplicated.
- :func:`growth`: whether a series of memory samples stays flat.
- :class:`RateSearch`: the search for the highest rate that meets a bound.
- :func:`top_costs`: the most expensive frames of a py-spy profile (collapsed stacks).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0 < q ≤ 100) of already sorted values, by nearest rank.

    The smallest value such that at least q % of the values are ≤ it. ``nan`` when empty.
    """
    if not 0 < q <= 100:
        raise ValueError(f"percentile must be in (0, 100], got {q}")
    n = len(sorted_values)
    if n == 0:
        return math.nan
    rank = math.ceil(q / 100 * n)  # 1-based
    return float(sorted_values[max(rank, 1) - 1])


@dataclass(frozen=True, slots=True)
class Summary:
    """Latency summary in seconds."""

    count: int
    p50: float
    p95: float
    p99: float
    max: float
    mean: float


def summarize(values: Iterable[float]) -> Summary:
    data = sorted(values)
    if not data:
        return Summary(0, math.nan, math.nan, math.nan, math.nan, math.nan)
    return Summary(len(data), percentile(data, 50), percentile(data, 95), percentile(data, 99), data[-1],
                   sum(data) / len(data))


@dataclass(frozen=True, slots=True)
class Delivery:
    """What became of the inbound messages the webhook accepted.

    ``lost_*``: accepted ids with no reply at the Graph API / no inbound row in PostgreSQL.
    ``duplicated_*``: ids answered more than once / stored more than once. ``unexpected``:
    replies to ids we never sent (another run's leftovers, or a bug).
    """

    accepted: int
    replied: int
    lost_replies: int
    duplicated_replies: int
    stored: int
    lost_rows: int
    duplicated_rows: int
    unexpected: int

    @property
    def lost(self) -> int:
        return max(self.lost_replies, self.lost_rows)

    @property
    def duplicated(self) -> int:
        return max(self.duplicated_replies, self.duplicated_rows)

    @property
    def clean(self) -> bool:
        return self.lost == 0 and self.duplicated == 0


def count_delivery(accepted_ids: Iterable[str], reply_ids: Iterable[str],
                   stored_rows: Mapping[str, int]) -> Delivery:
    """Count lost and duplicated messages.

    ``accepted_ids``: inbound message ids in bodies the webhook answered 200 (an id the
    generator sent twice counts once). ``reply_ids``: for each send the Graph API stand-in
    recorded, the inbound id it answers (its ledger row's ``reply_to``: a reply is not always
    quoted); repeats are duplicates.
    ``stored_rows``: inbound id → number of rows in PostgreSQL.
    """
    accepted = set(accepted_ids)
    replies = Counter(reply_ids)
    replied = sum(1 for i in accepted if replies.get(i, 0) > 0)
    dup_replies = sum(1 for i, n in replies.items() if n > 1 and i in accepted)
    stored = sum(1 for i in accepted if stored_rows.get(i, 0) > 0)
    dup_rows = sum(1 for i in accepted if stored_rows.get(i, 0) > 1)
    unexpected = sum(1 for i in replies if i not in accepted)
    return Delivery(accepted=len(accepted), replied=replied, lost_replies=len(accepted) - replied,
                    duplicated_replies=dup_replies, stored=stored, lost_rows=len(accepted) - stored,
                    duplicated_rows=dup_rows, unexpected=unexpected)


def latencies(sent_at: Mapping[str, float], received_at: Iterable[tuple[str, float]]) -> list[float]:
    """End-to-end latency per id: the first reply's arrival minus the moment the webhook was called."""
    first: dict[str, float] = {}
    for mid, at in received_at:
        if mid in sent_at and (mid not in first or at < first[mid]):
            first[mid] = at
    return [first[m] - sent_at[m] for m in first]


@dataclass(frozen=True, slots=True)
class Growth:
    """Memory at the start and the end of a soak (after warm-up), and the relative change."""

    start: float
    end: float
    peak: float

    @property
    def ratio(self) -> float:
        return (self.end - self.start) / self.start if self.start else math.nan


def growth(samples: Sequence[float], warmup_fraction: float = 0.2, window_fraction: float = 0.1) -> Growth:
    """Compare the median of the first window after warm-up with the median of the last window.

    Medians, not single samples, so one garbage-collection spike does not decide "flat".
    """
    n = len(samples)
    if n == 0:
        return Growth(math.nan, math.nan, math.nan)
    skip = min(int(n * warmup_fraction), n - 1)
    width = max(1, int(n * window_fraction))
    head = sorted(samples[skip:skip + width])
    tail = sorted(samples[max(skip, n - width):])
    return Growth(percentile(head, 50), percentile(tail, 50), max(samples[skip:]))


@dataclass
class RateSearch:
    """The highest rate that passes, by doubling from ``start`` and then bisecting.

    ``next_rate()`` gives the rate to try (``None`` when done); ``record(rate, passed)``
    reports the outcome. Stops after ``max_steps`` trials or when the bracket is narrower
    than ``resolution`` (relative).
    """

    start: float
    ceiling: float = math.inf
    max_steps: int = 8
    resolution: float = 0.1
    best: float | None = None
    failed: float | None = None
    trials: list[tuple[float, bool]] = field(default_factory=list)

    def next_rate(self) -> float | None:
        if len(self.trials) >= self.max_steps:
            return None
        if not self.trials:
            return min(self.start, self.ceiling)
        if self.failed is None:
            assert self.best is not None
            if self.best >= self.ceiling:
                return None
            return min(self.best * 2, self.ceiling)
        low = self.best or 0.0
        if self.failed - low <= self.resolution * self.failed:
            return None
        if self.best is None:  # even the first rate failed: halve
            return self.failed / 2 if self.failed / 2 >= self.start / 64 else None
        return round((low + self.failed) / 2)

    def record(self, rate: float, passed: bool) -> None:
        self.trials.append((rate, passed))
        if passed:
            self.best = rate if self.best is None else max(self.best, rate)
        else:
            self.failed = rate if self.failed is None else min(self.failed, rate)


def top_costs(collapsed: Iterable[str], n: int = 3, own: tuple[str, ...] = ()) -> list[tuple[str, float]]:
    """The ``n`` frames with the most self time in py-spy's collapsed stacks, as (frame, share).

    Each line is ``frame;frame;…;leaf count``. Idle samples (the event loop waiting in
    ``select``/``epoll``) are left out of the total, so the shares are of busy time.
    ``own``: when given, frames are charged to the innermost frame whose text contains one
    of these strings (e.g. our package folders); otherwise to the leaf.
    """
    costs: Counter[str] = Counter()
    for line in collapsed:
        line = line.strip()
        if not line:
            continue
        stack, _, count_text = line.rpartition(" ")
        try:
            count = int(count_text)
        except ValueError:
            continue
        frames = stack.split(";")
        leaf = frames[-1]
        if _idle(leaf):
            continue
        charged = leaf
        if own:
            for frame in reversed(frames):
                if any(o in frame for o in own):
                    charged = frame
                    break
        costs[charged] += count
    total = sum(costs.values())
    if total == 0:
        return []
    return [(frame, count / total) for frame, count in costs.most_common(n)]


def _idle(frame: str) -> bool:
    name = frame.split(" (", 1)[0].rsplit(".", 1)[-1]
    return name in ("select", "poll", "epoll", "<idle>") or frame.startswith("wait (threading")


def rate_passes(summary: Summary, bound_s: float, errors: int) -> bool:
    """A rate passes when nothing failed and the 99th percentile is within the bound."""
    return errors == 0 and summary.count > 0 and summary.p99 <= bound_s


def frame_package(frame: str) -> str:
    """The top-level package of a py-spy frame ``function (path/to/file.py:line)``."""
    start = frame.rfind("(")
    path = frame[start + 1:].rsplit(":", 1)[0] if start >= 0 else frame
    path = path.replace("\\", "/")
    if "site-packages/" in path:
        path = path.split("site-packages/", 1)[1]
    elif "/lib/python3" in path:
        rest = path.split("/lib/python3", 1)[1].split("/", 1)[-1]  # "asyncio/events.py"
        return "stdlib:" + rest.split("/")[0].removesuffix(".py")
    head = path.lstrip("./").split("/")[0]
    return head.removesuffix(".py") or "?"


def costs_by_package(collapsed: Iterable[str], n: int = 8) -> list[tuple[str, float]]:
    """Share of busy samples by the package of the innermost frame (where the CPU was spent)."""
    costs: Counter[str] = Counter()
    for line in collapsed:
        stack, _, count_text = line.strip().rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        leaf = stack.split(";")[-1]
        if _idle(leaf):
            continue
        costs[frame_package(leaf)] += int(count_text)
    total = sum(costs.values())
    return [(pkg, c / total) for pkg, c in costs.most_common(n)] if total else []


def inclusive_costs(collapsed: Iterable[str], own: tuple[str, ...], n: int = 8) -> list[tuple[str, float]]:
    """Share of busy samples in which each of our frames (text containing one of ``own``) was on the stack."""
    costs: Counter[str] = Counter()
    total = 0
    for line in collapsed:
        stack, _, count_text = line.strip().rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        frames = stack.split(";")
        if _idle(frames[-1]):
            continue
        count = int(count_text)
        total += count
        for frame in {_strip_line(f) for f in frames if any(o in f for o in own)}:
            costs[frame] += count
    return [(f, c / total) for f, c in costs.most_common(n)] if total else []


def _strip_line(frame: str) -> str:
    """``handle (agents/inbound.py:41)`` -> ``handle (agents/inbound.py)``: one entry per function."""
    head, sep, tail = frame.rpartition(":")
    return f"{head})" if sep and tail.rstrip(")").isdigit() else frame


def timeline(sent_at: Mapping[str, float], received_at: Iterable[tuple[str, float]],
             buckets: int = 60) -> list[dict[str, float]]:
    """Reply latency over a run: the messages grouped by when the webhook was called into at most
    ``buckets`` equal spans; each span's start (seconds from the first call), p50, p99 and count."""
    first: dict[str, float] = {}
    for mid, at in received_at:
        if mid in sent_at and (mid not in first or at < first[mid]):
            first[mid] = at
    if not first:
        return []
    start = min(sent_at.values())
    width = max((max(sent_at.values()) - start) / buckets, 1.0)
    groups: dict[int, list[float]] = {}
    for mid, at in first.items():
        groups.setdefault(min(int((sent_at[mid] - start) / width), buckets - 1), []).append(at - sent_at[mid])
    out = []
    for n in sorted(groups):
        s = summarize(groups[n])
        out.append({"t": n * width, "p50": s.p50, "p99": s.p99, "count": s.count})
    return out
