"""Ingest agent: ``wa.webhook.raw`` → one event per message (``wa.inbound``) and status (``wa.status``).

Input: raw webhook bodies, unkeyed, as Meta signed them. Output key: the conversation key,
so one partition sees a conversation in order; within a body, items go out in timestamp
order. Each event carries a reference to the raw body (topic, partition, offset).
Commit: after every output of the batch's bodies is acknowledged by the broker. Idempotency: none
needed here (a replayed body yields the same events, deduplicated downstream).
Failures: a body that is not a JSON object, and every broken item, go to ``wa.dlq``; the
other items of the body are still processed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import Any

import faust
import orjson

from agents.errors import Poison
from agents.runner import Item, dead_letter, produce
from topics import INBOUND, STATUS
from topics.records import Customer, InboundMessage, RawRef, StatusUpdate, conversation_key, encode
from wacrm import metrics
from whatsapp import model, webhook

log = logging.getLogger("wacrm.ingest")


def _customer(sender: webhook.Sender) -> Customer:
    return Customer(wa_id=sender.wa_id, user_id=sender.user_id, profile_name=sender.profile_name,
                    username=sender.username, parent_user_id=sender.parent_user_id)


def split(body: bytes, ref: RawRef, received_at: float) -> tuple[list[tuple[str, str, bytes]], webhook.Parsed]:
    """The (topic, key, value) records for one raw body, and what the parser found."""
    try:
        parsed = webhook.parse(webhook.loads(body))
    except webhook.BodyError as exc:
        raise Poison(str(exc)) from None
    out: list[tuple[str, str, bytes]] = []

    def emit(topic: str, key: str, record: Any, item: dict[str, Any]) -> None:
        try:
            out.append((topic, key, encode(record)))
        except (TypeError, RecursionError) as exc:  # orjson refuses >254 levels of nesting; keep it for a human
            parsed.problems.append(webhook.Problem(f"cannot re-encode the item: {exc}", topic, repr(item)[:2000]))

    for m in parsed.messages:
        customer = _customer(m.sender)
        key = conversation_key(m.phone_number_id, customer)
        emit(INBOUND, key, InboundMessage(
            conversation_key=key, phone_number_id=m.phone_number_id, display_phone_number=m.display_phone_number,
            customer=customer, message_id=m.id, timestamp=m.timestamp, type=m.type, text=m.text,
            payload=m.payload, raw_ref=ref, received_at=received_at, content=model.as_dict(m.content),
            context=dataclasses.asdict(m.context) if m.context else None,
            referral=dataclasses.asdict(m.referral) if m.referral else None, errors=m.errors), m.payload)
        metrics.MESSAGES.labels(m.type if m.type in model.KNOWN_TYPES else "other", m.phone_number_id).inc()
    for s in parsed.statuses:
        key = conversation_key(s.phone_number_id, _customer(s.recipient))
        emit(STATUS, key, StatusUpdate(
            conversation_key=key, phone_number_id=s.phone_number_id, message_id=s.id, status=s.status,
            timestamp=s.timestamp, recipient_id=s.recipient.wa_id or s.recipient.user_id, errors=s.errors,
            biz_opaque_callback_data=s.biz_opaque_callback_data, payload=s.payload, raw_ref=ref,
            recipient_user_id=s.recipient.user_id), s.payload)
    return out, parsed


class Ingest:
    def __init__(self, topics: dict[str, faust.TopicT], dlq: faust.TopicT) -> None:
        self._topics = topics
        self._dlq = dlq

    async def handle(self, items: list[Item]) -> list[str]:
        """Split every body of the batch, then wait once for all their outputs' acknowledgements."""
        futures: list[Any] = []
        outcomes = []
        for value, ref, received_at in items:
            try:
                records, parsed = split(value, ref, received_at)
            except Poison as exc:  # this body only; the others of the batch go on
                log.warning("ingest: dead-lettering %s:%d@%d: %s", ref.topic, ref.partition, ref.offset, exc)
                await dead_letter(self._dlq, ref, value, "ingest: poison event", repr(exc))
                outcomes.append("dead_lettered")
                continue
            futures += [await produce(self._topics[topic], key.encode(), data) for topic, key, data in records]
            for problem in parsed.problems:
                metrics.PARSE_PROBLEMS.labels(_part(problem.where)).inc()
                await dead_letter(self._dlq, ref, orjson.dumps(_jsonable(problem.item)), "ingest: broken item",
                                  problem.reason, {"where": problem.where})
            for kind in parsed.ignored_fields:
                metrics.IGNORED_SHAPES.labels(kind.split(":", 1)[0]).inc()
            for error in parsed.errors:
                metrics.ACCOUNT_ERRORS.labels(str(error.get("code", "none"))[:12]).inc()
                log.warning("account-level error from Meta (raw %s:%d@%d): %s", ref.topic, ref.partition,
                            ref.offset, orjson.dumps(error).decode()[:500])
            outcomes.append("processed" if records else ("ignored" if not parsed.problems else "dead_lettered"))
        await asyncio.gather(*futures)
        return outcomes


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
