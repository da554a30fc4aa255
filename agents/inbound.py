"""Inbound agent: ``wa.inbound`` → stored message, matched contact/conversation/lead, reply intent.

Input key: the conversation key; one event at a time per partition (order matters).
Idempotency: ``messages (channel, provider_message_id)``. In one transaction: contact,
conversation, lead, message, and — when the greeting engine answers — the reply's row in
``outbound_log`` (dedupe key ``auto:{message id}``). After the commit the intent is
published to ``wa.outbound``. A redelivered message changes nothing, but an intent still
``queued`` (a crash between commit and publish) is published again; the sender's claim
makes that safe. Commit: after the transaction and the publish are acknowledged.
"""

from __future__ import annotations

import faust

from orchestrator.greeting import plan_reply
from storage import repo
from topics.records import RawRef, SendIntent, decode_inbound, encode, intent_from_dict
from wacrm import metrics
from wacrm.settings import Settings


def auto_reply_key(message_id: str) -> str:
    return f"auto:{message_id}"


class Inbound:
    def __init__(self, settings: Settings, resources: "Resources", outbound: faust.TopicT) -> None:  # noqa: F821
        self._settings = settings
        self._res = resources
        self._outbound = outbound

    async def handle(self, value: bytes, ref: RawRef, at: float) -> str:
        msg = decode_inbound(value)
        intent: SendIntent | None = None
        async with self._res.pool.acquire() as conn:
            tr = conn.transaction()
            await tr.start()
            try:
                state = await repo.store_inbound(conn, msg)
                if state is None:
                    await tr.rollback()
                    metrics.DUPLICATES.labels("message").inc()
                    pending = await repo.queued_intent(conn, auto_reply_key(msg.message_id))
                    if pending is not None:
                        await self._publish(msg.conversation_key, intent_from_dict(pending))
                        return "duplicate_republished"
                    return "duplicate"
                text = plan_reply(msg.type, state, self._settings.greeting_text)
                if text is not None:
                    intent = SendIntent(
                        dedupe_key=auto_reply_key(msg.message_id), conversation_key=msg.conversation_key,
                        conversation_id=state.conversation_id, phone_number_id=msg.phone_number_id,
                        to=msg.customer.key, text=text, reply_to=msg.message_id,
                        ownership_version=state.ownership_version, customer_timestamp=float(msg.timestamp),
                        accepted_at=msg.received_at)
                    await repo.queue_intent(conn, intent)
            except BaseException:
                await tr.rollback()
                raise
            await tr.commit()
        if intent is not None:
            await self._publish(msg.conversation_key, intent)
            return "replied"
        return "stored"

    async def _publish(self, key: str, intent: SendIntent) -> None:
        fut = await self._outbound.send(key=key.encode(), value=encode(intent))
        await fut
