"""The one loop every agent runs: handle events in batches, route failures, never drop one.

Events come in batches of what is ready (up to ``BATCH_SIZE``, waiting at most
``BATCH_WAIT_MS`` for more), in partition order, and a handler takes a whole batch: one
transaction and one wait for the broker serve many events. On a transient failure the
same batch is retried with exponential backoff (capped), for as long as it takes. When
a batch of several fails otherwise, each of its events is handled alone (every effect
is idempotent, so the events the batch had done are recognised as done), and an event
that fails alone as poison goes to ``wa.dlq`` as a :class:`~topics.records.DeadLetter`.
Events are acked (their offsets become committable) only when the handler returned or
their dead letter was acknowledged by the broker.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import faust

from agents.errors import Next, Poison, classify
from topics import DLQ
from topics.records import DeadLetter, RecordError, RawRef, SendIntent, encode
from wacrm import metrics

log = logging.getLogger("wacrm.agents")

# (value, where it came from, the record's timestamp in epoch seconds)
Item = tuple[bytes, RawRef, float]
# a batch of items, in order -> one outcome label per item, for the metrics
Handler = Callable[[list[Item]], Awaitable[list[str]]]

BACKOFF_FIRST_S = 0.2
BACKOFF_MAX_S = 10.0


async def produce(topic: faust.TopicT, key: bytes, value: bytes) -> Awaitable[Any]:
    """Hand a record to the app's producer; returns the future of the broker's acknowledgement.

    Straight to the producer: ``Topic.send`` wraps every record in a message object with
    callbacks and channel bookkeeping we do not use, a third of the worker's cost of a send.
    """
    return await topic.app.producer.send(topic.get_topic_name(), key, value, None, None, None)


async def publish(topic: faust.TopicT, intents: list[SendIntent]) -> None:
    """Publish intents keyed by conversation and wait for the broker's acknowledgements."""
    futures = [await produce(topic, i.conversation_key.encode(), encode(i)) for i in intents]
    for fut in futures:
        await fut


async def dead_letter(dlq: faust.TopicT, ref: RawRef, value: bytes | None, reason: str, error: str,
                      details: dict[str, Any] | None = None) -> None:
    """Publish a dead letter and wait for the broker's ack."""
    letter = DeadLetter(reason=reason, source_topic=ref.topic, source_partition=ref.partition,
                        source_offset=ref.offset, error=error,
                        value=(value or b"").decode("utf-8", "replace"), at=time.time(), details=details or {})
    await (await produce(dlq, ref.topic.encode(), encode(letter)))
    metrics.DLQ_ENTRIES.labels(reason.split(":", 1)[0]).inc()


async def run(agent: str, stream: faust.StreamT, handler: Handler, ready: asyncio.Event, dlq: faust.TopicT,
              *, batch_size: int, batch_wait_s: float) -> None:
    """Drive ``handler`` over ``stream`` in batches of at most ``batch_size`` events."""
    await ready.wait()
    async for events in stream.take_events(batch_size, within=batch_wait_s):
        items = [(e.value, RawRef(e.message.topic, e.message.partition, e.message.offset), e.message.timestamp)
                 for e in events]
        started = time.perf_counter()
        outcomes = await _handle(agent, handler, items, dlq)
        for outcome in outcomes:
            metrics.EVENTS.labels(agent, outcome).inc()
        metrics.BATCH_SIZE.labels(agent).observe(len(items))
        metrics.BATCH_DURATION.labels(agent).observe(time.perf_counter() - started)


async def _handle(agent: str, handler: Handler, items: list[Item], dlq: faust.TopicT) -> list[str]:
    """The batch's outcomes; transient failures retried in place, others split into single events."""
    delay = BACKOFF_FIRST_S
    while True:
        try:
            return await handler(items)
        except Exception as exc:
            if classify(exc) is not Next.RETRY:
                return await _not_retried(agent, handler, items, dlq, exc)
            metrics.EVENTS.labels(agent, "retried").inc(len(items))
            ref = items[0][1]
            log.warning("%s: transient failure on %d event(s) from %s:%d@%d, retrying in %.1fs: %r",
                        agent, len(items), ref.topic, ref.partition, ref.offset, delay, exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, BACKOFF_MAX_S)


async def _not_retried(agent: str, handler: Handler, items: list[Item], dlq: faust.TopicT,
                       exc: Exception) -> list[str]:
    """A batch that failed for good: split it to find the event at fault, dead-letter that one."""
    if len(items) > 1:  # find the event at fault: each alone, in order
        log.info("%s: a batch of %d failed (%r); handling its events one by one", agent, len(items), exc)
        return [o for item in items for o in await _handle(agent, handler, [item], dlq)]
    value, ref, _ = items[0]
    if isinstance(exc, (Poison, RecordError)):
        log.warning("%s: dead-lettering %s:%d@%d: %s", agent, ref.topic, ref.partition, ref.offset, exc)
        reason = f"{agent}: poison event"
    else:  # a bug: keep the event for a human instead of losing it
        log.exception("%s: unexpected error on %s:%d@%d", agent, ref.topic, ref.partition, ref.offset)
        reason = f"{agent}: unexpected error"
    await _dead_letter_until_acked(dlq, ref, value, reason, repr(exc))
    return ["dead_lettered"]


async def _dead_letter_until_acked(dlq: faust.TopicT, ref: RawRef, value: bytes | None, reason: str,
                                   error: str) -> None:
    delay = BACKOFF_FIRST_S
    while True:
        try:
            await dead_letter(dlq, ref, value, reason, error)
            return
        except Exception as exc:
            if classify(exc) is not Next.RETRY:
                raise
            log.warning("cannot reach %s (%r); retrying in %.1fs", DLQ, exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, BACKOFF_MAX_S)
