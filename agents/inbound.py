"""Inbound agent: ``wa.inbound`` → stored message, matched contact/conversation/lead, and the reply.

Input key: the conversation key; one event at a time per partition (order matters).
Idempotency: ``messages (channel, provider_message_id)``. In one transaction: contact,
conversation, lead and message; then either the reply itself (no burst window, rules only:
the orchestrator decides in the same transaction and its intent is published after the
commit) or the conversation is marked due for a reply after the burst window (the
orchestrator timer answers it). A redelivered message changes nothing, but a reply still
``queued`` (a crash between commit and publish) is published again; the sender's claim
makes that safe. Commit: after the transaction and the publish are acknowledged.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import faust

from orchestrator.rules import NO_REPLY_TYPES
from orchestrator.service import Orchestrator, auto_reply_key
from storage import replies, repo
from topics.records import RawRef, SendIntent, decode_inbound, encode, intent_from_dict
from wacrm import metrics
from wacrm.settings import Settings

if TYPE_CHECKING:  # the worker's resources; imported for the type only
    from agents.context import Resources


class Inbound:
    def __init__(self, settings: Settings, resources: Resources, orchestrator: Orchestrator,
                 outbound: faust.TopicT) -> None:
        self._res = resources
        self._orchestrator = orchestrator
        self._outbound = outbound
        # Answer in the same transaction only when nothing needs to wait: no burst window, no model.
        self._inline = settings.burst_window_s == 0 and settings.llm_api_base_url is None
        self._window = settings.burst_window_s

    async def handle(self, value: bytes, ref: RawRef, at: float) -> str:
        msg = decode_inbound(value)
        intents: list[SendIntent] = []
        async with self._res.pool.acquire() as conn:
            tr = conn.transaction()
            await tr.start()
            try:
                conversation_id = await repo.store_inbound(conn, msg)
                if conversation_id is None:
                    await tr.rollback()
                    metrics.DUPLICATES.labels("message").inc()
                    pending = await repo.queued_intent(conn, auto_reply_key(msg.message_id))
                    if pending is not None:
                        await publish(self._outbound, [intent_from_dict(pending)])
                        return "duplicate_republished"
                    return "duplicate"
                if self._inline:
                    intents = await self._orchestrator.answer_in(conn, conversation_id, msg.received_at)
                elif msg.type not in NO_REPLY_TYPES:
                    await replies.schedule_reply(conn, conversation_id, self._window)
            except BaseException:
                await tr.rollback()
                raise
            await tr.commit()
        await publish(self._outbound, intents)
        return "replied" if intents else "stored"


async def publish(topic: faust.TopicT, intents: list[SendIntent]) -> None:
    """Publish intents keyed by conversation and wait for the broker's acknowledgements."""
    futures = [await topic.send(key=i.conversation_key.encode(), value=encode(i)) for i in intents]
    for fut in futures:
        await fut
