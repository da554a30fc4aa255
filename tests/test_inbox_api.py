"""The inbox API on the session's system (real PostgreSQL, broker, worker; fake-meta for Meta):
one test per route and rule of the contract, inbox/openapi.json (tests/test_openapi.py holds the
document to the routes)."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
from conftest import Stack, eventually
from inbox_client import Api, customer_says, latest_conversation, phone
from test_replies import sends_to


async def _conversation(stack: Stack, db: asyncpg.Connection, text: str = "hello there",
                        name: str = "Cliente") -> tuple[str, int]:
    wa_id = phone()
    await customer_says(stack, wa_id, text, name)
    cid = await eventually(lambda: db.fetchval("SELECT c.id FROM conversations c JOIN contacts k ON "
                                               "k.id = c.contact_id WHERE k.wa_id = $1", wa_id), what="stored")
    return wa_id, int(cid)


def _iso(delta_s: float) -> str:
    return (datetime.now(UTC) + timedelta(seconds=delta_s)).isoformat()


async def test_list_filters_counts_pages_and_search(stack: Stack, db: asyncpg.Connection, agent: Api) -> None:
    name = f"Zed {uuid.uuid4().hex[:6]}"
    wa_id, cid = await _conversation(stack, db, "hi", name)
    body = await agent.get(f"conversations?q={name}")
    (item,) = body["conversations"]
    assert item["id"] == cid and item["contact"]["name"] == name and item["contact"]["phone"] == f"+{wa_id}"
    assert item["contact"]["wa_id"] == wa_id and item["lead"]["stage"] == "new" and item["status"] == "open"
    assert item["last_message_preview"] and item["window_open_until"] and item["unread_count"] >= 1
    assert set(body["meta"]) == {"page", "per_page", "counts"}
    assert set(body["meta"]["counts"]) >= {"open", "pending", "resolved", "snoozed", "mine", "unassigned"}

    await agent.post(f"conversations/{cid}/assign")
    mine = await agent.get(f"conversations?assignee=me&q={name}")
    assert [c["id"] for c in mine["conversations"]] == [cid] and mine["meta"]["counts"]["mine"] == 1
    assert (await agent.get(f"conversations?assignee=unassigned&q={name}"))["conversations"] == []
    await agent.post(f"conversations/{cid}/status", {"status": "resolved"})
    assert [c["id"] for c in (await agent.get(f"conversations?status=resolved&q={name}"))["conversations"]] == [cid]
    assert (await agent.get(f"conversations?status=open&q={name}"))["conversations"] == []
    assert (await agent.get(f"conversations?page=2&q={name}"))["conversations"] == []
    for bad in ("status=closed", "assignee=bob", "page=0", "page=x"):
        status, err = await agent.call("GET", f"conversations?{bad}")
        assert (status, err["code"]) == (422, "INVALID"), bad


async def test_counts_follow_every_change_although_they_are_reused_between_changes(
        stack: Stack, db: asyncpg.Connection, agent: Api) -> None:
    async def counts() -> dict[str, int]:
        return (await agent.get("conversations"))["meta"]["counts"]

    async def truth() -> dict[str, int]:
        return dict(await db.fetchrow(
            "SELECT count(*) FILTER (WHERE inbox_status = 'open') open, count(*) \"all\", count(*) FILTER "
            "(WHERE assigned_user_id = $1) mine FROM conversations WHERE deleted_at IS NULL", agent.user_id))

    async def agree() -> bool:
        got = await counts()
        return {k: got[k] for k in ("open", "all", "mine")} == await truth()

    await eventually(agree, what="the list's counts to agree with the database")
    _, cid = await _conversation(stack, db)  # a new conversation, written by the worker: an event
    await eventually(agree, what="a new conversation counted")
    await agent.post(f"conversations/{cid}/assign")  # this server's own write: counted at once
    assert await agree()
    await agent.post(f"conversations/{cid}/status", {"status": "resolved"})
    assert await agree()
    await db.execute("UPDATE conversations SET inbox_status = 'pending' WHERE id = $1", cid)  # another writer
    await eventually(agree, what="a change by another writer counted")


async def test_detail_pages_messages_back_by_id(stack: Stack, db: asyncpg.Connection, agent: Api) -> None:
    _, cid = await _conversation(stack, db)
    await eventually(lambda: db.fetchval("SELECT count(*) FROM messages WHERE conversation_id = $1 AND "
                                         "direction = 'outbound'", cid), 60, "the bot's greeting stored")
    contact_id = await db.fetchval("SELECT contact_id FROM conversations WHERE id = $1", cid)
    await db.executemany(
        "INSERT INTO messages (provider_message_id, conversation_id, contact_id, direction, type, body, status) "
        "VALUES ($1, $2, $3, 'inbound', 'text', $4, 'received')",
        [(f"wamid.page.{uuid.uuid4().hex}", cid, contact_id, f"message {i}") for i in range(60)])
    first = (await agent.get(f"conversations/{cid}"))["conversation"]
    assert first["contact"]["id"] == contact_id and first["lead"]["stage"] == "new" and "intelligence" in first
    page = first["messages"]
    assert len(page) == 50 and page[-1]["body"] == "message 59" and first["more_before"]
    assert [m["id"] for m in page] == sorted(m["id"] for m in page)  # oldest first
    assert set(page[0]) >= {"id", "direction", "type", "body", "status", "created_at", "provider_message_id", "author"}
    total = await db.fetchval("SELECT count(*) FROM messages WHERE conversation_id = $1", cid)
    older = (await agent.get(f"conversations/{cid}?before={page[0]['id']}"))["conversation"]["messages"]
    assert len(older) == total - 50 and older[-1]["id"] < page[0]["id"]
    assert not (await agent.get(f"conversations/{cid}?before={older[0]['id']}"))["conversation"]["messages"]
    status, err = await agent.call("GET", "conversations/999999999")
    assert (status, err["code"]) == (404, "NOT_FOUND")


async def test_a_reply_is_sent_once_for_two_posts_with_one_key(stack: Stack, db: asyncpg.Connection,
                                                               agent: Api) -> None:
    wa_id, cid = await _conversation(stack, db, "hola")
    await agent.post(f"conversations/{cid}/assign")
    key = str(uuid.uuid4())
    first = await agent.post(f"conversations/{cid}/messages", {"text": "A person answers", "idempotency_key": key},
                             expect=202)
    second = await agent.post(f"conversations/{cid}/messages", {"text": "A person answers", "idempotency_key": key},
                              expect=202)
    assert first["outbound"]["id"] == second["outbound"]["id"] and first["created"] and not second["created"]

    async def sent() -> list:
        return [x for x in await sends_to(stack, wa_id) if (x["body"].get("text") or {}).get("body")
                == "A person answers"]

    (_one,) = await eventually(sent, 60, "the person's reply at fake-meta")
    row = await eventually(lambda: db.fetchrow("SELECT * FROM outbound_log WHERE id = $1 AND state = 'sent'",
                                               first["outbound"]["id"]), 30, "the ledger row sent")
    assert row["author_user_id"] == agent.user_id and not row["automatic"]  # type: ignore[attr-defined]
    # One ledger row for the key, so nothing can send it a second time.
    assert await db.fetchval("SELECT count(*) FROM outbound_log WHERE dedupe_key LIKE $1", f"manual:%:{key}") == 1
    assert len(await sent()) == 1

    async def authored() -> dict | None:
        messages = (await agent.get(f"conversations/{cid}"))["conversation"]["messages"]
        return next((m for m in messages if m["body"] == "A person answers"), None)

    message = await eventually(authored, 30, "the reply in the thread")
    assert message["author"] == agent.user_id and message["direction"] == "outbound"  # type: ignore[attr-defined]
    for bad in ({"text": "no key"}, {"idempotency_key": "k"}, {"text": "", "idempotency_key": "k"},
                {"text": "x", "template": {"name": "t", "language": "en"}, "idempotency_key": "k"}):
        status, err = await agent.call("POST", f"conversations/{cid}/messages", bad)
        assert (status, err["code"]) == (422, "INVALID"), bad


async def test_free_text_outside_the_window_is_refused_and_a_template_is_sent(stack: Stack, db: asyncpg.Connection,
                                                                            agent: Api) -> None:
    wa_id, cid = await _conversation(stack, db, "hola")
    await agent.post(f"conversations/{cid}/assign")  # the bot stays quiet
    await db.execute("UPDATE conversations SET last_inbound_at = now() - interval '25 hours' WHERE id = $1", cid)
    status, body = await agent.call("POST", f"conversations/{cid}/messages",
                                    {"text": "late answer", "idempotency_key": str(uuid.uuid4())})
    assert (status, body["code"]) == (409, "WINDOW_CLOSED") and isinstance(body["templates"], list)
    assert await db.fetchval("SELECT count(*) FROM outbound_log WHERE conversation_id = $1 AND NOT automatic",
                             cid) == 0
    template = {"name": "follow_up", "language": "en", "parameters": ["Ana"]}
    sent = await agent.post(f"conversations/{cid}/messages", {"template": template, "idempotency_key": "tpl-" +
                                                              str(uuid.uuid4())}, expect=202)

    async def at_meta() -> list:
        return [x for x in await sends_to(stack, wa_id) if x["body"].get("type") == "template"]

    (one,) = await eventually(at_meta, 60, "the template at fake-meta")
    assert one["body"]["template"]["name"] == "follow_up"
    assert sent["outbound"]["state"] == "queued"


async def test_assign_bumps_the_ownership_version_and_release_hands_back(stack: Stack, db: asyncpg.Connection,
                                                                         agent: Api, admin: Api) -> None:
    _, cid = await _conversation(stack, db)
    before = await db.fetchval("SELECT ownership_version FROM conversations WHERE id = $1", cid)
    took = (await agent.post(f"conversations/{cid}/assign"))["conversation"]
    assert took["assignee_id"] == agent.user_id and took["ownership_version"] > before  # type: ignore[attr-defined]
    status, body = await agent.call("POST", f"conversations/{cid}/assign", {"user_id": admin.user_id})  # type: ignore
    assert (status, body["code"]) == (403, "FORBIDDEN")
    moved = (await admin.post(f"conversations/{cid}/assign", {"user_id": agent.user_id}))  # type: ignore
    assert moved["conversation"]["ownership_version"] > took["ownership_version"]
    status, body = await admin.call("POST", f"conversations/{cid}/assign", {"user_id": 999999999})
    assert (status, body["code"]) == (422, "INVALID")
    released = (await agent.post(f"conversations/{cid}/release"))["conversation"]
    assert released["assignee_id"] is None
    row = await db.fetchrow("SELECT assigned_user_id, needs_human FROM conversations WHERE id = $1", cid)
    assert row["assigned_user_id"] is None and not row["needs_human"]


async def test_status_and_snooze_reopen_at_the_time_or_on_the_next_message(stack: Stack, db: asyncpg.Connection,
                                                                           agent: Api) -> None:
    wa_id, cid = await _conversation(stack, db)
    for status in ("pending", "resolved", "open"):
        await agent.post(f"conversations/{cid}/status", {"status": status})
        assert await db.fetchval("SELECT inbox_status FROM conversations WHERE id = $1", cid) == status
    for bad in ({"status": "snoozed"}, {"status": "snoozed", "snoozed_until": _iso(-60)},
                {"status": "snoozed", "snoozed_until": "tomorrow"}, {"status": "closed"}):
        status, body = await agent.call("POST", f"conversations/{cid}/status", bad)
        assert (status, body["code"]) == (422, "INVALID"), bad
    await agent.post(f"conversations/{cid}/status", {"status": "snoozed", "snoozed_until": _iso(3)})
    assert (await agent.get(f"conversations/{cid}"))["conversation"]["status"] == "snoozed"

    async def reopened() -> bool:
        return (await agent.get(f"conversations/{cid}"))["conversation"]["status"] == "open"

    await eventually(reopened, 30, "the snoozed conversation to reopen at its time")
    await agent.post(f"conversations/{cid}/status", {"status": "snoozed", "snoozed_until": _iso(86400)})
    await customer_says(stack, wa_id, "are you there?")
    await eventually(reopened, 30, "the customer's message to reopen the conversation")


async def test_notes_are_private_and_listed_with_the_conversation(stack: Stack, db: asyncpg.Connection,
                                                                  agent: Api) -> None:
    _wa_id, cid = await _conversation(stack, db)
    note = (await agent.post(f"conversations/{cid}/notes", {"text": "VIP, call after 5"}, expect=201))["note"]
    assert note["author"] == agent.user_id  # type: ignore[attr-defined]
    notes = (await agent.get(f"conversations/{cid}"))["conversation"]["notes"]
    assert [n["text"] for n in notes] == ["VIP, call after 5"]
    assert not [x for x in await stack.sent() if "VIP" in str(x.get("body"))]
    assert await db.fetchval("SELECT count(*) FROM outbound_log WHERE conversation_id = $1 AND intent::text "
                             "LIKE '%VIP%'", cid) == 0
    status, body = await agent.call("POST", f"conversations/{cid}/notes", {"text": "  "})
    assert (status, body["code"]) == (422, "INVALID")


async def test_intelligence_by_rules_and_the_stage_moves_only_forward(stack: Stack, db: asyncpg.Connection,
                                                                     agent: Api) -> None:
    _, cid = await _conversation(stack, db, "How much is the price? I want to buy two, thanks!")
    intel = (await agent.post(f"conversations/{cid}/intelligence/refresh"))["intelligence"]
    assert intel["engine"] == "rules" and intel["lead_stage"] == "qualified" and intel["intent"] in ("purchase",
                                                                                                      "pricing")
    assert intel["sentiment"] == "positive" and 0 <= intel["lead_score"] <= 100 and intel["refreshed_at"]
    assert "price" in intel["summary"] or "pricing" in intel["summary"]
    detail = (await agent.get(f"conversations/{cid}"))["conversation"]
    assert detail["intelligence"]["lead_stage"] == "qualified" and detail["lead"]["stage"] == "qualified"
    assert detail["lead"]["score"] == intel["lead_score"]
    # A person moves it on; the next refresh does not move it back.
    await agent.post(f"conversations/{cid}/lead", {"stage": "won"})
    await agent.post(f"conversations/{cid}/intelligence/refresh")
    assert (await agent.get(f"conversations/{cid}"))["conversation"]["lead"]["stage"] == "won"
    # A person may move it back.
    await agent.post(f"conversations/{cid}/lead", {"stage": "interested"})
    assert (await agent.get(f"conversations/{cid}"))["conversation"]["lead"]["stage"] == "interested"
    status, body = await agent.call("POST", f"conversations/{cid}/lead", {"stage": "famous"})
    assert (status, body["code"]) == (422, "INVALID")


async def test_a_fallback_that_promises_a_follow_up_leaves_the_conversation_pending_with_a_task(
        stack: Stack, db: asyncpg.Connection, agent: Api) -> None:
    wa_id = phone()
    await customer_says(stack, wa_id, "hi")  # a new contact: greeted
    cid = await eventually(lambda: db.fetchval("SELECT c.id FROM conversations c JOIN contacts k ON "
                                               "k.id = c.contact_id WHERE k.wa_id = $1 AND c.reply_upto_message_id > 0",
                                               wa_id), 30, "the greeting")
    await customer_says(stack, wa_id, "do you repair blue submarines")

    async def task() -> dict | None:
        return next((t for t in (await agent.get("tasks?state=open"))["tasks"]
                     if t["conversation_id"] == cid and t["kind"] == "follow_up"), None)

    found = await eventually(task, 30, "the follow-up task")
    assert (await agent.get(f"conversations/{cid}"))["conversation"]["status"] == "pending"
    await agent.post(f"tasks/{found['id']}/done")
    assert not [t for t in (await agent.get("tasks?state=open"))["tasks"] if t["id"] == found["id"]]
    assert [t["id"] for t in (await agent.get("tasks?state=done"))["tasks"] if t["id"] == found["id"]]
    status, body = await agent.call("GET", "tasks?state=later")
    assert (status, body["code"]) == (422, "INVALID")


async def test_notifications_read_and_snoozed(stack: Stack, db: asyncpg.Connection, agent: Api,
                                              admin: Api) -> None:
    wa_id, cid = await _conversation(stack, db)
    await customer_says(stack, wa_id, "I want to talk to a human please")

    async def notification(who: Api = agent) -> dict | None:
        return next((n for n in (await who.get("notifications"))["notifications"]
                     if n["conversation_id"] == cid and n["kind"] == "handover"), None)

    n = await eventually(notification, 30, "the handover notification")
    assert n["read_at"] is None
    unread_for_admin = (await admin.get("notifications"))["meta"]["unread"]
    await agent.post(f"notifications/{n['id']}/read")
    assert (await notification())["read_at"] is not None  # type: ignore[index]
    # The handover is everyone's: one person reading or snoozing it does it for them alone.
    assert (await notification(admin))["read_at"] is None  # type: ignore[index]
    assert (await admin.get("notifications"))["meta"]["unread"] == unread_for_admin
    await agent.post(f"notifications/{n['id']}/snooze", {"until": _iso(3)})
    assert await notification() is None  # hidden while snoozed
    assert await notification(admin) is not None
    await eventually(notification, 30, "the snoozed notification to come back")
    status, body = await agent.call("POST", f"notifications/{n['id']}/snooze", {"until": _iso(-5)})
    assert (status, body["code"]) == (422, "INVALID")
    status, body = await agent.call("POST", "notifications/999999999/read")
    assert (status, body["code"]) == (404, "NOT_FOUND")


async def test_admin_soft_delete_restore_and_a_new_message_restores(stack: Stack, db: asyncpg.Connection,
                                                                      agent: Api, admin: Api) -> None:
    name = f"Del {uuid.uuid4().hex[:6]}"
    wa_id, cid = await _conversation(stack, db, "hi", name)
    await admin.post(f"admin/conversations/{cid}/delete")
    assert (await agent.get(f"conversations?q={name}"))["conversations"] == []
    status, body = await agent.call("GET", f"conversations/{cid}")
    assert (status, body["code"]) == (404, "NOT_FOUND")
    assert cid in [c["id"] for c in (await admin.get(f"admin/conversations?deleted=true&q={name}"))["conversations"]]
    assert await db.fetchval("SELECT count(*) FROM messages WHERE conversation_id = $1", cid) >= 1  # rows kept
    await admin.post(f"admin/conversations/{cid}/restore")
    assert [c["id"] for c in (await agent.get(f"conversations?q={name}"))["conversations"]] == [cid]

    await admin.post(f"admin/conversations/{cid}/delete")
    await customer_says(stack, wa_id, "hello again", name)

    async def restored() -> bool:
        return [c["id"] for c in (await agent.get(f"conversations?q={name}"))["conversations"]] == [cid]

    await eventually(restored, 30, "the customer's message to restore the conversation")
    notes = (await admin.get("notifications"))["notifications"]
    assert any(n["kind"] == "conversation_restored" and str(cid) in n["body"] for n in notes)
    assert not any(n["kind"] == "conversation_restored" and str(cid) in n["body"]
                   for n in (await agent.get("notifications"))["notifications"])
    status, body = await admin.call("POST", "admin/conversations/999999999/delete")
    assert (status, body["code"]) == (404, "NOT_FOUND")


async def test_live_events_carry_ids_and_resume_after_last_event_id(stack: Stack, db: asyncpg.Connection,
                                                                    agent: Api) -> None:
    import aiohttp

    headers = {"Cookie": agent.cookie or ""}
    wa_id = phone()
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as s, \
            s.get(f"{stack.base}/api/v1/events", headers=headers) as r:
        assert r.status == 200 and r.content_type == "text/event-stream"
        events = _sse(r)
        assert (await asyncio.wait_for(events.__anext__(), 30))[0] == "ready"
        await customer_says(stack, wa_id, "live?")
        seen: list[tuple[str, str | None, dict]] = []

        async def message_event() -> tuple[str, str | None, dict]:
            # the stream carries the whole system's events: other tests' replies may come first
            async for event in events:
                seen.append(event)
                if event[0] == "message" and event[2]["conversation_id"] == await latest_conversation(db, wa_id):
                    return event
            raise AssertionError("stream ended")

        _kind, event_id, data = await asyncio.wait_for(message_event(), 60)
    assert data["message_id"] and set(data) <= {
        "id", "kind", "conversation_id", "message_id", "notification_id"}
    assert event_id == str(data["id"])
    # Reconnect from before that event: it comes again, from the log.
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as s, s.get(f"{stack.base}/api/v1/events",
                     headers={**headers, "Last-Event-ID": str(int(event_id) - 1)}) as r:
        events = _sse(r)
        first = await asyncio.wait_for(events.__anext__(), 30)
    assert first[1] == event_id and first[2]["message_id"] == data["message_id"]


async def _sse_lines(r):  # type: ignore[no-untyped-def]
    async for raw in r.content:
        yield raw.decode().rstrip("\r\n")


async def _sse(r):  # type: ignore[no-untyped-def]
    """(event, id, data) of each event of an SSE response."""
    import json

    kind, event_id, data = "message", None, ""
    async for line in _sse_lines(r):
        if line.startswith(":"):
            continue
        if not line:
            if data:
                yield kind, event_id, json.loads(data)
            kind, event_id, data = "message", None, ""
            continue
        field, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if field == "event":
            kind = value
        elif field == "id":
            event_id = value
        elif field == "data":
            data += value


async def test_live_events_for_an_assignment_and_a_person_s_reply(stack: Stack, db: asyncpg.Connection,
                                                                  agent: Api) -> None:
    import aiohttp

    _, cid = await _conversation(stack, db)
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as s, \
            s.get(f"{stack.base}/api/v1/events", headers={"Cookie": agent.cookie or ""}) as r:
        events = _sse(r)
        assert (await asyncio.wait_for(events.__anext__(), 30))[0] == "ready"
        await agent.post(f"conversations/{cid}/assign")
        await agent.post(f"conversations/{cid}/messages", {"text": "on it", "idempotency_key": str(uuid.uuid4())},
                         expect=202)
        wanted = {"conversation", "status"}

        async def both() -> None:
            async for kind, _, data in events:
                if data.get("conversation_id") == cid:
                    wanted.discard(kind)
                    if not wanted:
                        return

        await asyncio.wait_for(both(), 60)
