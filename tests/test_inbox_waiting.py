"""The queue a team works from, on the session's system (real PostgreSQL, broker, worker;
fake-meta for Meta): who waits for a person, since when and why; taking over or answering ends
the wait, its task and its notification; tasks and notifications name the customer; a failed
reply's error comes in words."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
from conftest import Stack, eventually
from inbox_client import Api, customer_says, phone
from test_replies import script, sends_to


async def _cid(db: asyncpg.Connection, wa_id: str) -> int:
    cid = await eventually(lambda: db.fetchval("SELECT c.id FROM conversations c JOIN contacts k ON "
                                               "k.id = c.contact_id WHERE k.wa_id = $1", wa_id), what="stored")
    return int(cid)


async def _asks_for_a_person(stack: Stack, db: asyncpg.Connection, name: str) -> tuple[str, int]:
    wa_id = phone()
    await customer_says(stack, wa_id, "I want to talk to a human please", name)
    return wa_id, await _cid(db, wa_id)


async def _waiting(api: Api, q: str) -> list[dict[str, Any]]:
    conversations: list[dict[str, Any]] = (await api.get(f"conversations?waiting=true&q={q}"))["conversations"]
    return conversations


async def _task(api: Api, cid: int, kind: str, state: str = "open") -> dict[str, Any] | None:
    return next((t for t in (await api.get(f"tasks?state={state}"))["tasks"]
                 if t["conversation_id"] == cid and t["kind"] == kind), None)


async def _notification(api: Api, cid: int, kind: str = "handover") -> dict[str, Any] | None:
    return next((n for n in (await api.get("notifications"))["notifications"]
                 if n["conversation_id"] == cid and n["kind"] == kind), None)


async def test_a_customer_who_asks_for_a_person_waits_oldest_first_until_taken_over(
        stack: Stack, db: asyncpg.Connection, agent: Api, admin: Api) -> None:
    tag = uuid.uuid4().hex[:8]
    first_wa, first = await _asks_for_a_person(stack, db, f"Bob {tag}")

    async def waits(n: int) -> list[dict[str, Any]] | None:
        items = await _waiting(agent, tag)
        return items if len(items) == n else None

    await eventually(lambda: waits(1), 30, "the first handover in the queue")
    _, second = await _asks_for_a_person(stack, db, f"María {tag}")
    items = await eventually(lambda: waits(2), 30, "both in the queue")
    assert [c["id"] for c in items] == [first, second]  # the longest wait first
    wait = items[0]["waiting"]
    assert wait["reason"] == "handover" and wait["reason_text"] == "the customer asked for a person"
    assert wait["since"] <= items[1]["waiting"]["since"]

    listed = (await agent.get(f"conversations?q={tag}"))
    assert {c["id"]: c["waiting"]["reason"] for c in listed["conversations"]} == {first: "handover", second: "handover"}
    assert listed["meta"]["counts"]["waiting"] >= 2
    detail = (await agent.get(f"conversations/{first}"))["conversation"]
    assert detail["waiting"] == wait and detail["needs_human"] is True

    # Tasks and notifications name the customer and the conversation.
    task = await _task(agent, first, "handover")
    assert task is not None and task["contact"]["name"] == f"Bob {tag}" and task["contact"]["phone"] == f"+{first_wa}"
    note = await eventually(lambda: _notification(agent, first), 30, "the handover notification")
    assert note["contact"]["name"] == f"Bob {tag}" and note["read_at"] is None and note["done"] is False
    unread = (await admin.get("notifications"))["meta"]["unread"]
    last_event = await db.fetchval("SELECT max(id) FROM inbox_events")

    await agent.post(f"conversations/{first}/assign")  # taking it over ends the wait

    assert [c["id"] for c in await _waiting(agent, tag)] == [second]
    assert (await agent.get(f"conversations/{first}"))["conversation"]["waiting"] is None
    assert await _task(agent, first, "handover") is None
    done = await _task(agent, first, "handover", "done")
    assert done is not None and done["done_at"] is not None
    for who in (agent, admin):  # the handled notification is done and read, for everyone
        handled = await _notification(who, first)
        assert handled is not None and handled["done"] is True and handled["read_at"] is not None
    assert (await admin.get("notifications"))["meta"]["unread"] == unread - 1
    # Every open page hears of it: the conversation changed and so did its notification.
    kinds = {(r["kind"], r["notification_id"]) for r in await db.fetch(
        "SELECT kind, notification_id FROM inbox_events WHERE id > $1 AND conversation_id = $2", last_event, first)}
    assert ("notification", note["id"]) in kinds and ("conversation", None) in kinds


async def test_a_person_s_reply_ends_the_wait(stack: Stack, db: asyncpg.Connection, agent: Api) -> None:
    tag = uuid.uuid4().hex[:8]
    _, cid = await _asks_for_a_person(stack, db, f"Cy {tag}")
    await eventually(lambda: _waiting(agent, tag), 30, "the handover in the queue")
    await agent.post(f"conversations/{cid}/messages", {"text": "Hi, Ana here, how can I help?",
                                                       "idempotency_key": uuid.uuid4().hex}, expect=202)
    assert await _waiting(agent, tag) == []
    assert await _task(agent, cid, "handover") is None
    assert (await _task(agent, cid, "handover", "done")) is not None


async def test_a_failed_reply_waits_with_its_reason_in_words(stack: Stack, db: asyncpg.Connection,
                                                             agent: Api) -> None:
    tag = uuid.uuid4().hex[:8]
    wa_id = phone()
    await customer_says(stack, wa_id, "hi", f"Dee {tag}")  # a new contact: the bot greets
    cid = await _cid(db, wa_id)
    await eventually(lambda: sends_to(stack, wa_id), 60, "the greeting at fake-meta")
    await script(stack, [{"to": f"+{wa_id}", "code": 131047, "http_status": 400}])  # Meta: the window closed
    await agent.post(f"conversations/{cid}/messages", {"text": "Our offer ends today",
                                                       "idempotency_key": uuid.uuid4().hex}, expect=202)

    task = await eventually(lambda: _task(agent, cid, "window_closed"), 60, "the failed reply's task")
    assert task["contact"]["name"] == f"Dee {tag}"
    assert task["reason_text"].startswith("the 24-hour window had closed")
    assert "template" in task["next_step"]
    (item,) = await _waiting(agent, tag)
    assert item["waiting"]["reason"] == "window_closed"
    detail = (await agent.get(f"conversations/{cid}"))["conversation"]
    (failed,) = [m for m in detail["messages"] if m["status"] == "failed"]  # the reply Meta never took
    assert failed["outbound_id"] and failed["retryable"]
    assert failed["error"]["code"] == 131047  # the error as stored, and in words beside it
    assert failed["reason_text"].startswith("the 24-hour window had closed") and "template" in failed["next_step"]


async def test_the_queue_parameter_is_checked(agent: Api) -> None:
    status, body = await agent.call("GET", "conversations?waiting=yes")
    assert (status, body["code"]) == (422, "INVALID") and "waiting" in body["error"]
