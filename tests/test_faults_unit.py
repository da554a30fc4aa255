"""The fault suite's counting, verdicts and report, without processes."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from faults import report
from faults.count import Expect, Tally, answered_messages, judge, ledger_row, tally
from faults.poison import cases
from faults.run import select
from faults.scenarios import BY_NAME, SCENARIOS, Row

# The ledger as the harness reads it: row id -> the inbound message the row's intent answers.
ANSWERS: dict[int, str] = {}


def reply(mid: str | None, *, ok: bool = True) -> dict[str, Any]:
    """A fake-meta record of a send naming a ledger row that answers ``mid`` (unquoted, as most are)."""
    row = len(ANSWERS) + 1
    if mid is not None:
        ANSWERS[row] = mid
    body: dict[str, Any] = {"messaging_product": "whatsapp", "type": "text", "text": {"body": "hi"},
                            "biz_opaque_callback_data": f"ol:{row}"}
    return {"body": body, "answered": {"id": "wamid.OUT"} if ok else {"error": 131000}}


def count(units: list[tuple[str, ...]], stored: list[str], sent: list[dict[str, Any]], **kw: Any) -> Tally:
    return tally(units, stored, answered_messages(sent, ANSWERS), dead_lettered=kw.pop("dead", 0),
                 ambiguous_settled=kw.pop("ambiguous_settled", None), ambiguous_left=kw.pop("ambiguous_left", None),
                 **kw)


def test_each_message_is_answered_once_twice_or_not_at_all() -> None:
    units = [("a",), ("b",), ("c",), ("d",)]
    t = count(units, ["a", "b", "c"], [reply("a"), reply("b"), reply("b"), reply("x"), reply(None)])
    assert (t.posted, t.stored, t.lost) == (4, 3, 1)
    assert (t.answered_once, t.answered_twice, t.unanswered) == (1, 1, 2)


def test_a_scripted_error_is_not_a_reply() -> None:
    t = count([("a",)], ["a"], [reply("a", ok=False), reply("a")])
    assert (t.answered_once, t.answered_twice) == (1, 0)
    assert ledger_row(reply("a", ok=False)) is None
    assert ledger_row({"answered": {"id": "w"}, "body": None}) is None
    assert ledger_row({"answered": {"id": "w"}, "body": {"biz_opaque_callback_data": "not ours"}}) is None


def test_a_burst_needs_one_reply_to_any_of_its_messages() -> None:
    units = [("a1", "a2", "a3"), ("b1", "b2"), ("c1",)]
    t = count(units, ["a1", "a2", "a3", "b1", "b2", "c1"], [reply("a3"), reply("b1"), reply("b2")])
    assert (t.units, t.posted) == (3, 6)
    assert (t.answered_once, t.answered_twice, t.unanswered) == (1, 1, 1)


def test_unanswered_with_a_task_is_told_apart() -> None:
    t = count([("a",), ("b",)], ["a", "b"], [], with_task=["b"])
    assert (t.unanswered, t.unanswered_with_task, t.unanswered_without_task) == (2, 1, 1)


def test_stored_messages_that_were_not_posted_are_not_counted() -> None:
    assert count([("a",)], ["a", "zzz"], [reply("a")]).stored == 1


@given(st.lists(st.tuples(st.integers(0, 30), st.integers(0, 3), st.booleans()), max_size=40, unique_by=lambda x: x[0]))
def test_every_unit_is_counted_exactly_once(spec: list[tuple[int, int, bool]]) -> None:
    units = [(f"m{n}",) for n, _, _ in spec]
    sent = [reply(f"m{n}") for n, replies, _ in spec for _ in range(replies)]
    stored = [f"m{n}" for n, _, kept in spec if kept]
    t = count(units, stored, sent)
    assert t.answered_once + t.answered_twice + t.unanswered == t.units == len(spec)
    assert t.stored + t.lost == t.posted
    assert t.answered_twice == sum(1 for _, r, _ in spec if r > 1)


def test_the_verdict_names_every_failure() -> None:
    bad = count([("a",), ("b",), ("c",)], ["a", "b"], [reply("a"), reply("a")])
    v = judge(bad, Expect(), server_errors=2)
    assert not v.ok
    assert any("lost" in r for r in v.reasons) and any("twice" in r for r in v.reasons)
    assert any("unanswered" in r for r in v.reasons) and any("5xx" in r for r in v.reasons)
    good = count([("a",)], ["a"], [reply("a")])
    assert judge(good, Expect()).ok and str(judge(good, Expect())) == "ok"
    assert not judge(count([], [], []), Expect()).ok  # nothing posted proves nothing
    assert judge(count([("a",)], ["a"], []), Expect(all_answered=False)).ok
    assert judge(good, Expect(), problems=["poison x answered 500"]).reasons == ("poison x answered 500",)
    lettered = count([("a",)], ["a"], [reply("a")], dead=2)
    assert judge(lettered, Expect()).reasons == ("2 dead letters from normal traffic",)
    assert judge(lettered, Expect(no_dead_letters=False)).ok
    doubtful = count([("a",)], ["a"], [reply("a")], ambiguous_settled=3, ambiguous_left=1)
    assert judge(doubtful, Expect()).reasons == ("1 ambiguous sends left unsettled",)


def test_the_catalogue_has_every_scenario_of_the_issue() -> None:
    assert {"sigterm", "kill9", "postgres_stop", "postgres_crash", "broker_pause", "graph_timeout",
            "graph_storm", "slow_llm", "replay", "poison", "rebalance", "media_store"} <= set(BY_NAME)
    assert BY_NAME["media_store"].quick.outage_s == BY_NAME["media_store"].full.outage_s == 20
    assert BY_NAME["media_store"].quick.media_every > 0
    assert BY_NAME["sigterm"].full.rate >= 300 and BY_NAME["sigterm"].full.faults == 10
    assert BY_NAME["kill9"].full.faults == 10 and BY_NAME["kill9"].env["RATE_LIMIT_PER_SECOND"] == "80"
    assert BY_NAME["postgres_stop"].full.outage_s == 30 and BY_NAME["broker_pause"].full.outage_s == 30
    for s in SCENARIOS:  # the short forms are short
        assert s.quick.rate * s.quick.seconds <= 400 and s.quick.faults <= 2


def test_select_keeps_catalogue_order_and_refuses_unknown_names() -> None:
    assert [s.name for s in select(["poison", "sigterm"])] == ["sigterm", "poison"]
    assert len(select([])) == len(SCENARIOS)
    with pytest.raises(ValueError, match="nope"):
        select(["nope"])


def test_poison_cases_cover_the_issue() -> None:
    by_name = {c.name: c for c in cases("s" * 32)}
    assert 1_400_000 < len(by_name["big_text_1.5MB"].body) < 4 * 1024 * 1024
    assert len(by_name["over_limit_5MB"].body) > 4 * 1024 * 1024
    headers = dict(by_name["non_ascii_signature"].headers)
    assert not headers[b"X-Hub-Signature-256"].isascii()
    with pytest.raises(UnicodeDecodeError):
        by_name["invalid_utf8"].body.decode()
    assert [k for k, _ in by_name["duplicated_signature"].headers].count(b"X-Hub-Signature-256") == 2
    for name in ("wrong_signature", "non_ascii_signature", "duplicated_signature", "wrong_scheme",
                 "missing_signature"):  # refused, never taken
        assert by_name[name].allowed == {401, 403}
    assert 500 not in by_name["big_text_1.5MB"].allowed and 200 in by_name["big_text_1.5MB"].allowed


def test_the_report_has_the_table_and_a_paragraph_per_scenario() -> None:
    t = count([("a",), ("b",)], ["a"], [reply("a")])
    rows = [Row("sigterm", "20 msg/s × 16 s", "SIGTERM ×2", t, judge(t, Expect()), ["note one"], 40.0),
            Row("poison", "15 msg/s × 12 s", "x|y", None, judge(count([], [], []), Expect()), [], 5.0)]
    text = report.render(rows, SCENARIOS, date="2026-11-25", machine="2 cores", command="wacrm faults --quick",
                         took_s=45)
    header = "| " + " | ".join(report.COLUMNS) + " |"
    assert header in text
    line = next(x for x in text.splitlines() if x.startswith("| `sigterm`"))
    assert "| 2 | 1 | 1 | 0 | 1 | 0 | n/a | n/a | 1 | FAIL" in line
    assert "x\\|y" in text  # a pipe in a cell does not break the table
    assert "**`sigterm`.**" in text and "note one" in text and "**`kill9`.**" not in text
    assert "Not ok: `sigterm`, `poison`." in text
