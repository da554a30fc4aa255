"""End to end through the running system: webhook → broker → agents → PostgreSQL → fake Graph API."""

from __future__ import annotations

import subprocess

import aiohttp
import asyncpg
from conftest import ACCESS_TOKEN, APP_SECRET, FIXTURES, Stack, eventually, fresh

from wacrm.core import procs
from wacrm.whatsapp import simulate


async def _rows(db: asyncpg.Connection, message_id: str) -> dict:
    inbound = await db.fetchrow("SELECT * FROM messages WHERE provider_message_id = $1", message_id)
    if inbound is None:
        return {}
    conv = await db.fetchrow("SELECT * FROM conversations WHERE id = $1", inbound["conversation_id"])
    outbound = await db.fetch("SELECT m.* FROM messages m JOIN outbound_log o ON o.provider_message_id = "
                              "m.provider_message_id WHERE m.conversation_id = $1 AND m.direction = 'outbound' "
                              "AND o.intent->>'reply_to' = $2", conv["id"], message_id)
    return {"inbound": inbound, "conversation": conv, "outbound": outbound}


async def test_text_message_is_stored_and_answered_once(stack: Stack, db: asyncpg.Connection) -> None:
    body = simulate.dumps(simulate.text_body(text="Olá, ¿tienen envío? 🚚", wa_id="15550004451", name="Zoë"))
    message_id = simulate_id(body)
    assert (await stack.post(body))[0] == 200

    replies = await eventually(lambda: stack.replies_to(message_id), what="the reply at the fake Graph API")
    assert len(replies) == 1
    req = replies[0]
    assert req["authorization"] == f"Bearer {ACCESS_TOKEN}"
    assert req["phone_number_id"] == "200000000000001" and req["version"] == "v25.0"
    assert req["body"]["to"] == "+15550004451" and req["body"]["type"] == "text"

    async def stored() -> dict:
        rows = await _rows(db, message_id)
        return rows if rows and rows["outbound"] else {}

    rows = await eventually(stored, what="the outbound message row")
    assert rows["inbound"]["direction"] == "inbound" and rows["inbound"]["body"] == "Olá, ¿tienen envío? 🚚"
    assert rows["inbound"]["raw_ref"]["topic"] == "wa.webhook.raw"
    (out,) = rows["outbound"]
    assert out["provider_message_id"] == req["answered"]["id"]
    conv = rows["conversation"]
    assert conv["last_inbound_at"] and conv["last_outbound_at"] and conv["last_message_at"] >= conv["last_inbound_at"]
    contact = await db.fetchrow("SELECT * FROM contacts WHERE id = $1", conv["contact_id"])
    assert (contact["wa_id"], contact["profile_name"]) == ("15550004451", "Zoë")
    assert await db.fetchval("SELECT source FROM leads WHERE contact_id = $1", contact["id"]) == "organic"
    ledger = await db.fetchrow("SELECT * FROM outbound_log WHERE dedupe_key = $1", f"auto:{message_id}")
    assert ledger["state"] == "sent" and ledger["attempts"] == 1


async def test_the_same_body_again_changes_nothing(stack: Stack, db: asyncpg.Connection) -> None:
    body = simulate.dumps(simulate.text_body(text="once", wa_id="15550005555"))
    message_id = simulate_id(body)
    assert (await stack.post(body))[0] == 200
    await eventually(lambda: stack.replies_to(message_id), what="the first reply")

    async def reply_recorded() -> dict:
        rows = await _rows(db, message_id)
        return rows if rows and rows["outbound"] else {}

    conversation_id = (await eventually(reply_recorded, what="the reply's row"))["conversation"]["id"]
    scoped = ("SELECT (SELECT count(*) FROM messages WHERE conversation_id = $1) m, "
              "(SELECT count(*) FROM contacts WHERE wa_id = '15550005555') c, "
              "(SELECT count(*) FROM conversations WHERE id = $1) v, "
              "(SELECT count(*) FROM outbound_log WHERE conversation_id = $1) l")
    counts = await db.fetchrow(scoped, conversation_id)
    dupes = await stack.worker_metric("wacrm_duplicates_total", 'kind="message"')

    assert (await stack.post(body))[0] == 200  # Meta's redelivery

    async def seen_as_duplicate() -> bool:
        return await stack.worker_metric("wacrm_duplicates_total", 'kind="message"') > dupes

    await eventually(seen_as_duplicate, what="the worker to see the redelivery")
    assert len(await stack.replies_to(message_id)) == 1
    assert await db.fetchrow(scoped, conversation_id) == counts


async def test_batch_of_three_messages_from_two_contacts(stack: Stack, db: asyncpg.Connection) -> None:
    body = fresh((FIXTURES / "webhooks" / "21_batch_3msgs_2contacts_single_value.json").read_bytes())
    ids = ["wamid.TEST_IN_0023", "wamid.TEST_IN_0024", "wamid.TEST_IN_0025"]
    assert (await stack.post(body))[0] == 200

    async def all_stored() -> bool:
        return await db.fetchval("SELECT count(*) FROM messages WHERE provider_message_id = ANY($1)", ids) == 3

    await eventually(all_stored, what="all three messages of the batch")
    contacts = await db.fetchval(
        "SELECT count(DISTINCT contact_id) FROM messages WHERE provider_message_id = ANY($1)", ids)
    assert contacts == 2
    # One reply per customer: 0023 and 0025 are one burst of the same customer, answered once.
    for mid in ("wamid.TEST_IN_0024", "wamid.TEST_IN_0025"):
        await eventually(lambda mid=mid: stack.replies_to(mid), what=f"a reply to {mid}")
    assert await stack.replies_to("wamid.TEST_IN_0023") == []


async def test_a_status_for_a_message_not_stored_yet_is_kept(stack: Stack, db: asyncpg.Connection) -> None:
    body = (FIXTURES / "webhooks" / "24_status_read.json").read_bytes()
    assert (await stack.post(body))[0] == 200

    async def kept() -> bool:
        return bool(await db.fetchval("SELECT count(*) FROM message_status_events "
                                      "WHERE provider_message_id = 'wamid.TEST_OUT_0001' AND status = 'read'"))

    await eventually(kept, what="the status event")


async def test_statuses_move_a_sent_reply_forward_only(stack: Stack, db: asyncpg.Connection) -> None:
    async with aiohttp.ClientSession() as s:  # this test posts the reply's statuses itself
        await s.post(f"{stack.fake_meta}/__script", json=[{"to": "+15550006666", "statuses": False}])
    body = simulate.dumps(simulate.text_body(text="status please", wa_id="15550006666"))
    message_id = simulate_id(body)
    assert (await stack.post(body))[0] == 200
    (reply,) = await eventually(lambda: stack.replies_to(message_id), what="the reply")
    wamid = reply["answered"]["id"]

    async def state() -> str | None:
        return await db.fetchval("SELECT status FROM messages WHERE provider_message_id = $1", wamid)

    await eventually(state, what="the outbound row")
    for st, ts in (("read", "1767225700"), ("delivered", "1767225650")):  # delivered arrives late
        status_body = (FIXTURES / "webhooks" / "22_status_sent.json").read_text() \
            .replace("wamid.TEST_OUT_0001", wamid).replace('"sent"', f'"{st}"').replace("1767225630", ts)
        assert (await stack.post(status_body.encode()))[0] == 200

    async def both_recorded() -> bool:
        return await db.fetchval("SELECT count(*) FROM message_status_events WHERE provider_message_id = $1",
                                 wamid) == 2

    await eventually(both_recorded, what="both statuses")
    assert await state() == "read"


async def test_a_permanent_graph_error_leaves_a_task_not_a_silent_drop(stack: Stack,
                                                                        db: asyncpg.Connection) -> None:
    async with aiohttp.ClientSession() as s:
        await s.post(f"{stack.fake_meta}/__script", json=[{"to": "+15550007777", "code": 131026, "http_status": 400}])
    body = simulate.dumps(simulate.text_body(text="will fail", wa_id="15550007777"))
    message_id = simulate_id(body)
    assert (await stack.post(body))[0] == 200

    async def failed() -> asyncpg.Record | None:
        return await db.fetchrow("SELECT * FROM outbound_log WHERE dedupe_key = $1 AND state = 'failed'",
                                 f"auto:{message_id}")

    row = await eventually(failed, what="the failed ledger row")
    assert row["error"]["code"] == 131026
    task = await db.fetchrow("SELECT * FROM tasks WHERE conversation_id = $1 AND kind = 'invalid_recipient'",
                             row["conversation_id"])
    assert task is not None
    assert await db.fetchval("SELECT count(*) FROM notifications WHERE task_id = $1", task["id"]) == 1


def test_simulate_command_posts_and_reports_the_reply(stack: Stack) -> None:
    env = procs.env_with(WHATSAPP_APP_SECRET=APP_SECRET)
    result = subprocess.run(
        procs.python_cmd("simulate", "--text", "hi from the CLI", "--from", "15550008888",
                         "--url", stack.webhook, "--fake-meta", stack.fake_meta, "--state-dir", "/nonexistent"),
        env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "-> 200" in result.stdout and "reply sent to +15550008888" in result.stdout


def simulate_id(body: bytes) -> str:
    import orjson
    return orjson.loads(body)["entry"][0]["changes"][0]["value"]["messages"][0]["id"]
