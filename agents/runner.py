"""The one loop every agent runs: handle each event, route failures, never drop one.

For each event, in partition order: call the handler; on a transient failure retry the
same event with exponential backoff (capped), for as long as it takes; on a poison event
publish a :class:`~topics.records.DeadLetter` to ``wa.dlq`` and go on. The event is acked
(and its offset becomes committable) only when the handler returned or the dead letter
was acknowledged by the broker.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import faust

from agents.errors import POISON, TRANSIENT
from topics import DLQ
from topics.records import DeadLetter, RawRef, encode
from wacrm import metrics

log = logging.getLogger("wacrm.agents")

# (value, where it came from, the record's timestamp in epoch seconds) -> outcome label
Handler = Callable[[bytes, RawRef, float], Awaitable[str]]

BACKOFF_FIRST_S = 0.2
BACKOFF_MAX_S = 10.0


async def dead_letter(dlq: faust.TopicT, ref: RawRef, value: bytes | None, reason: str, error: str,
                      details: dict[str, Any] | None = None) -> None:
    """Publish a dead letter and wait for the broker's ack."""
    letter = DeadLetter(reason=reason, source_topic=ref.topic, source_partition=ref.partition,
                        source_offset=ref.offset, error=error,
                        value=(value or b"").decode("utf-8", "replace"), at=time.time(), details=details or {})
    fut = await dlq.send(key=ref.topic.encode(), value=encode(letter))
    await fut
    metrics.DLQ_ENTRIES.labels(reason.split(":", 1)[0]).inc()


async def run(agent: str, stream: faust.StreamT, handler: Handler, ready: asyncio.Event, dlq: faust.TopicT) -> None:
    """Drive ``handler`` over ``stream``; the handler returns an outcome label for the metrics."""
    await ready.wait()
    async for event in stream.events():
        msg = event.message
        ref = RawRef(msg.topic, msg.partition, msg.offset)
        started = time.perf_counter()
        delay = BACKOFF_FIRST_S
        while True:
            try:
                outcome = await handler(event.value, ref, msg.timestamp)
                break
            except POISON as exc:
                log.warning("%s: dead-lettering %s:%d@%d: %s", agent, ref.topic, ref.partition, ref.offset, exc)
                await _dead_letter_until_acked(dlq, ref, event.value, f"{agent}: poison event", repr(exc))
                outcome = "dead_lettered"
                break
            except TRANSIENT as exc:
                metrics.EVENTS.labels(agent, "retried").inc()
                log.warning("%s: transient failure on %s:%d@%d, retrying in %.1fs: %r",
                            agent, ref.topic, ref.partition, ref.offset, delay, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, BACKOFF_MAX_S)
            except Exception as exc:  # a bug: keep the event for a human instead of losing it
                log.exception("%s: unexpected error on %s:%d@%d", agent, ref.topic, ref.partition, ref.offset)
                await _dead_letter_until_acked(dlq, ref, event.value, f"{agent}: unexpected error", repr(exc))
                outcome = "dead_lettered"
                break
        metrics.EVENTS.labels(agent, outcome).inc()
        metrics.EVENT_DURATION.labels(agent).observe(time.perf_counter() - started)


async def _dead_letter_until_acked(dlq: faust.TopicT, ref: RawRef, value: bytes | None, reason: str,
                                   error: str) -> None:
    delay = BACKOFF_FIRST_S
    while True:
        try:
            await dead_letter(dlq, ref, value, reason, error)
            return
        except TRANSIENT as exc:
            log.warning("cannot reach %s (%r); retrying in %.1fs", DLQ, exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, BACKOFF_MAX_S)
