"""The webhook parser and the ingest split, on every fixture body (pure, no I/O)."""

from __future__ import annotations

import csv

import orjson
import pytest
from conftest import APP_SECRET, FIXTURES

from wacrm.agents.ingest import split
from wacrm.topics.records import RawRef, decode_inbound, decode_status, encode
from wacrm.whatsapp import signature, webhook

MANIFEST = list(csv.DictReader((FIXTURES / "webhooks" / "manifest.csv").open()))
SIG_COLUMN = next(c for c in MANIFEST[0] if c.startswith("x_hub_signature_256"))


@pytest.mark.parametrize("row", MANIFEST, ids=[r["file"] for r in MANIFEST])
def test_fixture_signature_matches_the_exact_bytes(row: dict[str, str]) -> None:
    body = (FIXTURES / "webhooks" / row["file"]).read_bytes()
    assert signature.verify(APP_SECRET, body, row[SIG_COLUMN])
    assert not signature.verify("another secret", body, row[SIG_COLUMN])


@pytest.mark.parametrize("row", MANIFEST, ids=[r["file"] for r in MANIFEST])
def test_fixture_yields_every_item(row: dict[str, str]) -> None:
    body = (FIXTURES / "webhooks" / row["file"]).read_bytes()
    parsed = webhook.parse(webhook.loads(body))
    assert parsed.problems == []
    assert len(parsed.messages) == int(row["messages"])
    assert len(parsed.statuses) == int(row["statuses"])
    assert len(parsed.errors) == int(row["value_errors"])
    ids = sorted([m.id for m in parsed.messages] + [s.id for s in parsed.statuses])
    assert ids == sorted(row["ids"].split())


def test_split_keys_events_by_conversation_and_keeps_the_raw_reference() -> None:
    body = (FIXTURES / "webhooks" / "21_batch_3msgs_2contacts_single_value.json").read_bytes()
    ref = RawRef("wa.webhook.raw", 2, 41)
    out = split(body, ref, 1767225700.0)
    assert out.statuses == [] and len(out.messages) == 3
    events = [decode_inbound(encode(m)) for m in out.messages]  # as wa.inbound and wa.dlq carry them
    for ev in events:
        assert ev.conversation_key == f"{ev.phone_number_id}:{ev.customer.key}"
        assert ev.raw_ref == ref
    assert [e.timestamp for e in events] == sorted(e.timestamp for e in events)
    assert len({e.conversation_key for e in events}) == 2


def test_status_split() -> None:
    body = (FIXTURES / "webhooks" / "22_status_sent.json").read_bytes()
    out = split(body, RawRef("wa.webhook.raw", 0, 0), 0.0)
    (key, value), = out.statuses
    st = decode_status(value)
    assert out.messages == [] and key == "200000000000001:15550002222"
    assert (st.message_id, st.status, st.recipient_id) == ("wamid.TEST_OUT_0001", "sent", "15550002222")


def test_username_only_sender_is_keyed_by_user_id() -> None:
    body = orjson.dumps({"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [{
        "field": "messages", "value": {
            "metadata": {"phone_number_id": "200000000000001"},
            "contacts": [{"profile": {"name": "U", "username": "@u"}, "user_id": "US.1000000000000000042"}],
            "messages": [{"from_user_id": "US.1000000000000000042", "id": "wamid.U1", "timestamp": "1767225601",
                          "type": "text", "text": {"body": "hello"}}]}}]}]})
    ev, = split(body, RawRef("wa.webhook.raw", 0, 0), 0.0).messages
    assert ev.conversation_key == "200000000000001:US.1000000000000000042"
    assert ev.customer.wa_id is None and ev.customer.username == "@u"


def test_broken_item_is_a_problem_and_the_rest_survive() -> None:
    body = orjson.dumps({"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [{
        "field": "messages", "value": {
            "metadata": {"phone_number_id": "200000000000001"},
            "contacts": [{"profile": {"name": "A"}, "wa_id": "15550002222"}],
            "messages": [{"from": "15550002222", "id": "wamid.OK", "timestamp": "1767225601", "type": "text",
                          "text": {"body": "fine"}},
                         {"from": "15550002222", "id": "wamid.BAD", "timestamp": "yesterday", "type": "text"},
                         "not an object"]}}]}]})
    parsed = webhook.parse(webhook.loads(body))
    assert [m.id for m in parsed.messages] == ["wamid.OK"]
    assert len(parsed.problems) == 2
    assert "timestamp" in parsed.problems[0].reason


@pytest.mark.parametrize("body", [b"", b"[1,2]", b"not json", b'"str"'])
def test_body_that_is_not_an_object_is_rejected(body: bytes) -> None:
    with pytest.raises(webhook.BodyError):
        webhook.loads(body)


def test_unknown_object_and_field_are_ignored_not_errors() -> None:
    parsed = webhook.parse({"object": "page", "entry": []})
    assert parsed.ignored_fields == ["object:page"] and not parsed.problems
    parsed = webhook.parse({"object": "whatsapp_business_account",
                            "entry": [{"changes": [{"field": "account_update", "value": {}}]}]})
    assert parsed.ignored_fields == ["field:account_update"] and not parsed.problems


def _content(msg: dict) -> object:
    from wacrm.whatsapp import model
    return model.content_of(msg)


def test_typed_content_edge_cases() -> None:
    from wacrm.whatsapp import model
    removed = _content({"type": "reaction", "reaction": {"message_id": "wamid.X", "emoji": ""}})
    assert isinstance(removed, model.Reaction) and removed.removed
    omitted = _content({"type": "reaction", "reaction": {"message_id": "wamid.X"}})
    assert isinstance(omitted, model.Reaction) and omitted.removed and model.render(omitted) == "[reaction removed]"
    voice = _content({"type": "audio", "audio": {"id": "1", "voice": True}})
    assert isinstance(voice, model.Media) and voice.voice and model.render(voice) == "[voice note]"
    new = {"type": "poll_vote", "poll_vote": {"option": 2}, "id": "wamid.P"}
    unknown = _content(new)
    assert isinstance(unknown, model.Unknown) and unknown.raw == new
    # An interactive message without its interactive object (Meta sends that with a 131000 error).
    bare = _content({"type": "interactive"})
    assert isinstance(bare, model.InteractiveReply) and bare.reply_id is None
    assert model.context_of({"context": {"forwarded": True}}).forwarded  # type: ignore[union-attr]


def test_status_parts_are_kept() -> None:
    body = (FIXTURES / "webhooks" / "25_status_failed_131047.json").read_bytes()
    (st,) = webhook.parse(webhook.loads(body)).statuses
    assert st.status == "failed" and st.errors[0]["code"] == 131047
    sent = webhook.parse(webhook.loads((FIXTURES / "webhooks" / "22_status_sent.json").read_bytes())).statuses[0]
    assert sent.conversation and sent.pricing and sent.pricing["category"] == "service"
