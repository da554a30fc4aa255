"""Sender agent: ``wa.outbound`` (and the retry topics) → Graph API call → outbound message.

Input key: the conversation key; a batch at a time, in partition order: a conversation's
intents one after the other, different conversations side by side.

The ledger is the authority: an event only names a row of ``outbound_log`` (its dedupe key)
and the attempt it expects; what is sent is the row's stored intent (recipient, text,
template, reply_to), so writing to ``wa.outbound`` cannot make the number send anything else.

Per intent, in order: read (the batch's rows and send-time checks in one statement), decide
(:func:`agents.sending.decide`), wait for the number's token bucket, claim the row (``queued``/
``retry_wait`` → ``sending``, with the attempt count the event expects, and only while no earlier
reply of the conversation is unfinished), call the Graph API, route an error
(:func:`agents.sending.route`). A crash therefore leaves ``sending`` only the calls actually in
flight. The accepted sends of a batch are recorded (``sent``, the outbound message, the
conversation) in one transaction. Commit: after that.

Idempotency and ambiguity: a redelivered finished intent does nothing; a copy of an intent in
flight (``sending``) is acked as ``in_flight``. A call that may have reached Meta without an
answer is never resent: the row becomes ``ambiguous``; every send names its row in
``biz_opaque_callback_data``, so the status agent settles it from Meta's statuses, and the
worker's settle timer hands what stays unsettled to a person (or resends it, by policy).

A media reply (kind ``media``) is uploaded before its call, once per ledger row, its media id kept on
the row before the send (:mod:`agents.uploads`): a retry sends the same upload.

Failures (:func:`agents.sending.route`): retryable → the next retry topic with a growing delay,
then ``wa.dlq`` and a task; permanent → ``wa.dlq`` and a task; pausing → the number pauses, the
intent waits; a refused token (401, code 190) → that number's sends wait, kept, until a new token
(``numbers add``) resumes them, and the admins are told; 131047 → the window path. Every ledger
change is guarded by the state it expects; one that finds the row moved on is counted and logged
as ``raced``.

Each call carries its number's token (:meth:`storage.numbers.Numbers.token_for`) and waits for its
number's token bucket (the number's own send limit, at most 20/s for a coexistence number).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import faust

from wacrm.agents import sending, template_send, uploads
from wacrm.agents.coalesce import Coalescer
from wacrm.agents.errors import Next, Poison, classify
from wacrm.agents.ratelimit import PairPacer, TokenBucket
from wacrm.agents.runner import BACKOFF_FIRST_S, BACKOFF_MAX_S, Item, dead_letter, produce, publish
from wacrm.core import metrics
from wacrm.core.settings import Settings
from wacrm.orchestrator.rules import Rules
from wacrm.storage import numbers, replies, repo
from wacrm.storage import templates as tstore
from wacrm.topics import retry_topic
from wacrm.topics.records import RawRef, SendIntent, decode_intent, encode
from wacrm.whatsapp.templates import MARKETING_STOPPED

if TYPE_CHECKING:  # the worker's resources; imported for the type only
    from wacrm.agents.context import Resources

log = logging.getLogger("wacrm.sender")
RECORD_EVERY_S = 0.05  # accepted sends are recorded at least this often while a batch runs
TOKEN_REPLACED_WAIT_S = 1.0  # a send refused with a token replaced meanwhile goes again after this


@dataclasses.dataclass(slots=True)
class _Job:
    """One delivery of the batch: the event as it came, and the ledger row it names with its checks."""

    value: bytes
    ref: RawRef
    event: SendIntent
    row: replies.LedgerRow
    checks: replies.SendChecks

    @property
    def intent(self) -> SendIntent:
        """The stored intent, with the delivery's own bookkeeping (attempt, due time, origin)."""
        return dataclasses.replace(self.row.intent, attempt=self.event.attempt, not_before=self.event.not_before,
                                   origin=self.event.origin or dataclasses.asdict(self.ref),
                                   first_attempt_at=self.event.first_attempt_at or time.time())


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
        # the claims of the batch's conversations, made side by side, in one round trip
        self._claim = Coalescer(self._claim_many)

    async def _claim_many(self, claims: list[tuple[int, int, list[int]]]) -> list[repo.Claimed | repo.Earlier | str]:
        async with self._res.pool.acquire() as conn:
            return await repo.claim_many(conn, claims)

    async def handle(self, items: list[Item]) -> list[str]:
        """Read the batch's rows and checks, then each intent: decide, claim, call (a conversation's in
        order, conversations side by side); accepted sends are recorded as they come (every RECORD_EVERY_S)."""
        events = [decode_intent(item.value) for item in items]
        due = max(e.not_before or 0.0 for e in events)
        if due > time.time():
            # A retry topic's head: everything behind it waits the same delay, so sleeping holds up nothing.
            await asyncio.sleep(due - time.time())
        outcomes: list[str] = ["duplicate_in_batch"] * len(items)  # a second copy in one batch: a redelivery
        first: dict[str, int] = {}
        for n, e in enumerate(events):
            first.setdefault(e.dedupe_key, n)
        async with self._res.pool.acquire() as conn:
            reads = await replies.send_reads_many(conn, list(first))
        jobs: dict[int, _Job] = {}
        for (key, n), read in zip(first.items(), reads, strict=True):
            if read is None:
                raise Poison(f"send intent {key!r} has no row in outbound_log")
            jobs[n] = _Job(items[n].value, items[n].ref, events[n], *read)
        by_conversation: dict[int, list[int]] = {}
        for n, job in jobs.items():
            by_conversation.setdefault(job.row.intent.conversation_id, []).append(n)
        accepted: list[tuple[repo.Accepted, SendIntent]] = []

        async def conversation(indices: list[int]) -> None:
            passed: list[int] = []  # rows of this conversation accepted in this batch, not recorded yet
            for n in indices:
                outcomes[n] = await self._one(jobs[n], passed, accepted)

        finished = asyncio.Event()
        recording = asyncio.ensure_future(self._record_as_accepted(accepted, finished))
        results = await asyncio.gather(*(conversation(ns) for ns in by_conversation.values()),
                                       return_exceptions=True)
        finished.set()
        await recording  # what the Graph API accepted is recorded even if another send failed
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return outcomes

    async def _one(self, job: _Job, passed: list[int], accepted: list[tuple[repo.Accepted, SendIntent]]) -> str:
        intent = job.intent
        decision = self._decide(job, job.checks)
        if isinstance(decision, sending.Send) and intent.kind == "template":
            intent, refused = await self._from_catalogue(job, intent)
            decision = refused or decision
        if isinstance(decision, sending.Send):
            self._pacer.try_send(intent.to)
            await self._wait_for_token(intent.phone_number_id)
            claimed = await self._claim((job.row.id, job.event.attempt, list(passed)))
            if isinstance(claimed, repo.Claimed):
                outcome = await self._call(job, intent, claimed.attempts, accepted)
                if outcome == "sent":
                    passed.append(job.row.id)
                return outcome
            if isinstance(claimed, repo.Earlier):  # an earlier reply got in the way since the batch's read
                decision = self._decide(job, dataclasses.replace(job.checks, earlier=claimed))
            else:
                decision = self._decide(dataclasses.replace(job, row=dataclasses.replace(job.row, state=claimed)),
                                        job.checks)
        return await self._carry_out(decision, job, intent)

    def _decide(self, job: _Job, checks: replies.SendChecks) -> sending.Decision:
        return sending.decide(job.row, checks, datetime.now(UTC), attempt=job.event.attempt,
                              template=self._rules.window_template,
                              pair_wait_s=self._pacer.wait_s(job.row.intent.to))

    async def _from_catalogue(self, job: _Job, intent: SendIntent) -> tuple[SendIntent, sending.Fail | None]:
        """A template intent completed from the catalogue, or why it must not go (:mod:`agents.template_send`).
        A completed intent is written back to its waiting ledger row, so the ledger holds what is sent (and a
        status that settles it later records the text the customer saw)."""
        t = intent.template or {}
        async with self._res.pool.acquire() as conn:
            account = await tstore.account_of(conn, self._s, intent.phone_number_id)
            ctx = await tstore.send_context(conn, account.waba_id if account else None, str(t.get("name")),
                                            str(t.get("language")), intent.conversation_id)
            completed, refused = template_send.decide(intent, ctx, datetime.now(UTC))
            if refused is None and completed is not intent:
                await tstore.complete_intent(conn, job.row.id, dataclasses.replace(
                    job.row.intent, template=completed.template, text=completed.text))
        return completed, refused

    async def _wait_for_token(self, phone_number_id: str) -> None:
        number = await self._res.numbers.get(phone_number_id)
        rate = number.send_rate(self._s.rate_limit_per_s) if number is not None else self._s.rate_limit_per_s
        bucket = self._buckets.get(phone_number_id)
        if bucket is None or bucket.rate != rate:  # a number's limit changed: a bucket at the new rate
            bucket = self._buckets[phone_number_id] = TokenBucket(rate, max(1.0, rate))
        delay = bucket.reserve()
        if delay > 0:
            metrics.RATE_LIMIT_WAITS.labels("number").inc()
            metrics.RATE_LIMIT_WAIT_SECONDS.observe(delay)
            await asyncio.sleep(delay)

    # --- carrying out what sending.decide / sending.route returned ----------------------------------

    async def _call(self, job: _Job, intent: SendIntent, attempts: int,
                    accepted: list[tuple[repo.Accepted, SendIntent]]) -> str:
        """The Graph API call of a claimed row (``sending``, ``attempts`` with this one)."""
        started = time.perf_counter()
        credentials: numbers.Credentials | None = None
        try:
            credentials = await self._res.numbers.token_for(intent.phone_number_id)
            media_id = await uploads.media_id_for(self._res, job.row.id, intent, credentials.token) \
                if intent.kind == "media" else None
            body = sending.payload(self._res.graph, job.row.id, intent, media_id)
            answer = await self._res.graph.send(intent.phone_number_id, body, credentials.token)
        except Exception as exc:  # every error is routed by what it says about itself (sending.route)
            r: sending.Route | sending.Fail = sending.route(exc, attempts, self._s.send_attempts, self._delays,
                                                           random.random())
            version = credentials.token_version if credentials is not None else getattr(exc, "token_version", None)
            metrics.SEND_DURATION.labels(type(r).__name__.lower()).observe(time.perf_counter() - started)
            code = getattr(exc, "code", None)
            metrics.SEND_ERRORS.labels(str(code if code is not None else f"http_{getattr(exc, 'http_status', None)}"))\
                .inc()
            error = exc.as_dict() if hasattr(exc, "as_dict") else {"error": repr(exc)}
            if getattr(exc, "invalid_recipient", False):
                error["code"] = "INVALID_RECIPIENT"
            if code == MARKETING_STOPPED:  # the customer stopped marketing: remembered, never retried
                async with self._res.pool.acquire() as conn:
                    await tstore.marketing_stopped(conn, intent.conversation_id)
                r = sending.Fail("marketing_opted_out", error, "The customer stopped marketing messages: "
                                 "the template was not delivered", dead_letter=False)
            log.warning("send %s attempt %d/%d: %s → %s", intent.dedupe_key, attempts, self._s.send_attempts, exc, r,
                        extra={"request_id": intent.request_id})
            return await self._carry_out(r, job, intent, error, claimed=attempts, token_version=version)
        metrics.SENDS.labels("sent").inc()
        metrics.SEND_DURATION.labels("sent").observe(time.perf_counter() - started)
        log.info("sent %s ledger row %d attempt %d: message %s", intent.dedupe_key, job.row.id, attempts,
                 answer.message_id, extra={"request_id": intent.request_id})
        accepted.append((repo.Accepted(job.row.id, intent.conversation_id, intent.text, answer.message_id, body,
                                       sent_at=time.time()), intent))
        return "sent"

    async def _carry_out(self, step: sending.Decision | sending.Route, job: _Job, intent: SendIntent,
                         error: dict[str, Any] | None = None, *, claimed: int | None = None,
                         token_version: int | None = None) -> str:
        """Carry out a decision on a waiting row (``claimed`` None: guarded by the event's attempt count) or
        a route on the row this worker claimed (``sending``, ``claimed`` attempts made), in one transaction,
        then publish what it asks for (a retry, a template) or dead-letter it. ``token_version``: the
        version of the token a refused call carried."""
        if isinstance(step, sending.Skip):
            if step.outcome != "in_flight":
                metrics.DUPLICATES.labels("send_intent").inc()
            return step.outcome
        row, error = job.row, error or {}
        expected, guard = (repo.WAITING, job.event.attempt) if claimed is None else (("sending",), None)
        if isinstance(step, sending.Window):
            step = sending.window_path(intent, self._rules.window_template)
        elif isinstance(step, sending.DeadLetter):
            step = sending.Fail(step.kind, error, f"Message could not be sent: {error.get('error')}", dead_letter=True)
        if isinstance(step, sending.Retry):
            metrics.RETRIES.labels(str(claimed)).inc()
        until = datetime.fromtimestamp(time.time() + (
            step.delay_s if isinstance(step, sending.Retry) else self._s.pause_s), tz=UTC)
        topic, outcome, left, fresh = 0, type(step).__name__.lower(), None, False
        async with self._res.pool.acquire() as conn, conn.transaction():
            if isinstance(step, sending.Ambiguous):
                done = await repo.mark_ambiguous(conn, row.id, error)
            elif isinstance(step, sending.TokenPause):
                how = await numbers.pause_for_token(conn, intent.phone_number_id, token_version,
                                                    f"{error.get('error')} (code {error.get('code')})")
                # stale: a new token came while this call was out; it waits a moment and goes with that one
                until = numbers.UNTIL_NEW_TOKEN if how != "stale" else \
                    datetime.fromtimestamp(time.time() + TOKEN_REPLACED_WAIT_S, tz=UTC)
                done = await repo.wait(conn, row.id, expected, until, error, refund=True, on_topic=False) is not None
                outcome = "token_replaced" if how == "stale" else "held"
                if how == "paused":
                    log.warning("business number %s: Meta refused its access token; its sends wait for a new "
                                "one (wacrm numbers add)", intent.phone_number_id)
            elif isinstance(step, sending.Pause):
                await replies.pause_number(conn, intent.phone_number_id, f"{error.get('error')} (code "
                                           f"{error.get('code')})", self._s.pause_s, intent.conversation_id)
                done = await repo.wait(conn, row.id, expected, until, error, refund=True, on_topic=False) is not None
                outcome = "parked"
            elif isinstance(step, sending.Drop):
                done = await repo.finish(conn, row.id, expected, "dropped", {"error": step.reason}, attempts=guard)
                outcome = step.outcome
            elif isinstance(step, (sending.Park, sending.Pace, sending.Retry)):
                if isinstance(step, sending.Park):
                    until, why, outcome = step.until, step.reason, step.outcome
                elif isinstance(step, sending.Pace):
                    until, why, topic, outcome = step.until, "pair rate pacing", 1 if self._delays else 0, "paced"
                    metrics.RATE_LIMIT_WAITS.labels("recipient").inc()
                else:
                    why, topic, outcome = str(error.get("error")), step.topic, "retry_scheduled"
                left = await repo.wait(conn, row.id, expected, until, error or {"error": why}, refund=False,
                                       on_topic=topic > 0, attempts=guard)
                done = left is not None
            elif isinstance(step, sending.UseTemplate):
                done = await repo.finish(conn, row.id, expected, "dropped",
                                         {"error": "24-hour window closed; template sent"}, attempts=guard)
                fresh = done and await replies.queue(conn, step.replacement, published=True)
                outcome = "window_template"
            else:
                assert isinstance(step, sending.Fail), step
                done = await repo.record_failed(conn, row.id, expected, step.error, intent.conversation_id,
                                                step.kind, step.title, attempts=guard,
                                                request_id=intent.request_id)
                outcome = step.kind
        if isinstance(step, sending.TokenPause):
            self._res.numbers.invalidate()  # the next lookup reads the number's state and token afresh
        if not done:
            metrics.LEDGER_GUARD_MISSES.labels(outcome).inc()
            log.warning("send %s: the ledger row moved on before %s; left as it is", intent.dedupe_key, outcome,
                        extra={"request_id": intent.request_id})
            return "raced"
        if topic and left is not None:
            retry = dataclasses.replace(intent, attempt=left, not_before=until.timestamp())
            await (await produce(self._topics[retry_topic(topic)], intent.conversation_key.encode(), encode(retry),
                                 intent.request_id))
        elif isinstance(step, sending.UseTemplate) and fresh:
            await publish(self._topics["outbound"], [step.replacement])
        elif isinstance(step, sending.Fail) and step.dead_letter:
            origin = intent.origin or dataclasses.asdict(job.ref)
            await dead_letter(self._dlq, RawRef(origin["topic"], origin["partition"], origin["offset"]), job.value,
                              f"sender: {step.kind}", str(step.error.get("error")),
                              {**step.error, "attempts": claimed or row.attempts,
                               "first_attempt_at": intent.first_attempt_at, "dedupe_key": intent.dedupe_key},
                              request_id=intent.request_id)
        elif isinstance(step, sending.Ambiguous):
            metrics.AMBIGUOUS_SENDS.labels("marked").inc()
        metrics.SENDS.labels(outcome).inc()
        log.info("send %s ledger row %d: %s", intent.dedupe_key, row.id, outcome,
                 extra={"request_id": intent.request_id})
        return outcome

    async def _record_as_accepted(self, accepted: list[tuple[repo.Accepted, SendIntent]],
                                  finished: asyncio.Event) -> None:
        """Record accepted sends every ``RECORD_EVERY_S`` while the batch runs, and the rest when it is
        finished: a crash leaves unrecorded (ambiguous, settled by statuses) only the calls in flight
        and the sends of the last moment, not a whole batch's."""
        while True:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(finished.wait(), RECORD_EVERY_S)
            taken = accepted[:]
            del accepted[:len(taken)]
            await self._record(taken)
            if finished.is_set() and not accepted:
                return

    async def _record(self, accepted: list[tuple[repo.Accepted, SendIntent]]) -> None:
        """Record accepted sends, retrying in place: the customer has them, a batch retry would not help."""
        delay = BACKOFF_FIRST_S
        outcomes: list[str] = []
        while accepted:
            try:
                async with self._res.pool.acquire() as conn, conn.transaction():
                    await repo.lock_conversations(conn, ids=sorted({a.conversation_id for a, _ in accepted}))
                    outcomes = await repo.record_sent_many(conn, [a for a, _ in accepted], settled_by="answer")
                break
            except Exception as exc:
                if classify(exc) is not Next.RETRY:
                    raise
                log.warning("recording %d accepted send(s) failed (%r); retrying in %.1fs", len(accepted), exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, BACKOFF_MAX_S)
        now = time.time()
        for (a, intent), outcome in zip(accepted, outcomes, strict=True):
            metrics.SEND_RECORDS.labels(outcome).inc()
            if outcome in ("conflict", "second_copy"):
                log.error("send %s: message %s %s", intent.dedupe_key, a.wamid, repo.RECORD_PROBLEMS[outcome])
            if intent.automatic and intent.customer_timestamp:
                metrics.REPLY_LATENCY.observe(max(0.0, now - intent.customer_timestamp))
            if intent.automatic and intent.accepted_at:
                metrics.PIPELINE_LATENCY.observe(max(0.0, now - intent.accepted_at))

