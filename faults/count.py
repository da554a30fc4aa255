"""Counting a scenario's outcome: pure functions from what was posted, stored and sent to a tally.

A *unit* is what must get exactly one reply: one customer message, or one burst (several
messages of a conversation within the burst window). Replies are the Graph API requests
fake-meta took (answered with a message id, not a scripted error) whose ledger row (named in
``biz_opaque_callback_data``) answers one of the unit's messages: the bot quotes only the first
answer of an exchange, so ``context.message_id`` is not on every reply. Nothing here does I/O;
:mod:`faults.harness` gathers the inputs.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

# what reached the customer: at home in wacrm.received (`wacrm simulate` uses it too), named here as before
from wacrm.received import ledger_row, ledger_rows, replies  # noqa: F401


@dataclass(frozen=True, slots=True)
class Tally:
    """The counted outcome of one scenario. ``ambiguous_*`` are None where the ledger has no
    ``ambiguous_since`` column yet (shown as "n/a")."""

    posted: int  # customer messages the webhook acknowledged with 200
    stored: int  # of those, distinct inbound messages in ``messages``
    units: int  # what must get one reply each (messages, or bursts)
    answered_once: int
    answered_twice: int  # two replies or more
    unanswered: int
    unanswered_with_task: int  # unanswered units whose conversation has a task for a person
    dead_lettered: int
    ambiguous_settled: int | None
    ambiguous_left: int | None
    lost: int  # posted but not stored

    @property
    def unanswered_without_task(self) -> int:
        return self.unanswered - self.unanswered_with_task


@dataclass(frozen=True, slots=True)
class Expect:
    """What a scenario expects beyond "nothing lost, nothing twice"."""

    all_answered: bool = True  # every unit answered, or its conversation has a task
    no_dead_letters: bool = True  # normal traffic dead-letters nothing (poison may be dead-lettered)
    no_server_errors: bool = True  # the webhook never answered 5xx other than the 503 Meta retries


@dataclass(frozen=True, slots=True)
class Verdict:
    ok: bool
    reasons: tuple[str, ...] = field(default=())

    def __str__(self) -> str:
        return "ok" if self.ok else "FAIL: " + "; ".join(self.reasons)


def answered_messages(sent: Iterable[Mapping[str, Any]], answers: Mapping[int, str]) -> list[str]:
    """The inbound message id each send Meta took answers, one entry per reply."""
    return [message_id for _, message_id in replies(sent, answers)]


def tally(units: Sequence[Sequence[str]], stored: Iterable[str], replies_to: Iterable[str], *,
          dead_lettered: int, ambiguous_settled: int | None, ambiguous_left: int | None,
          with_task: Iterable[str] = ()) -> Tally:
    """Count ``units`` (each the message ids posted together that need one reply) against the
    ids found in ``messages`` (``stored``) and the message each reply answers (``replies_to``, one entry
    per reply: :func:`answered_messages`); ``with_task``: the
    ids of messages whose conversation has a task for a person."""
    posted = {mid for unit in units for mid in unit}
    stored_set = set(stored) & posted
    replies = Counter(replies_to)
    tasked = set(with_task)
    once = twice = none = none_tasked = 0
    for unit in units:
        n = sum(replies.get(mid, 0) for mid in set(unit))
        if n == 1:
            once += 1
        elif n > 1:
            twice += 1
        else:
            none += 1
            if any(mid in tasked for mid in unit):
                none_tasked += 1
    return Tally(posted=len(posted), stored=len(stored_set), units=len(units), answered_once=once,
                 answered_twice=twice, unanswered=none, unanswered_with_task=none_tasked,
                 dead_lettered=dead_lettered, ambiguous_settled=ambiguous_settled,
                 ambiguous_left=ambiguous_left, lost=len(posted - stored_set))


def judge(t: Tally, expect: Expect, *, server_errors: int = 0, posted_min: int = 1,
          problems: Sequence[str] = ()) -> Verdict:
    """ok when nothing posted was lost and nothing was answered twice, plus the scenario's own
    expectation and no ``problems`` it saw itself; the reasons name every failed condition."""
    reasons = []
    if t.posted < posted_min:
        reasons.append(f"only {t.posted} messages posted (the load did not get through)")
    if t.lost:
        reasons.append(f"{t.lost} lost")
    if t.answered_twice:
        reasons.append(f"{t.answered_twice} answered twice")
    if expect.all_answered and t.unanswered_without_task:
        reasons.append(f"{t.unanswered_without_task} unanswered without a task")
    if t.ambiguous_left:  # every send left in doubt is settled by a status or becomes a task in time
        reasons.append(f"{t.ambiguous_left} ambiguous sends left unsettled")
    if expect.no_dead_letters and t.dead_lettered:
        reasons.append(f"{t.dead_lettered} dead letters from normal traffic")
    if expect.no_server_errors and server_errors:
        reasons.append(f"{server_errors} webhook 5xx answers (not 503)")
    reasons.extend(problems)
    return Verdict(not reasons, tuple(reasons))
