"""Pure parts of the inbox and of the rules it reads: stages only forward, rules intelligence,
the LLM's structured answer, FAQ answers per language, hours described from the configuration."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wacrm.inbox import auth
from wacrm.inbox.intelligence import LlmAnswerError, advance, by_rules, parse_llm
from wacrm.orchestrator.rules import Situation, decide, describe_hours, language_of, load_rules

RULES = load_rules()
STAGES = RULES.intelligence.stages
NOON_WED = datetime(2026, 1, 7, 12, 0, tzinfo=UTC)


@given(st.sampled_from(STAGES), st.one_of(st.none(), st.sampled_from(STAGES), st.text(max_size=8)))
def test_a_computed_stage_never_moves_back(current: str, proposed: str | None) -> None:
    after = advance(STAGES, current, proposed)
    assert after in STAGES and STAGES.index(after) >= STAGES.index(current)
    if proposed in STAGES and STAGES.index(proposed) > STAGES.index(current):
        assert after == proposed


def test_rules_intelligence_reads_intent_stage_and_sentiment() -> None:
    turns = [("inbound", "hi"), ("outbound", "Hi! How can we help?"),
             ("inbound", "what is the price of the red one? this is terrible service")]
    i = by_rules(RULES.intelligence, turns, "new")
    assert (i.intent, i.lead_stage, i.sentiment, i.engine) == ("pricing", "interested", "negative", "rules")
    assert "pricing" in i.summary and "terrible service" in i.summary
    assert by_rules(RULES.intelligence, turns, "won").lead_stage == "won"  # never back
    assert by_rules(RULES.intelligence, [("inbound", "I want to buy it, thanks!")], None).lead_stage == "qualified"
    assert by_rules(RULES.intelligence, [], None).summary == "No customer messages yet."


def _completion(content: object) -> dict:
    return {"choices": [{"message": {"role": "assistant", "content": content}}]}


def test_the_llm_answer_must_be_the_structured_object() -> None:
    good = {"summary": "s", "intent": "pricing", "lead_stage": "qualified", "lead_score": 70, "sentiment": "positive"}
    i = parse_llm(_completion(json.dumps(good)), STAGES, "interested")
    assert (i.lead_stage, i.lead_score, i.engine) == ("qualified", 70, "llm")
    assert parse_llm(_completion(json.dumps(good)), STAGES, "won").lead_stage == "won"
    for bad in ("not json", json.dumps([1]), json.dumps({**good, "lead_score": 101}),
                json.dumps({**good, "sentiment": "meh"}), json.dumps({**good, "summary": ""})):
        with pytest.raises(LlmAnswerError):
            parse_llm(_completion(bad), STAGES, None)
    with pytest.raises(LlmAnswerError):
        parse_llm({"choices": []}, STAGES, None)


def sit(*texts: str) -> Situation:
    return Situation(tuple(texts), tuple("text" for _ in texts), False, False, False, NOON_WED, "Ana")


def test_faq_answers_per_language_are_picked_by_the_customer_s_words(tmp_path: Path) -> None:
    data = json.loads(Path(load_rules.__code__.co_filename).with_name("default_rules.json").read_text())
    data["faq"][0]["answer"] = {"en": "Prices are online.", "es": "Los precios están en la web."}
    path = tmp_path / "rules.json"
    path.write_text(json.dumps(data))
    rules = load_rules(path)
    assert decide(rules, sit("¿Cuál es el precio?")).text == "Los precios están en la web."
    assert decide(rules, sit("What is the price?")).text == "Prices are online."
    assert decide(rules, sit("Preis?")).text == "Prices are online."  # no German answer: the default language
    assert language_of(["hola, qué tal"], rules.languages, "en") == "es"
    assert language_of(["xyz"], rules.languages, "en") == "en"


def test_the_shipped_rules_agree_with_themselves(tmp_path: Path) -> None:
    hours = decide(RULES, sit("What are your opening hours?")).text or ""
    assert hours == f"We are open {describe_hours(RULES.business_hours)}." and "Monday to Friday" not in hours
    # A fallback that says "we will get back to you" asks for a follow-up.
    d = decide(RULES, sit("do you repair blue submarines"))
    assert d.rule == "fallback" and "get back to you" in (d.text or "") and d.extra["follow_up"] is True
    data = json.loads(Path(load_rules.__code__.co_filename).with_name("default_rules.json").read_text())
    data["business_hours"]["days"] = {d: ["09:00-18:00"] for d in ("mon", "tue", "wed", "thu", "fri")}
    data["business_hours"]["timezone"] = "Europe/Madrid"
    path = tmp_path / "rules.json"
    path.write_text(json.dumps(data))
    assert describe_hours(load_rules(path).business_hours) == "Monday to Friday, 09:00 to 18:00 (Europe/Madrid)"


def test_templates_offered_outside_the_window(tmp_path: Path) -> None:
    data = json.loads(Path(load_rules.__code__.co_filename).with_name("default_rules.json").read_text())
    data["window_template"] = {"name": "reopen", "language": "en"}
    data["templates"] = [{"name": "offer", "language": "es", "parameters": ["x"]}, {"name": "reopen",
                                                                                     "language": "en"}]
    path = tmp_path / "rules.json"
    path.write_text(json.dumps(data))
    assert [(t.name, t.language) for t in load_rules(path).offered_templates()] == [("reopen", "en"), ("offer", "es")]


def test_secrets_are_stored_as_hashes_and_passwords_as_argon2id() -> None:
    assert auth.digest("abc") != "abc" and len(auth.digest("abc")) == 64
    hashed = auth.hash_password("pw-123456")
    assert hashed.startswith("$argon2id$")
    assert auth._verify(hashed, "pw-123456") and not auth._verify(hashed, "nope") and not auth._verify(None, "x")


def test_list_counts_fold_groups_per_status_and_owner() -> None:
    from wacrm.inbox.listing import list_counts

    groups = [("open", None, 3), ("open", 7, 2), ("open", 8, 1), ("snoozed", 7, 4), ("resolved", None, 5)]
    assert list_counts(groups, 7) == {"open": 6, "pending": 0, "resolved": 5, "snoozed": 4, "all": 15,
                                      "mine": 6, "unassigned": 8}
    assert list_counts([], 7) == {"open": 0, "pending": 0, "resolved": 0, "snoozed": 0, "all": 0, "mine": 0,
                                  "unassigned": 0}


def test_the_list_statement_has_a_condition_only_for_each_filter_given() -> None:
    from wacrm.inbox.listing import ListQuery, list_sql

    sql, args = list_sql(ListQuery("all", "all", None, 1), me=7)
    assert "inbox_status =" not in sql and "assigned_user_id" not in sql.split("WHERE", 1)[1]
    assert args == [50, 0]  # LIMIT, OFFSET
    sql, args = list_sql(ListQuery("open", "me", " Ana ", 3), me=7)
    where = sql.split("WHERE", 1)[1]
    assert "c.inbox_status = $1" in where and "c.assigned_user_id = $2" in where and "ILIKE $3" in where
    assert args[:3] == ["open", 7, "%Ana%"] and args[4] == 2 * args[3]
    sql, _ = list_sql(ListQuery("all", "unassigned", None, 1, deleted=True), me=7)
    assert "c.deleted_at IS NOT NULL" in sql and "c.assigned_user_id IS NULL" in sql


async def test_the_counts_are_counted_once_per_stamp_while_lists_wait_for_them() -> None:
    import asyncio

    from wacrm.inbox.listing import CountsCache

    calls = 0

    async def count() -> list[tuple[str, int | None, int]]:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.05)
        return [("open", None, calls)]

    cache = CountsCache()
    first = await asyncio.gather(*(cache.groups(count, False, 1) for _ in range(5)))
    assert calls == 1 and all(g == [("open", None, 1)] for g in first)
    assert await cache.groups(count, False, 1) == [("open", None, 1)]  # same stamp: reused
    assert await cache.groups(count, True, 1) == [("open", None, 2)]  # the deleted list: its own count
    assert await cache.groups(count, False, 2) == [("open", None, 3)]  # moved: counted again
    assert await cache.groups(count, False, None) == [("open", None, 4)]  # not listening: every time
    assert await cache.groups(count, False, None) == [("open", None, 5)]
