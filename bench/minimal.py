"""The minimal pipeline: the least a correct pipeline must do on the same parts, as a ceiling.

- ``webhook``: aiohttp; checks ``X-Hub-Signature-256`` over the exact body, publishes it with
  ``acks=all`` (keyed by the customer, as ours) and answers 200 only after the broker's ack.
- ``consumer``: aiokafka in a consumer group with manual commits; for each customer message in a
  fetched batch: store it once (unique key, ``INSERT … ON CONFLICT DO NOTHING``) with its ledger row
  in one transaction, post one reply to the Graph API (fake-meta), mark the row sent; each status:
  stored once. The offsets are committed after the whole batch is done, so a crash replays and the
  unique keys make the replay harmless.

Same embedded PostgreSQL and broker as the system, a topic and tables of its own
(:data:`TOPIC`, ``minimal_*``). Run as ``python -m bench.minimal webhook|consumer …``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import hmac
import logging

import aiohttp
import asyncpg
import orjson
from aiohttp import web
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError
from aiokafka.structs import TopicPartition

from wacrm.core import eventloop

TOPIC = "bench.minimal.raw"
SCHEMA = """
CREATE TABLE IF NOT EXISTS minimal_messages (
    provider_message_id text PRIMARY KEY, customer text NOT NULL, body jsonb NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE IF NOT EXISTS minimal_ledger (
    id bigserial PRIMARY KEY, reply_to text NOT NULL UNIQUE REFERENCES minimal_messages,
    state text NOT NULL DEFAULT 'queued', wamid text, updated_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE IF NOT EXISTS minimal_statuses (
    wamid text NOT NULL, status text NOT NULL, at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (wamid, status));
"""
STORE = """
WITH m AS (INSERT INTO minimal_messages (provider_message_id, customer, body) VALUES ($1, $2, $3)
           ON CONFLICT DO NOTHING RETURNING provider_message_id)
INSERT INTO minimal_ledger (reply_to) SELECT provider_message_id FROM m RETURNING id"""
QUEUED = "SELECT id FROM minimal_ledger WHERE reply_to = $1 AND state = 'queued'"
SENT = "UPDATE minimal_ledger SET state = 'sent', wamid = $2, updated_at = now() WHERE id = $1"
STATUS = "INSERT INTO minimal_statuses (wamid, status) VALUES ($1, $2) ON CONFLICT DO NOTHING"

SECRET = web.AppKey("secret", bytes)
PRODUCER = web.AppKey("producer", AIOKafkaProducer)


async def ensure_topic(bootstrap: str, partitions: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await asyncio.wait_for(admin.start(), 15)
    try:
        if TOPIC not in set(await admin.list_topics()):
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics([NewTopic(TOPIC, partitions, 1)])
    finally:
        await admin.close()


async def receive(request: web.Request) -> web.Response:
    header = request.headers.get("X-Hub-Signature-256", "")
    body = await request.read()
    expected = "sha256=" + hmac.new(request.app[SECRET], body, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(header.encode(), expected.encode()):
        return web.Response(status=403)
    data = orjson.loads(body)
    try:
        value = data["entry"][0]["changes"][0]["value"]
        key = (value.get("messages") or value.get("statuses") or [{}])[0]
        customer = key.get("from") or key.get("recipient_id")
    except (KeyError, IndexError, TypeError):
        customer = None
    await request.app[PRODUCER].send_and_wait(TOPIC, body, key=customer.encode() if customer else None)
    return web.Response(body=b'{"status":"accepted"}', content_type="application/json")


def webhook(port: int, bootstrap: str, secret: str, partitions: int) -> None:
    app = web.Application(client_max_size=4 * 1024 * 1024)
    app[SECRET] = secret.encode()

    async def producer(app: web.Application):  # type: ignore[no-untyped-def]
        await ensure_topic(bootstrap, partitions)
        app[PRODUCER] = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=False,
                                         linger_ms=1)
        await app[PRODUCER].start()
        yield
        await app[PRODUCER].stop()

    app.cleanup_ctx.append(producer)
    app.router.add_post("/webhooks/whatsapp", receive)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None, shutdown_timeout=2)


class Consumer:
    def __init__(self, pool: asyncpg.Pool, session: aiohttp.ClientSession, graph: str) -> None:
        self.pool, self.session, self.graph = pool, session, graph

    async def message(self, phone_number_id: str, m: dict) -> None:  # type: ignore[type-arg]
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchval(STORE, m["id"], m["from"], orjson.dumps(m).decode())
        if row is None:  # stored before (a replay): send only if its reply is still queued
            row = await self.pool.fetchval(QUEUED, m["id"])
            if row is None:
                return
        reply = {"messaging_product": "whatsapp", "to": m["from"], "type": "text",
                 "text": {"body": "Thanks, we got your message."}, "context": {"message_id": m["id"]},
                 "biz_opaque_callback_data": f"minimal:{row}"}
        async with self.session.post(f"{self.graph}/v21.0/{phone_number_id}/messages", data=orjson.dumps(reply),
                                     headers={"Content-Type": "application/json",
                                              "Authorization": "Bearer minimal"}) as r:
            answer = orjson.loads(await r.read())
            r.raise_for_status()
        await self.pool.execute(SENT, row, answer["messages"][0]["id"])

    async def status(self, s: dict) -> None:  # type: ignore[type-arg]
        await self.pool.execute(STATUS, s["id"], s["status"])

    async def body(self, raw: bytes) -> None:
        work = []
        for entry in orjson.loads(raw).get("entry") or []:
            for change in entry.get("changes") or []:
                value = change.get("value") or {}
                number = (value.get("metadata") or {}).get("phone_number_id", "")
                work += [self.message(number, m) for m in value.get("messages") or [] if m.get("type") == "text"]
                work += [self.status(s) for s in value.get("statuses") or []]
        await asyncio.gather(*work)


async def consume(bootstrap: str, group: str, database_url: str, graph: str) -> None:
    pool = await asyncpg.create_pool(database_url, min_size=4, max_size=4)
    async with pool.acquire() as conn:
        await conn.execute("SELECT pg_advisory_lock(4242)")  # consumers of one group start together
        await conn.execute(SCHEMA)
        await conn.execute("SELECT pg_advisory_unlock(4242)")
    consumer = AIOKafkaConsumer(TOPIC, bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False,
                                auto_offset_reset="earliest", fetch_max_wait_ms=30, max_poll_records=200)
    await consumer.start()
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            worker = Consumer(pool, session, graph)
            while True:
                batches = await consumer.getmany(timeout_ms=1000, max_records=200)
                if not batches:
                    continue
                await asyncio.gather(*(worker.body(r.value) for records in batches.values() for r in records
                                       if r.value is not None))
                await consumer.commit({TopicPartition(tp.topic, tp.partition): records[-1].offset + 1
                                       for tp, records in batches.items()})
    finally:
        await consumer.stop()
        await pool.close()


def main(argv: list[str] | None = None) -> int:
    eventloop.install()
    logging.basicConfig(level=logging.WARNING)
    p = argparse.ArgumentParser(prog="python -m bench.minimal")
    sub = p.add_subparsers(dest="what", required=True)
    w = sub.add_parser("webhook")
    w.add_argument("--port", type=int, required=True)
    w.add_argument("--bootstrap", required=True)
    w.add_argument("--secret", required=True)
    w.add_argument("--partitions", type=int, default=4)
    c = sub.add_parser("consumer")
    c.add_argument("--bootstrap", required=True)
    c.add_argument("--group", required=True)
    c.add_argument("--database-url", required=True)
    c.add_argument("--graph", required=True, help="the Graph API's base URL (fake-meta)")
    args = p.parse_args(argv)
    if args.what == "webhook":
        webhook(args.port, args.bootstrap, args.secret, args.partitions)
    else:
        asyncio.run(consume(args.bootstrap, args.group, args.database_url, args.graph))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
