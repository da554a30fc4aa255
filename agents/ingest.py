"""Ingest agent: ``wa.webhook.raw`` → every message stored and answered, every status on ``wa.status``.

Input: raw webhook bodies as Meta signed them, keyed by the conversation of the body's first
item, so one partition sees a conversation's bodies in order. The batch's messages (in
timestamp order within a body) are stored and answered right here (:meth:`agents.inbound.Inbound.store`):
no hop through ``wa.inbound``; so are the echoes of what the business sent from the WhatsApp
Business app, in their customer's conversation. Statuses go to ``wa.status`` keyed by conversation,
and each media message's download to ``wa.media`` (:mod:`agents.media`): its caption is answered
without waiting for it. Each message and status keeps a reference to its raw body (topic, partition,
offset) and the raw record's
request id. Commit: after the batch's messages are stored and its statuses, replies and dead
letters are acknowledged by the broker. Idempotency: a replayed body is deduplicated by the
message's provider id (its queued reply published again) and by the status agent.
Unknown numbers: the messages and statuses of a ``phone_number_id`` that is not configured (or is
disabled) are skipped — acked, nothing stored — counted in ``wacrm_webhook_unknown_number_total``
and named in one warning per number; the body stays on ``wa.webhook.raw``, so ``wacrm replay``
after ``wacrm numbers add`` brings it in. The known numbers come from the numbers table
(:meth:`storage.numbers.Numbers.known`, a copy a few seconds old at most).
Failures: a body that is not a JSON object is returned to the runner as poison (it
dead-letters it, within the storm limit); a body whose messages cannot be stored for good is
dead-lettered whole by the runner (its raw bytes; a redrive puts it back on ``wa.webhook.raw``).
Every item that cannot become a record goes to
``wa.dlq`` with the reference to its raw body and the other items of the body are still
processed: a broken item, one beyond WhatsApp's own limits (a text of more than
:data:`whatsapp.limits.TEXT_MAX_CHARS` characters is not a real message), one too deeply nested to
encode, and one whose record would be above :data:`topics.records.RECORD_MAX_BYTES`. Such a
dead letter carries the start of the item (its whole value is in the raw body, at the
reference), never more than the bus can carry.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import TYPE_CHECKING, Any

import faust
import orjson

from wacrm.agents.runner import Item, Outcome, dead_letter, produce
from wacrm.core import metrics
from wacrm.core.errors import Poison
from wacrm.storage import templates as tstore
from wacrm.topics import INBOUND, STATUS
from wacrm.topics.records import (
    DEAD_LETTER_PREVIEW_CHARS,
    Customer,
    InboundMessage,
    MediaJob,
    RawRef,
    RecordError,
    StatusUpdate,
    conversation_key,
    encode,
    encode_bounded,
)
from wacrm.whatsapp import model, updates, webhook
from wacrm.whatsapp.limits import TEXT_MAX_CHARS

if TYPE_CHECKING:  # the message store and the worker's resources; imported for the type only
    from wacrm.agents.context import Resources
    from wacrm.agents.inbound import Inbound

log = logging.getLogger("wacrm.ingest")


def _customer(sender: webhook.Sender) -> Customer:
    return Customer(wa_id=sender.wa_id, user_id=sender.user_id, profile_name=sender.profile_name,
                    username=sender.username, parent_user_id=sender.parent_user_id)


def beyond_whatsapp_limits(m: webhook.Message) -> str | None:
    """Why ``m`` cannot be a message WhatsApp delivered, or ``None`` when it can."""
    text = m.payload.get("text")
    body = text.get("body") if isinstance(text, dict) else None
    if m.type == "text" and isinstance(body, str) and len(body) > TEXT_MAX_CHARS:
        return f"a text of {len(body):,} characters is beyond WhatsApp's limit of {TEXT_MAX_CHARS:,}"
    return None


def _preview(item: Any) -> str:
    """The start of an item for a dead letter; the whole of it is in the raw body."""
    return repr(item)[:DEAD_LETTER_PREVIEW_CHARS]


@dataclasses.dataclass(slots=True)
class Split:
    """What one raw body becomes: its messages (to store), its statuses' (key, value) records for
    ``wa.status``, and what the parser found."""

    messages: list[InboundMessage]
    statuses: list[tuple[str, bytes]]
    parsed: webhook.Parsed
    business: updates.Updates = dataclasses.field(default_factory=updates.Updates)


def split(body: bytes, ref: RawRef, received_at: float) -> Split:
    """The messages and status records of one raw body.

    Items that cannot become a record are added to ``parsed.problems`` (with a preview of the
    item, not its whole value); :class:`Poison` when the body is not a webhook at all. A message
    is held to the same bound as a record on the bus: it is what ``wa.inbound`` and ``wa.dlq`` carry.
    """
    try:
        envelope = webhook.loads(body)
    except webhook.BodyError as exc:
        raise Poison(str(exc)) from None
    parsed = webhook.parse(envelope)
    out = Split([], [], parsed, business_updates(envelope, parsed))

    def fits(topic: str, record: Any, item: dict[str, Any]) -> bytes | None:
        try:
            return encode_bounded(record)
        except RecordError as exc:  # too large, or too deeply nested to encode: keep it for a human
            parsed.problems.append(webhook.Problem(f"cannot become a record: {exc}", topic, _preview(item)))
            return None

    for m in parsed.messages:
        beyond = beyond_whatsapp_limits(m)
        if beyond is not None:
            parsed.problems.append(webhook.Problem(f"not a real message: {beyond}", INBOUND, _preview(m.payload)))
            continue
        customer = _customer(m.sender)
        key = conversation_key(m.phone_number_id, customer)
        message = InboundMessage(
            conversation_key=key, phone_number_id=m.phone_number_id, display_phone_number=m.display_phone_number,
            customer=customer, message_id=m.id, timestamp=m.timestamp, type=m.type, text=m.text,
            payload=m.payload, raw_ref=ref, received_at=received_at, content=model.as_dict(m.content),
            context=dataclasses.asdict(m.context) if m.context else None,
            referral=dataclasses.asdict(m.referral) if m.referral else None, errors=m.errors, echo=m.echo)
        if fits(INBOUND, message, m.payload) is None:
            continue
        out.messages.append(message)
        metrics.MESSAGES.labels(m.type if m.type in model.KNOWN_TYPES else "other", m.phone_number_id).inc()
    for s in parsed.statuses:
        key = conversation_key(s.phone_number_id, _customer(s.recipient))
        data = fits(STATUS, StatusUpdate(
            conversation_key=key, phone_number_id=s.phone_number_id, message_id=s.id, status=s.status,
            timestamp=s.timestamp, recipient_id=s.recipient.wa_id or s.recipient.user_id, errors=s.errors,
            biz_opaque_callback_data=s.biz_opaque_callback_data, payload=s.payload, raw_ref=ref,
            recipient_user_id=s.recipient.user_id), s.payload)
        if data is not None:
            out.statuses.append((key, data))
    return out


def business_updates(data: dict[str, Any], parsed: webhook.Parsed) -> updates.Updates:
    """The template, preference and account updates of a body (:mod:`whatsapp.updates`); those fields
    are not counted as ignored, and an update that cannot be read is one of the body's problems."""
    found = updates.parse(data)
    parsed.ignored_fields[:] = [f for f in parsed.ignored_fields if f.removeprefix("field:") not in updates.FIELDS]
    parsed.problems.extend(webhook.Problem(p, "updates", p) for p in found.problems)
    return found


async def apply_business_updates(conn: Any, found: updates.Updates, request_id: str | None) -> None:
    """Apply a body's business updates at once, idempotently (each is guarded by Meta's time or stored once)."""
    for change in found.templates:
        outcome = await tstore.apply_template_change(conn, change)
        log.info("template %s (%s) of WABA %s: %s", change.name, change.language, change.waba_id, outcome,
                 extra={"request_id": request_id})
    for pref in found.preferences:
        outcome = await tstore.apply_preference(conn, pref)
        log.info("marketing preference %s of a contact of %s: %s", pref.value, pref.phone_number_id, outcome,
                 extra={"request_id": request_id})
    for event in found.accounts:
        new = await tstore.record_account_event(conn, event)
        log.warning("account update %s of WABA %s%s", event.event, event.waba_id, "" if new else " (seen before)",
                    extra={"request_id": request_id})


class UnknownNumbers:
    """Skips what is for a number that is not configured: counts it, warns once per number."""

    MAX_WARNED = 10_000  # numbers remembered as warned about (a flood of made-up ids cannot grow it further)

    def __init__(self) -> None:
        self._warned: set[str] = set()

    def keep(self, phone_number_id: str, known: frozenset[str], kind: str, request_id: str | None) -> bool:
        if phone_number_id in known:
            return True
        metrics.UNKNOWN_NUMBER.labels(kind).inc()
        if phone_number_id not in self._warned and len(self._warned) < self.MAX_WARNED:
            self._warned.add(phone_number_id)
            log.warning("webhook for business number %r, which is not configured: skipped (the body stays on the "
                        "raw topic; `wacrm numbers add` then `wacrm replay --topic wa.webhook.raw` brings it in)",
                        phone_number_id, extra={"request_id": request_id})
        return False


class Ingest:
    def __init__(self, inbound: Inbound, status: faust.TopicT, outbound: faust.TopicT, dlq: faust.TopicT,
                 resources: Resources, media: faust.TopicT) -> None:
        self._inbound = inbound
        self._status = status
        self._outbound = outbound
        self._dlq = dlq
        self._res = resources
        self._media = media
        self._unknown = UnknownNumbers()

    async def _skip_unknown(self, items: list[Item], splits: list[Split | Poison]) -> None:
        """Drop the messages and statuses of numbers that are not configured; record display numbers."""
        wanted = frozenset(m.phone_number_id for sp in splits if isinstance(sp, Split) for m in sp.messages) | \
            frozenset(key.split(":", 1)[0] for sp in splits if isinstance(sp, Split) for key, _ in sp.statuses)
        known = await self._res.numbers.known(wanted)
        displays: dict[str, str] = {}
        for item, sp in zip(items, splits, strict=True):
            if isinstance(sp, Poison):
                continue
            sp.messages = [m for m in sp.messages
                           if self._unknown.keep(m.phone_number_id, known, "message", item.request_id)]
            sp.statuses = [(key, data) for key, data in sp.statuses
                           if self._unknown.keep(key.split(":", 1)[0], known, "status", item.request_id)]
            for m in sp.messages:
                if m.display_phone_number:
                    displays[m.phone_number_id] = m.display_phone_number
        if displays:
            await self._res.numbers.seen_display_numbers(displays)

    async def handle(self, items: list[Item]) -> list[Outcome]:
        """Split every body of the batch and store all its messages (answering them); then produce
        its statuses, replies and dead letters and wait once for all their acknowledgements.

        Nothing goes to the bus before the messages are stored, so a retry of the batch (the
        database away) produces nothing twice."""
        splits: list[Split | Poison] = []
        for value, ref, received_at, _ in items:
            try:
                splits.append(split(value, ref, received_at))
            except Poison as exc:  # this body only: the runner dead-letters it; the others of the batch go on
                splits.append(exc)
        await self._skip_unknown(items, splits)
        messages = [(m, item.request_id) for item, sp in zip(items, splits, strict=True)
                    if isinstance(sp, Split) for m in sp.messages]
        _, intents = await self._inbound.store([m for m, _ in messages], [r for _, r in messages])
        business = [(sp.business, item.request_id) for item, sp in zip(items, splits, strict=True)
                    if isinstance(sp, Split) and sp.business]
        if business:
            async with self._res.pool.acquire() as conn, conn.transaction():
                for found, request_id in business:
                    await apply_business_updates(conn, found, request_id)
        futures = [await produce(self._outbound, i.conversation_key.encode(), encode(i), i.request_id)
                   for i in intents]
        futures += [await produce(self._media, m.conversation_key.encode(), encode(job), r)
                    for m, r in messages if (job := media_job(m, r)) is not None]
        outcomes: list[Outcome] = []
        for item, sp in zip(items, splits, strict=True):
            if isinstance(sp, Poison):
                outcomes.append(sp)
                continue
            ref, request_id, parsed = item.ref, item.request_id, sp.parsed
            futures += [await produce(self._status, key.encode(), data, request_id) for key, data in sp.statuses]
            for problem in parsed.problems:
                metrics.PARSE_PROBLEMS.labels(_part(problem.where)).inc()
                await dead_letter(self._dlq, ref, orjson.dumps(_jsonable(problem.item)), "ingest: broken item",
                                  problem.reason, {"where": problem.where}, request_id=request_id)
            for kind in parsed.ignored_fields:
                metrics.IGNORED_SHAPES.labels(kind.split(":", 1)[0]).inc()
            for error in parsed.errors:
                metrics.ACCOUNT_ERRORS.labels(str(error.get("code", "none"))[:12]).inc()
                log.warning("account-level error from Meta (raw %s:%d@%d): %s", ref.topic, ref.partition,
                            ref.offset, orjson.dumps(error).decode()[:500], extra={"request_id": request_id})
            stored = sp.messages or sp.statuses or sp.business
            outcomes.append("processed" if stored else ("ignored" if not parsed.problems else "dead_lettered"))
        await asyncio.gather(*futures)
        return outcomes


def media_job(m: InboundMessage, request_id: str | None) -> MediaJob | None:
    """The download a stored message asks for (its ``media`` row was made with it), or None: not media.
    Redeliveries ask again: the media agent's claim makes a second copy do nothing."""
    media_id = m.content.get("media_id") if m.type in model.MEDIA_TYPES else None
    return MediaJob(media_id, m.conversation_key, request_id) if isinstance(media_id, str) else None


def _jsonable(item: Any) -> Any:
    try:
        orjson.dumps(item)
        return item
    except TypeError:
        return repr(item)


def _part(where: str) -> str:
    """``entry[0].changes[1].value.messages[2]`` -> ``messages``: a closed set of metric labels."""
    last = where.rsplit(".", 1)[-1].split("[", 1)[0]
    return last if last in {"entry", "changes", "value", "messages", "statuses", INBOUND, STATUS} else "other"
