"""Ceilings of this machine, measured in the same run as the system: each stage's figure is
read as a fraction of them.

- ``produce``: raw aiokafka produce to the same broker with the webhook's producer settings
  (``acks=all``, ``linger_ms=1``), realistic body sizes: pipelined (as fast as the client
  can batch) and webhook-shaped (``concurrency`` tasks, each awaiting its ack).
- ``postgres``: the inbound path's statements (``storage.repo.store_inbound`` and the rules
  engine's answer): one message per transaction on one connection (the naive way), and the
  way the inbound agent runs them — batches of messages from different customers, stored and
  answered with pipelined statements in one transaction, on ``BATCH_LANES`` connections at once.

Run as its own process: ``python -m bench.ceilings produce|postgres …``; prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer

from bench import stats
from bench.bodies import BodyFactory
from wacrm.core import eventloop
from wacrm.orchestrator.rules import load_rules
from wacrm.orchestrator.service import Orchestrator
from wacrm.storage import repo
from wacrm.storage.db import create_pool
from wacrm.topics.records import Customer, InboundMessage, RawRef, conversation_key


async def produce(bootstrap: str, topic: str, seconds: float, concurrency: int) -> dict[str, Any]:
    factory = BodyFactory("ceiling")
    bodies = [factory.next().raw for _ in range(2000)]
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=False, linger_ms=1,
                                max_request_size=16 * 1024 * 1024)
    await asyncio.wait_for(producer.start(), 15)
    try:
        await producer.send_and_wait(topic, bodies[0])
        # pipelined: keep up to 5,000 sends outstanding
        sent = 0
        pending: list[asyncio.Future] = []
        started = time.perf_counter()
        while time.perf_counter() - started < seconds:
            pending.append(await producer.send(topic, bodies[sent % len(bodies)]))
            sent += 1
            if len(pending) >= 5000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
        pipelined = sent / (time.perf_counter() - started)

        # webhook-shaped: each task awaits its ack before the next send
        lat: list[float] = []
        stop_at = time.perf_counter() + seconds

        async def one(k: int) -> None:
            i = k
            while time.perf_counter() < stop_at:
                t = time.perf_counter()
                await producer.send_and_wait(topic, bodies[i % len(bodies)])
                lat.append(time.perf_counter() - t)
                i += concurrency

        started = time.perf_counter()
        await asyncio.gather(*(one(k) for k in range(concurrency)))
        shaped = len(lat) / (time.perf_counter() - started)
        s = stats.summarize(lat)
        return {"pipelined_msgs_per_s": pipelined, "awaited_msgs_per_s": shaped, "concurrency": concurrency,
                "ack_latency_s": {"p50": s.p50, "p95": s.p95, "p99": s.p99, "max": s.max},
                "body_bytes_mean": sum(map(len, bodies)) / len(bodies)}
    finally:
        await producer.stop()


async def postgres(database_url: str, seconds: float, connections: int, customers: int,
                   batch: int) -> dict[str, Any]:
    pool = await create_pool(database_url, timeout=10, min_size=connections, max_size=connections)
    rng = random.Random(7)
    counter = 0

    def message(lane: int = 0, lanes: int = 1) -> InboundMessage:
        """A message from a random customer of ``lane`` (lanes never share a customer, as in the agent)."""
        nonlocal counter
        counter += 1
        n = rng.randrange(customers // lanes) * lanes + lane
        customer = Customer(wa_id=f"4916{n:08d}", profile_name=f"Customer {n}")
        mid = f"wamid.CEILING_{counter:09d}"
        payload = {"from": customer.wa_id, "id": mid, "timestamp": str(int(time.time())), "type": "text",
                   "text": {"body": "hello"}}
        return InboundMessage(conversation_key=conversation_key("200000000000009", customer),
                              phone_number_id="200000000000009", display_phone_number="15550009999",
                              customer=customer, message_id=mid, timestamp=int(time.time()), type="text",
                              text="hello", payload=payload, raw_ref=RawRef("wa.inbound", 0, counter),
                              received_at=time.time())

    orchestrator = Orchestrator(load_rules())

    async def one_tx() -> float:
        msg = message()
        t = time.perf_counter()
        async with pool.acquire() as conn, conn.transaction():
            conversation_id = await repo.store_inbound(conn, msg)
            assert conversation_id is not None
            await orchestrator.answer_in(conn, conversation_id, msg.received_at)
        return time.perf_counter() - t

    async def batch_tx(size: int, lane: int, lanes: int) -> float:
        msgs: list[InboundMessage] = []
        seen: set[str] = set()
        while len(msgs) < size:  # one wave: a message per conversation, as the agent stores them
            msg = message(lane, lanes)
            if msg.conversation_key not in seen:
                seen.add(msg.conversation_key)
                msgs.append(msg)
        t = time.perf_counter()
        async with pool.acquire() as conn, conn.transaction():
            ids = await repo.store_inbound_many(conn, msgs, [None] * len(msgs))
            stored: list[tuple[int, float | None]] = [
                (c, m.received_at) for c, m in zip(ids, msgs, strict=True) if c is not None]
            assert len(stored) == len(msgs)
            await orchestrator.answer_many_in(conn, stored)
        return time.perf_counter() - t

    async def run(concurrency: int, size: int) -> dict[str, Any]:
        lat: list[float] = []
        stop_at = time.perf_counter() + seconds

        async def loop(lane: int) -> None:
            while time.perf_counter() < stop_at:
                lat.append(await (one_tx() if size == 1 else batch_tx(size, lane, concurrency)))

        started = time.perf_counter()
        await asyncio.gather(*(loop(lane) for lane in range(concurrency)))
        s = stats.summarize(lat)
        return {"msgs_per_s": len(lat) * size / (time.perf_counter() - started), "concurrency": concurrency,
                "batch": size, "tx_latency_s": {"p50": s.p50, "p99": s.p99}}

    try:
        for _ in range(200):  # warm up: plans cached, some contacts exist
            await one_tx()
        return {"sequential": await run(1, 1), "batched": await run(connections, batch)}
    finally:
        await pool.close()


def main(argv: list[str] | None = None) -> int:
    eventloop.install()
    p = argparse.ArgumentParser(prog="python -m bench.ceilings")
    sub = p.add_subparsers(dest="what", required=True)
    pr = sub.add_parser("produce")
    pr.add_argument("--bootstrap", required=True)
    pr.add_argument("--topic", required=True)
    pr.add_argument("--seconds", type=float, default=5)
    pr.add_argument("--concurrency", type=int, default=64)
    pg = sub.add_parser("postgres")
    pg.add_argument("--database-url", required=True)
    pg.add_argument("--seconds", type=float, default=5)
    pg.add_argument("--connections", type=int, default=4, help="as BATCH_LANES (default 4)")
    pg.add_argument("--batch", type=int, default=50, help="messages per batched transaction")
    pg.add_argument("--customers", type=int, default=5000)
    args = p.parse_args(argv)
    if args.what == "produce":
        result = asyncio.run(produce(args.bootstrap, args.topic, args.seconds, args.concurrency))
    else:
        result = asyncio.run(postgres(args.database_url, args.seconds, args.connections, args.customers,
                                      args.batch))
    sys.stdout.write(orjson.dumps(result).decode() + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
