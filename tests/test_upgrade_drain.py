"""Upgrading from the version with the wa.inbound hop: what an older worker left on ``wa.inbound`` (one
event per message, as its ingest agent wrote them) is stored and answered by this version's worker,
once each, with the request ids it carried; this version itself stores messages from the raw topic."""

from __future__ import annotations

import time

import asyncpg
from aiokafka import AIOKafkaProducer
from conftest import Stack, eventually

from wacrm.agents.ingest import split
from wacrm.topics import INBOUND, RAW
from wacrm.topics.records import RawRef, encode, request_headers
from wacrm.whatsapp import simulate


async def test_events_an_older_worker_left_on_wa_inbound_are_stored_and_answered_once(
        stack: Stack, db: asyncpg.Connection) -> None:
    # three customers (a burst of one customer would get one reply for all of it)
    bodies = [simulate.dumps(simulate.text_body(text=f"left behind {n}", wa_id=f"1555007100{n}")) for n in range(3)]
    # what the previous version's ingest agent put on wa.inbound for these bodies
    events = [m for n, body in enumerate(bodies) for m in split(body, RawRef(RAW, 0, 900 + n), time.time()).messages]
    ids = [m.message_id for m in events]
    before = await stack.worker_metric("wacrm_events_total", 'agent="inbound",outcome="stored"')
    producer = AIOKafkaProducer(bootstrap_servers=stack.bootstrap)
    await producer.start()
    try:
        for m in events:
            await producer.send_and_wait(INBOUND, encode(m), key=m.conversation_key.encode(),
                                         headers=request_headers(f"upgrade-{m.message_id[-6:]}"))
    finally:
        await producer.stop()

    for mid in ids:
        await eventually(lambda mid=mid: stack.replies_to(mid), 60, f"the reply to {mid}")
    rows = await db.fetch("SELECT provider_message_id, request_id FROM messages WHERE provider_message_id = ANY($1)",
                          ids)
    assert sorted(r["provider_message_id"] for r in rows) == sorted(ids)  # stored once each
    assert all(r["request_id"] == f"upgrade-{r['provider_message_id'][-6:]}" for r in rows)
    for mid in ids:
        assert len(await stack.replies_to(mid)) == 1
    # by the agent that drains wa.inbound (the stack's burst window defers the reply: outcome "stored")
    assert await stack.worker_metric("wacrm_events_total", 'agent="inbound",outcome="stored"') == before + 3


async def test_this_version_does_not_write_messages_to_wa_inbound(stack: Stack, db: asyncpg.Connection) -> None:
    body = simulate.dumps(simulate.text_body(text="a new message", wa_id="15550071001"))
    (message,) = split(body, RawRef(RAW, 0, 0), time.time()).messages
    assert (await stack.post(body))[0] == 200
    await eventually(lambda: stack.replies_to(message.message_id), 60, "the reply")
    stored = await db.fetchval("SELECT raw_ref->>'topic' FROM messages WHERE provider_message_id = $1",
                               message.message_id)
    assert stored == RAW  # stored straight from the raw topic by the ingest agent
    assert await stack.worker_metric("wacrm_events_total", 'agent="ingest",outcome="processed"') > 0
