"""Batches of events straight from an agent's channel: faust's per-event stream machinery bypassed.

faust delivers each record of an agent's topic as an ``Event`` into the queue of the channel the
agent iterates (the conductor decodes it once and counts one reference per subscriber). A
``Stream`` then walks that queue one event at a time: a loop turn (``sleep(0)``), sensors in
and out, a context variable, every processor awaited, and for ``take_events`` a buffer filled
by a processor and emptied by the agent. The runner takes whole batches and acks them itself,
so none of that buys anything: :func:`batches` reads the queue in batches and does only what
the records' offsets depend on:

- the message is tracked as unacked, as ``Stream`` does (the consumer's shutdown bookkeeping);
- an event fetched before the last rebalance (another consumer generation) or taken while flow
  control is suspended is dropped *unacked*: whoever owns its partition now (this worker again,
  after faust's seek to the committed offset, or another) reads it again. (``Stream`` acks such
  an event as it skips it: an ack without the work lets the commit pass it.)
- the queue's ``get``/``get_nowait`` keep faust's back-pressure (the conductor pauses fetching
  while the queue is full and resumes when it drains).

Nothing here acks a batch that was yielded: the caller acks each event with :func:`ack` once it
is handled, and never otherwise (an event never acked is never committed; a restart reads it
again). That makes the runner's acks its own: no ``finally`` inside faust can ack a batch
still in hand.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from typing import cast

import faust

log = logging.getLogger("wacrm.agents")


async def batches(stream: faust.StreamT, size: int, within_s: float) -> AsyncIterator[list[faust.EventT]]:
    """The agent's events in batches of up to ``size``: each batch starts with the first event to
    arrive and takes what follows it within ``within_s`` (or until it holds ``size``)."""
    channel = aiter(stream.channel)  # subscribes this agent to its topic with the conductor
    queue = cast(faust.ChannelT, channel).queue
    app = stream.app
    unacked = app.consumer.unacked
    acking_topics = app.topics.acking_topics
    loop = asyncio.get_running_loop()
    while True:
        try:  # faust ends the iteration (its stop) by raising StopAsyncIteration into the queue
            events = [await queue.get()]
            while len(events) < size and not queue.empty():  # what is there already
                events.append(queue.get_nowait())
            if len(events) < size and within_s > 0:  # and what comes within the wait
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout_at(loop.time() + within_s):
                        while len(events) < size:
                            events.append(await queue.get())
        except StopAsyncIteration:
            return
        current = []
        stale = 0
        for event in events:
            message = event.message
            if not app.flow_control.is_active() or message.generation_id != app.consumer_generation_id:
                stale += 1  # read again from the committed offset; never acked here
                continue
            if message.topic in acking_topics and not message.tracked:
                message.tracked = True
                unacked.add(message)
            current.append(event)
        if stale:
            log.info("%d event(s) fetched before a rebalance dropped unacked: they are read again", stale)
        if current:
            yield current


def ack(events: Sequence[faust.EventT]) -> None:
    """Handled: the events' offsets become committable (each once the last stream holding it acks)."""
    for event in events:
        event.ack()
