"""The orchestrator: how a conversation's unanswered messages are answered, recorded in one transaction.

One reply per burst: the rules engine (and the LLM when one is configured) decides for every
customer message after the last one answered. The effects — the reply's intent in the ledger
(dedupe key :func:`storage.ledger.auto_reply_key` of the last message), an opt-out, a handover
with its task — are recorded with the messages marked answered; the intents are returned for the
caller to publish after the commit.

An LLM is called outside any transaction, holding no pool connection. The ownership version read
before is checked after, so a person who took the conversation meanwhile is never talked over;
messages that arrive during the call get their own reply after this one, and messages answered
meanwhile (a lease that ran out) are never answered twice.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime, timedelta

import asyncpg

from wacrm.core import metrics
from wacrm.orchestrator.llm import LlmClient, LlmError, Turn
from wacrm.orchestrator.rules import Decision, Rules, Situation, decide
from wacrm.storage import ledger, replies
from wacrm.storage.ledger import auto_reply_key
from wacrm.storage.replies import ReplyContext
from wacrm.topics.records import SendIntent

log = logging.getLogger("wacrm.orchestrator")


#: A customer message written this long after the last one the bot answered starts a new exchange.
NEW_EXCHANGE_AFTER = timedelta(minutes=2)


def quotes(ctx: ReplyContext) -> bool:
    """Whether the reply quotes the message it answers: only the first answer to a burst, where the
    quote shows what is being answered. In a running exchange (the customer writes again within
    :data:`NEW_EXCHANGE_AFTER` of the last answered message) a quote on every reply is noise."""
    first = ctx.pending[0].provider_timestamp if ctx.pending else None
    if ctx.answered_upto_at is None or first is None:
        return True
    return first - ctx.answered_upto_at >= NEW_EXCHANGE_AFTER


class Orchestrator:
    def __init__(self, rules: Rules, llm: LlmClient | None = None) -> None:
        self.rules = rules
        self.llm = llm

    def _situation(self, ctx: ReplyContext) -> Situation:
        return Situation(texts=tuple(p.body or "" for p in ctx.pending), types=tuple(p.type for p in ctx.pending),
                         new_contact=ctx.new_contact, opted_out=ctx.opted_out, human_owned=ctx.human_owned,
                         now=datetime.now(UTC), customer_name=ctx.customer_name)

    async def answer_in(self, conn: asyncpg.Connection, conversation_id: int,
                        accepted_at: float | None = None) -> list[SendIntent]:
        """Rules only, inside the caller's transaction (the inline path with no burst window)."""
        return (await self.answer_many_in(conn, [(conversation_id, accepted_at)]))[0]

    async def answer_many_in(self, conn: asyncpg.Connection,
                             conversations: list[tuple[int, float | None]]) -> list[list[SendIntent]]:
        """:meth:`answer_in` for several conversations (id, accepted at), with their reads and writes
        pipelined; the intents of each, in order. A conversation named twice is answered once."""
        contexts = await replies.reply_contexts(conn, [c for c, _ in conversations])
        drafts: list[tuple[int, ReplyContext, SendIntent | None]] = []
        follow_ups: list[replies.FollowUp] = []
        seen: set[int] = set()
        for n, (ctx, (conversation_id, accepted_at)) in enumerate(zip(contexts, conversations, strict=True)):
            if conversation_id in seen:  # one customer under two keys: answered once, for all its messages
                continue
            seen.add(conversation_id)
            if ctx is not None and ctx.pending:
                decision = decide(self.rules, self._situation(ctx))
                drafts.append((n, ctx, await self._prepare(conn, ctx, decision, accepted_at, follow_ups)))
        await replies.promise_follow_ups(conn, follow_ups)
        queued = await replies.answer_many(conn, [(ctx.conversation_id, ctx.pending[-1].id, intent)
                                                   for _, ctx, intent in drafts], published=True)
        answers: list[list[SendIntent]] = [[] for _ in conversations]
        for (n, _, intent), new in zip(drafts, queued, strict=True):
            if intent is not None and new:  # else no reply, or answered before (a replay): the ledger has it
                answers[n].append(intent)
        return answers

    async def answer(self, pool: asyncpg.Pool, conversation_id: int) -> list[SendIntent]:
        """The deferred path (burst window, LLM): own transactions, the model called between them
        with no connection held. The caller holds the conversation's lease (``replies.lease_due``)."""
        async with pool.acquire() as conn:
            async with conn.transaction():
                ctx = await replies.reply_context(conn, conversation_id)
                if ctx is None or not ctx.pending:
                    await replies.mark_answered(conn, conversation_id, 0)
                    return []
                decision = decide(self.rules, self._situation(ctx), engine_answers=self.llm is not None)
                if decision.rule != "engine":
                    return await self._apply(conn, ctx, decision)
            turns = [Turn("customer" if d == "inbound" else "business", text)
                     for d, text in await replies.history(conn, ctx.conversation_id, self.rules.llm.history)]
        decision = await self._ask_llm(ctx, turns)
        async with pool.acquire() as conn, conn.transaction():
            now = await replies.reply_context(conn, conversation_id, upto=ctx.pending[-1].id)
            if now is None or not now.pending or now.pending[0].id != ctx.pending[0].id:
                # answered meanwhile (this answer outlived its lease): never a second reply to them
                metrics.REPLIES.labels(decision.engine, "already_answered").inc()
                return []
            if now.ownership_version != ctx.ownership_version or now.human_owned or now.opted_out:
                metrics.REPLIES.labels(decision.engine, "stale").inc()
                await replies.mark_answered(conn, conversation_id, ctx.pending[-1].id)
                return []
            return await self._apply(conn, now, decision)

    async def _ask_llm(self, ctx: ReplyContext, turns: list[Turn]) -> Decision:
        assert self.llm is not None
        started = time.perf_counter()
        try:
            answer = await self.llm.answer(self.rules.llm.system_prompt, turns)
        except LlmError as exc:
            metrics.LLM_FALLBACKS.labels(type(exc).__name__).inc()
            log.warning("LLM failed for conversation %d (%s); the rules answer", ctx.conversation_id, exc)
            fallback = decide(self.rules, self._situation(ctx))
            return Decision(fallback.action, fallback.text, fallback.rule, engine="rules_fallback")
        finally:
            metrics.LLM_LATENCY.observe(time.perf_counter() - started)
        if answer.handover:
            return Decision("handover", answer.reply or self.rules.handover_message, "llm_handover", engine="llm",
                            extra={"reason": answer.handover_reason})
        return Decision("reply", answer.reply, "llm", engine="llm")

    async def _apply(self, conn: asyncpg.Connection, ctx: ReplyContext, decision: Decision,
                     accepted_at: float | None = None) -> list[SendIntent]:
        follow_ups: list[replies.FollowUp] = []
        intent = await self._prepare(conn, ctx, decision, accepted_at, follow_ups)
        await replies.promise_follow_ups(conn, follow_ups)
        await replies.mark_answered(conn, ctx.conversation_id, ctx.pending[-1].id)
        if intent is None or not await ledger.queue(conn, intent, published=True):
            return []  # nothing to send, or answered before (a replay): the ledger already has it
        return [intent]

    async def _prepare(self, conn: asyncpg.Connection, ctx: ReplyContext, decision: Decision,
                       accepted_at: float | None, follow_ups: list[replies.FollowUp]) -> SendIntent | None:
        """The decision's own effects (opt-out, opt-in, handover; a promised follow-up is added to
        ``follow_ups``, which the caller records for all its conversations at once) and the reply to
        queue, if any; the caller marks the messages answered and queues the reply."""
        last = ctx.pending[-1]
        version = ctx.ownership_version
        kind = "text"
        if decision.action == "opt_out":
            await replies.set_opted_out(conn, ctx.contact_id, True)
            kind = "notice"
        elif decision.action == "opt_in":
            await replies.set_opted_out(conn, ctx.contact_id, False)
            kind = "notice"
        elif decision.action == "handover":
            reason = str(decision.extra.get("reason") or decision.rule)
            version = await replies.hand_over(conn, ctx.conversation_id, reason,
                                              {"message_id": last.provider_message_id, "rule": decision.rule,
                                               "text": last.body}, request_id=last.request_id)
            kind = "notice"
            metrics.HANDOVERS.labels(decision.engine).inc()
        elif decision.extra.get("follow_up"):
            follow_ups.append(replies.FollowUp(ctx.conversation_id, last.provider_message_id,
                                               {"message_id": last.provider_message_id, "rule": decision.rule},
                                               last.request_id))
        metrics.REPLIES.labels(decision.engine, decision.rule).inc()
        log.info("decided conversation %d message %s: %s (rule %s, engine %s)", ctx.conversation_id,
                 last.provider_message_id, decision.action, decision.rule, decision.engine,
                 extra={"request_id": last.request_id})
        if decision.action == "none" or not decision.text:
            return None
        return SendIntent(
            dedupe_key=auto_reply_key(last.provider_message_id), conversation_key=ctx.conversation_key,
            conversation_id=ctx.conversation_id, phone_number_id=ctx.phone_number_id, to=ctx.customer,
            text=decision.text, reply_to=last.provider_message_id, quote=quotes(ctx), ownership_version=version,
            customer_timestamp=last.provider_timestamp.timestamp() if last.provider_timestamp else None,
            accepted_at=accepted_at, kind=kind, request_id=last.request_id)
