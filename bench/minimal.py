"""The minimal pipeline: the least a correct pipeline must do on the same parts, as a ceiling.

- ``webhook``: aiohttp; checks ``X-Hub-Signature-256`` over the exact body, publishes it with
  ``acks=all`` (keyed by the customer, as ours) and answers 200 only after the broker's ack.
- ``consumer``: aiokafka in a consumer group with manual commits; for each fetched batch, one
  transaction stores its customer messages once each (unique key, ``INSERT … ON CONFLICT DO NOTHING``)
  with a ledger row each, and its statuses once each; then every reply still queued is posted to the
  Graph API (fake-meta) and marked sent, and only then are the offsets committed: a crash replays the
  batch, the unique keys make the replay harmless and the queued rows are sent.

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
WITH m AS (INSERT INTO minimal_messages (provider_message_id, customer, body)
           SELECT * FROM unnest($1::text[], $2::text[], $3::jsonb[]) ON CONFLICT DO NOTHING
           RETURNING provider_message_id)
INSERT INTO minimal_ledger (reply_to) SELECT provider_message_id FROM m"""
QUEUED = "SELECT id, reply_to FROM minimal_ledger WHERE reply_to = ANY($1::text[]) AND state = 'queued'"
STATUSES = """INSERT INTO minimal_statuses (wamid, status) SELECT * FROM unnest($1::text[], $2::text[])
              ON CONFLICT DO NOTHING"""
SENT = """UPDATE minimal_ledger l SET state = 'sent', wamid = u.wamid, updated_at = now()
          FROM unnest($1::bigint[], $2::text[]) AS u(id, wamid) WHERE l.id = u.id"""

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
    """One fetched batch at a time: one transaction stores its messages (once each), their ledger rows and
    its statuses; then the replies still queued are posted at once and marked sent in one statement."""

    def __init__(self, pool: asyncpg.Pool, session: aiohttp.ClientSession, graph: str) -> None:
        self.pool, self.session, self.graph = pool, session, graph

    async def batch(self, raws: list[bytes]) -> None:
        messages: dict[str, tuple[str, dict]] = {}  # type: ignore[type-arg]  # id -> (business number, message)
        statuses: list[tuple[str, str]] = []
        for raw in raws:
            for entry in orjson.loads(raw).get("entry") or []:
                for change in entry.get("changes") or []:
                    value = change.get("value") or {}
                    number = (value.get("metadata") or {}).get("phone_number_id", "")
                    messages.update((m["id"], (number, m)) for m in value.get("messages") or []
                                    if m.get("type") == "text")
                    statuses += [(x["id"], x["status"]) for x in value.get("statuses") or []]
        ids = list(messages)
        async with self.pool.acquire() as conn, conn.transaction():
            if ids:
                await conn.execute(STORE, ids, [messages[i][1]["from"] for i in ids],
                                   [orjson.dumps(messages[i][1]).decode() for i in ids])
            if statuses:
                await conn.execute(STATUSES, [w for w, _ in statuses], [st for _, st in statuses])
            queued = await conn.fetch(QUEUED, ids) if ids else []  # new ones, and any a crash left unsent
        wamids = await asyncio.gather(*(self.reply(row["id"], *messages[row["reply_to"]]) for row in queued))
        if queued:
            await self.pool.execute(SENT, [row["id"] for row in queued], wamids)

    async def reply(self, row: int, phone_number_id: str, m: dict) -> str:  # type: ignore[type-arg]
        reply = {"messaging_product": "whatsapp", "to": m["from"], "type": "text",
                 "text": {"body": "Thanks, we got your message."}, "context": {"message_id": m["id"]},
                 "biz_opaque_callback_data": f"minimal:{row}"}
        async with self.session.post(f"{self.graph}/v21.0/{phone_number_id}/messages", data=orjson.dumps(reply),
                                     headers={"Content-Type": "application/json",
                                              "Authorization": "Bearer minimal"}) as r:
            r.raise_for_status()
            return str(orjson.loads(await r.read())["messages"][0]["id"])


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
                await worker.batch([r.value for records in batches.values() for r in records if r.value is not None])
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
