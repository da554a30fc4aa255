"""Delivery end to end on a system of its own: ambiguous sends settled by Meta's statuses (or a
person, or a resend), replies leaving in order, the ledger as the authority, redelivered copies of
a send in flight, and fake-meta's ids across restarts.

The Graph API timeout is short here (``GRAPH_TIMEOUT_SECONDS=4``) so that a scripted slow answer
(``delay_ms``) outlasts it; fake-meta posts the statuses back to the system's own webhook.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import pytest
from aiokafka import AIOKafkaProducer
from conftest import Stack, eventually, own_stack
from test_inbound_fidelity import stored
from test_replies import ledger, say, script, sends_to

from wacrm.storage.db import connect
from wacrm.storage.ledger import queue, queue_manual_reply
from wacrm.topics import OUTBOUND, retry_topic
from wacrm.topics.records import SendIntent, encode

TIMEOUT_S = 4
SLOWER_THAN_TIMEOUT_MS = 6500
SLOW_BUT_IN_TIME_MS = 3000


def _phone() -> str:
    return "1556" + str(uuid.uuid4().int)[:7]


@pytest.fixture(scope="module")
async def dstack(make_database: Callable[[], str], tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    async with own_stack(make_database, tmp_path_factory.mktemp("delivery"), GRAPH_TIMEOUT_SECONDS=str(TIMEOUT_S),
                         AMBIGUOUS_SETTLE_SECONDS="8", PAIR_INTERVAL_SECONDS="0") as (stack, _):
        yield stack


@pytest.fixture
async def ddb(dstack: Stack) -> AsyncIterator[asyncpg.Connection]:
    conn = await connect(dstack.database_url, timeout=10)
    try:
        yield conn
    finally:
        await conn.close()


async def _row_in(db: asyncpg.Connection, key: str, *states: str) -> asyncpg.Record | None:
    row = await ledger(db, key)
    return row if row is not None and row["state"] in states else None


async def _outbound_messages(db: asyncpg.Connection, conversation_id: int) -> list[asyncpg.Record]:
    return await db.fetch("SELECT * FROM messages WHERE conversation_id = $1 AND direction = 'outbound' ORDER BY id",
                          conversation_id)


async def _accepted(stack: Stack, wa_id: str) -> list[dict[str, Any]]:
    return [x for x in await sends_to(stack, wa_id) if "id" in (x.get("answered") or {})]


async def test_a_send_answered_after_the_timeout_is_sent_once_and_settled_by_its_status(
        dstack: Stack, ddb: asyncpg.Connection) -> None:
    wa_id = _phone()
    await script(dstack, [{"to": f"+{wa_id}", "delay_ms": SLOWER_THAN_TIMEOUT_MS}])
    (mid,) = await say(dstack, wa_id, "hello, slow network?")
    row = await eventually(lambda: _row_in(ddb, f"auto:{mid}", "sent"), 60, "the reply settled as sent")
    assert row["settled_by"] == "status" and row["ambiguous_since"] is not None
    (sent,) = await sends_to(dstack, wa_id)  # exactly one: the row is finished, nothing can send it again
    assert sent["answered"]["id"] == row["provider_message_id"]
    assert sent["body"]["biz_opaque_callback_data"] == f"ol:{row['id']}"
    (message,) = await _outbound_messages(ddb, row["conversation_id"])
    assert message["provider_message_id"] == row["provider_message_id"] and message["outbound_log_id"] == row["id"]
    assert message["body"] == sent["body"]["text"]["body"]


async def test_an_ambiguous_send_without_statuses_becomes_a_task_not_a_second_send(
        dstack: Stack, ddb: asyncpg.Connection) -> None:
    wa_id = _phone()
    await script(dstack, [{"to": f"+{wa_id}", "delay_ms": SLOWER_THAN_TIMEOUT_MS, "statuses": False}])
    (mid,) = await say(dstack, wa_id, "hello, anyone?")
    row = await eventually(lambda: _row_in(ddb, f"auto:{mid}", "unconfirmed"), 60, "the send handed to a person")
    assert row["settled_by"] == "task" and row["ambiguous_since"] is not None
    task = await ddb.fetchrow("SELECT * FROM tasks WHERE conversation_id = $1 AND kind = 'send_ambiguous'",
                              row["conversation_id"])
    assert task is not None and task["details"]["outbound_log_id"] == row["id"]
    assert len(await sends_to(dstack, wa_id)) == 1  # unconfirmed rows are never claimed again


async def test_a_send_in_flight_when_its_worker_dies_becomes_ambiguous_then_a_task(
        dstack: Stack, ddb: asyncpg.Connection) -> None:
    wa_id = _phone()
    await script(dstack, [{"to": f"+{wa_id}", "delay_ms": SLOWER_THAN_TIMEOUT_MS, "statuses": False}])
    (mid,) = await say(dstack, wa_id, "are you there?")

    async def call_in_flight() -> bool:
        # the ledger says "sending" before the request leaves, so wait for fake-meta to hold it too
        return bool(await sends_to(dstack, wa_id)) and await _row_in(ddb, f"auto:{mid}", "sending") is not None

    await eventually(call_in_flight, what="the call in flight at fake-meta")
    dstack.procs["worker"].kill()  # between the call and its answer
    dstack.procs["worker"].wait()
    dstack.start("worker")
    await dstack.wait_worker(90)
    row = await eventually(lambda: _row_in(ddb, f"auto:{mid}", "unconfirmed"), 90, "the stuck send handed to a person")
    assert row["settled_by"] == "task" and row["ambiguous_since"] is not None
    assert await ddb.fetchval("SELECT count(*) FROM tasks WHERE conversation_id = $1 AND kind = 'send_ambiguous'",
                              row["conversation_id"]) == 1
    assert len(await sends_to(dstack, wa_id)) == 1


async def test_replies_of_a_conversation_leave_in_the_order_they_were_decided(
        dstack: Stack, ddb: asyncpg.Connection) -> None:
    wa_id = _phone()
    (first,) = await say(dstack, wa_id, "hi")
    await eventually(lambda: _accepted(dstack, wa_id), what="the bot's reply")
    conv_id = (await stored(ddb, first))["conversation_id"]
    await script(dstack, [{"to": f"+{wa_id}", "code": 130429, "http_status": 429}] * 3)
    async with ddb.transaction():
        await queue_manual_reply(ddb, conv_id, "One: your order shipped.", f"one-{wa_id}")

    async def one_failed_once() -> bool:
        return any(x["body"]["text"]["body"].startswith("One:") and "error" in (x.get("answered") or {})
                   for x in await sends_to(dstack, wa_id))

    await eventually(one_failed_once, what="reply one's first (throttled) attempt")
    async with ddb.transaction():  # decided after reply one, while it waits to retry
        await queue_manual_reply(ddb, conv_id, "Two: here is the tracking link.", f"two-{wa_id}")

    async def both_went_out() -> list[str]:
        texts = [x["body"]["text"]["body"] for x in await _accepted(dstack, wa_id)]
        return texts if len([t for t in texts if t.startswith(("One:", "Two:"))]) == 2 else []

    texts = await eventually(both_went_out, 60, "both replies")
    assert [t[:4] for t in texts if t.startswith(("One:", "Two:"))] == ["One:", "Two:"]
    assert (await ledger(ddb, f"manual:one-{wa_id}"))["attempts"] == 4


@contextlib.asynccontextmanager
async def _publisher(stack: Stack) -> AsyncIterator[Callable[[str, SendIntent], Awaitable[Any]]]:
    """Publishes a send intent to a topic of the stack's bus, as the system's own producer does."""
    producer = AIOKafkaProducer(bootstrap_servers=stack.bootstrap, acks="all")
    await producer.start()
    try:
        yield lambda topic, intent: producer.send_and_wait(topic, encode(intent),
                                                           key=intent.conversation_key.encode())
    finally:
        await producer.stop()


async def _queued_row(db: asyncpg.Connection, conv_id: int, wa_id: str, text: str, key: str) -> SendIntent:
    """A ledger row marked published (the outbox leaves it alone for a minute): only our event names it."""
    conv = await db.fetchrow("SELECT conversation_key, phone_number_id FROM conversations WHERE id = $1", conv_id)
    intent = SendIntent(dedupe_key=key, conversation_key=conv["conversation_key"], conversation_id=conv_id,
                        phone_number_id=conv["phone_number_id"], to=wa_id, text=text, automatic=False,
                        accepted_at=time.time())
    async with db.transaction():
        assert await queue(db, intent, published=True)
    return intent


async def test_the_ledger_not_the_bus_says_what_is_sent(dstack: Stack, ddb: asyncpg.Connection) -> None:
    wa_id, other = _phone(), _phone()
    (first,) = await say(dstack, wa_id, "hi")
    await eventually(lambda: _accepted(dstack, wa_id), what="the bot's reply")
    conv_id = (await stored(ddb, first))["conversation_id"]
    key = f"manual:authority-{wa_id}"
    real = await _queued_row(ddb, conv_id, wa_id, "Your appointment is at 10:00.", key)
    forged = SendIntent(**{**{f: getattr(real, f) for f in real.__dataclass_fields__},
                           "to": other, "text": "Send your card number to this chat"})
    async with _publisher(dstack) as publish:
        await publish(OUTBOUND, forged)

    async def sent() -> list[dict[str, Any]]:
        return [x for x in await _accepted(dstack, wa_id) if x["body"]["text"]["body"] == real.text]

    await eventually(sent, what="the ledger's text to the ledger's recipient")
    async def finished() -> bool:  # the sender records accepted sends every few tens of milliseconds
        return (await ledger(ddb, key))["state"] == "sent"

    await eventually(finished, what="the ledger row sent: the forged event cannot send anything later")
    assert await sends_to(dstack, other) == []
    assert not [x for x in await dstack.sent() if "card number" in str(x.get("body"))]


async def test_a_redelivered_copy_of_a_send_in_flight_is_not_marked_ambiguous(
        dstack: Stack, ddb: asyncpg.Connection) -> None:
    wa_id = _phone()
    (first,) = await say(dstack, wa_id, "hi")
    await eventually(lambda: _accepted(dstack, wa_id), what="the bot's reply")
    conv_id = (await stored(ddb, first))["conversation_id"]
    await script(dstack, [{"to": f"+{wa_id}", "delay_ms": SLOW_BUT_IN_TIME_MS}])
    before = await dstack.worker_metric("wacrm_events_total", 'agent="sender_retry_1",outcome="in_flight"')
    key = f"manual:copy-{wa_id}"
    intent = await _queued_row(ddb, conv_id, wa_id, "Thanks, we got your photo.", key)
    async with _publisher(dstack) as publish:  # started before: the copy must arrive while the call is out
        await publish(OUTBOUND, intent)
        await eventually(lambda: _row_in(ddb, key, "sending"), what="the send in flight")
        # the copy reaches another agent (a retry topic's) while the call is still out
        await publish(retry_topic(1), intent)

    async def copy_handled() -> bool:
        return await dstack.worker_metric("wacrm_events_total",
                                          'agent="sender_retry_1",outcome="in_flight"') > before

    await eventually(copy_handled, what="the copy acknowledged as in flight")
    row = await eventually(lambda: _row_in(ddb, key, "sent"), 30, "the send recorded")
    assert row["ambiguous_since"] is None and row["settled_by"] in (None, "status")
    assert len([x for x in await sends_to(dstack, wa_id) if x["body"]["text"]["body"] == intent.text]) == 1


async def test_fake_meta_ids_are_unique_across_restarts_and_every_reply_is_in_the_conversation(
        dstack: Stack, ddb: asyncpg.Connection) -> None:
    wa_id = _phone()
    (first,) = await say(dstack, wa_id, "hi")
    (one,) = await eventually(lambda: _accepted(dstack, wa_id), what="the first reply")
    dstack.stop("fake-meta")
    dstack.start("fake-meta")
    assert await sends_to(dstack, wa_id) == []  # a new process: nothing recorded yet
    (_second,) = await say(dstack, wa_id, "and the price?")
    (two,) = await eventually(lambda: _accepted(dstack, wa_id), what="the reply after the restart")
    assert one["answered"]["id"] != two["answered"]["id"]
    conv_id = (await stored(ddb, first))["conversation_id"]

    async def both_stored() -> list[asyncpg.Record]:
        rows = await _outbound_messages(ddb, conv_id)
        return rows if len(rows) == 2 else []

    rows = await eventually(both_stored, what="both replies in the conversation")
    assert {r["provider_message_id"] for r in rows} == {one["answered"]["id"], two["answered"]["id"]}


async def test_with_the_resend_policy_an_unsettled_send_is_sent_again_once(
        dstack: Stack, ddb: asyncpg.Connection) -> None:
    dstack.stop("worker")
    dstack.start("worker", env_overrides={"AMBIGUOUS_POLICY": "resend"})
    try:
        await dstack.wait_worker(90)
        wa_id = _phone()
        # no statuses for the resend either: its "sent" could otherwise settle the row before the sender does
        await script(dstack, [{"to": f"+{wa_id}", "delay_ms": SLOWER_THAN_TIMEOUT_MS, "statuses": False},
                              {"to": f"+{wa_id}", "statuses": False}])
        (mid,) = await say(dstack, wa_id, "resend me")
        row = await eventually(lambda: _row_in(ddb, f"auto:{mid}", "sent"), 90, "the reply sent again")
        assert row["settled_by"] == "resend" and row["ambiguous_since"] is not None and row["attempts"] == 2
        sends = await sends_to(dstack, wa_id)
        assert len(sends) == 2 and sends[0]["body"] == sends[1]["body"]  # once more, the same message
        (message,) = await _outbound_messages(ddb, row["conversation_id"])
        assert message["provider_message_id"] == row["provider_message_id"] == sends[1]["answered"]["id"]
    finally:
        dstack.stop("worker")
        dstack.start("worker")
        await dstack.wait_worker(90)
