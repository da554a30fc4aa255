"""The rules engine: keywords in several languages, opt-out/in, handover, hours, fallback."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wacrm.orchestrator.rules import (
    Rules,
    RulesError,
    Situation,
    decide,
    describe_hours,
    load_rules,
    reply_language,
    text_in,
)

NOON_WED = datetime(2026, 1, 7, 12, 0, tzinfo=UTC)
RULES = load_rules()


def sit(*texts: str, new: bool = False, opted_out: bool = False, human: bool = False, types: tuple = (),
        now: datetime = NOON_WED, name: str | None = "Ana") -> Situation:
    return Situation(tuple(texts), types or tuple("text" for _ in texts), new, opted_out, human, now, name)


def rules_with(tmp_path: Path, **changes: object) -> Rules:
    data = json.loads(Path(load_rules.__code__.co_filename).with_name("default_rules.json").read_text())
    data.update(changes)
    path = tmp_path / "rules.json"
    path.write_text(json.dumps(data))
    return load_rules(path)


def test_faq_is_case_and_accent_insensitive_in_several_languages() -> None:
    for text, said in (("What is the PRICE?", "prices"), ("¿Cuál es el precio?", "precios"),
                       ("Qual é o preço?", "preços"), ("Was ist der Preis?", "Preise")):
        d = decide(RULES, sit(text))
        assert d.action == "reply" and d.rule == "faq" and said in (d.text or ""), text
    assert decide(RULES, sit("¿Hacen ENVIO?")).text == decide(RULES, sit("hacen envío")).text


def test_the_shipped_faq_answers_in_the_customers_language_else_the_default() -> None:
    assert "Enviamos" in (decide(RULES, sit("¿hacen envío a Madrid?")).text or "")
    assert "ship" in (decide(RULES, sit("do you do shipping?")).text or "")
    # the hours come from business_hours, said in the customer's language
    assert decide(RULES, sit("¿cuál es el horario?")).text == "Abrimos todos los días, las 24 horas."
    assert decide(RULES, sit("what are your opening hours?")).text == "We are open every day, around the clock."


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


def test_a_first_message_in_spanish_is_answered_in_spanish_only() -> None:
    d = decide(RULES, sit("Hola, ¿cuál es el precio?", new=True))
    assert d.text == ("¡Hola Ana! Gracias por escribirnos. ¿En qué podemos ayudarte?\n\nNuestros precios están en "
                      "nuestra web. Dinos qué producto te interesa y te enviamos los detalles.")
    for text, hello in (("Was ist der Preis?", "Hallo Ana!"), ("Qual é o preço?", "Olá Ana!"),
                        ("what is the price?", "Hi Ana!")):
        assert (decide(RULES, sit(text, new=True)).text or "").startswith(hello), text
    # no name: nothing in its place ("there" only in English)
    assert (decide(RULES, sit("hola", new=True, name=None)).text or "").startswith("¡Hola! Gracias")
    assert (decide(RULES, sit("hello", new=True, name=None)).text or "").startswith("Hi there! Thanks")


def test_out_of_hours_the_whole_reply_is_in_one_language(tmp_path: Path) -> None:
    hours = {"timezone": "Europe/Madrid", "days": {"mon": ["09:00-18:00"], "tue": ["09:00-18:00"]},
             "out_of_hours_message": {"en": "We are closed.", "es": "Estamos cerrados."}}
    rules = rules_with(tmp_path, business_hours=hours)
    d = decide(rules, sit("hola, ¿cuál es el horario?", new=True))  # Wednesday: closed
    assert d.text == ("¡Hola Ana! Gracias por escribirnos. ¿En qué podemos ayudarte?\n\n"
                      "Abrimos de lunes a martes, de 09:00 a 18:00 (Europe/Madrid).\n\nEstamos cerrados.")
    # German has no out-of-hours text: the whole reply falls back to the default language
    d = decide(rules, sit("Was ist der Preis?", new=True))
    assert d.text == ("Hi Ana! Thanks for writing to us. How can we help?\n\nOur prices are on our website. Tell us "
                      "which product you are interested in and we will send you the details.\n\nWe are closed.")
    assert describe_hours(rules.business_hours, "de") == "Montag bis Dienstag, 09:00 bis 18:00 (Europe/Madrid)"
    assert describe_hours(rules.business_hours, "pt") == \
        "de segunda-feira a terça-feira, das 09:00 às 18:00 (Europe/Madrid)"
    assert describe_hours(rules.business_hours, "fr") == describe_hours(rules.business_hours)  # English


def test_a_greeting_written_once_is_in_the_default_language_and_so_is_its_reply(tmp_path: Path) -> None:
    rules = rules_with(tmp_path, greeting="Hi {name}!")
    assert decide(rules, sit("¿cuál es el precio?", new=True)).text == (
        "Hi Ana!\n\nOur prices are on our website. Tell us which product you are interested in and we will send "
        "you the details.")
    assert "Nuestros precios" in (decide(rules, sit("¿cuál es el precio?")).text or "")  # no greeting: Spanish


def test_a_greeting_per_language_is_checked_like_faq_answers(tmp_path: Path) -> None:
    with pytest.raises(RulesError, match=r"greeting: must be a non-empty string or an object of language: text"):
        rules_with(tmp_path, greeting={"en": "Hi", "es": ""})
    with pytest.raises(RulesError, match=r"business_hours.out_of_hours_message: must be"):
        rules_with(tmp_path, business_hours={"days": {"mon": ["09:00-18:00"]}, "out_of_hours_message": ["x"]})


LANGS = ("en", "es", "pt", "de")
# a text per language: each says which language it is in, so the reply's languages can be read back
part = st.dictionaries(st.sampled_from(("", *LANGS)), st.just(""), min_size=1).map(
    lambda d: {lang: f"<{lang or 'default'}>" for lang in d})


@settings(derandomize=True, max_examples=300, deadline=None)
@given(parts=st.lists(part, min_size=1, max_size=4), customer=st.sampled_from(LANGS),
       default=st.sampled_from(LANGS))
def test_a_reply_joins_texts_of_one_language_whenever_they_have_one_in_common(
        parts: list[dict[str, str]], customer: str, default: str) -> None:
    def covers(p: dict[str, str], lang: str) -> bool:
        return lang in p or (lang == default and "" in p)

    language = reply_language(parts, customer, default)
    written = [text_in(p, language, default) for p in parts]
    common = [lang for lang in LANGS if all(covers(p, lang) for p in parts)]
    said = {w.strip("<>").replace("default", default) for w in written}
    if common:
        assert said == {language} and language in common
        if customer in common:
            assert language == customer  # the customer's own language whenever every text has it
        elif default in common:
            assert language == default
    else:
        assert language == customer  # nothing in common: each text in its best language
