"""Property tests: any JSON value into the parser gives events or a typed rejection, never an exception."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wacrm.agents.ingest import split
from wacrm.core.errors import Poison
from wacrm.topics.records import RawRef, decode_inbound, decode_status, encode_bounded
from wacrm.whatsapp import webhook

json_scalars = st.none() | st.booleans() | st.integers(-2**53, 2**53) | st.floats(allow_nan=False,
                                                                                    allow_infinity=False) | st.text()
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=30)

KEYS = ["object", "entry", "changes", "field", "value", "metadata", "phone_number_id", "contacts", "messages",
        "statuses", "errors", "id", "from", "from_user_id", "timestamp", "type", "text", "body", "wa_id",
        "user_id", "profile", "status", "recipient_id", "context", "referral", "reaction", "emoji", "system",
        "image", "interactive", "button_reply", "order", "product_items", "location", "latitude"]
VALUES = ["whatsapp_business_account", "messages", "text", "image", "reaction", "system", "interactive",
          "1767225601", "15550002222", "US.1", "200000000000001", "sent", "read", "failed"]

# Shapes close to real webhooks, with the wrong types in the right places.
near_webhook = st.recursive(
    st.sampled_from(VALUES) | json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(KEYS), inner, max_size=6),
    max_leaves=60)


def _envelope(value: Any) -> dict[str, Any]:
    return {"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [{"field": "messages",
                                                                                    "value": value}]}]}


def _check(data: Any) -> None:
    body = orjson.dumps(data)
    try:
        parsed = webhook.loads(body)
    except webhook.BodyError:
        assert not isinstance(data, dict)
        return
    webhook.parse(parsed)
    webhook.routing_key(parsed)
    # A body that is a JSON object is never poison as a whole: broken items become problems.
    out = split(body, RawRef("wa.webhook.raw", 0, 0), 0.0)
    for message in out.messages:  # whatever ingest stores, wa.inbound and wa.dlq can carry and decode
        decode_inbound(encode_bounded(message))
    for _, value in out.statuses:  # whatever ingest emits, the status agent can decode
        decode_status(value)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(json_values)
def test_any_json_value(data: Any) -> None:
    _check(data)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(near_webhook)
def test_near_webhook_values(value: Any) -> None:
    _check(_envelope(value))
    _check(value)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(KEYS), near_webhook, max_size=8))
def test_broken_messages_inside_a_valid_change(message: dict[str, Any]) -> None:
    _check(_envelope({"metadata": {"phone_number_id": "200000000000001"},
                      "contacts": [{"wa_id": "15550002222", "profile": {"name": "A"}}],
                      "messages": [message, {"from": "15550002222", "id": "wamid.ok", "timestamp": "1", "type": "text",
                                             "text": {"body": "fine"}}],
                      "statuses": [message]}))


def test_deeply_nested_and_huge_bodies() -> None:
    deep: Any = "x"
    for _ in range(100):  # dict + list per level: 200 levels, under orjson's 254
        deep = {"value": [deep]}
    _check(_envelope(deep))
    # Deeper than the JSON decoder goes: a typed rejection, and for the ingest agent a dead letter.
    too_deep = b'{"object":"whatsapp_business_account","entry":' + b"[" * 3000 + b"]" * 3000 + b"}"
    with pytest.raises(webhook.BodyError, match=r"^not JSON"):
        webhook.loads(too_deep)
    with pytest.raises(Poison, match=r"^not JSON"):
        split(too_deep, RawRef("wa.webhook.raw", 0, 0), 0.0)
    # A valid message carrying a part nested deeper than can be re-encoded: that item is a problem, the
    # other one goes through.
    nested = "{" + '"a":{' * 600 + '"b":1' + "}" * 600 + "}"
    body = (b'{"object":"whatsapp_business_account","entry":[{"changes":[{"field":"messages","value":{"metadata":'
            b'{"phone_number_id":"1"},"messages":[{"from":"2","id":"wamid.deep","timestamp":"1","type":"text",'
            b'"text":{"body":"x"},"junk":' + nested.encode() + b'},{"from":"2","id":"wamid.ok","timestamp":"2",'
            b'"type":"text","text":{"body":"y"}}]}}]}]}')
    out = split(body, RawRef("wa.webhook.raw", 0, 0), 0.0)
    assert [m.message_id for m in out.messages] == ["wamid.ok"]
    assert len(out.parsed.problems) == 1
    many = [{"from": "15550002222", "id": f"wamid.{i}", "timestamp": str(i), "type": "text", "text": {"body": "x"}}
            for i in range(5000)]
    body = orjson.dumps(_envelope({"metadata": {"phone_number_id": "1"}, "messages": many}))
    out = split(body, RawRef("wa.webhook.raw", 0, 0), 0.0)
    assert len(out.messages) == 5000 and not out.parsed.problems
