"""The dead-letter storm limit: when dead-lettering stops being an exception, stop the agent.

One poison event, or a few, go to ``wa.dlq`` and the stream goes on. A topic full of them
(a producer bug, a schema change, the wrong topic) means something is wrong upstream:
draining it into the DLQ would turn one fault into thousands of events for a human to
redrive. The limit (in the spirit of getsentry/arroyo's ``DlqLimit``) trips on either:

- more than ``consecutive`` dead letters in a row, or
- more than ``ratio`` of the last ``window`` events dead-lettered (judged only once the
  agent has seen ``window`` events, so a poison event among the first few never trips it).

Pure: the runner asks :meth:`DlqLimit.allows` before each dead letter it would write and
tells :meth:`DlqLimit.record` every outcome.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class DlqLimitConfig:
    consecutive: int  # the most dead letters in a row; one more trips the limit
    ratio: float  # the highest share of dead letters among the last `window` events
    window: int


class DlqLimit:
    """The counts of one agent; not shared between agents."""

    def __init__(self, config: DlqLimitConfig) -> None:
        self.config = config
        self.consecutive = 0
        self._recent: deque[bool] = deque(maxlen=config.window)
        self.in_window = 0  # dead letters among the recent events

    def allows(self) -> bool:
        """Whether one more dead letter stays within the limit."""
        if self.consecutive + 1 > self.config.consecutive:
            return False
        full = len(self._recent) == self.config.window
        if not full:
            return True
        leaving = 1 if self._recent[0] else 0
        return (self.in_window - leaving + 1) / self.config.window <= self.config.ratio

    def record(self, dead_lettered: bool) -> None:
        """Count one handled event: dead-lettered or not."""
        if len(self._recent) == self.config.window and self._recent[0]:
            self.in_window -= 1
        self._recent.append(dead_lettered)
        self.in_window += dead_lettered
        self.consecutive = self.consecutive + 1 if dead_lettered else 0

    def describe(self) -> str:
        """The counts, for the log line that says why the agent stopped."""
        return (f"{self.consecutive} dead letters in a row (limit DLQ_LIMIT_CONSECUTIVE={self.config.consecutive}), "
                f"{self.in_window} of the last {len(self._recent)} events (limit DLQ_LIMIT_RATIO="
                f"{self.config.ratio} of DLQ_LIMIT_WINDOW={self.config.window})")
