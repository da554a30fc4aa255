"""The WhatsApp Business app beside the API (echoes), and customers' edits and deletions (issue #19),
on real processes (PostgreSQL, broker, serve, worker; fake-meta for Meta): an echo is stored once as
the business's message and makes the bot stay quiet until the conversation is handed back or
resolved; an edit or a deletion is applied to its original, also when it arrives first."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import orjson
from conftest import FIXTURES, Stack, eventually, fresh, own_stack
from inbox_client import Api, customer_says, make_user, phone, sign_in
from test_inbound_fidelity import META, contact, settled, stored
from test_openapi import _conforms, contract

from wacrm.agents.ingest import split
from wacrm.storage import trace
from wacrm.topics.records import RawRef
from wacrm.whatsapp import model, webhook

DANA = "15550004444"  # the customer of fixtures 40-47


def body(name: str) -> bytes:
    return (FIXTURES / "webhooks" / name).read_bytes()


def post_value(field: str, key: str, wa_id: str, item: dict[str, Any]) -> bytes:
    value = {"messaging_product": "whatsapp", "metadata": META, "contacts": [contact(wa_id, "Cliente")], key: [item]}
    return orjson.dumps({"object": "whatsapp_business_account",
                         "entry": [{"id": "100000000000001", "changes": [{"field": field, "value": value}]}]})


def echo(wa_id: str, text: str, ts: int, mid: str | None = None) -> bytes:
    return post_value(webhook.ECHOES_FIELD, "message_echoes", wa_id, {
        "from": META["display_phone_number"], "to": wa_id, "id": mid or f"wamid.E_{uuid.uuid4().hex}",
        "timestamp": str(ts), "type": "text", "text": {"body": text}})


def change(wa_id: str, kind: str, original: str, ts: int, new: dict[str, Any] | None = None, *,
           by_business: bool = False) -> bytes:
    item: dict[str, Any] = {"id": f"wamid.C_{uuid.uuid4().hex}", "timestamp": str(ts), "type": kind,
                            kind: {"original_message_id": original, **({"message": new} if new else {})}}
    if by_business:
        return post_value(webhook.ECHOES_FIELD, "message_echoes", wa_id,
                          {**item, "from": META["display_phone_number"], "to": wa_id})
    return post_value("messages", "messages", wa_id, {**item, "from": wa_id})


def message(wa_id: str, ts: int, mid: str, kind: str = "text", **part: Any) -> bytes:
    return post_value("messages", "messages", wa_id, {"from": wa_id, "id": mid, "timestamp": str(ts), "type": kind,
                                                      kind: part})


async def thread(api: Api, db: asyncpg.Connection, wa_id: str) -> dict[str, Any]:
    cid = await db.fetchval("SELECT c.id FROM conversations c JOIN contacts k ON k.id = c.contact_id "
                            "WHERE k.wa_id = $1", wa_id)
    return dict((await api.get(f"conversations/{cid}"))["conversation"])


def by_wamid(conversation: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {m["provider_message_id"]: m for m in conversation["messages"]}


async def agent_of(stack: Stack, db: asyncpg.Connection) -> Api:
    return await sign_in(stack.base, (await make_user(db, "agent")).email)


# --- parsing (pure) ------------------------------------------------------------------------------

def test_an_echo_is_the_business_message_to_its_customer() -> None:
    parsed = webhook.parse(webhook.loads(body("40_echo_text.json")))
    (m,) = parsed.messages
    assert m.echo and m.sender.wa_id == DANA and m.text == "Hi Dana, we have it in blue too."
    assert parsed.ignored_fields == []
    (record,) = split(body("40_echo_text.json"), RawRef("wa.webhook.raw", 0, 0), 0.0).messages
    assert record.echo and record.conversation_key == f"{META['phone_number_id']}:{DANA}"
    # the raw topic is keyed by the same conversation, so the customer's messages and the echoes keep their order
    assert webhook.routing_key(webhook.loads(body("40_echo_text.json"))) == record.conversation_key


def test_an_echo_written_the_other_way_round_still_finds_the_customer() -> None:
    (m,) = webhook.parse(webhook.loads(body("46_echo_edit.json"))).messages  # from = customer, to = business
    assert m.echo and m.sender.wa_id == DANA
    assert webhook.routing_key(webhook.loads(body("46_echo_edit.json"))) == f"{META['phone_number_id']}:{DANA}"


def test_edits_and_deletions_name_their_original_and_carry_the_new_content() -> None:
    (edit,) = webhook.parse(webhook.loads(body("42_edit_text.json"))).messages
    assert edit.content == model.Edit("wamid.TEST_IN_0041", model.Text("I would like three of them"))
    assert edit.text == "I would like three of them" and not edit.echo
    (caption,) = webhook.parse(webhook.loads(body("44_edit_image_caption.json"))).messages
    assert caption.text == "[image] The box arrived damaged"
    assert model.as_dict(caption.content)["message"]["caption"] == "The box arrived damaged"
    (revoke,) = webhook.parse(webhook.loads(body("45_revoke.json"))).messages
    assert revoke.content == model.Revoke("wamid.TEST_IN_0041")


# --- on the running system -------------------------------------------------------------------------

async def test_the_pywa_shaped_fixtures_are_stored_and_applied(stack: Stack, db: asyncpg.Connection) -> None:
    names = ["40_echo_text.json", "41_text_to_edit.json", "42_edit_text.json", "43_image_to_edit.json",
             "44_edit_image_caption.json", "45_revoke.json", "46_echo_edit.json", "47_echo_revoke.json"]
    for name in names:
        status, _ = await stack.post(fresh(body(name)))
        assert status == 200, name
    await stored(db, "wamid.TEST_ECHO_0047")  # one partition: everything before it is stored too
    api = await agent_of(stack, db)
    detail = await _conforms(contract(), api, "GET", "/conversations/{id}",
                             f"conversations/{(await stored(db, 'wamid.TEST_IN_0041'))['conversation_id']}")
    conversation = detail["conversation"]
    messages = by_wamid(conversation)
    # the changes are in their originals, not messages of their own
    assert set(messages) == {"wamid.TEST_ECHO_0040", "wamid.TEST_IN_0041", "wamid.TEST_IN_0043"}

    ours = messages["wamid.TEST_ECHO_0040"]
    assert (ours["direction"], ours["source"], ours["author"]) == ("outbound", "business_app", None)
    assert ours["body"] == "Hi Dana, we have it in blue and red too." and ours["edited_at"]
    assert [e["body"] for e in ours["edits"]] == ["Hi Dana, we have it in blue too."]
    assert ours["deleted_at"] and ours["deleted_by_customer"] is False  # the business deleted it, in the app

    text = messages["wamid.TEST_IN_0041"]
    assert (text["source"], text["body"]) == ("customer", "I would like three of them")
    assert [e["body"] for e in text["edits"]] == ["I would like two of them"]
    assert text["deleted_by_customer"] is True and text["edited_at"]  # deleted, its content kept for the team

    image = messages["wamid.TEST_IN_0043"]
    assert image["body"] == "[image] The box arrived damaged" and image["deleted_by_customer"] is False
    row = await stored(db, "wamid.TEST_IN_0043")
    assert row["content"]["caption"] == "The box arrived damaged" and row["content"]["media_id"] == "300000000000043"

    # the echo came first: a person answers this customer from the app, and the bot stays quiet
    assert conversation["business_app_since"] is not None and conversation["assignee_id"] is None
    await settled(db, "wamid.TEST_IN_0043")
    assert await stack.replies_to("wamid.TEST_IN_0041") == [] and await stack.replies_to("wamid.TEST_IN_0043") == []
    assert [x for x in await stack.sent() if (x.get("body") or {}).get("to") == f"+{DANA}"] == []


async def test_changes_that_arrive_before_their_original_are_applied_when_it_arrives(
        stack: Stack, db: asyncpg.Connection) -> None:
    wa_id, now = phone(), int(time.time())
    text, image, gone, ours = (f"wamid.O_{uuid.uuid4().hex}" for _ in range(4))
    # Meta does not keep order: the second edit, then the first, then the message they edit
    await stack.post(change(wa_id, "edit", text, now + 8, {"type": "text", "text": {"body": "third version"}}))
    await stack.post(change(wa_id, "edit", text, now + 5, {"type": "text", "text": {"body": "second version"}}))
    await stack.post(change(wa_id, "revoke", gone, now + 6))
    await stack.post(change(wa_id, "edit", image, now + 7, {"type": "image", "image": {"id": "1", "caption": "new"}}))
    await stack.post(change(wa_id, "edit", ours, now + 9, {"type": "text", "text": {"body": "we open at 10"}},
                            by_business=True))
    await stack.post(message(wa_id, now, text, body="first version"))
    await stack.post(message(wa_id, now + 1, gone, body="my card number is 1234"))
    await stack.post(message(wa_id, now + 2, image, "image", id="1", caption="old", mime_type="image/jpeg"))
    await stack.post(echo(wa_id, "we open at 9", now + 3, ours))
    await stored(db, ours)

    api = await agent_of(stack, db)
    conversation = await thread(api, db, wa_id)
    messages = by_wamid(conversation)
    assert set(messages) == {text, gone, image, ours}  # every change applied: none shown on its own
    assert messages[text]["body"] == "third version"
    assert [e["body"] for e in messages[text]["edits"]] == ["first version", "second version"]
    assert messages[gone]["deleted_by_customer"] is True and messages[gone]["body"] == "my card number is 1234"
    assert messages[image]["body"] == "[image] new" and messages[image]["edits"][0]["body"] == "[image] old"
    assert messages[ours]["source"] == "business_app" and messages[ours]["body"] == "we open at 10"
    assert messages[ours]["deleted_by_customer"] is False


async def test_an_edit_whose_original_never_came_is_shown_as_it_came(stack: Stack, db: asyncpg.Connection) -> None:
    wa_id = phone()
    await stack.post(change(wa_id, "edit", "wamid.NEVER_SEEN", int(time.time()),
                            {"type": "text", "text": {"body": "corrected"}}))
    await eventually(lambda: db.fetchval("SELECT 1 FROM messages m JOIN contacts k ON k.id = m.contact_id "
                                         "WHERE k.wa_id = $1", wa_id), what="the edit stored")
    (shown,) = (await thread(await agent_of(stack, db), db, wa_id))["messages"]
    assert (shown["type"], shown["body"], shown["source"]) == ("edit", "corrected", "customer")


async def test_an_echo_of_our_own_send_is_not_stored_twice_and_takes_nothing_over(
        stack: Stack, db: asyncpg.Connection) -> None:
    wa_id = phone()
    asked = await customer_says(stack, wa_id, "How much is the price?")
    (reply,) = await eventually(lambda: stack.replies_to(asked), 60, "the bot's reply")
    wamid = await eventually(lambda: db.fetchval(
        "SELECT provider_message_id FROM outbound_log WHERE dedupe_key = $1 AND state = 'sent'", f"auto:{asked}"),
        60, "the reply recorded")
    await stack.post(echo(wa_id, reply["body"]["text"]["body"], int(time.time()), wamid))
    later = await customer_says(stack, wa_id, "thanks")  # same partition: the echo was handled before it
    await stored(db, later)
    rows = await db.fetch("SELECT direction, outbound_log_id FROM messages WHERE provider_message_id = $1", wamid)
    assert len(rows) == 1 and rows[0]["outbound_log_id"] is not None
    conversation = await thread(await agent_of(stack, db), db, wa_id)
    assert conversation["business_app_since"] is None
    assert by_wamid(conversation)[wamid]["source"] == "bot"


async def test_an_echo_ends_the_wait_for_a_person(stack: Stack, db: asyncpg.Connection) -> None:
    tag = uuid.uuid4().hex[:8]
    wa_id = phone()
    await customer_says(stack, wa_id, "I want to talk to a human please", f"Eve {tag}")
    api = await agent_of(stack, db)

    async def waiting() -> list[dict[str, Any]]:
        return list((await api.get(f"conversations?waiting=true&q={tag}"))["conversations"])

    await eventually(waiting, 30, "the customer waiting for a person")
    await stack.post(echo(wa_id, "Hi Eve, it's Ana from the shop", int(time.time())))
    await eventually(lambda: _none(waiting), 30, "the wait ended by the answer from the phone")
    conversation = await thread(api, db, wa_id)
    assert conversation["waiting"] is None and conversation["business_app_since"] is not None
    # (the bot's handover message may be recorded after the echo: its sender is another agent)
    assert [m["body"] for m in conversation["messages"] if m["source"] == "business_app"] == [
        "Hi Eve, it's Ana from the shop"]


async def _none(check: Callable[[], Any]) -> bool:
    return not await check()


async def test_an_echo_silences_the_bot_until_the_conversation_is_handed_back_or_resolved(
        make_database: Callable[[], str], tmp_path: Path) -> None:
    # a slow bot: the reply waits for the burst window, and the person answers from the phone meanwhile
    async with own_stack(make_database, tmp_path, BURST_WINDOW_SECONDS="6") as (stack, _):
        db = await asyncpg.connect(stack.database_url)
        try:
            await _silenced_until_released(stack, db)
        finally:
            await db.close()


async def _silenced_until_released(stack: Stack, db: asyncpg.Connection) -> None:
    wa_id = phone()
    asked = await customer_says(stack, wa_id, "How much is the price?")
    row = await stored(db, asked)
    version = await db.fetchval("SELECT ownership_version FROM conversations WHERE id = $1", row["conversation_id"])
    await stack.post(echo(wa_id, "Hi! 20 euros, I'll send you a photo", int(time.time())))
    await eventually(lambda: db.fetchval("SELECT business_app_since IS NOT NULL FROM conversations WHERE id = $1",
                                         row["conversation_id"]), 30, "the echo stored")
    assert await db.fetchval("SELECT reply_due_at IS NOT NULL FROM conversations WHERE id = $1",
                             row["conversation_id"]), "the bot's reply was still waiting when the echo came"
    assert await db.fetchval("SELECT ownership_version FROM conversations WHERE id = $1",
                             row["conversation_id"]) > version  # drafts of the bot in flight are stale
    await settled(db, asked)
    again = await customer_says(stack, wa_id, "and the shipping?")
    await settled(db, again)
    assert await stack.replies_to(asked) == [] and await stack.replies_to(again) == []

    api = await agent_of(stack, db)
    cid = row["conversation_id"]
    await api.post(f"conversations/{cid}/status", {"status": "resolved"})  # resolving hands it back
    assert (await api.get(f"conversations/{cid}"))["conversation"]["business_app_since"] is None
    resolved = await customer_says(stack, wa_id, "How much is the price?")
    await eventually(lambda: stack.replies_to(resolved), 60, "the bot answering again after the resolve")

    await stack.post(echo(wa_id, "I'll take it from here", int(time.time())))
    await eventually(lambda: db.fetchval("SELECT business_app_since IS NOT NULL FROM conversations WHERE id = $1",
                                         cid), 30, "the second echo stored")
    await api.post(f"conversations/{cid}/release")  # handing back too
    released = await customer_says(stack, wa_id, "How much is the price?")
    await eventually(lambda: stack.replies_to(released), 60, "the bot answering again after the hand-back")


def test_the_trace_of_an_echo_says_it_was_stored_and_never_sent() -> None:
    rows = trace.Rows("r-1", outbound=[{"id": 7, "provider_message_id": "wamid.E1", "outbound_log_id": None,
                                        "status": "sent", "created_at": datetime.now(UTC), "conversation_id": 3,
                                        "type": "text"}])
    lines = trace.render(rows, trace.BusFacts())
    assert any("echo wamid.E1 (text) from the WhatsApp Business app in conversation 3" in x for x in lines)
    assert lines[-1] == "done: 1 echo(es) of the WhatsApp Business app stored, never sent"
