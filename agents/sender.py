"""Sender agent: ``wa.outbound`` (and the retry topics) → Graph API call → outbound message.

Input key: the conversation key; a batch at a time, in partition order: a conversation's
intents are sent one after the other, different conversations side by side. Idempotency:
the intent's row in ``outbound_log``, claimed (``queued``/``retry_wait`` → ``sending``,
only with the attempt count the event expects) before the call, in one transaction for
the batch, and finished (``sent``) in the same transaction as the outbound message and
the conversation timestamps, one transaction for the batch's accepted sends. A redelivered
finished intent does nothing.

Ambiguity policy: a row found in ``sending`` means a worker died between the call and the
record; the Graph API has no idempotency key, so it is NOT resent: it is marked
``ambiguous``, counted, logged, and a task asks a human to check.

Before the call, at send time: an automatic draft whose ownership version is older than the
conversation's (a person took over), or for a contact who opted out, is dropped; a free-form
message outside the 24-hour window becomes the configured template, or a task; a paused
business number parks the intent until the pause ends; the number's token bucket is waited
for; a recipient over the pair limit is moved to the first retry topic.

Errors by Meta's code (:mod:`whatsapp.graph`): retryable → the next retry topic with a
growing delay (``SEND_ATTEMPTS``, ``RETRY_BASE_SECONDS`` × ``RETRY_MULTIPLIER``ⁿ, jitter),
then ``wa.dlq`` and a task; permanent → ``wa.dlq`` and a task at once (131047: the window
path); pausing (190, 131048) → the number is paused and a person alerted, the intent waits.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import asyncio
import dataclasses
import logging
import random
import time
from datetime import datetime, timedelta, timezone
from typing import Any

import faust

from agents.errors import Next, Poison, classify
from agents.ratelimit import PairPacer, TokenBucket
from agents.runner import BACKOFF_FIRST_S, BACKOFF_MAX_S, Item, dead_letter, produce, publish
from orchestrator.rules import Rules
from storage import replies, repo
from topics import retry_topic
from topics.records import RawRef, SendIntent, decode_intent, encode
from wacrm import metrics
from wacrm.settings import Settings
from whatsapp.graph import GraphError, InvalidRecipient, PausingGraphError, Sent

if TYPE_CHECKING:  # the worker's resources; imported for the type only
    from agents.context import Resources

log = logging.getLogger("wacrm.sender")

WINDOW = timedelta(hours=24)
REENGAGEMENT = 131047


class Sender:
    def __init__(self, settings: Settings, resources: Resources, rules: Rules,
                 topics: dict[str, faust.TopicT], dlq: faust.TopicT) -> None:
        self._s = settings
        self._res = resources
        self._rules = rules
        self._topics = topics
        self._dlq = dlq
        self._delays = settings.retry_delays()
        self._buckets: dict[str, TokenBucket] = {}
        self._pacer = PairPacer(settings.pair_interval_s, settings.pair_burst)

    async def handle(self, items: list[Item]) -> list[str]:
        """Claim the batch's intents in one transaction, send them (a conversation's in order, the
        conversations side by side), and record every accepted send in one transaction."""
        intents = []
        for value, ref, _ in items:
            intent = decode_intent(value)
            if intent.origin is None:
                intent = dataclasses.replace(intent, origin=dataclasses.asdict(ref), first_attempt_at=time.time())
            intents.append(intent)
        due = max(i.not_before or 0.0 for i in intents)
        if due > time.time():
            # A retry topic's head: everything behind it waits the same delay, so sleeping holds up nothing.
            await asyncio.sleep(due - time.time())
        outcomes: list[str] = [""] * len(items)
        claims: dict[int, tuple[repo.Claim, replies.SendChecks]] = {}
        unclaimed: dict[int, str] = {}
        wanted: list[int] = []
        seen: set[str] = set()
        for n, intent in enumerate(intents):
            if intent.dedupe_key in seen:  # the same intent twice in one batch: a redelivery
                unclaimed[n] = "duplicate_in_batch"
            else:
                seen.add(intent.dedupe_key)
                wanted.append(n)
        async with self._res.pool.acquire() as conn, conn.transaction():
            claimed = await repo.claim_many(conn, [(intents[n].dedupe_key, intents[n].attempt) for n in wanted])
            for n, claim in zip(wanted, claimed):
                if claim is None:
                    raise Poison(f"send intent {intents[n].dedupe_key!r} has no row in outbound_log")
                if not isinstance(claim, repo.Claim):
                    unclaimed[n] = claim
            mine = [(n, claim) for n, claim in zip(wanted, claimed) if isinstance(claim, repo.Claim)]
            checks = await replies.send_checks_many(
                conn, [(intents[n].conversation_id, intents[n].phone_number_id) for n, _ in mine])
            for (n, claim), check in zip(mine, checks):
                assert check is not None, "a claimed intent's conversation exists (foreign key)"
                claims[n] = (claim, check)
        for n, state in unclaimed.items():
            outcomes[n] = await self._not_claimed(intents[n], state)
        by_conversation: dict[str, list[int]] = {}
        for n in claims:
            by_conversation.setdefault(intents[n].conversation_key, []).append(n)
        sent: list[repo.Accepted] = []

        async def conversation(indices: list[int]) -> None:
            for n in indices:
                value, ref, _ = items[n]
                outcomes[n] = await self._dispatch(*claims[n], intents[n], ref, value, sent)

        results = await asyncio.gather(*(conversation(ns) for ns in by_conversation.values()),
                                       return_exceptions=True)
        await self._record(sent)  # what the Graph API accepted is recorded even if another send failed
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return outcomes

    async def _record(self, sent: list[repo.Accepted]) -> None:
        """Record accepted sends, retrying in place: the customer has them, a batch retry would not help."""
        delay = BACKOFF_FIRST_S
        while sent:
            try:
                async with self._res.pool.acquire() as conn, conn.transaction():
                    await repo.lock_conversations(conn, ids=[a.intent.conversation_id for a in sent])
                    await repo.record_sent_many(conn, sent)
                break
            except Exception as exc:
                if classify(exc) is not Next.RETRY:
                    raise
                log.warning("recording %d accepted send(s) failed (%r); retrying in %.1fs", len(sent), exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, BACKOFF_MAX_S)
        now = time.time()
        for a in sent:
            if a.intent.automatic and a.intent.customer_timestamp:
                metrics.REPLY_LATENCY.observe(max(0.0, now - a.intent.customer_timestamp))
            if a.intent.automatic and a.intent.accepted_at:
                metrics.PIPELINE_LATENCY.observe(max(0.0, now - a.intent.accepted_at))

    async def _dispatch(self, claimed: repo.Claim, checks: replies.SendChecks, intent: SendIntent, ref: RawRef,
                        value: bytes, sent: list[repo.Accepted]) -> str:
        """The send-time checks and limits, then the call; an accepted send is appended to ``sent``."""
        if intent.automatic and (checks.ownership_version > intent.ownership_version
                                 or (checks.human_owned and intent.kind != "notice")):
            return await self._drop(claimed, intent, "a person took over the conversation", "stale")
        if intent.automatic and checks.opted_out and intent.kind != "notice":
            return await self._drop(claimed, intent, "the contact opted out", "opted_out")
        if checks.paused_until is not None:
            return await self._park(claimed, intent, checks.paused_until.timestamp(), "number paused")
        window_closed = checks.last_inbound_at is None or \
            datetime.now(timezone.utc) - checks.last_inbound_at > WINDOW
        if window_closed and intent.kind != "template":
            return await self._window_closed(claimed, intent, ref, value)
        wait = self._pacer.try_send(intent.to)
        if wait > 0:
            metrics.RATE_LIMIT_WAITS.labels("recipient").inc()
            return await self._retry_later(claimed, intent, time.time() + wait, {"error": "pair rate pacing"},
                                           refund=True, topic_attempt=1)
        bucket = self._buckets.get(intent.phone_number_id)
        if bucket is None:
            rate = self._s.rate_limit_per_s
            bucket = self._buckets[intent.phone_number_id] = TokenBucket(rate, max(1.0, rate))
        delay = bucket.reserve()
        if delay > 0:
            metrics.RATE_LIMIT_WAITS.labels("number").inc()
            metrics.RATE_LIMIT_WAIT_SECONDS.observe(delay)
            await asyncio.sleep(delay)
        return await self._send(claimed, intent, ref, value, sent)

    def _payload(self, claimed: repo.Claim, intent: SendIntent) -> dict[str, Any]:
        graph = self._res.graph
        callback = f"ol:{claimed.outbound_log_id}"
        if intent.kind == "template":
            t = intent.template or {}
            return graph.template_payload(intent.to, t["name"], t["language"], t.get("parameters") or (),
                                          callback_data=callback)
        return graph.text_payload(intent.to, intent.text, reply_to=intent.reply_to, callback_data=callback)

    async def _send(self, claimed: repo.Claim, intent: SendIntent, ref: RawRef, value: bytes,
                    sent: list[repo.Accepted]) -> str:
        started = time.perf_counter()
        try:
            payload = self._payload(claimed, intent)
            accepted: Sent = await self._res.graph.send(intent.phone_number_id, payload)
        except InvalidRecipient as exc:
            metrics.SENDS.labels("invalid_recipient").inc()
            error = {**exc.as_dict(), "code": "INVALID_RECIPIENT"}
            return await self._fail(claimed, intent, ref, value, error, "invalid_recipient")
        except GraphError as exc:
            outcome = "retryable_error" if exc.retryable else (
                "paused" if isinstance(exc, PausingGraphError) else "permanent_error")
            metrics.SENDS.labels(outcome).inc()
            metrics.SEND_DURATION.labels(outcome).observe(time.perf_counter() - started)
            metrics.SEND_ERRORS.labels(str(exc.code if exc.code is not None else f"http_{exc.http_status}")).inc()
            return await self._on_error(claimed, intent, ref, value, exc)
        metrics.SENDS.labels("sent").inc()
        metrics.SEND_DURATION.labels("sent").observe(time.perf_counter() - started)
        sent.append(repo.Accepted(intent, claimed, accepted.message_id, payload))
        return "sent"

    async def _on_error(self, claimed: repo.Claim, intent: SendIntent, ref: RawRef, value: bytes,
                        exc: GraphError) -> str:
        if isinstance(exc, PausingGraphError):
            async with self._res.pool.acquire() as conn, conn.transaction():
                await replies.pause_number(conn, intent.phone_number_id, f"{exc} (code {exc.code})", self._s.pause_s,
                                           intent.conversation_id)
            log.error("sending from %s paused for %.0fs: %s", intent.phone_number_id, self._s.pause_s, exc)
            return await self._park(claimed, intent, time.time() + self._s.pause_s, str(exc))
        if exc.code == REENGAGEMENT:
            return await self._window_closed(claimed, intent, ref, value)
        if exc.retryable and claimed.attempts < self._s.send_attempts:
            delay = self._delays[claimed.attempts - 1] * (0.8 + 0.4 * random.random())
            metrics.RETRIES.labels(str(claimed.attempts)).inc()
            log.warning("send %s attempt %d/%d failed (%s); retry in %.1fs", intent.dedupe_key, claimed.attempts,
                        self._s.send_attempts, exc, delay)
            return await self._retry_later(claimed, intent, time.time() + delay, exc.as_dict(),
                                           refund=False, topic_attempt=claimed.attempts)
        return await self._fail(claimed, intent, ref, value, exc.as_dict(),
                                "send_failed" if not exc.retryable else "retries_exhausted")

    async def _retry_later(self, claimed: repo.Claim, intent: SendIntent, at: float, error: dict[str, Any], *,
                           refund: bool, topic_attempt: int) -> str:
        """Park the intent in the ledger and publish it to the retry topic that will hold it until ``at``."""
        topic_attempt = min(topic_attempt, len(self._delays)) if self._delays else 0
        async with self._res.pool.acquire() as conn, conn.transaction():
            attempts = await replies.wait_for_retry(conn, claimed.outbound_log_id, at, error, refund_attempt=refund,
                                                    on_topic=topic_attempt > 0)
        if topic_attempt == 0:  # no retry topics configured: the outbox sweep publishes it when due
            return "retry_wait"
        retry = dataclasses.replace(intent, attempt=attempts, not_before=at)
        await (await produce(self._topics[retry_topic(topic_attempt)], intent.conversation_key.encode(),
                             encode(retry)))
        return "retry_scheduled"

    async def _park(self, claimed: repo.Claim, intent: SendIntent, until: float, why: str) -> str:
        """Wait in the ledger without using an attempt; the outbox sweep publishes it again when due."""
        async with self._res.pool.acquire() as conn, conn.transaction():
            await replies.wait_for_retry(conn, claimed.outbound_log_id, until, {"error": why}, refund_attempt=True,
                                         on_topic=False)
        metrics.SENDS.labels("parked").inc()
        return "parked"

    async def _drop(self, claimed: repo.Claim, intent: SendIntent, why: str, outcome: str) -> str:
        async with self._res.pool.acquire() as conn, conn.transaction():
            await repo.mark_state(conn, intent.dedupe_key, "dropped", {"error": why})
        metrics.SENDS.labels(outcome).inc()
        return outcome

    async def _window_closed(self, claimed: repo.Claim, intent: SendIntent, ref: RawRef, value: bytes) -> str:
        """Outside the 24-hour window only a template may go: the configured one, else a person decides."""
        template = self._rules.window_template
        if template is None or intent.kind == "template":
            async with self._res.pool.acquire() as conn, conn.transaction():
                await repo.record_failed(conn, claimed, "failed", {"error": "24-hour window closed", "code": 131047},
                                         intent.conversation_id, "window_closed",
                                         "The 24-hour window is closed: reply with an approved template")
            metrics.SENDS.labels("window_closed").inc()
            return "window_closed"
        replacement = dataclasses.replace(
            intent, dedupe_key=f"template:{intent.dedupe_key}", kind="template", attempt=0, not_before=None,
            template={"name": template.name, "language": template.language, "parameters": list(template.parameters)})
        async with self._res.pool.acquire() as conn, conn.transaction():
            await repo.mark_state(conn, intent.dedupe_key, "dropped", {"error": "24-hour window closed; template sent"})
            queued = await replies.queue(conn, replacement, published=True)
        if queued:
            await publish(self._topics["outbound"], [replacement])
        metrics.SENDS.labels("window_template").inc()
        return "window_template"

    async def _fail(self, claimed: repo.Claim, intent: SendIntent, ref: RawRef, value: bytes,
                    error: dict[str, Any], kind: str) -> str:
        async with self._res.pool.acquire() as conn, conn.transaction():
            await repo.record_failed(conn, claimed, "failed", error, intent.conversation_id, kind,
                                     f"Message could not be sent: {error.get('error')}")
        origin = intent.origin or dataclasses.asdict(ref)
        await dead_letter(self._dlq, RawRef(origin["topic"], origin["partition"], origin["offset"]), value,
                          f"sender: {kind}", str(error.get("error")),
                          {**error, "attempts": claimed.attempts, "first_attempt_at": intent.first_attempt_at,
                           "dedupe_key": intent.dedupe_key})
        return kind

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

