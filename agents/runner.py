"""The one loop every agent runs: batches through a :class:`Stage`, failures routed, no event passed unhandled.

Batches: what is ready, up to ``BATCH_SIZE`` (waiting at most ``BATCH_WAIT_MS`` for more), in
partition order, straight from the agent's channel (:func:`agents.batches.batches`).

Failures, routed by :func:`core.errors.classify`:

- RETRY: the same batch again, with capped exponential backoff, for as long as the fault lasts
  (``wacrm_agent_stalled_seconds{agent}``: for how long; 0 while it flows);
- otherwise a batch of several is split and each event handled alone; one that fails alone is
  dead-lettered to ``wa.dlq`` (DEAD_LETTER; AMBIGUOUS: a person decides; a bug, logged with its
  traceback) or dropped with a reason (STALE). A stage may also return a
  :class:`~core.errors.Poison` as an event's outcome: the runner dead-letters that event;
- a storm of dead letters (:mod:`agents.dlqlimit`) stops the worker: the event that tripped the
  limit is neither dead-lettered nor acked.

Acks: an event is acked (its offset becomes committable) only when its stage returned for it or its
dead letter was acknowledged by the broker; nothing but the runner acks, and faust commits a
partition only up to the first offset not acked. A stop (SIGTERM, the agent cancelled) gives the
batch in hand ``STOP_GRACE_SECONDS`` to finish (shielded from the cancel), then leaves it unacked;
a rebalance does not cancel the agent; a failure while the worker's resources close is not judged
(left unacked). A crash inside the runner, a dead letter that cannot be produced or a dead-letter
storm leaves the batch unacked and halts the worker (``halt``: non-zero exit; restarted, it resumes
from the last committed offset) instead of going on with a gap.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

import faust

from wacrm.agents.batches import ack, batches
from wacrm.agents.dlqlimit import DlqLimit, DlqLimitConfig
from wacrm.core import metrics
from wacrm.core.errors import Next, Poison, classify, expected
from wacrm.core.logs import request_scope
from wacrm.topics import DLQ
from wacrm.topics.records import (
    DeadLetter,
    Headers,
    RawRef,
    SendIntent,
    bounded_dead_letter,
    check_size,
    dead_letter_headers,
    encode,
    request_headers,
    request_id_of,
)

log = logging.getLogger("wacrm.agents")


class Item(NamedTuple):
    """One event of a batch as a stage sees it."""

    value: bytes
    ref: RawRef  # where it came from
    timestamp: float  # the record's timestamp, epoch seconds
    request_id: str | None = None  # the webhook call that caused it (record header wacrm-request-id)


# An item's outcome: a label for the metrics, or the Poison that makes the item a dead letter
# (the runner writes it, within the storm limit).
Outcome = str | Poison


class Stage(Protocol):
    """What an agent does with its events; the runner drives it (:class:`Runner`).

    Gets: a batch of 1 to ``batch_size`` items of one topic, in partition order, never empty.
    Before returning: every effect of every item is durable (committed in PostgreSQL, records acked by
    the broker), because the runner acks the batch as soon as ``handle`` returns; it returns one
    :data:`Outcome` per item, in order.
    Raises: the runner routes the exception by :func:`core.errors.classify`: RETRY handles the same
    batch again, so effects must be idempotent; otherwise each item is handled again alone and the one
    that fails alone is dead-lettered (or dropped, STALE). It may be cancelled (a stop after
    ``STOP_GRACE_SECONDS``): the batch is then left unacked and read again after a restart.
    """

    async def handle(self, items: list[Item], /) -> Sequence[Outcome]: ...


# stops the worker with a non-zero exit; the runner waits to be cancelled after calling it
Halt = Callable[[BaseException], Awaitable[None]]

BACKOFF_FIRST_S = 0.2
BACKOFF_MAX_S = 10.0
DEAD_LETTERED = "dead_lettered"


class WorkerHalted(Exception):
    """The worker must stop: going on would skip events or drain a topic into ``wa.dlq``."""


class _Unfinished(Exception):
    """The batch cannot be finished now (the worker is stopping); leave it unacked."""


@dataclass(frozen=True, slots=True)
class RunnerConfig:
    batch_size: int
    batch_wait_s: float
    stop_grace_s: float
    dlq_limit: DlqLimitConfig


async def produce(topic: faust.TopicT, key: bytes, value: bytes, request_id: str | None = None,
                  headers: Headers | None = None) -> Awaitable[Any]:
    """Hand a record to the app's producer; returns the future of the broker's acknowledgement.

    Straight to the producer: ``Topic.send`` wraps every record in a message object with
    callbacks and channel bookkeeping we do not use, a third of the worker's cost of a send.
    A value above :data:`topics.records.RECORD_MAX_BYTES` raises
    :class:`~topics.records.RecordTooLarge` before it reaches the producer (a dead letter for
    the event that made it, not a producer error after the fact). ``request_id`` goes in the record's
    headers (:data:`topics.records.REQUEST_ID_HEADER`); ``headers``, when given, are the record's whole headers.
    """
    check_size(value)
    return await topic.app.producer.send(topic.get_topic_name(), key, value, None, None,
                                         headers if headers is not None else request_headers(request_id))


async def publish(topic: faust.TopicT, intents: list[SendIntent]) -> None:
    """Publish intents keyed by conversation and wait for the broker's acknowledgements."""
    futures = [await produce(topic, i.conversation_key.encode(), encode(i), i.request_id) for i in intents]
    for fut in futures:
        await fut


async def dead_letter(dlq: faust.TopicT, ref: RawRef, value: bytes | None, reason: str, error: str,
                      details: dict[str, Any] | None = None, request_id: str | None = None) -> None:
    """Publish a dead letter (with the request id of the event's webhook call in its headers) and wait
    for the broker's ack.

    A letter too large for the bus is reduced to a reference (source topic, partition and
    offset, the reason, the start of its value): :func:`topics.records.bounded_dead_letter`.
    """
    letter = DeadLetter(reason=reason, source_topic=ref.topic, source_partition=ref.partition,
                        source_offset=ref.offset, error=error,
                        value=(value or b"").decode("utf-8", "replace"), at=time.time(), details=details or {})
    letter, data = bounded_dead_letter(letter)
    if letter.details.get("reduced"):
        log.warning("dead letter of %s:%d@%d reduced to a reference (%s bytes)", ref.topic, ref.partition,
                    ref.offset, letter.details.get("letter_bytes"))
    await (await produce(dlq, ref.topic.encode(), data, headers=dead_letter_headers(letter, request_id)))
    metrics.DLQ_ENTRIES.labels(reason.split(":", 1)[0]).inc()


def shared_request_id(items: Sequence[Item]) -> str | None:
    """The request id of a batch whose events all came from one webhook call (always so for a batch of one)."""
    ids = {item.request_id for item in items}
    return ids.pop() if len(ids) == 1 else None


class _Stall:
    """``wacrm_agent_stalled_seconds{agent}``: computed when scraped, so it grows while we wait."""

    def __init__(self, agent: str) -> None:
        self.since: float | None = None
        metrics.AGENT_STALLED.labels(agent).set_function(
            lambda: 0.0 if self.since is None else time.monotonic() - self.since)

    def retrying(self) -> None:
        if self.since is None:
            self.since = time.monotonic()

    def flowing(self) -> None:
        self.since = None


class Runner:
    """Drives one agent's stage over its stream (one runner per agent, ``concurrency=1``)."""

    def __init__(self, agent: str, stage: Stage, dlq: faust.TopicT, ready: asyncio.Event,
                 config: RunnerConfig, halt: Halt) -> None:
        self.agent = agent
        self._stage = stage
        self._dlq = dlq
        self._ready = ready
        self._config = config
        self._halt = halt
        self._limit = DlqLimit(config.dlq_limit)
        self._stall = _Stall(agent)

    async def run(self, stream: faust.Stream) -> None:
        await self._ready.wait()
        async for events in batches(stream, self._config.batch_size, self._config.batch_wait_s):
            items = [Item(e.value, RawRef(e.message.topic, e.message.partition, e.message.offset),
                          e.message.timestamp, request_id_of(e.message.headers)) for e in events]
            started = time.perf_counter()
            try:
                outcomes, stopping = await self._finish_or_leave(items)
            except BaseException as exc:  # left unacked: never committed by this worker
                await self._not_finished(exc, items, stopping=stream.app.should_stop)
                raise
            ack(events)
            for outcome in outcomes:
                metrics.EVENTS.labels(self.agent, outcome).inc()
            metrics.BATCH_SIZE.labels(self.agent).observe(len(items))
            metrics.BATCH_DURATION.labels(self.agent).observe(time.perf_counter() - started)
            if stopping:  # the batch in hand finished within the grace; the stop goes on
                raise asyncio.CancelledError()

    async def _not_finished(self, exc: BaseException, items: list[Item], *, stopping: bool) -> None:
        """The batch is left unacked; stop the worker when going on would leave a gap."""
        first = items[0].ref
        where = f"{len(items)} event(s) from {first.topic}:{first.partition}@{first.offset}"
        if isinstance(exc, asyncio.CancelledError) and stopping:
            log.info("%s: stopped before finishing %s; left unacked, they are handled after a restart",
                     self.agent, where)
            return
        if isinstance(exc, asyncio.CancelledError):
            # Cancelled while the app goes on (faust restarts such an actor): the restarted one would ack
            # the events after this batch, and faust can commit past a single missing offset.
            metrics.AGENT_HALTS.labels(self.agent, "cancelled").inc()
            log.error("%s: STOPPING THE WORKER: the agent was cancelled while the worker runs; %s left unacked, "
                      "the worker resumes from the last committed offset when restarted", self.agent, where)
            await self._halt(WorkerHalted(f"{self.agent}: cancelled in the middle of a batch"))
            await asyncio.Event().wait()  # until the worker's stop cancels us again
        if isinstance(exc, _Unfinished):
            log.warning("%s: %s; %s left unacked", self.agent, exc, where)
        elif isinstance(exc, WorkerHalted):
            metrics.AGENT_HALTS.labels(self.agent, "dlq_storm").inc()
            log.error("%s: STOPPING THE WORKER: %s. %s left unacked and not dead-lettered.", self.agent, exc, where)
        else:
            metrics.AGENT_HALTS.labels(self.agent, "runner_crash").inc()
            log.critical("%s: STOPPING THE WORKER: the runner crashed (%r); %s left unacked, the worker resumes "
                         "from the last committed offset when restarted", self.agent, exc, where, exc_info=exc)
            exc = WorkerHalted(f"{self.agent}: the runner crashed: {exc!r}")
        if not isinstance(exc, _Unfinished):
            await self._halt(exc)
        await asyncio.Event().wait()  # hold the stream (and its unacked batch) until the worker stops us

    async def _finish_or_leave(self, items: list[Item]) -> tuple[list[str], bool]:
        """The batch's outcomes, and whether a stop came meanwhile. Cancelled: the batch gets up to
        ``stop_grace_s`` more to finish (the caller acks it, then stops); else CancelledError."""
        with request_scope(shared_request_id(items)):  # the task's log lines carry it (the task copies the context)
            task = asyncio.ensure_future(self._handle(items))
        try:
            return await asyncio.shield(task), False
        except asyncio.CancelledError:
            if not task.done():
                log.info("%s: stopping; the batch of %d in hand gets up to %.1fs to finish", self.agent,
                         len(items), self._config.stop_grace_s)
                with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                    await asyncio.wait_for(asyncio.shield(task), self._config.stop_grace_s)
            if task.done() and not task.cancelled() and task.exception() is None:
                log.info("%s: the batch of %d in hand finished before the stop", self.agent, len(items))
                return task.result(), True
            task.cancel()
            with contextlib.suppress(BaseException):
                await asyncio.wait({task}, timeout=2)
            raise

    async def _handle(self, items: list[Item]) -> list[str]:
        """Outcomes of ``items``; transient failures retried in place, others split into single events."""
        delay = BACKOFF_FIRST_S
        while True:
            try:
                outcomes = await self._stage.handle(items)
            except Exception as exc:
                if not self._ready.is_set():  # resources closing: nothing is judged while the worker stops
                    raise _Unfinished(f"failed while the worker stops ({exc!r})") from exc
                if classify(exc) is not Next.RETRY:
                    self._stall.flowing()
                    return await self._not_retried(items, exc)
                self._stall.retrying()
                metrics.AGENT_RETRIES.labels(self.agent).inc()
                metrics.EVENTS.labels(self.agent, "retried").inc(len(items))
                ref = items[0].ref
                log.warning("%s: transient failure on %d event(s) from %s:%d@%d, retrying in %.1fs: %r",
                            self.agent, len(items), ref.topic, ref.partition, ref.offset, delay, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, BACKOFF_MAX_S)
                continue
            self._stall.flowing()
            return [await self._outcome(item, outcome) for item, outcome in zip(items, outcomes, strict=True)]

    async def _outcome(self, item: Item, outcome: Outcome) -> str:
        """Count a handled event; dead-letter the ones the stage returned as poison."""
        if isinstance(outcome, Poison):
            ref = item.ref
            with request_scope(item.request_id):
                log.warning("%s: dead-lettering %s:%d@%d: %s", self.agent, ref.topic, ref.partition, ref.offset,
                            outcome)
            return await self._dead_letter(item, f"{self.agent}: poison event", repr(outcome))
        self._limit.record(outcome == DEAD_LETTERED)
        return outcome

    async def _not_retried(self, items: list[Item], exc: Exception) -> list[str]:
        """A batch that failed for good: split it to find the event at fault, then route that one."""
        if len(items) > 1:  # find the event at fault: each alone, in order
            log.info("%s: a batch of %d failed (%r); handling its events one by one", self.agent, len(items), exc)
            return [o for item in items for o in await self._handle([item])]
        item = items[0]
        with request_scope(item.request_id):
            return await self._route_failed(item, exc)

    async def _route_failed(self, item: Item, exc: Exception) -> list[str]:
        """One event that failed for good: dropped (stale) or dead-lettered, with its reason logged."""
        ref = item.ref
        at = f"{ref.topic}:{ref.partition}@{ref.offset}"
        step = classify(exc)
        if step is Next.STALE:
            log.info("%s: dropping %s, it no longer applies: %s", self.agent, at, exc)
            self._limit.record(False)
            return ["stale"]
        if step is Next.AMBIGUOUS:  # the stage should have settled it; a person decides
            log.warning("%s: dead-lettering %s, its outcome is ambiguous: %s", self.agent, at, exc)
            return [await self._dead_letter(item, f"{self.agent}: ambiguous", repr(exc))]
        if expected(exc):
            log.warning("%s: dead-lettering %s: %r", self.agent, at, exc)
            return [await self._dead_letter(item, f"{self.agent}: poison event", repr(exc))]
        # a bug: keep the event for a human instead of losing it
        log.error("%s: unexpected error on %s", self.agent, at, exc_info=exc)
        return [await self._dead_letter(item, f"{self.agent}: unexpected error", repr(exc))]

    async def _dead_letter(self, item: Item, reason: str, error: str) -> str:
        """Dead-letter one event, within the storm limit; retried in place until the broker acks it."""
        if not self._limit.allows():
            raise WorkerHalted(
                f"too many dead letters: {self._limit.describe()}. Find out why these events fail "
                f"(the letters in wa.dlq, the worker log), fix the cause or raise the limit, then restart the worker")
        delay = BACKOFF_FIRST_S
        while True:
            try:
                await dead_letter(self._dlq, item.ref, item.value, reason, error, request_id=item.request_id)
                break
            except Exception as exc:
                if classify(exc) is not Next.RETRY:
                    raise WorkerHalted(f"cannot produce a dead letter to {DLQ}: {exc!r}") from exc
                self._stall.retrying()
                log.warning("%s: cannot reach %s (%r); retrying in %.1fs", self.agent, DLQ, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, BACKOFF_MAX_S)
        self._stall.flowing()
        self._limit.record(True)
        return DEAD_LETTERED
