"""Sender agent: ``wa.outbound`` → Graph API call → outbound message in PostgreSQL.

Input key: the conversation key; one event at a time per partition. Idempotency: the
intent's row in ``outbound_log``, claimed (``queued`` → ``sending``) before the call and
finished (``sent``) in the same transaction as the outbound message and the conversation
timestamps. A redelivered finished intent does nothing.

Ambiguity policy: a row found in ``sending`` means a worker died between the call and the
record; the Graph API has no idempotency key, so it is NOT resent: it is marked
``ambiguous``, counted, logged, and a task asks a human to check.

Failures: retryable Graph errors are retried in place (``SEND_ATTEMPTS`` with backoff),
then dead-lettered; permanent and pausing errors fail the intent at once. Every failure
leaves a task for a human and a dead letter. A draft whose ownership version is older than
the conversation's (a human took over) is dropped, never sent.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time

import faust

from agents.errors import Poison
from agents.runner import dead_letter
from storage import repo
from topics.records import RawRef, SendIntent, decode_intent
from wacrm import metrics
from whatsapp.graph import GraphError, InvalidRecipient, PausingGraphError, Sent

log = logging.getLogger("wacrm.sender")

SEND_ATTEMPTS = 3
RETRY_FIRST_S = 0.5


class Sender:
    def __init__(self, resources: "Resources", dlq: faust.TopicT) -> None:  # noqa: F821
        self._res = resources
        self._dlq = dlq

    async def handle(self, value: bytes, ref: RawRef, at: float) -> str:
        intent = decode_intent(value)
        pool = self._res.pool
        async with pool.acquire() as conn:
            claimed = await repo.claim(conn, intent.dedupe_key)
            if isinstance(claimed, repo.Claim):
                current = await repo.ownership_version(conn, intent.conversation_id)
                if current is not None and current > intent.ownership_version:
                    async with conn.transaction():
                        await repo.mark_state(conn, intent.dedupe_key, "dropped",
                                              {"error": "a human took over the conversation"})
                    metrics.SENDS.labels("stale").inc()
                    return "stale"
        if claimed is None:
            raise_missing(intent)
        if not isinstance(claimed, repo.Claim):
            return await self._not_claimed(intent, claimed)

        sent: Sent | None = None
        payload: dict | None = None
        try:
            payload = self._res.graph.text_payload(intent.to, intent.text, reply_to=intent.reply_to,
                                                   callback_data=f"ol:{claimed.outbound_log_id}")
        except InvalidRecipient as exc:
            metrics.SENDS.labels("invalid_recipient").inc()
            error: GraphError | None = exc
        else:
            sent, error = await self._call(intent, payload)
        if sent is not None:
            assert payload is not None
            async with pool.acquire() as conn, conn.transaction():
                await repo.record_sent(conn, intent, claimed, sent.message_id, payload)
            now = time.time()
            if intent.customer_timestamp:
                metrics.REPLY_LATENCY.observe(max(0.0, now - intent.customer_timestamp))
            if intent.accepted_at:
                metrics.PIPELINE_LATENCY.observe(max(0.0, now - intent.accepted_at))
            return "sent"
        assert error is not None
        state = "failed"
        kind = "send_paused" if isinstance(error, PausingGraphError) else "send_failed"
        async with pool.acquire() as conn, conn.transaction():
            await repo.record_failed(conn, claimed, state, error.as_dict(), intent.conversation_id, kind,
                                     f"Reply could not be sent: {error}")
        await dead_letter(self._dlq, ref, value, f"sender: {kind}", str(error), error.as_dict())
        return kind

    async def _call(self, intent: SendIntent, payload: dict) -> tuple[Sent | None, GraphError | None]:
        delay = RETRY_FIRST_S
        error: GraphError | None = None
        for attempt in range(1, SEND_ATTEMPTS + 1):
            started = time.perf_counter()
            try:
                sent = await self._res.graph.send(intent.phone_number_id, payload)
            except GraphError as exc:
                outcome = "retryable_error" if exc.retryable else (
                    "paused" if isinstance(exc, PausingGraphError) else "permanent_error")
                metrics.SENDS.labels(outcome).inc()
                metrics.SEND_DURATION.labels(outcome).observe(time.perf_counter() - started)
                error = exc
                if not exc.retryable:
                    break
                log.warning("send %s attempt %d/%d failed: %s", intent.dedupe_key, attempt, SEND_ATTEMPTS, exc)
                if attempt < SEND_ATTEMPTS:
                    await asyncio.sleep(delay * (0.5 + random.random()))
                    delay *= 2
                continue
            metrics.SENDS.labels("sent").inc()
            metrics.SEND_DURATION.labels("sent").observe(time.perf_counter() - started)
            return sent, None
        return None, error

    async def _not_claimed(self, intent: SendIntent, state: str) -> str:
        if state == "sending":
            # Crash between the Graph API call and its record: explicit policy, no resend.
            async with self._res.pool.acquire() as conn, conn.transaction():
                log_id = await repo.mark_state(conn, intent.dedupe_key, "ambiguous",
                                               {"error": "claimed but never recorded; not resent"})
                await repo.create_task(conn, intent.conversation_id, "send_ambiguous",
                                       "A reply may or may not have been sent (worker stopped mid-send)",
                                       {"dedupe_key": intent.dedupe_key}, dedupe_key=f"outbound:{log_id}:ambiguous")
            log.warning("send %s was in flight when a worker stopped; marked ambiguous, not resent",
                        intent.dedupe_key)
            metrics.SENDS.labels("ambiguous").inc()
            return "ambiguous"
        metrics.DUPLICATES.labels("send_intent").inc()
        return "duplicate"


def raise_missing(intent: SendIntent) -> None:
    raise Poison(f"send intent {intent.dedupe_key!r} has no row in outbound_log")
