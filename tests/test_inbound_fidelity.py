"""Every shape Meta sends, through the running pipeline into PostgreSQL (issue: inbound fidelity)."""

from __future__ import annotations

import csv
import json
import time
import uuid
from typing import Any

import aiohttp
import asyncpg
import orjson
import pytest
from aiokafka import AIOKafkaConsumer
from conftest import FIXTURES, Stack, eventually, fresh

MANIFEST = {r["file"]: r for r in csv.DictReader((FIXTURES / "webhooks" / "manifest.csv").open())}


def fixture(name: str) -> bytes:
    return fresh((FIXTURES / "webhooks" / name).read_bytes())


async def stored(db: asyncpg.Connection, message_id: str) -> asyncpg.Record:
    async def row() -> asyncpg.Record | None:
        return await db.fetchrow("SELECT * FROM messages WHERE provider_message_id = $1", message_id)

    return await eventually(row, what=f"message {message_id} in PostgreSQL")


async def settled(db: asyncpg.Connection, message_id: str, timeout: float = 60) -> None:
    """Wait until the worker is done with message ``message_id``'s conversation: the orchestrator
    decided about every message up to it (answered, or chose not to), no reply is due or leased,
    and no reply of it is still on its way (queued, sending, waiting to retry). Whatever a wrong
    reply to it would be has happened by then, or never will (the ledger is the only way out)."""
    row = await stored(db, message_id)

    async def done() -> bool:
        return bool(await db.fetchval(
            """SELECT c.reply_upto_message_id >= $2 AND c.reply_due_at IS NULL
                      AND NOT EXISTS (SELECT 1 FROM outbound_log o WHERE o.conversation_id = c.id
                                      AND o.state IN ('queued', 'sending', 'retry_wait'))
               FROM conversations c WHERE c.id = $1""", row["conversation_id"], row["id"]))

    await eventually(done, timeout, f"the worker to be done with the conversation of {message_id}")


def envelope(*values: dict[str, Any], entries: int = 1) -> bytes:
    """A webhook body with the given change values spread over ``entries`` entries."""
    changes = [{"field": "messages", "value": {"messaging_product": "whatsapp", **v}} for v in values]
    per = max(1, len(changes) // entries)
    chunks = [changes[i:i + per] for i in range(0, len(changes), per)]
    return orjson.dumps({"object": "whatsapp_business_account",
                         "entry": [{"id": "100000000000001", "changes": c} for c in chunks]})


META = {"display_phone_number": "15550001111", "phone_number_id": "200000000000001"}


def text_msg(wa_id: str | None, text: str, ts: int, *, user_id: str | None = None,
             mid: str | None = None) -> dict[str, Any]:
    if ts < time.time() - 86400:  # keep the order of the given times, inside the 24-hour window
        ts = int(time.time()) - 600 + ts % 600
    m: dict[str, Any] = {"id": mid or f"wamid.T_{uuid.uuid4().hex}", "timestamp": str(ts), "type": "text",
                         "text": {"body": text}}
    if wa_id:
        m["from"] = wa_id
    if user_id:
        m["from_user_id"] = user_id
    return m


def contact(wa_id: str | None, name: str, *, user_id: str | None = None, username: str | None = None) -> dict:
    c: dict[str, Any] = {"profile": {"name": name}}
    if username:
        c["profile"]["username"] = username
    if wa_id:
        c["wa_id"] = wa_id
    if user_id:
        c["user_id"] = user_id
    return c


# fixture file -> (message type, checks on the stored row's typed content)
EXPECTED: dict[str, tuple[str, dict[str, Any]]] = {
    "01_text.json": ("text", {"body": "Does it come in another color?"}),
    "02_image.json": ("image", {"media_id": "300000000000002", "caption": "Photo of the item",
                                "mime_type": "image/jpeg"}),
    "03_audio_voice.json": ("audio", {"voice": True, "media_id": "300000000000003"}),
    "04_video.json": ("video", {"kind": "media"}),
    "05_document.json": ("document", {"kind": "media"}),
    "06_sticker.json": ("sticker", {"animated": False, "mime_type": "image/webp"}),
    "07_location.json": ("location", {"name": "Test Coffee", "latitude": 37.44221496582}),
    "08_contacts.json": ("contacts", {"kind": "contacts"}),
    "09_interactive_button_reply.json": ("interactive", {"reply_type": "button_reply"}),
    "10_interactive_list_reply.json": ("interactive", {"reply_type": "list_reply"}),
    "11_button_template_quick_reply.json": ("button", {"payload": "Unsubscribe"}),
    "12_reaction.json": ("reaction", {"message_id": "wamid.TEST_OUT_0104", "emoji": "👍"}),
    "14_order.json": ("order", {"catalog_id": "400000000000001"}),
    "16_unsupported.json": ("unsupported", {"unsupported_type": "poll_creation"}),
    "17_text_reply_context.json": ("text", {"body": "replied text"}),
    "18_text_referral_ctwa.json": ("text", {"body": "Can I get more info about this?"}),
}
NO_REPLY = {"12_reaction.json", "16_unsupported.json"}


@pytest.mark.parametrize("name", sorted(EXPECTED))
async def test_every_message_fixture_is_stored_typed(stack: Stack, db: asyncpg.Connection, name: str) -> None:
    # The fixtures are all from one customer, and 11 taps "Unsubscribe" (an opt-out): start each opted in.
    await db.execute("UPDATE contacts SET opted_out = false WHERE wa_id = '15550002222'")
    status, _ = await stack.post(fixture(name))
    assert status == 200
    (message_id,) = MANIFEST[name]["ids"].split()
    row = await stored(db, message_id)
    kind, checks = EXPECTED[name]
    assert row["type"] == kind and row["direction"] == "inbound"
    for key, value in checks.items():
        assert row["content"][key] == value, (key, row["content"])
    assert row["payload"]["id"] == message_id  # the raw message object is kept whole
    assert row["raw_ref"]["topic"] == "wa.webhook.raw"
    async def answered() -> bool:  # after the burst window, the reply is in the ledger
        return bool(await db.fetchval("SELECT count(*) FROM outbound_log WHERE dedupe_key = $1",
                                      f"auto:{message_id}"))

    if name in NO_REPLY:
        assert await db.fetchval("SELECT reply_due_at FROM conversations WHERE id = $1",
                                 row["conversation_id"]) is None
        assert not await answered()
    else:
        await eventually(answered, what="the reply in the ledger")
    if name == "11_button_template_quick_reply.json":
        assert await db.fetchval("SELECT opted_out FROM contacts WHERE id = $1", row["contact_id"])


async def test_details_of_context_referral_and_errors(stack: Stack, db: asyncpg.Connection) -> None:
    for name in ("16_unsupported.json", "17_text_reply_context.json", "18_text_referral_ctwa.json"):
        assert (await stack.post(fixture(name)))[0] == 200
    assert (await stored(db, "wamid.TEST_IN_0016"))["error"][0]["code"] == 131051
    assert (await stored(db, "wamid.TEST_IN_0017"))["context"]["message_id"] == "wamid.TEST_OUT_0105"
    assert (await stored(db, "wamid.TEST_IN_0018"))["referral"]["ctwa_clid"] == "TEST_CTWA_CLID_0001"


async def test_a_new_contact_from_an_ad_becomes_a_referral_lead(stack: Stack, db: asyncpg.Connection) -> None:
    body = fixture("18_text_referral_ctwa.json").replace(b"15550002222", b"15550010018") \
        .replace(b"wamid.TEST_IN_0018", b"wamid.TEST_IN_0018_NEW")
    assert (await stack.post(body))[0] == 200
    row = await stored(db, "wamid.TEST_IN_0018_NEW")
    lead = await db.fetchrow("SELECT * FROM leads WHERE contact_id = $1", row["contact_id"])
    assert lead["source"] == "referral" and lead["referral"]["source_id"] == "500000000000001"
    assert lead["first_message_id"] == "wamid.TEST_IN_0018_NEW"


async def test_system_changed_number_updates_the_contact(stack: Stack, db: asyncpg.Connection) -> None:
    old, new = "15550010151", "15550010152"
    first = envelope({"metadata": META, "contacts": [contact(old, "Mover")],
                      "messages": [text_msg(old, "before moving", 1767225600)]})
    assert (await stack.post(first))[0] == 200
    before = await stored(db, orjson.loads(first)["entry"][0]["changes"][0]["value"]["messages"][0]["id"])
    body = fixture("15_system_user_changed_number.json").replace(b"15550002222", old.encode()) \
        .replace(b"15550005555", new.encode()).replace(b"wamid.TEST_IN_0015", b"wamid.TEST_IN_0015_MOVE")
    assert (await stack.post(body))[0] == 200
    row = await stored(db, "wamid.TEST_IN_0015_MOVE")
    assert row["type"] == "system" and row["contact_id"] == before["contact_id"]
    c = await db.fetchrow("SELECT * FROM contacts WHERE id = $1", row["contact_id"])
    assert c["wa_id"] == new and old in c["previous_wa_ids"]
    assert await db.fetchval("SELECT count(*) FROM outbound_log WHERE dedupe_key = 'auto:wamid.TEST_IN_0015_MOVE'") == 0


async def test_statuses_and_account_errors_are_received(stack: Stack, db: asyncpg.Connection) -> None:
    errors_before = await stack.worker_metric("wacrm_account_errors_total", 'code="130429"')
    for name in ("22_status_sent.json", "23_status_delivered.json", "25_status_failed_131047.json",
                 "27_status_failed_131026.json", "28_value_errors_130429.json"):
        assert (await stack.post(fixture(name)))[0] == 200

    async def all_kept() -> bool:
        n = await db.fetchval("SELECT count(*) FROM message_status_events WHERE (provider_message_id, status) IN "
                              "(('wamid.TEST_OUT_0001','sent'), ('wamid.TEST_OUT_0001','delivered'), "
                              "('wamid.TEST_OUT_0002','failed'), ('wamid.TEST_OUT_0004','failed'))")
        return n == 4

    await eventually(all_kept, what="the four statuses")
    failed = await db.fetchval("SELECT errors FROM message_status_events WHERE provider_message_id = "
                               "'wamid.TEST_OUT_0002' AND status = 'failed'")
    assert failed[0]["code"] == 131047

    async def counted() -> bool:
        return await stack.worker_metric("wacrm_account_errors_total", 'code="130429"') > errors_before

    await eventually(counted, what="the value.errors item to be counted")


async def test_redelivery_pair_is_stored_once(stack: Stack, db: asyncpg.Connection) -> None:
    duplicates = await stack.worker_metric("wacrm_duplicates_total", 'kind="message"')
    for name in ("30_duplicate_redelivery_a.json", "30_duplicate_redelivery_b.json"):
        assert (await stack.post(fixture(name)))[0] == 200
    await stored(db, "wamid.TEST_IN_0030")

    async def redelivery_handled() -> bool:  # the inbound agent recognised the second copy
        return await stack.worker_metric("wacrm_duplicates_total", 'kind="message"') > duplicates

    await eventually(redelivery_handled, what="the inbound agent to handle the redelivered copy")
    await eventually(lambda: stack.replies_to("wamid.TEST_IN_0030"), what="the one reply")
    await settled(db, "wamid.TEST_IN_0030")
    assert await db.fetchval("SELECT count(*) FROM messages WHERE provider_message_id = 'wamid.TEST_IN_0030'") == 1
    assert len(await stack.replies_to("wamid.TEST_IN_0030")) == 1


async def _dlq_reasons(bootstrap: str, since_ms: int) -> list[dict[str, Any]]:
    consumer = AIOKafkaConsumer("wa.dlq", bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest",
                                enable_auto_commit=False)
    await consumer.start()
    try:
        batches = await consumer.getmany(timeout_ms=2000)
        return [orjson.loads(r.value) for rs in batches.values() for r in rs if r.timestamp >= since_ms]
    finally:
        await consumer.stop()


async def test_batch_of_entries_and_changes_with_one_broken_item(stack: Stack, db: asyncpg.Connection) -> None:
    since = int(time.time() * 1000)
    a, b, c = "15550010201", "15550010202", "15550010203"
    msgs = [text_msg(a, "a1", 1767225601), text_msg(b, "b1", 1767225602), text_msg(a, "a2", 1767225603),
            text_msg(c, "c1", 1767225604), text_msg(b, "b2", 1767225605)]
    broken = {"from": b, "id": "wamid.BROKEN_" + uuid.uuid4().hex, "timestamp": "not a time", "type": "text"}
    body = envelope({"metadata": META, "contacts": [contact(a, "A"), contact(b, "B")],
                     "messages": [msgs[0], msgs[1], broken]},
                    {"metadata": META, "contacts": [contact(a, "A")], "messages": [msgs[2]]},
                    {"metadata": META, "contacts": [contact(c, "C"), contact(b, "B")], "messages": [msgs[3], msgs[4]]},
                    entries=3)
    assert (await stack.post(body))[0] == 200
    rows = [await stored(db, m["id"]) for m in msgs]
    assert len({r["contact_id"] for r in rows}) == 3
    assert rows[0]["conversation_id"] == rows[2]["conversation_id"]

    async def dead_lettered() -> list[dict[str, Any]]:
        return [d for d in await _dlq_reasons(stack.bootstrap, since) if broken["id"] in d["value"]]

    (letter,) = await eventually(dead_lettered, what="the broken item in wa.dlq")
    assert "timestamp" in letter["error"] and letter["source_topic"] == "wa.webhook.raw"
    assert letter["details"]["where"].startswith("entry[0].changes[0].value.messages[2]")
    assert await db.fetchval("SELECT count(*) FROM messages WHERE provider_message_id = $1", broken["id"]) == 0


async def test_wrong_shapes_are_acknowledged_and_dead_lettered(stack: Stack) -> None:
    since = int(time.time() * 1000)
    marker = uuid.uuid4().hex
    for body in ({"object": "whatsapp_business_account", "entry": marker},
                 {"object": "whatsapp_business_account", "entry": [{"changes": [{"field": "messages",
                                                                                 "value": [marker]}]}]}):
        assert (await stack.post(orjson.dumps(body)))[0] == 200  # durable: Meta must not retry it for days

    async def both() -> bool:
        return len([d for d in await _dlq_reasons(stack.bootstrap, since) if marker in d["value"]]) == 2

    await eventually(both, what="both bodies in wa.dlq")


async def test_non_ascii_bodies_are_verified_over_their_exact_bytes(stack: Stack, db: asyncpg.Connection) -> None:
    text = "ñandú — 你好 🚀 äöå"
    raw_utf8 = envelope({"metadata": META, "contacts": [contact("15550010301", "Zoë Ñ")],
                         "messages": [text_msg("15550010301", text, 1767225601)]})
    # The same content with \\u escapes (surrogate pairs for the emoji), as older Meta bodies were.
    escaped = json.dumps(orjson.loads(raw_utf8.replace(b"wamid.T_", b"wamid.E_"))).encode()
    assert escaped.isascii() and b"\\ud83d\\ude80" in escaped
    for body in (raw_utf8, escaped):
        assert (await stack.post(body))[0] == 200
        mid = orjson.loads(body)["entry"][0]["changes"][0]["value"]["messages"][0]["id"]
        assert (await stored(db, mid))["body"] == text


async def test_username_only_customer_is_stored_and_answered(stack: Stack, db: asyncpg.Connection) -> None:
    bsuid = "US.1000000000000000777"
    body = envelope({"metadata": META, "contacts": [contact(None, "Anon", user_id=bsuid, username="@anon")],
                     "messages": [text_msg(None, "hi, no phone here", 1767225601, user_id=bsuid)]})
    mid = orjson.loads(body)["entry"][0]["changes"][0]["value"]["messages"][0]["id"]
    assert (await stack.post(body))[0] == 200
    row = await stored(db, mid)
    c = await db.fetchrow("SELECT * FROM contacts WHERE id = $1", row["contact_id"])
    assert (c["wa_id"], c["user_id"], c["username"]) == (None, bsuid, "@anon")
    (reply,) = await eventually(lambda: stack.replies_to(mid), what="the reply to a username-only customer")
    assert reply["body"]["recipient"] == bsuid and "to" not in reply["body"]

    # Later the same customer writes with their phone too: one contact, not two.
    later = envelope({"metadata": META, "contacts": [contact("15550010401", "Anon", user_id=bsuid)],
                      "messages": [text_msg("15550010401", "now with my phone", 1767225700, user_id=bsuid)]})
    mid2 = orjson.loads(later)["entry"][0]["changes"][0]["value"]["messages"][0]["id"]
    assert (await stack.post(later))[0] == 200
    row2 = await stored(db, mid2)
    assert row2["contact_id"] == row["contact_id"]
    assert await db.fetchval("SELECT wa_id FROM contacts WHERE id = $1", row["contact_id"]) == "15550010401"


async def test_two_identities_seen_apart_are_merged_when_linked(stack: Stack, db: asyncpg.Connection) -> None:
    phone, bsuid = "15550010501", "US.1000000000000000501"
    first = envelope({"metadata": META, "contacts": [contact(phone, "P")], "messages": [text_msg(phone, "p", 1)]})
    second = envelope({"metadata": META, "contacts": [contact(None, "P", user_id=bsuid)],
                       "messages": [text_msg(None, "u", 2, user_id=bsuid)]})
    both = envelope({"metadata": META, "contacts": [contact(phone, "P", user_id=bsuid)],
                     "messages": [text_msg(phone, "both", 3, user_id=bsuid)]})
    ids = []
    for body in (first, second, both):
        assert (await stack.post(body))[0] == 200
        ids.append(orjson.loads(body)["entry"][0]["changes"][0]["value"]["messages"][0]["id"])
        await stored(db, ids[-1])
    contacts = await db.fetch("SELECT DISTINCT contact_id FROM messages WHERE provider_message_id = ANY($1)", ids)
    assert len(contacts) == 1
    assert await db.fetchval("SELECT count(*) FROM contacts WHERE phone_number_id = $1 AND (wa_id = $2 OR "
                             "user_id = $3)", META["phone_number_id"], phone, bsuid) == 1
    assert await db.fetchval("SELECT count(*) FROM leads WHERE contact_id = $1", contacts[0]["contact_id"]) == 1


async def test_redelivery_inside_a_different_batch(stack: Stack, db: asyncpg.Connection) -> None:
    x = text_msg("15550010601", "x", 1767225601)
    y = text_msg("15550010602", "y", 1767225602)
    assert (await stack.post(envelope({"metadata": META, "contacts": [contact("15550010601", "X")],
                                       "messages": [x]})))[0] == 200
    await eventually(lambda: stack.replies_to(x["id"]), what="the reply to x")
    batch = envelope({"metadata": META, "contacts": [contact("15550010601", "X"), contact("15550010602", "Y")],
                      "messages": [x, y]})
    assert (await stack.post(batch))[0] == 200
    await eventually(lambda: stack.replies_to(y["id"]), what="the reply to y")
    assert len(await stack.replies_to(x["id"])) == 1
    assert await db.fetchval("SELECT count(*) FROM messages WHERE provider_message_id = $1", x["id"]) == 1


async def test_a_status_overtaking_its_message_is_applied_when_it_appears(stack: Stack,
                                                                          db: asyncpg.Connection) -> None:
    wamid = f"wamid.OVERTAKEN_{uuid.uuid4().hex}"
    async with aiohttp.ClientSession() as s:  # the Graph API answers late; the statuses come first
        await s.post(f"{stack.fake_meta}/__script", json=[{"id": wamid, "delay_ms": 2500, "to": "+15550010701"}])
    msg = text_msg("15550010701", "status race", int(time.time()))
    assert (await stack.post(envelope({"metadata": META, "contacts": [contact("15550010701", "R")],
                                       "messages": [msg]})))[0] == 200
    await stored(db, msg["id"])
    for state in ("delivered", "read"):
        body = envelope({"metadata": META, "statuses": [{"id": wamid, "status": state,
                                                          "timestamp": str(int(time.time())),
                                                         "recipient_id": "15550010701"}]})
        assert (await stack.post(body))[0] == 200

    async def outbound_status() -> str | None:
        return await db.fetchval("SELECT status FROM messages WHERE provider_message_id = $1", wamid)

    async def read() -> bool:
        return await outbound_status() == "read"

    await eventually(read, what="the overtaken reply to be recorded as read")
