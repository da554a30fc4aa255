"""Replies end to end on the session's system: rules, opt-out, handover, bursts, retries, failures."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import aiohttp
import asyncpg
from conftest import Stack, eventually
from test_inbound_fidelity import META, contact, envelope, settled, stored, text_msg

from wacrm.storage import replies
from wacrm.storage.db import connect
from wacrm.storage.ledger import queue_manual_reply
from wacrm.storage.migrate import run_migrations


def _phone() -> str:
    return "1555" + str(uuid.uuid4().int)[:7]


async def say(stack: Stack, wa_id: str, *texts: str) -> list[str]:
    """The customer sends each text as its own webhook, back to back; returns the message ids."""
    ids = []
    for text in texts:
        msg = text_msg(wa_id, text, int(time.time()))
        assert (await stack.post(envelope({"metadata": META, "contacts": [contact(wa_id, "Cliente")],
                                           "messages": [msg]})))[0] == 200
        ids.append(msg["id"])
    return ids


async def script(stack: Stack, steps: list[dict[str, Any]]) -> None:
    async with aiohttp.ClientSession() as s, s.post(f"{stack.fake_meta}/__script", json=steps) as r:
        assert r.status == 200


async def sends_to(stack: Stack, wa_id: str) -> list[dict[str, Any]]:
    return [x for x in await stack.sent() if (x.get("body") or {}).get("to") == f"+{wa_id}"]


async def ledger(db: asyncpg.Connection, key: str) -> asyncpg.Record | None:
    return await db.fetchrow("SELECT * FROM outbound_log WHERE dedupe_key = $1", key)


async def test_a_burst_gets_one_reply_that_answers_all_of_it(stack: Stack, db: asyncpg.Connection) -> None:
    wa_id = _phone()
    ids = await say(stack, wa_id, "hola", "¿cuál es el precio?", "y el envío?")
    (reply,) = await eventually(lambda: stack.replies_to(ids[-1]), what="the reply to the burst")
    text = reply["body"]["text"]["body"]
    # greeting: a new contact; the greeting and the FAQ's answers in the customer's language, all of it
    assert "precios" in text and "Enviamos" in text and text.startswith("¡Hola Cliente!")
    await settled(db, ids[-1])
    assert len(await sends_to(stack, wa_id)) == 1


async def test_opt_out_blocks_replies_until_start(stack: Stack, db: asyncpg.Connection) -> None:
    wa_id = _phone()
    (stop,) = await say(stack, wa_id, "STOP")
    (confirmation,) = await eventually(lambda: stack.replies_to(stop), what="the opt-out confirmation")
    assert "not receive" in confirmation["body"]["text"]["body"]
    assert await db.fetchval("SELECT opted_out FROM contacts WHERE wa_id = $1", wa_id)

    (quiet,) = await say(stack, wa_id, "what is the price?")
    await settled(db, quiet)  # the orchestrator decided about it (past the burst window)
    assert await stack.replies_to(quiet) == [] and await ledger(db, f"auto:{quiet}") is None

    (start,) = await say(stack, wa_id, "START")
    await eventually(lambda: stack.replies_to(start), what="the opt-in confirmation")
    (again,) = await say(stack, wa_id, "price please")
    await eventually(lambda: stack.replies_to(again), what="replies again after START")


async def test_handover_stops_the_bot_until_released(stack: Stack, db: asyncpg.Connection) -> None:
    wa_id = _phone()
    (ask,) = await say(stack, wa_id, "I want to talk to a human")
    (note,) = await eventually(lambda: stack.replies_to(ask), what="the handover message")
    assert "team" in note["body"]["text"]["body"]
    conv = await db.fetchrow("SELECT c.* FROM conversations c JOIN contacts k ON k.id = c.contact_id "
                             "WHERE k.wa_id = $1", wa_id)
    assert conv["needs_human"] and conv["ownership_version"] == 1
    task = await db.fetchrow("SELECT * FROM tasks WHERE conversation_id = $1 AND kind = 'handover'", conv["id"])
    assert task and await db.fetchval("SELECT count(*) FROM notifications WHERE task_id = $1", task["id"]) == 1

    (waiting,) = await say(stack, wa_id, "hello? price?")
    await settled(db, waiting)
    assert await stack.replies_to(waiting) == [] and await ledger(db, f"auto:{waiting}") is None

    async with db.transaction():
        await replies.release(db, conv["id"])
    (back,) = await say(stack, wa_id, "thanks, and the price?")
    await eventually(lambda: stack.replies_to(back), what="the bot to answer after release")


async def test_manual_reply_goes_through_the_ledger_even_when_a_person_owns_it(stack: Stack,
                                                                                 db: asyncpg.Connection) -> None:
    wa_id = _phone()
    (first,) = await say(stack, wa_id, "hi")
    await eventually(lambda: stack.replies_to(first), what="the bot's reply")
    conv_id = (await stored(db, first))["conversation_id"]
    user_id = await db.fetchval("INSERT INTO users (email, name) VALUES ($1, 'Agent') RETURNING id",
                                f"{wa_id}@example.com")
    async with db.transaction():
        await replies.assign(db, conv_id, user_id)
        assert await queue_manual_reply(db, conv_id, "Hello, this is Ana from the team.", "req-" + wa_id)
        assert not await queue_manual_reply(db, conv_id, "Hello, this is Ana from the team.", "req-" + wa_id)

    async def manual_sent() -> list:
        return [x for x in await sends_to(stack, wa_id) if x["body"]["text"]["body"].startswith("Hello, this is Ana")]

    assert len(await eventually(manual_sent, what="the manual reply")) == 1

    async def recorded() -> asyncpg.Record | None:  # the Graph API's answer is recorded right after the call
        row = await ledger(db, f"manual:req-{wa_id}")
        return row if row["state"] != "sending" else None

    row = await eventually(recorded, what="the manual reply recorded")
    assert row["state"] == "sent" and row["automatic"] is False


async def test_retries_grow_and_succeed(stack: Stack, db: asyncpg.Connection) -> None:
    wa_id = _phone()
    await script(stack, [{"to": f"+{wa_id}", "code": 130429, "http_status": 400},
                         {"to": f"+{wa_id}", "code": 130429, "http_status": 400}])
    (mid,) = await say(stack, wa_id, "retry me")

    async def sent() -> asyncpg.Record | None:
        row = await ledger(db, f"auto:{mid}")
        return row if row and row["state"] == "sent" else None

    row = await eventually(sent, what="the reply to go through on the third attempt")
    assert row["attempts"] == 3
    times = [x["received_at"] for x in await sends_to(stack, wa_id)]
    assert len(times) == 3
    first_gap, second_gap = times[1] - times[0], times[2] - times[1]
    # RETRY_BASE_SECONDS=0.4, RETRY_MULTIPLIER=2 in the test stack, ±20 % jitter: the first retry waits
    # 0.32–0.48 s, the second 0.64–0.96 s, so the second wait is longer than any first one can be.
    # (Comparing the two measured gaps directly is flaky: processing time adds to the first.)
    assert first_gap >= 0.32 and second_gap >= 0.64, (first_gap, second_gap)


async def test_retries_stop_at_the_limit_with_a_dead_letter_and_a_task(stack: Stack, db: asyncpg.Connection) -> None:
    wa_id = _phone()
    await script(stack, [{"to": f"+{wa_id}", "code": 131000, "http_status": 500}] * 5)
    (mid,) = await say(stack, wa_id, "never works")

    async def failed() -> asyncpg.Record | None:
        row = await ledger(db, f"auto:{mid}")
        return row if row and row["state"] == "failed" else None

    row = await eventually(failed, 60, "the reply to fail after five attempts")
    assert row["attempts"] == 5 and row["error"]["code"] == 131000
    assert len(await sends_to(stack, wa_id)) == 5
    assert await db.fetchval("SELECT kind FROM tasks WHERE conversation_id = $1 AND kind = 'retries_exhausted'",
                             row["conversation_id"])


async def test_a_429_storm_does_not_stall_other_conversations(stack: Stack, db: asyncpg.Connection) -> None:
    stormy, calm = _phone(), _phone()
    await script(stack, [{"to": f"+{stormy}", "code": 130429, "http_status": 429}] * 4)
    (storm_msg,) = await say(stack, stormy, "I get throttled")
    await eventually(lambda: sends_to(stack, stormy), what="the first throttled attempt")
    started = time.monotonic()
    (calm_msg,) = await say(stack, calm, "and me?")
    await eventually(lambda: stack.replies_to(calm_msg), 10, "the other conversation's reply")
    assert time.monotonic() - started < 10

    async def storm_over() -> asyncpg.Record | None:  # four 429s, then the fifth and last attempt goes through
        row = await ledger(db, f"auto:{storm_msg}")
        return row if row and row["state"] == "sent" else None

    row = await eventually(storm_over, 60, "the throttled reply to go through once the storm is over")
    assert row["attempts"] == 5 and len(await sends_to(stack, stormy)) == 5


async def test_an_invalid_phone_leaves_a_task_and_sends_nothing(stack: Stack, db: asyncpg.Connection) -> None:
    (mid,) = await say(stack, "12", "hi from a broken number")

    async def failed() -> asyncpg.Record | None:
        row = await ledger(db, f"auto:{mid}")
        return row if row and row["state"] == "failed" else None

    row = await eventually(failed, what="the intent to fail")
    assert row["error"]["code"] == "INVALID_RECIPIENT"
    assert await db.fetchval("SELECT count(*) FROM tasks WHERE conversation_id = $1", row["conversation_id"]) == 1
    assert [x for x in await stack.sent() if (x.get("body") or {}).get("to") in ("+12", "12")] == []


async def test_outside_the_window_no_free_text_is_sent(stack: Stack, db: asyncpg.Connection) -> None:
    wa_id = _phone()
    (first,) = await say(stack, wa_id, "hi")
    await eventually(lambda: stack.replies_to(first), what="the first reply")
    conv_id = (await stored(db, first))["conversation_id"]
    await db.execute("UPDATE conversations SET last_inbound_at = now() - interval '25 hours' WHERE id = $1", conv_id)
    async with db.transaction():
        await queue_manual_reply(db, conv_id, "Are you still interested?", "late-" + wa_id)

    async def closed() -> asyncpg.Record | None:
        row = await ledger(db, f"manual:late-{wa_id}")
        return row if row and row["state"] == "failed" else None

    await eventually(closed, what="the late reply to be refused")
    assert await db.fetchval("SELECT count(*) FROM tasks WHERE conversation_id = $1 AND kind = 'window_closed'",
                             conv_id) == 1
    assert len(await sends_to(stack, wa_id)) == 1


async def test_a_new_message_never_shortens_a_lease(make_database: Callable[[], str]) -> None:
    """While the orchestrator answers a leased conversation (a model call), a customer message that
    arrives must not make it due again: a second tick would answer the same messages twice."""
    url = make_database()  # a database of its own: no worker leases its conversations
    await run_migrations(url, 10.0, out=lambda m: None)
    conn = await connect(url, timeout=10)
    try:
        contact_id = await conn.fetchval(
            "INSERT INTO contacts (phone_number_id, wa_id) VALUES ('1', '15550001234') RETURNING id")
        conv = await conn.fetchval("INSERT INTO conversations (conversation_key, phone_number_id, contact_id) "
                                   "VALUES ('1:15550001234', '1', $1) RETURNING id", contact_id)
        async with conn.transaction():
            await replies.schedule_reply(conn, conv, 0)  # due at once
            assert await replies.lease_due(conn, 20, 3.0) == [conv]
        async with conn.transaction():
            await replies.schedule_reply(conn, conv, 0)  # a message arrives while the model answers
        async with conn.transaction():
            assert await replies.lease_due(conn, 20, 3.0) == []  # still leased: nobody answers it twice

        async def lease_ran_out() -> bool:  # a worker that died while answering: the lease runs out
            async with conn.transaction():
                return await replies.lease_due(conn, 20, 30.0) == [conv]

        await eventually(lease_ran_out, 30, "the lease to run out")
        async with conn.transaction():
            await replies.schedule_reply(conn, conv, 0)
            assert await conn.fetchval("SELECT reply_due_at > now() + interval '20 seconds' FROM conversations "
                                       "WHERE id = $1", conv)  # the new lease holds too
    finally:
        await conn.close()
