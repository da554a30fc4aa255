"""Pure logic: settings validation, Graph API error classification, recipients, records."""

from __future__ import annotations

import orjson
import pytest
from conftest import FIXTURES

from wacrm.core.settings import SettingsError, load
from wacrm.topics.records import RecordError, SendIntent, decode_intent, encode
from wacrm.whatsapp.graph import (
    InvalidRecipient,
    PausingGraphError,
    PermanentGraphError,
    RetryableGraphError,
    TokenRejected,
    classify,
    recipient_field,
)


def test_dev_profile_needs_nothing_and_generates_secrets() -> None:
    a, b = load({}, "dev"), load({}, "dev")
    assert a.whatsapp_app_secret and a.whatsapp_app_secret != b.whatsapp_app_secret
    assert a.database_url is None and a.port == 8080


def test_prod_profile_names_every_missing_or_bad_variable() -> None:
    with pytest.raises(SettingsError) as err:
        load({"PORT": "http", "TOPIC_PARTITIONS": "0", "KAFKA_BOOTSTRAP_SERVERS": "nohost"}, "prod",
             needs=frozenset({"DATABASE_URL", "WHATSAPP_APP_SECRET"}))
    text = str(err.value)
    for name in ("PORT", "TOPIC_PARTITIONS", "KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL", "WHATSAPP_APP_SECRET"):
        assert name in text
    assert "required" in text and "between 1 and 1024" in text


def test_settings_are_immutable() -> None:
    s = load({}, "dev")
    with pytest.raises(AttributeError):
        s.port = 1  # type: ignore[misc]


def _graph_error(name: str) -> dict:
    return orjson.loads((FIXTURES / "send" / name).read_bytes())


@pytest.mark.parametrize("fixture,status,kind", [
    ("error_130429_rate_limit.json", 400, RetryableGraphError),
    ("error_131056_pair_rate_limit.json", 400, RetryableGraphError),
    ("error_131000_generic.json", 500, RetryableGraphError),
    ("error_131026_undeliverable.json", 400, PermanentGraphError),
    ("error_131047_reengagement.json", 400, PermanentGraphError),
    ("error_100_invalid_param.json", 400, PermanentGraphError),
    ("error_190_token_expired.json", 401, TokenRejected),
])
def test_errors_are_classified_by_code_not_http_status(fixture: str, status: int, kind: type) -> None:
    err = classify(status, _graph_error(fixture))
    assert type(err) is kind
    assert err.pausing is issubclass(kind, PausingGraphError)  # a refused token pauses its number too
    assert err.code == _graph_error(fixture)["error"]["code"]


def test_errors_without_a_code() -> None:
    assert isinstance(classify(502, None), RetryableGraphError)
    assert type(classify(404, {"oops": 1})) is PermanentGraphError


def test_recipients() -> None:
    assert recipient_field("15550002222", None) == ("to", "+15550002222")
    assert recipient_field("US.13491208655302741918", None) == ("recipient", "US.13491208655302741918")
    assert recipient_field("030 1234567", "DE") == ("to", "+49301234567")
    with pytest.raises(InvalidRecipient):
        recipient_field("12", None)


def test_intent_round_trip_and_rejection() -> None:
    intent = SendIntent(dedupe_key="auto:x", conversation_key="1:2", conversation_id=5, phone_number_id="1",
                        to="2", text="hello")
    assert decode_intent(encode(intent)) == intent
    for bad in (b"nope", b"[]", orjson.dumps({"dedupe_key": 1}), None):
        with pytest.raises(RecordError):
            decode_intent(bad)
