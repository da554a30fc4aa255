"""Sender agent: ``wa.outbound`` (and the retry topics) → Graph API call → outbound message.

Input: a :class:`~topics.records.SendIntent` keyed by conversation; a batch at a time, in partition
order: a conversation's intents one after the other, different conversations side by side.

The ledger (``outbound_log``) is the authority: an event names a row (its dedupe key, the idempotency
key) and the attempt it expects; what is sent is the row's stored intent. Per intent: read (rows and
send-time checks, one statement per batch), decide (:func:`agents.sending.decide`), wait for the
number's token bucket, claim the row (waiting → ``sending``, guarded by the attempt count and by no
earlier unfinished reply of the conversation), call the Graph API with the number's token, route an
error (:func:`agents.sending.route`). Accepted sends are recorded in one transaction every
``RECORD_EVERY_S`` and when the batch ends; the batch returns (and is committed) after that.

Idempotency: a redelivered finished intent does nothing; a copy of one in flight is ``in_flight``.
A call that may have reached Meta is never resent: ``ambiguous``, settled by its statuses (every
send names its row in ``biz_opaque_callback_data``) or, later, by the worker's settle timer.
Failures: retryable → the next retry topic, then ``wa.dlq`` and a task; permanent → ``wa.dlq`` and
a task; pausing → the number pauses; a refused token → the number's sends wait for a new one;
131047 → the window path. Every ledger change is guarded by the state it expects; one that finds
the row moved on is ``raced``. A media reply is uploaded once per row (:mod:`agents.uploads`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, assert_never

import faust

from wacrm.agents import sending, template_send, uploads
from wacrm.agents.coalesce import Coalescer
from wacrm.agents.ratelimit import PairPacer, TokenBucket
from wacrm.agents.runner import BACKOFF_FIRST_S, BACKOFF_MAX_S, Item, dead_letter, produce, publish
from wacrm.core import metrics
from wacrm.core.errors import Next, Poison, classify
from wacrm.core.settings import Settings
from wacrm.orchestrator.rules import Rules
from wacrm.storage import ledger, ledger_send, numbers, repo
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
    row: ledger_send.LedgerRow
    checks: ledger_send.SendChecks

    @property
    def intent(self) -> SendIntent:
        """The stored intent, with the delivery's own bookkeeping (attempt, due time, origin)."""
        return dataclasses.replace(self.row.intent, attempt=self.event.attempt, not_before=self.event.not_before,
                                   origin=self.event.origin or dataclasses.asdict(self.ref),
                                   first_attempt_at=self.event.first_attempt_at or time.time())


@dataclasses.dataclass(frozen=True, slots=True)
class _Carry:
    """What carrying out a step on a job's row needs besides the step: the intent sent (or meant to be),
    the error of the call (none before a call), and, after a call, the attempts the claim counted and
    the version of the token the call carried."""

    job: _Job
    intent: SendIntent
    error: dict[str, Any] = dataclasses.field(default_factory=dict)
    claimed: int | None = None  # None: a decision on a waiting row, guarded by the event's attempt count
    token_version: int | None = None

    @property
    def expected(self) -> tuple[str, ...]:
        """The states the row must be in for the change: waiting, or ``sending`` (claimed by this worker)."""
        return ledger.WAITING if self.claimed is None else (ledger.SENDING,)

    @property
    def guard(self) -> int | None:
        """The attempt count a waiting row must still have (None for a claimed row)."""
        return self.job.event.attempt if self.claimed is None else None


def _reason(error: dict[str, Any]) -> str:
    return f"{error.get('error')} (code {error.get('code')})"


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

    async def _claim_many(self, claims: list[tuple[int, int, list[int]]]
                          ) -> list[ledger.Claimed | ledger.Earlier | str]:
        async with self._res.pool.acquire() as conn:
            return await ledger.claim_many(conn, claims)

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
            reads = await ledger_send.send_reads_many(conn, list(first))
        jobs: dict[int, _Job] = {}
        for (key, n), read in zip(first.items(), reads, strict=True):
            if read is None:
                raise Poison(f"send intent {key!r} has no row in outbound_log")
            jobs[n] = _Job(items[n].value, items[n].ref, events[n], *read)
        by_conversation: dict[int, list[int]] = {}
        for n, job in jobs.items():
            by_conversation.setdefault(job.row.intent.conversation_id, []).append(n)
        accepted: list[tuple[ledger_send.Accepted, SendIntent]] = []

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

    async def _one(self, job: _Job, passed: list[int], accepted: list[tuple[ledger_send.Accepted, SendIntent]]) -> str:
        intent = job.intent
        decision = self._decide(job, job.checks)
        if isinstance(decision, sending.Send) and intent.kind == "template":
            intent, refused = await self._from_catalogue(job, intent)
            decision = refused or decision
        if isinstance(decision, sending.Send):
            self._pacer.try_send(intent.to)
            await self._wait_for_token(intent.phone_number_id)
            claimed = await self._claim((job.row.id, job.event.attempt, list(passed)))
            if isinstance(claimed, ledger.Claimed):
                outcome = await self._call(job, intent, claimed.attempts, accepted)
                if outcome == "sent":
                    passed.append(job.row.id)
                return outcome
            if isinstance(claimed, ledger.Earlier):  # an earlier reply got in the way since the batch's read
                decision = self._decide(job, dataclasses.replace(job.checks, earlier=claimed))
            else:
                decision = self._decide(dataclasses.replace(job, row=dataclasses.replace(job.row, state=claimed)),
                                        job.checks)
        return await self._carry_out(decision, _Carry(job, intent))

    def _decide(self, job: _Job, checks: ledger_send.SendChecks) -> sending.Decision:
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
                    accepted: list[tuple[ledger_send.Accepted, SendIntent]]) -> str:
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
            r = sending.route(exc, attempts, self._s.send_attempts, self._delays, random.random())
            version = credentials.token_version if credentials is not None else getattr(exc, "token_version", None)
            metrics.SEND_DURATION.labels(r.label).observe(time.perf_counter() - started)
            code = getattr(exc, "code", None)
            metrics.SEND_ERRORS.labels(str(code if code is not None else f"http_{getattr(exc, 'http_status', None)}"))\
                .inc()
            error = exc.as_dict() if hasattr(exc, "as_dict") else {"error": repr(exc)}
            if getattr(exc, "invalid_recipient", False):
                error["code"] = "INVALID_RECIPIENT"
            step: sending.Route | sending.Fail = r
            if code == MARKETING_STOPPED:  # the customer stopped marketing: remembered, never retried
                async with self._res.pool.acquire() as conn:
                    await tstore.marketing_stopped(conn, intent.conversation_id)
                step = sending.Fail("marketing_opted_out", error, "The customer stopped marketing messages: "
                                    "the template was not delivered", dead_letter=False)
            log.warning("send %s attempt %d/%d: %s → %s", intent.dedupe_key, attempts, self._s.send_attempts, exc,
                        step, extra={"request_id": intent.request_id})
            return await self._carry_out(step, _Carry(job, intent, error, attempts, version))
        metrics.SENDS.labels("sent").inc()
        metrics.SEND_DURATION.labels("sent").observe(time.perf_counter() - started)
        log.info("sent %s ledger row %d attempt %d: message %s", intent.dedupe_key, job.row.id, attempts,
                 answer.message_id, extra={"request_id": intent.request_id})
        accepted.append((ledger_send.Accepted(job.row.id, intent.conversation_id, intent.text, answer.message_id, body,
                                       sent_at=time.time()), intent))
        return "sent"

    async def _carry_out(self, step: sending.Decision | sending.Route, c: _Carry) -> str:
        """Carry out a decision on a waiting row or a route on the row this worker claimed: the ledger
        change in one transaction guarded by the state it expects (``raced`` when the row moved on),
        then what it asks for (a retry record, a template, a dead letter). One function per outcome."""
        match step:
            case sending.Skip():
                if step.outcome != "in_flight":
                    metrics.DUPLICATES.labels("send_intent").inc()
                return step.outcome
            case sending.Window():
                return await self._carry_out(sending.window_path(c.intent, self._rules.window_template), c)
            case sending.GiveUp():
                return await self._fail(sending.Fail(step.kind, c.error, f"Message could not be sent: "
                                                     f"{c.error.get('error')}", dead_letter=True), c)
            case sending.MaybeSent():
                return await self._maybe_sent(c)
            case sending.TokenPause():
                return await self._hold_for_token(c)
            case sending.Pause():
                return await self._pause_number(c)
            case sending.Drop():
                return await self._drop(step, c)
            case sending.Park():
                return await self._wait(c, step.until, step.reason, step.outcome, topic=0)
            case sending.Pace():
                metrics.RATE_LIMIT_WAITS.labels("recipient").inc()
                return await self._wait(c, step.until, "pair rate pacing", "paced", topic=1 if self._delays else 0)
            case sending.Retry():
                metrics.RETRIES.labels(str(c.claimed)).inc()
                until = datetime.fromtimestamp(time.time() + step.delay_s, tz=UTC)
                return await self._wait(c, until, str(c.error.get("error")), "retry_scheduled", topic=step.topic)
            case sending.UseTemplate():
                return await self._use_template(step, c)
            case sending.Fail():
                return await self._fail(step, c)
            case sending.Send():  # only ever carried out by a claim and a call (_one)
                raise AssertionError(f"send {c.intent.dedupe_key}: a Send decision is not carried out here")
            case _:
                assert_never(step)

    async def _maybe_sent(self, c: _Carry) -> str:
        """The call may have reached Meta: ``ambiguous``, settled later by its statuses (or a person)."""
        async with self._res.pool.acquire() as conn, conn.transaction():
            done = await ledger.mark_ambiguous(conn, c.job.row.id, c.error)
        if not done:
            return self._raced(c, "ambiguous")
        metrics.AMBIGUOUS_SENDS.labels("marked").inc()
        return self._done(c, "ambiguous")

    async def _hold_for_token(self, c: _Carry) -> str:
        """Meta refused the token: the number's sends wait for a new one (``held``); if a new token came
        while this call was out, the row goes again with it in a moment (``token_replaced``)."""
        intent = c.intent
        async with self._res.pool.acquire() as conn, conn.transaction():
            how = await numbers.pause_for_token(conn, intent.phone_number_id, c.token_version, _reason(c.error))
            until = numbers.UNTIL_NEW_TOKEN if how != "stale" else \
                datetime.fromtimestamp(time.time() + TOKEN_REPLACED_WAIT_S, tz=UTC)
            done = await ledger.wait(conn, c.job.row.id, c.expected, until, c.error, refund=True,
                                   on_topic=False) is not None
            if how == "paused":
                log.warning("business number %s: Meta refused its access token; its sends wait for a new "
                            "one (wacrm numbers add)", intent.phone_number_id)
        self._res.numbers.invalidate()  # the next lookup reads the number's state and token afresh
        outcome = "token_replaced" if how == "stale" else "held"
        return self._done(c, outcome) if done else self._raced(c, outcome)

    async def _pause_number(self, c: _Carry) -> str:
        """The number pauses for ``PAUSE_SECONDS`` (a person is alerted); the row waits, its attempt refunded."""
        intent = c.intent
        until = datetime.fromtimestamp(time.time() + self._s.pause_s, tz=UTC)
        async with self._res.pool.acquire() as conn, conn.transaction():
            await ledger_send.pause_number(conn, intent.phone_number_id, _reason(c.error), self._s.pause_s,
                                       intent.conversation_id)
            done = await ledger.wait(conn, c.job.row.id, c.expected, until, c.error, refund=True,
                                   on_topic=False) is not None
        return self._done(c, "parked") if done else self._raced(c, "parked")

    async def _drop(self, step: sending.Drop, c: _Carry) -> str:
        async with self._res.pool.acquire() as conn, conn.transaction():
            done = await ledger.finish(conn, c.job.row.id, c.expected, ledger.DROPPED, {"error": step.reason},
                                     attempts=c.guard)
        return self._done(c, step.outcome) if done else self._raced(c, step.outcome)

    async def _wait(self, c: _Carry, until: datetime, why: str, outcome: str, *, topic: int) -> str:
        """The row waits until ``until`` (park, pace, retry); with a retry ``topic`` (1-based), the
        delivery goes on that topic, due then; without, the outbox sweep publishes it then."""
        async with self._res.pool.acquire() as conn, conn.transaction():
            left = await ledger.wait(conn, c.job.row.id, c.expected, until, c.error or {"error": why}, refund=False,
                                   on_topic=topic > 0, attempts=c.guard)
        if left is None:
            return self._raced(c, outcome)
        if topic:
            intent = c.intent
            retry = dataclasses.replace(intent, attempt=left, not_before=until.timestamp())
            await (await produce(self._topics[retry_topic(topic)], intent.conversation_key.encode(), encode(retry),
                                 intent.request_id))
        return self._done(c, outcome)

    async def _use_template(self, step: sending.UseTemplate, c: _Carry) -> str:
        """Outside the window: this row is dropped and the template's row queued and published instead."""
        async with self._res.pool.acquire() as conn, conn.transaction():
            done = await ledger.finish(conn, c.job.row.id, c.expected, ledger.DROPPED,
                                     {"error": "24-hour window closed; template sent"}, attempts=c.guard)
            fresh = done and await ledger.queue(conn, step.replacement, published=True)
        if not done:
            return self._raced(c, "window_template")
        if fresh:
            await publish(self._topics["outbound"], [step.replacement])
        return self._done(c, "window_template")

    async def _fail(self, step: sending.Fail, c: _Carry) -> str:
        """Never sent: ``failed``, a task for a person, and a dead letter when the step asks for one."""
        intent, row = c.intent, c.job.row
        async with self._res.pool.acquire() as conn, conn.transaction():
            done = await ledger.record_failed(conn, row.id, c.expected, step.error, intent.conversation_id,
                                            step.kind, step.title, attempts=c.guard, request_id=intent.request_id)
        if not done:
            return self._raced(c, step.kind)
        if step.dead_letter:
            origin = intent.origin or dataclasses.asdict(c.job.ref)
            await dead_letter(self._dlq, RawRef(origin["topic"], origin["partition"], origin["offset"]), c.job.value,
                              f"sender: {step.kind}", str(step.error.get("error")),
                              {**step.error, "attempts": c.claimed or row.attempts,
                               "first_attempt_at": intent.first_attempt_at, "dedupe_key": intent.dedupe_key},
                              request_id=intent.request_id)
        return self._done(c, step.kind)

    def _raced(self, c: _Carry, outcome: str) -> str:
        """The ledger guard missed: the row moved on (another delivery, a person) before ``outcome``."""
        metrics.LEDGER_GUARD_MISSES.labels(outcome).inc()
        log.warning("send %s: the ledger row moved on before %s; left as it is", c.intent.dedupe_key, outcome,
                    extra={"request_id": c.intent.request_id})
        return "raced"

    def _done(self, c: _Carry, outcome: str) -> str:
        metrics.SENDS.labels(outcome).inc()
        log.info("send %s ledger row %d: %s", c.intent.dedupe_key, c.job.row.id, outcome,
                 extra={"request_id": c.intent.request_id})
        return outcome

    async def _record_as_accepted(self, accepted: list[tuple[ledger_send.Accepted, SendIntent]],
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

    async def _record(self, accepted: list[tuple[ledger_send.Accepted, SendIntent]]) -> None:
        """Record accepted sends, retrying in place: the customer has them, a batch retry would not help."""
        delay = BACKOFF_FIRST_S
        outcomes: list[str] = []
        while accepted:
            try:
                async with self._res.pool.acquire() as conn, conn.transaction():
                    await repo.lock_conversations(conn, ids=sorted({a.conversation_id for a, _ in accepted}))
                    outcomes = await ledger_send.record_sent_many(conn, [a for a, _ in accepted], settled_by="answer")
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
                log.error("send %s: message %s %s", intent.dedupe_key, a.wamid, ledger_send.RECORD_PROBLEMS[outcome])
            if intent.automatic and intent.customer_timestamp:
                metrics.REPLY_LATENCY.observe(max(0.0, now - intent.customer_timestamp))
            if intent.automatic and intent.accepted_at:
                metrics.PIPELINE_LATENCY.observe(max(0.0, now - intent.accepted_at))

