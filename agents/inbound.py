"""Inbound agent: ``wa.inbound`` → stored message, matched contact/conversation/lead, and the reply.

Input key: the conversation key; events in partition order (order matters), a batch at a
time. Idempotency: ``messages (channel, provider_message_id)``. In one transaction for the
batch, message by message: contact, conversation, lead and message; then either the
reply itself (no burst window, rules only: the orchestrator decides in the same
transaction and its intent is published after the commit) or the conversation is marked
due for a reply after the burst window (the orchestrator timer answers it). A redelivered
message changes nothing, but a reply still ``queued`` (a crash between commit and
publish) is published again; the sender's claim makes that safe. Commit: after the
transaction and the publish are acknowledged.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import faust

from agents.errors import Raced
from agents.runner import Item
from orchestrator.rules import NO_REPLY_TYPES
from orchestrator.service import Orchestrator, auto_reply_key
from storage import replies, repo
from topics.records import SendIntent, decode_inbound, encode, intent_from_dict
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

    async def handle(self, items: list[Item]) -> list[str]:
        msgs = [decode_inbound(value) for value, _, _ in items]
        intents: list[SendIntent] = []
        outcomes: list[str] = []
        async with self._res.pool.acquire() as conn:
            async with conn.transaction():
                stored = {r["provider_message_id"] for r in await conn.fetch(
                    "SELECT provider_message_id FROM messages WHERE channel = $1 AND provider_message_id = ANY($2)",
                    repo.CHANNEL, [m.message_id for m in msgs])}
                for msg in msgs:
                    if msg.message_id in stored:  # a redelivery: changes nothing
                        metrics.DUPLICATES.labels("message").inc()
                        pending = await repo.queued_intent(conn, auto_reply_key(msg.message_id))
                        if pending is not None:  # a crash between commit and publish: publish it again
                            intents.append(intent_from_dict(pending))
                        outcomes.append("duplicate_republished" if pending is not None else "duplicate")
                        continue
                    stored.add(msg.message_id)
                    conversation_id = await repo.store_inbound(conn, msg)
                    if conversation_id is None:
                        raise Raced(f"message {msg.message_id} was stored meanwhile by another worker")
                    if self._inline:
                        answer = await self._orchestrator.answer_in(conn, conversation_id, msg.received_at)
                        intents += answer
                        outcomes.append("replied" if answer else "stored")
                        continue
                    if msg.type not in NO_REPLY_TYPES:
                        await replies.schedule_reply(conn, conversation_id, self._window)
                    outcomes.append("stored")
        await publish(self._outbound, intents)
        return outcomes


async def publish(topic: faust.TopicT, intents: list[SendIntent]) -> None:
    """Publish intents keyed by conversation and wait for the broker's acknowledgements."""
    futures = [await topic.send(key=i.conversation_key.encode(), value=encode(i)) for i in intents]
    for fut in futures:
        await fut
