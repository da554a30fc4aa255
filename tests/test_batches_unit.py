"""How the runner takes its batches from faust (``agents/batches.py``), on faust's own channel queue
and message types: the size cap, the wait after the first event, an event fetched before a
rebalance dropped without its ack, nothing acked by taking, and faust's stop ending the batches.
The broker, the conductor and the consumer are not involved (the pipeline and fault tests run them):
a stand-in app holds the few attributes the batch taker reads."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from faust.types.tuples import TP, ConsumerMessage
from mode.utils.queues import FlowControlEvent, ThrowableQueue

from wacrm.agents.batches import ack, batches

TOPIC = "wa.webhook.raw"


class _Consumer:
    def __init__(self) -> None:
        self.unacked: set[Any] = set()
        self.acked: list[int] = []  # offsets made committable

    def ack(self, message: Any) -> bool:
        self.acked.append(message.offset)
        self.unacked.discard(message)
        return True


class _Event:
    def __init__(self, message: ConsumerMessage, consumer: _Consumer) -> None:
        self.message = message
        self._consumer = consumer

    def ack(self) -> bool:  # as faust's Event.ack
        return self.message.ack(self._consumer)


class _Channel:
    """The agent's channel: iterating it gives the clone the conductor delivers to (here, the same queue)."""

    def __init__(self, queue: ThrowableQueue) -> None:
        self.queue = queue

    def __aiter__(self) -> _Channel:
        return self

    async def __anext__(self) -> Any:
        return await self.queue.get()


class _Stream:
    """An agent's stream as the batch taker sees it: its channel (faust's queue) and its app."""

    def __init__(self) -> None:
        self.flow = FlowControlEvent(initially_suspended=False)
        self.queue: ThrowableQueue = ThrowableQueue(maxsize=1000, flow_control=self.flow, clear_on_resume=True)
        self.consumer = _Consumer()
        self.app = SimpleNamespace(consumer=self.consumer, flow_control=self.flow, consumer_generation_id=1,
                                   topics=SimpleNamespace(acking_topics={TOPIC}))
        self.channel = _Channel(self.queue)

    def deliver(self, offset: int, generation: int = 1) -> None:
        """What the conductor does with a fetched record: one reference, into the channel's queue."""
        message = ConsumerMessage(TOPIC, 0, offset, 0.0, 0, [], b"k", b"v", None, tp=TP(TOPIC, 0),
                                  generation_id=generation)
        message.incref()
        self.queue.put_nowait(_Event(message, self.consumer))


def _offsets(events: list[Any]) -> list[int]:
    return [e.message.offset for e in events]


async def test_a_batch_takes_what_is_there_up_to_its_size_and_taking_acks_nothing() -> None:
    stream = _Stream()
    for n in range(5):
        stream.deliver(n)
    it = batches(stream, 3, 0.0)  # type: ignore[arg-type]
    first, second = await anext(it), await anext(it)
    assert (_offsets(first), _offsets(second)) == ([0, 1, 2], [3, 4])
    assert stream.consumer.acked == [] and len(stream.consumer.unacked) == 5  # tracked, not acked
    ack(first)
    assert stream.consumer.acked == [0, 1, 2]


async def test_a_batch_waits_after_its_first_event_for_more() -> None:
    stream = _Stream()
    stream.deliver(0)
    loop = asyncio.get_running_loop()
    loop.call_later(0.05, stream.deliver, 1)
    loop.call_later(5.0, stream.deliver, 2)  # long after the wait: the next batch
    batch = await anext(batches(stream, 10, 0.5))  # type: ignore[arg-type]
    assert _offsets(batch) == [0, 1]


async def test_an_event_fetched_before_a_rebalance_is_dropped_without_its_ack() -> None:
    stream = _Stream()
    stream.deliver(7, generation=1)
    stream.app.consumer_generation_id = 2  # a rebalance: offset 7 is read again from the committed offset
    stream.deliver(7, generation=2)
    batch = await anext(batches(stream, 10, 0.0))  # type: ignore[arg-type]
    assert [(e.message.offset, e.message.generation_id) for e in batch] == [(7, 2)]
    assert stream.consumer.acked == []  # an ack without the work would let the commit pass it


async def test_faust_stopping_the_channel_ends_the_batches() -> None:
    stream = _Stream()
    stream.deliver(0)
    it = batches(stream, 10, 0.0)  # type: ignore[arg-type]
    assert _offsets(await anext(it)) == [0]
    await stream.queue.throw(StopAsyncIteration())
    assert [b async for b in it] == []
