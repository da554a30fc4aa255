"""The sender's decisions, apart from their effects: pure functions of what was read, no I/O.

- :func:`decide`: what to do with one intent before any Graph API call (send, skip, drop as
  stale, park, wait behind an earlier reply, pace, the window path, refuse);
- :func:`route`: what to do after a Graph API error (retry, dead-letter, ambiguous, pause,
  the window path), from :func:`core.errors.classify` and the error's own flags;
- :func:`window_path`: the one home of the 24-hour-window rule (re-engagement, Meta code
  131047): the configured template replaces a free-form intent, else a person decides.
  The sender (window closed at send time, or a synchronous 131047) and the status agent
  (an asynchronous ``failed`` status with 131047) both call it.

The agents read rows and checks, call these, and carry out what they return.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, ClassVar

from wacrm.core.errors import Next, classify
from wacrm.orchestrator.rules import Template
from wacrm.storage.ledger import WAITING, Earlier
from wacrm.storage.ledger_send import LedgerRow, SendChecks
from wacrm.storage.replies import template_body
from wacrm.topics.records import SendIntent
from wacrm.whatsapp.graph import REENGAGEMENT, GraphClient
from wacrm.whatsapp.limits import TEXT_MAX_CHARS, window_open

__all__ = [
    "Checks",
    "Earlier",
    "Row",
    "callback_data",
    "decide",
    "ledger_id",
    "route",
    "template_intent",
    "window_path",
]

UNDELIVERABLE = 131026  # Meta: the recipient cannot get it (mostly: the number is not on WhatsApp)
BEHIND_RECHECK = timedelta(seconds=1)  # a reply behind one in flight (or not yet published) looks again after this
# A parked reply looks again after this at the latest: the pause or the earlier reply it waits for may end
# (a new token resumes a held number) between the read that parked it and the park's write.
PARK_RECHECK = timedelta(seconds=30)
CALLBACK_PREFIX = "ol:"  # biz_opaque_callback_data = "ol:{outbound_log id}": Meta echoes it in the statuses


def callback_data(outbound_log_id: int) -> str:
    """The ``biz_opaque_callback_data`` that names a ledger row in every send (and its statuses)."""
    return f"{CALLBACK_PREFIX}{outbound_log_id}"


def payload(graph: GraphClient, outbound_log_id: int, intent: SendIntent,
            media_id: str | None = None) -> dict[str, Any]:
    """The Graph API request body for a ledger row's stored intent, naming the row in
    ``biz_opaque_callback_data``; raises :class:`whatsapp.graph.InvalidRecipient`. ``media_id``: the
    upload a media intent is sent by (None: the message's shape without it, for the record)."""
    callback = callback_data(outbound_log_id)
    if intent.kind == "media":
        m = intent.media or {}
        return graph.media_payload(intent.to, str(m.get("type")), media_id, caption=m.get("caption"),
                                   filename=m.get("filename"), callback_data=callback)
    if intent.kind == "template":
        t = intent.template or {}
        if "components" in t:  # built from the catalogue (header, body and buttons, positional or named)
            body = graph.template_payload(intent.to, t["name"], t["language"], (), callback_data=callback)
            if t["components"]:
                body["template"]["components"] = t["components"]
            return body
        return graph.template_payload(intent.to, t["name"], t["language"], t.get("parameters") or (),
                                      callback_data=callback)
    return graph.text_payload(intent.to, intent.text, reply_to=intent.reply_to if intent.quote else None,
                              callback_data=callback)


def ledger_id(callback: str | None) -> int | None:
    """The ledger row a status's ``biz_opaque_callback_data`` names, ``None`` if it names none."""
    if not callback or not callback.startswith(CALLBACK_PREFIX):
        return None
    digits = callback[len(CALLBACK_PREFIX):]
    return int(digits) if digits.isdigit() and len(digits) < 19 else None


# What was read (one home for the row shapes: :mod:`storage`): the ledger row, whose stored
# intent is what gets sent (the bus event only names it), and the send-time checks.
Row = LedgerRow
Checks = SendChecks


# --- decisions before the call -----------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Send:
    """Claim the row and call the Graph API with the stored intent."""


@dataclass(frozen=True, slots=True)
class Skip:
    """Nothing to do for this delivery; ``outcome`` says why (duplicate, in_flight, ambiguous, superseded)."""

    outcome: str


@dataclass(frozen=True, slots=True)
class Drop:
    """The intent no longer applies (stale: a person took over; opted_out)."""

    reason: str
    outcome: str


@dataclass(frozen=True, slots=True)
class Park:
    """Wait in the ledger until ``until`` without using an attempt; the outbox sweep publishes it then."""

    until: datetime
    reason: str
    outcome: str  # parked (number paused) | behind (an earlier reply of the conversation is unfinished)


@dataclass(frozen=True, slots=True)
class Pace:
    """The recipient's pair limit: move to the first retry topic until ``until``, no attempt used."""

    until: datetime


@dataclass(frozen=True, slots=True)
class UseTemplate:
    """Outside the window: drop this intent and queue (and publish) ``replacement`` instead."""

    replacement: SendIntent


@dataclass(frozen=True, slots=True)
class Fail:
    """Never send this intent: ``failed``, a task of ``kind`` for a person, and a dead letter if asked."""

    kind: str
    error: dict[str, Any]
    title: str
    dead_letter: bool


Decision = Send | Skip | Drop | Park | Pace | UseTemplate | Fail


def decide(row: Row, checks: Checks, now: datetime, *, attempt: int, template: Template | None,
           pair_wait_s: float = 0.0) -> Decision:
    """What to do with the delivery of ``row`` that expects ``attempt`` earlier attempts.

    In order: a row not waiting to be sent (or an out-of-date delivery) is skipped; automatic
    drafts are dropped when a person took over or the contact opted out (notices still go);
    a paused number parks it; a reply waits behind an earlier unfinished one of its
    conversation (a park looks again after ``PARK_RECHECK`` at the latest); outside the
    24-hour window only a template goes (:func:`window_path`); text over WhatsApp's 4,096
    characters is refused (dead letter and a task: cutting a reply
    could change its meaning); the pair limit paces it (``pair_wait_s``: how long the recipient's
    pair limit asks to wait); else it is sent.
    """
    if row.state not in WAITING:
        return Skip({"sending": "in_flight", "ambiguous": "ambiguous", "unconfirmed": "ambiguous",
                     "superseded": "superseded"}.get(row.state, "duplicate"))
    if row.attempts != attempt:
        return Skip("superseded")  # a stale copy of an earlier attempt must not jump the retry schedule
    intent = row.intent
    notice = intent.kind == "notice"  # opt-out/in confirmations, handover notices: sent although the bot is quiet
    if intent.automatic and (checks.ownership_version > intent.ownership_version
                             or (checks.human_owned and not notice)):
        return Drop("a person took over the conversation", "stale")
    if intent.automatic and checks.opted_out and not notice:
        return Drop("the contact opted out", "opted_out")
    if checks.paused_until is not None and checks.paused_until > now:
        return Park(min(checks.paused_until, now + PARK_RECHECK), "number paused", "parked")
    if checks.earlier is not None:
        e = checks.earlier
        until = min(e.next_attempt_at, now + PARK_RECHECK) if e.state == "retry_wait" \
            and e.next_attempt_at is not None and e.next_attempt_at > now else now + BEHIND_RECHECK
        return Park(until, f"behind reply {e.id} of the same conversation ({e.state})", "behind")
    window_closed = not window_open(checks.last_inbound_at, now)
    if window_closed and intent.kind != "template":
        return window_path(intent, template)
    if intent.kind != "template" and len(intent.text) > TEXT_MAX_CHARS:
        return Fail("text_too_long", {"error": f"text of {len(intent.text)} characters is over WhatsApp's "
                                               f"{TEXT_MAX_CHARS}", "code": "TEXT_TOO_LONG"},
                    f"A reply of {len(intent.text)} characters is too long for WhatsApp: shorten it",
                    dead_letter=True)
    if pair_wait_s > 0:
        return Pace(now + timedelta(seconds=pair_wait_s))
    return Send()


def window_path(intent: SendIntent, template: Template | None) -> UseTemplate | Fail:
    """The 24-hour window is closed for ``intent``: the configured template instead, else a task.

    A template that itself met a closed window is not replaced again.
    """
    if template is None or intent.kind == "template":
        return Fail("window_closed", {"error": "24-hour window closed", "code": REENGAGEMENT},
                    "The 24-hour window is closed: reply with an approved template", dead_letter=False)
    return UseTemplate(template_intent(intent, template))


def template_intent(original: SendIntent, template: Template) -> SendIntent:
    """The template intent that replaces ``original`` (its own ledger row, derived dedupe key); its
    text, stored as the message's body, is the template as the customer gets it
    (:func:`storage.replies.template_body`), not the free text that never went."""
    spec = {"name": template.name, "language": template.language, "parameters": list(template.parameters)}
    return dataclasses.replace(
        original, dedupe_key=f"template:{original.dedupe_key}", kind="template", attempt=0, not_before=None,
        first_attempt_at=None, origin=None, template=spec, text=template_body(spec))


# --- routes after a Graph API error ------------------------------------------------------------
# Each route's ``label`` is its ``outcome`` in ``wacrm_send_duration_seconds`` (README, metrics).

@dataclass(frozen=True, slots=True)
class Retry:
    """Try again after ``delay_s``, through retry topic number ``topic`` (1-based)."""

    label: ClassVar[str] = "retry"
    delay_s: float
    topic: int


@dataclass(frozen=True, slots=True)
class GiveUp:
    """No more attempts: ``failed``, a task of ``kind``, and a dead letter."""

    label: ClassVar[str] = "deadletter"
    kind: str


@dataclass(frozen=True, slots=True)
class MaybeSent:
    """The request may have reached Meta: never resent blindly; the row waits for its statuses."""

    label: ClassVar[str] = "ambiguous"


@dataclass(frozen=True, slots=True)
class Pause:
    """Stop sending from the business number for a while and alert a person; the intent waits."""

    label: ClassVar[str] = "pause"


@dataclass(frozen=True, slots=True)
class TokenPause:
    """Meta refused the number's access token (or it has none): the number's sends wait, kept, until
    a new token arrives (:func:`storage.numbers.pause_for_token`); the other numbers go on."""

    label: ClassVar[str] = "tokenpause"


@dataclass(frozen=True, slots=True)
class Window:
    """Meta said the window is closed (131047): :func:`window_path`."""

    label: ClassVar[str] = "window"


Route = Retry | GiveUp | MaybeSent | Pause | TokenPause | Window


def route(error: BaseException, attempts: int, max_attempts: int, delays: list[float], jitter: float) -> Route:
    """What happens after ``error`` on attempt number ``attempts`` (1-based) of ``max_attempts``.

    ``delays[n - 1]`` is the wait before retry number n; ``jitter`` in [0, 1) spreads it by ±20 %.
    The error says itself what it is (:func:`core.errors.classify`, duck-typed flags of
    :mod:`whatsapp.graph`): a refused token (``token_rejected``) holds the number's sends until a
    new token, other ``pausing`` errors pause the number for a while, code 131047 takes the window
    path, ambiguous ones are never retried, retryable ones are retried until the attempts run out;
    a recipient that cannot be sent to (not a phone number, Meta's 131026) is ``invalid_recipient``.
    """
    if getattr(error, "token_rejected", False) is True:
        return TokenPause()
    if getattr(error, "pausing", False) is True:
        return Pause()
    if getattr(error, "code", None) == REENGAGEMENT:
        return Window()
    nxt = classify(error)
    if nxt is Next.AMBIGUOUS:
        return MaybeSent()
    if nxt is Next.RETRY:
        if attempts < max_attempts and delays:
            n = min(max(attempts, 1), len(delays))
            return Retry(delays[n - 1] * (0.8 + 0.4 * jitter), n)
        return GiveUp("retries_exhausted")
    if getattr(error, "invalid_recipient", False) is True or getattr(error, "code", None) == UNDELIVERABLE:
        return GiveUp("invalid_recipient")  # a person fixes the contact's phone and retries
    return GiveUp("send_failed")
