"""Meta's error codes in words (whatsapp.reasons) and why a conversation waits (storage.waiting)."""

from __future__ import annotations

from datetime import UTC, datetime

from wacrm.storage import waiting
from wacrm.whatsapp import reasons
from wacrm.whatsapp.graph import PAUSING_CODES, RETRYABLE_CODES


def test_a_closed_window_says_what_happened_and_what_to_do() -> None:
    r = reasons.explain({"error": "(#131047) Re-engagement message", "code": 131047, "kind": "PermanentGraphError"})
    assert r is not None and r.code == 131047
    assert r.what.startswith("the 24-hour window had closed") and "template" in r.next_step


def test_every_shape_an_error_is_stored_in_is_read() -> None:
    status_errors = [{"code": 131026, "title": "Message undeliverable"}]
    for stored in (status_errors, {"provider_message_id": "wamid.X", "errors": status_errors},
                   {"code": 131026}):
        r = reasons.explain(stored)
        assert r is not None and r.code == 131026 and "could not deliver" in r.what, stored
    assert reasons.explain(None) is None and reasons.explain([]) is None and reasons.explain("x") is None
    assert reasons.words(None) == {"reason_text": None, "next_step": None}


def test_an_unknown_code_repeats_what_meta_said() -> None:
    r = reasons.explain({"code": 999999, "message": "(#999999) Something new"})
    assert r is not None and r.what == "Meta said: (#999999) Something new (code 999999)" and r.next_step
    r = reasons.explain({"error": "in flight when its worker stopped; not resent"})
    assert r is not None and "in flight" in r.what and "(code" not in r.what
    r = reasons.explain({"kind": "AmbiguousGraphError"})
    assert r is not None and "may or may not" in r.what


def test_every_code_the_pipeline_classifies_has_words() -> None:
    assert set(reasons.CODES) >= (RETRYABLE_CODES | PAUSING_CODES)
    for what, step in reasons.CODES.values():
        assert (what[0].islower() or what.startswith(("WhatsApp", "Meta"))) and not what.endswith(".")  # a clause
        assert step[0].isupper() and step.endswith(".")  # a sentence


def test_a_wait_says_since_when_and_why() -> None:
    since = datetime(2026, 1, 5, 9, 30, tzinfo=UTC)
    assert waiting.wait_json(since, "handover", "handover") == {
        "since": "2026-01-05T09:30:00+00:00", "reason": "handover", "reason_text": "the customer asked for a person"}
    for rule in waiting.UNSURE_RULES:  # a handover the bot chose itself
        assert waiting.wait_json(since, "handover", rule)["reason"] == "bot_unsure"
    assert waiting.wait_json(since, "send_failed", None)["reason"] == "reply_failed"
    assert waiting.wait_json(since, "window_closed", None)["reason"] == "window_closed"
    assert waiting.wait_json(since, "send_ambiguous", None)["reason"] == "send_ambiguous"
    assert "bot_unsure" not in waiting.KINDS and "sending_paused" not in waiting.KINDS
