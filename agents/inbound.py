"""Storing messages: stored message, matched contact/conversation/lead, and the reply.

:meth:`Inbound.store` is called by the ingest agent (``wa.webhook.raw``) with the messages of its
batch of bodies; the inbound agent reads ``wa.inbound``, which no longer receives new messages
(a worker of an older version wrote each message there first) but is drained on upgrade and
receives redriven dead letters. Either way: messages in partition order (order matters), a batch at a
time, its conversations spread over ``BATCH_LANES`` lanes (a conversation always in one
lane, in order). Idempotency: ``messages (channel, provider_message_id)``. In one
transaction per lane, message by message: contact, conversation, lead and message; then either the
reply itself (no burst window, rules only: the orchestrator decides in the same
transaction and its intent is published after the commit) or the conversation is marked
due for a reply after the burst window (the orchestrator timer answers it). A redelivered
message changes nothing, but a reply still ``queued`` (a crash between commit and
publish) is published again; the sender's claim makes that safe. Commit: after every
lane's transaction and the publish are acknowledged; a lane that committed before another
failed is recognised as done when the batch is retried. An echo (what the business sent from the
WhatsApp Business app) is stored in its customer's conversation the same way, never answered: the
conversation becomes a person's and its customer no longer waits for one.
"""

from __future__ import annotations

import asyncio
import logging
import zlib
from typing import TYPE_CHECKING, Any

import faust

from wacrm.agents.runner import Item, publish
from wacrm.core import metrics
from wacrm.core.errors import UNIQUE_VIOLATION, Raced, sqlstate
from wacrm.core.settings import Settings
from wacrm.orchestrator.rules import NO_REPLY_TYPES
from wacrm.orchestrator.service import Orchestrator
from wacrm.storage import ledger, replies, repo, waiting
from wacrm.storage.ledger import auto_reply_key
from wacrm.topics.records import InboundMessage, SendIntent, decode_inbound, intent_from_dict

if TYPE_CHECKING:  # the worker's resources; imported for the type only
    from wacrm.agents.context import Resources

log = logging.getLogger("wacrm.inbound")


class Inbound:
    def __init__(self, settings: Settings, resources: Resources, orchestrator: Orchestrator,
                 outbound: faust.TopicT) -> None:
        self._res = resources
        self._orchestrator = orchestrator
        self._outbound = outbound
        # Answer in the same transaction only when nothing needs to wait: no burst window, no model.
        self._inline = settings.burst_window_s == 0 and settings.llm is None
        self._window = settings.burst_window_s
        self._lanes = settings.batch_lanes

    async def handle(self, items: list[Item]) -> list[str]:
        """Events of ``wa.inbound`` (written by workers before messages were stored where they are
        read, and redriven dead letters): store them and publish their replies."""
        outcomes, intents = await self.store([decode_inbound(item.value) for item in items],
                                             [item.request_id for item in items])
        await publish(self._outbound, intents)
        return outcomes

    async def store(self, msgs: list[InboundMessage], request_ids: list[str | None]
                    ) -> tuple[list[str], list[SendIntent]]:
        """Store ``msgs`` in lanes (their conversations spread over ``BATCH_LANES`` connections, each
        lane one transaction, a conversation's messages in order). Returns each message's outcome and
        the replies to publish, in order; the caller publishes them once the batch's other effects are done."""
        outcomes = [""] * len(msgs)
        intents: list[list[SendIntent]] = [[] for _ in msgs]
        results = await asyncio.gather(
            *(self._lane(msgs, request_ids, lane, outcomes, intents) for lane in lanes(msgs, self._lanes)),
            return_exceptions=True)
        for result in results:  # a lane that committed is recognised as done when the batch is retried
            if isinstance(result, BaseException):
                raise result
        return outcomes, [i for answer in intents for i in answer]

    async def _lane(self, msgs: list[InboundMessage], request_ids: list[str | None], lane: list[int],
                    outcomes: list[str], intents: list[list[SendIntent]]) -> None:
        fresh: list[int] = []
        async with self._res.pool.acquire() as conn, conn.transaction():
            await repo.lock_conversations(conn, keys=[msgs[n].conversation_key for n in lane])
            stored = await repo.stored_message_ids(conn, [msgs[n].message_id for n in lane])
            for n in lane:
                msg = msgs[n]
                if msg.message_id in stored:  # a redelivery: changes nothing
                    metrics.DUPLICATES.labels("message").inc()
                    pending = await ledger.queued_intent(conn, auto_reply_key(msg.message_id))
                    if pending is not None:  # a crash between commit and publish: publish it again
                        intents[n].append(intent_from_dict(pending))
                    outcomes[n] = "duplicate_republished" if pending is not None else "duplicate"
                    log.info("duplicate message %s: already stored%s", msg.message_id,
                             "; its queued reply is published again" if pending is not None else "",
                             extra={"request_id": request_ids[n]})
                    continue
                stored.add(msg.message_id)
                fresh.append(n)
            for wave in waves(msgs, fresh):
                conversation_ids = await _store(conn, [msgs[n] for n in wave], [request_ids[n] for n in wave])
                stored_in = []
                for n, conversation_id in zip(wave, conversation_ids, strict=True):
                    if conversation_id is None:
                        raise Raced(f"message {msgs[n].message_id} was stored meanwhile by another worker")
                    stored_in.append(conversation_id)
                for n, conversation_id in zip(wave, stored_in, strict=True):
                    log.info("stored %s %s conversation %d", "echo" if msgs[n].echo else "message",
                             msgs[n].message_id, conversation_id, extra={"request_id": request_ids[n]})
                    if msgs[n].echo:  # a person answered from the phone: the customer no longer waits
                        await waiting.end(conn, conversation_id)
                        outcomes[n] = "stored"
                customer = [(n, c) for n, c in zip(wave, stored_in, strict=True) if not msgs[n].echo]
                if self._inline:
                    answers = await self._orchestrator.answer_many_in(
                        conn, [(c, msgs[n].received_at) for n, c in customer])
                    for (n, _), answer in zip(customer, answers, strict=True):
                        intents[n] = answer
                        outcomes[n] = "replied" if answer else "stored"
                    continue
                for n, conversation_id in customer:
                    if msgs[n].type not in NO_REPLY_TYPES:
                        await replies.schedule_reply(conn, conversation_id, self._window)
                    outcomes[n] = "stored"
        for n in fresh:  # committed
            metrics.MESSAGES_STORED.labels(str(msgs[n].type not in NO_REPLY_TYPES).lower()).inc()


async def _store(conn: Any, msgs: list[InboundMessage], request_ids: list[str | None]) -> list[int | None]:
    """Store a wave; a unique violation means a new contact or conversation of this wave was created
    meanwhile by a worker of another group (a replay) or a rebalance: the whole transaction rolls back
    and the retry finds the row."""
    try:
        return await repo.store_inbound_many(conn, msgs, request_ids)
    except Exception as exc:
        if sqlstate(exc) == UNIQUE_VIOLATION:
            raise Raced(f"a contact or conversation was created meanwhile by another worker: {exc}") from exc
        raise


def waves(msgs: list[InboundMessage], indices: list[int]) -> list[list[int]]:
    """``indices`` in waves of at most one message per conversation: the first message of each
    conversation in the first wave, the second in the second, and so on. A wave is stored and
    answered together (pipelined); a conversation's messages still go one after the other."""
    out: list[list[int]] = []
    depth: dict[str, int] = {}
    for n in indices:
        d = depth[msgs[n].conversation_key] = depth.get(msgs[n].conversation_key, -1) + 1
        if d == len(out):
            out.append([])
        out[d].append(n)
    return out


def lanes(msgs: list[InboundMessage], count: int) -> list[list[int]]:
    """Indices of ``msgs`` in at most ``count`` lanes; a conversation's messages in one lane, in order."""
    by_lane: dict[int, list[int]] = {}
    for n, msg in enumerate(msgs):
        by_lane.setdefault(zlib.crc32(msg.conversation_key.encode()) % count, []).append(n)
    return list(by_lane.values())
