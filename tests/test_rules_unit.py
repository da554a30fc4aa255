"""The rules engine: keywords in several languages, opt-out/in, handover, hours, fallback."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from wacrm.orchestrator.rules import RulesError, Situation, decide, load_rules

NOON_WED = datetime(2026, 1, 7, 12, 0, tzinfo=UTC)
RULES = load_rules()


def sit(*texts: str, new: bool = False, opted_out: bool = False, human: bool = False, types: tuple = (),
        now: datetime = NOON_WED) -> Situation:
    return Situation(tuple(texts), types or tuple("text" for _ in texts), new, opted_out, human, now, "Ana")


def test_faq_is_case_and_accent_insensitive_in_several_languages() -> None:
    for text, said in (("What is the PRICE?", "prices"), ("¿Cuál es el precio?", "precios"),
                       ("Qual é o preço?", "preços"), ("Was ist der Preis?", "Preise")):
        d = decide(RULES, sit(text))
        assert d.action == "reply" and d.rule == "faq" and said in (d.text or ""), text
    assert decide(RULES, sit("¿Hacen ENVIO?")).text == decide(RULES, sit("hacen envío")).text


def test_the_shipped_faq_answers_in_the_customers_language_else_the_default() -> None:
    assert "Enviamos" in (decide(RULES, sit("¿hacen envío a Madrid?")).text or "")
    assert "ship" in (decide(RULES, sit("do you do shipping?")).text or "")
    # written once (the hours come from business_hours, in English): that answer for everyone
    assert "We are open" in (decide(RULES, sit("¿cuál es el horario?")).text or "")


def test_greeting_for_a_new_contact_and_fallback_otherwise() -> None:
    d = decide(RULES, sit("hello", new=True))
    assert d.rule == "greeting" and d.text and d.text.startswith("Hi Ana!")
    assert decide(RULES, sit("hello")).rule == "fallback"


def test_opt_out_only_as_the_whole_message_and_opt_in_back() -> None:
    assert decide(RULES, sit("STOP")).action == "opt_out"
    assert decide(RULES, sit("  Unsubscribe! ")).action == "opt_out"
    assert decide(RULES, sit("please don't stop the delivery")).action == "reply"
    assert decide(RULES, sit("what is the price", opted_out=True)).action == "none"
    d = decide(RULES, sit("start", opted_out=True))
    assert d.action == "opt_in" and d.text


def test_handover_keywords_and_human_owned_conversations() -> None:
    assert decide(RULES, sit("can I talk to a human?")).action == "handover"
    assert decide(RULES, sit("Quiero hablar con una persona")).action == "handover"
    assert decide(RULES, sit("price?", human=True)) .action == "none"
    assert decide(RULES, sit("STOP", human=True)).action == "opt_out"  # opting out always works


def test_a_burst_is_answered_once_considering_every_message() -> None:
    d = decide(RULES, sit("hi", "what's the price", "and shipping?"))
    assert d.action == "reply" and "prices" in (d.text or "") and "ship" in (d.text or "")
    assert decide(RULES, sit("👍", types=("reaction",))).action == "none"


def test_business_hours_and_fallback_handover(tmp_path: Path) -> None:
    data = json.loads(Path(load_rules.__code__.co_filename).with_name("default_rules.json").read_text())
    data["business_hours"] = {"timezone": "Europe/Madrid", "days": {"mon": ["09:00-18:00"]},
                              "out_of_hours_message": "We are closed."}
    data["fallback"] = {"action": "handover"}
    path = tmp_path / "rules.json"
    path.write_text(json.dumps(data))
    rules = load_rules(path)
    monday_10_madrid = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
    assert decide(rules, sit("hello", now=monday_10_madrid)).action == "handover"
    d = decide(rules, sit("hello", now=NOON_WED))
    assert d.action == "reply" and d.text == "We are closed."


def test_invalid_files_name_each_problem(tmp_path: Path) -> None:
    path = tmp_path / "rules.json"
    path.write_text(json.dumps({"faq": [{"keywords": "price"}], "fallback": {"action": "dance"},
                                "business_hours": {"timezone": "Mars/Olympus", "days": {"mon": ["9-5"]}}}))
    with pytest.raises(RulesError) as err:
        load_rules(path)
    text = str(err.value)
    for needle in ("faq[0].keywords", "faq[0].answer", "fallback.action", "Mars/Olympus", "business_hours.days.mon"):
        assert needle in text
    path.write_text("{not json")
    with pytest.raises(RulesError, match="not JSON"):
        load_rules(path)
    with pytest.raises(RulesError, match="cannot read"):
        load_rules(tmp_path / "missing.json")
