"""The benchmark suite's own logic: percentiles, lost/duplicate counting, growth, rate search,
profile summaries, bodies and the report. No processes, no network."""

from __future__ import annotations

import math

import orjson
import pytest

from bench import stats
from bench.bodies import BodyFactory, Mix, http_request
from bench.probes import parse_kb
from harness.machine import machine
from wacrm.whatsapp import signature, webhook

# --- percentiles ---------------------------------------------------------------------------

def test_percentile_nearest_rank() -> None:
    data = [float(i) for i in range(1, 101)]  # 1..100
    assert stats.percentile(data, 50) == 50
    assert stats.percentile(data, 95) == 95
    assert stats.percentile(data, 99) == 99
    assert stats.percentile(data, 100) == 100
    assert stats.percentile(data, 0.1) == 1


def test_percentile_never_invents_a_value() -> None:
    data = [1.0, 10.0]
    assert stats.percentile(data, 50) == 1.0
    assert stats.percentile(data, 51) == 10.0
    assert stats.percentile([7.0], 99) == 7.0


def test_percentile_small_samples_p99_is_the_max() -> None:
    data = sorted([0.3, 0.1, 0.2, 5.0])
    assert stats.percentile(data, 99) == 5.0


def test_percentile_empty_and_bad_q() -> None:
    assert math.isnan(stats.percentile([], 50))
    with pytest.raises(ValueError):
        stats.percentile([1.0], 0)
    with pytest.raises(ValueError):
        stats.percentile([1.0], 101)


def test_summarize_sorts_and_reports() -> None:
    s = stats.summarize([3.0, 1.0, 2.0, 4.0])
    assert (s.count, s.p50, s.max, s.mean) == (4, 2.0, 4.0, 2.5)
    assert stats.summarize([]).count == 0 and math.isnan(stats.summarize([]).p99)


# --- lost and duplicated -------------------------------------------------------------------

def test_count_delivery_clean() -> None:
    d = stats.count_delivery(["a", "b", "c"], ["c", "a", "b"], {"a": 1, "b": 1, "c": 1})
    assert (d.accepted, d.replied, d.stored, d.lost, d.duplicated, d.unexpected) == (3, 3, 3, 0, 0, 0)
    assert d.clean


def test_count_delivery_lost_reply_and_lost_row() -> None:
    d = stats.count_delivery(["a", "b", "c"], ["a"], {"a": 1, "b": 1})
    assert d.lost_replies == 2 and d.lost_rows == 1
    assert d.lost == 2 and not d.clean


def test_count_delivery_duplicates() -> None:
    d = stats.count_delivery(["a", "b"], ["a", "a", "a", "b"], {"a": 1, "b": 2})
    assert d.duplicated_replies == 1  # ids, not extra sends
    assert d.duplicated_rows == 1
    assert d.lost == 0 and d.duplicated == 1


def test_count_delivery_ignores_repeated_accepted_ids_and_counts_unexpected() -> None:
    d = stats.count_delivery(["a", "a"], ["a", "zz"], {"a": 1, "zz": 1})
    assert d.accepted == 1 and d.unexpected == 1 and d.clean


def test_latencies_use_first_reply() -> None:
    lat = stats.latencies({"a": 10.0, "b": 20.0}, [("a", 10.5), ("a", 10.2), ("b", 21.0), ("x", 1.0)])
    assert sorted(lat) == pytest.approx([0.2, 1.0])


# --- memory growth -------------------------------------------------------------------------

def test_growth_flat_despite_spike() -> None:
    samples = [100.0] * 50
    samples[30] = 500.0
    g = stats.growth(samples)
    assert g.ratio == 0 and g.peak == 500.0


def test_growth_detects_a_leak() -> None:
    samples = [100.0 + i for i in range(100)]
    g = stats.growth(samples)
    assert g.start == pytest.approx(124, abs=1) and g.end == pytest.approx(194, abs=1)
    assert g.ratio > 0.5


def test_growth_empty_and_short() -> None:
    assert math.isnan(stats.growth([]).ratio)
    assert stats.growth([5.0]).ratio == 0


# --- rate search ---------------------------------------------------------------------------

def _search(limit: float, **kw: float) -> stats.RateSearch:
    s = stats.RateSearch(**kw)  # type: ignore[arg-type]
    while (rate := s.next_rate()) is not None:
        s.record(rate, rate <= limit)
    return s


def test_rate_search_brackets_the_limit() -> None:
    s = _search(7300, start=1000, max_steps=12, resolution=0.05)
    assert s.best is not None and s.failed is not None
    assert s.best <= 7300 < s.failed
    assert (s.failed - s.best) <= 0.05 * s.failed
    assert [r for r, _ in s.trials[:4]] == [1000, 2000, 4000, 8000]


def test_rate_search_respects_ceiling_and_steps() -> None:
    s = _search(1e9, start=1000, ceiling=5000, max_steps=10)
    assert s.best == 5000 and len(s.trials) == 4  # 1000, 2000, 4000, 5000
    s = _search(7300, start=1000, max_steps=3)
    assert len(s.trials) == 3


def test_rate_search_when_even_the_first_rate_fails() -> None:
    s = _search(300, start=1000, max_steps=10)
    assert s.best is not None and s.best <= 300
    assert s.trials[0] == (1000, False) and s.trials[1] == (500, False)


def test_rate_passes() -> None:
    good = stats.summarize([0.001] * 100)
    assert stats.rate_passes(good, 0.02, 0)
    assert not stats.rate_passes(good, 0.02, 1)
    assert not stats.rate_passes(stats.summarize([0.001] * 98 + [0.5] * 2), 0.02, 0)
    assert not stats.rate_passes(stats.summarize([]), 0.02, 0)


# --- profile summaries ---------------------------------------------------------------------

PROFILE = [
    "<module> (wacrm/__main__.py:3);run (agents/runner.py:50);handle (agents/inbound.py:41);"
    "store_inbound (storage/repo.py:90);execute (asyncpg/connection.py:300) 30",
    "<module> (wacrm/__main__.py:3);run (agents/runner.py:50);handle (agents/inbound.py:45);"
    "dumps (orjson/__init__.py:1) 10",
    "<module> (wacrm/__main__.py:3);_run_once (asyncio/base_events.py:1900);"
    "select (selectors.py:469) 500",
    "<module> (wacrm/__main__.py:3);run (agents/runner.py:50);handle (agents/sender.py:60);"
    "send (whatsapp/graph.py:100);request (aiohttp/client.py:500) 60",
    "garbage line",
]


def test_top_costs_leaf_share_of_busy_time() -> None:
    top = stats.top_costs(PROFILE, 2)
    assert top[0] == ("request (aiohttp/client.py:500)", pytest.approx(0.6))
    assert top[1] == ("execute (asyncpg/connection.py:300)", pytest.approx(0.3))


def test_top_costs_charged_to_own_code() -> None:
    top = dict(stats.top_costs(PROFILE, 5, own=("storage/", "whatsapp/")))
    assert top["store_inbound (storage/repo.py:90)"] == pytest.approx(0.3)
    assert top["send (whatsapp/graph.py:100)"] == pytest.approx(0.6)
    assert top["dumps (orjson/__init__.py:1)"] == pytest.approx(0.1)  # no own frame: the leaf


def test_inclusive_costs_merge_lines_of_a_function() -> None:
    own = dict(stats.inclusive_costs(PROFILE, ("agents/",)))
    assert own["handle (agents/inbound.py)"] == pytest.approx(0.4)
    assert own["run (agents/runner.py)"] == pytest.approx(1.0)


def test_costs_by_package() -> None:
    assert dict(stats.costs_by_package(PROFILE)) == pytest.approx({"aiohttp": 0.6, "asyncpg": 0.3, "orjson": 0.1})
    assert stats.frame_package("f (/usr/lib/python3.11/asyncio/events.py:80)") == "stdlib:asyncio"
    assert stats.frame_package("f (/x/.venv/lib/python3.11/site-packages/faust/streams.py:1)") == "faust"


# --- bodies --------------------------------------------------------------------------------

def test_bodies_are_valid_webhooks_with_unique_ids() -> None:
    f = BodyFactory("t", Mix(customers=50, status_share=0.2, batch_share=0.3), seed=3)
    seen: list[str] = []
    kinds = {"single": 0, "batch": 0, "status": 0}
    for _ in range(500):
        body = f.next(now=1767225600)
        parsed = webhook.parse(webhook.loads(body.raw))
        assert not parsed.problems
        assert [m.id for m in parsed.messages] == list(body.message_ids)
        assert len(parsed.statuses) == body.statuses
        seen.extend(body.message_ids)
        kinds["status" if body.statuses else "batch" if len(body.message_ids) > 1 else "single"] += 1
    assert len(set(seen)) == len(seen)
    assert all(k > 50 for k in kinds.values())


def test_bodies_deterministic_per_seed() -> None:
    a = [BodyFactory("t", seed=5).next(now=1).raw for _ in range(1)]
    b = [BodyFactory("t", seed=5).next(now=1).raw for _ in range(1)]
    assert a == b


def test_http_request_is_signed_over_the_exact_body() -> None:
    body = BodyFactory("t").next(now=1).raw
    raw = http_request(body, "s3cret", "127.0.0.1:1")
    head, _, rest = raw.partition(b"\r\n\r\n")
    assert rest == body
    headers = dict(line.split(": ", 1) for line in head.decode().split("\r\n")[1:])
    assert int(headers["Content-Length"]) == len(body)
    assert signature.verify("s3cret", body, headers["X-Hub-Signature-256"])
    assert orjson.loads(rest)["object"] == "whatsapp_business_account"


def test_parse_kb() -> None:
    text = "Name:\tpython\nVmRSS:\t   12345 kB\nPss:   7 kB\n"
    assert parse_kb(text, "VmRSS") == 12345 * 1024
    assert parse_kb(text, "Pss") == 7 * 1024
    assert parse_kb(text, "VmSwap") is None


# --- report --------------------------------------------------------------------------------

def test_report_renders_partial_and_full_results() -> None:
    from bench import report

    assert "# Benchmarks" in report.render({"plan": "quick", "complete": False})
    load = {"offered_rate": 1000, "achieved_rps": 990.0, "errors": 0, "ok": 990, "generator_behind_s": 0.001,
            "latency_s": {"p50": 0.001, "p95": 0.002, "p99": 0.004, "max": 0.01}, "generator_cpu_s": 3.0}
    cpu = {"serve": 0.2, "worker": 0.9, "fake-meta": 0.1, "broker": 0.3, "postgres": 0.4, "generator": 0.05}
    step = {"offered_rate": 100, "duration_s": 60, "messages": 6000, "messages_per_s": 100.0, "replies_per_s": 99.0,
            "lost": 0, "duplicated": 0, "load": load, "latency_s": {"p50": 0.1, "p95": 0.2, "p99": 0.3, "max": 0.5},
            "cpu_cores": cpu}
    slow = {**step, "offered_rate": 200, "messages_per_s": 230.0, "latency_s": {"p50": 1, "p95": 2, "p99": 3, "max": 4},
            "lost": 2, "answered_together": 2}
    text = report.render({
        "plan": "full", "complete": True, "command": "wacrm bench", "took_s": 900,
        "machine": {**machine("PostgreSQL 18"), "cores": 2},
        "webhook": {"fixed": [load], "search": [], "best": load},
        "bare": {"fixed": [load], "search": [], "best": load},
        "produce": {"pipelined_msgs_per_s": 90000, "awaited_msgs_per_s": 20000, "concurrency": 64,
                    "ack_latency_s": {"p50": 0.002, "p99": 0.005}, "body_bytes_mean": 700},
        "postgres": {"sequential": {"msgs_per_s": 800, "concurrency": 1, "batch": 1},
                     "batched": {"msgs_per_s": 8000, "concurrency": 4, "batch": 50}},
        "settings": {"BATCH_LANES": 4},
        "customer": step, "customer_default": slow, "e2e": [step, slow], "sustained": [step], "soak": step,
        "memory": {"worker": {"start": 1e8, "end": 1.05e8, "peak": 1.1e8, "growth": 0.05}},
        "samples": [{"t": 0, "serve": 1e8, "worker": 1e8, "broker": 1e8, "postgres": 1e8,
                     "lag": {"wa.webhook.raw": 3}}],
        "profile": {"seconds": 10, "samples": 100, "leaf": [("f (x.py:1)", 0.5)], "packages": [("faust", 0.5)],
                    "own": [("handle (agents/inbound.py)", 0.4)]},
    })
    assert "| webhook alone, open loop: requests/s with p99 ≤ 10 ms | 1,000 | ≥ 15,000 | **NOT MET** |" in text
    assert "| end-to-end messages/s, p99 ≤ 1 s, none lost or duplicated (highest clean step) | 100 |" in text
    assert "| sustained 60 s at 100 messages/s | p99 300.0 ms, lost 0, dup 0 |" in text
    assert "| PostgreSQL: inbound messages/s" in text and "| 8,000 | 1 % |" in text
    assert "BURST_WINDOW_SECONDS=0" in text and "`BATCH_LANES=4`" in text and "Closing note" in text
    assert "| step | 230 | 0.20 | 0.90 | 0.10 | 0.30 | 0.40 | 0.05 | 1.95 |" in text
    assert "used 1.95 of the 2 cores" in text and "close to saturated" in text
    assert "`handle (agents/inbound.py)` 40 %" in text
    assert "With the default settings" in text and "p50 1000 ms, p99 3000 ms after it" in text
    assert "| customer view, default settings | 200 |" in text and "| not judged |" in text
    assert "2 of its 2 messages without a reply of their own came within the burst window" in text


def test_report_names_the_broker_slowing_down_over_the_soak() -> None:
    from bench import report

    samples = [{"t": t, "worker": 1e8, "broker": 1e8 + t, "cpu": {"worker": 0.3, "broker": b, "postgres": 0.2},
                "lag": {}} for t, b in ((0, 0.5), (60, 0.6), (120, 0.8), (180, 0.9))]
    load = {"errors": 0, "generator_cpu_s": 1.0}
    soak = {"offered_rate": 100, "duration_s": 180, "messages": 20000, "messages_per_s": 111.0, "replies_per_s": 111.0,
            "lost": 0, "duplicated": 0, "load": load, "latency_s": {"p50": 0.1, "p95": 0.2, "p99": 0.3, "max": 0.4}}
    text = report.render({"plan": "full", "samples": samples, "soak": soak,
                          "memory": {"broker": {"start": 1e8, "end": 2e8, "peak": 2e8, "growth": 1.0}}})
    assert "broker's CPU went from 0.50 to 0.90 cores" in text and "slows down over a long run" in text
    flat = [{**r, "cpu": {**r["cpu"], "broker": 0.5}} for r in samples]
    assert "no marked growth" in report.render({"plan": "full", "samples": flat, "soak": soak,
                                                "memory": {"broker": {"start": 1, "end": 1, "peak": 1, "growth": 0}}})


# --- the inbox phase ------------------------------------------------------------------------------

def test_message_counts_sum_exactly_and_some_threads_page() -> None:
    from bench.inbox import message_counts
    from wacrm.inbox.store import MESSAGES_PER_PAGE as MESSAGES_PAGE

    counts = message_counts(10_000, 100_000)
    assert sum(counts) == 100_000
    assert min(counts) >= 1
    assert sum(1 for c in counts if c > MESSAGES_PAGE) >= 50  # the detail's "before" paging has work
    assert message_counts(200, 200) == [1] * 200
    with pytest.raises(ValueError):
        message_counts(10, 9)


def test_seed_shape_gives_every_list_filter_rows() -> None:
    from bench.inbox import STATUS_MIX, shape

    shapes = [shape(i, 50) for i in range(2000)]
    live = [s for s in shapes if not s.deleted]
    for status, _ in STATUS_MIX:
        assert any(s.status == status for s in live), status
        assert any(s.status == status and s.assignee == 0 for s in live), f"{status} for agent 0"
        assert any(s.status == status and s.assignee is None for s in live), f"{status} unassigned"
    assert all(any(s.assignee == a for s in live) for a in range(50))  # every agent owns some
    assert 0 < sum(s.deleted for s in shapes) < 60  # about 1 %
    assert 100 < sum(s.window_open for s in live) < 300  # about 10 %: replies have somewhere to go
    assert all(s.unread == 0 for s in shapes if s.status != "open")
    assert shape(17, 50) == shape(17, 50)  # the same seed every run


def test_targets_are_visible_and_replyable_ones() -> None:
    from bench.inbox import Seed, shape, targets

    visible, replyable = targets(Seed(500, 5000))
    assert set(replyable) <= set(visible)
    assert all(not shape(cid - 1, 50).deleted for cid in visible)
    assert all(shape(cid - 1, 50).window_open for cid in replyable)
    assert len(visible) + sum(shape(i, 50).deleted for i in range(500)) == 500


def test_request_cycle_visits_every_route_and_people_start_apart() -> None:
    import itertools

    from bench.inbox import LIST_ROUTES, ROUTE_NAMES, request_cycle

    for agent in range(3):
        first = list(itertools.islice(request_cycle(agent), len(ROUTE_NAMES)))
        assert sorted(first) == sorted(ROUTE_NAMES)
    assert next(request_cycle(0)) != next(request_cycle(1))
    queries = [q for _, q in LIST_ROUTES]
    for status in ("open", "pending", "resolved", "snoozed", "all"):
        assert any(f"status={status}" in q for q in queries)
    for assignee in ("me", "unassigned", "all"):
        assert any(f"assignee={assignee}" in q for q in queries)
    assert any("q=" in q for q in queries) and any("page=" in q for q in queries)


def test_sse_parser_reads_events_as_aiohttp_sse_writes_them() -> None:
    from bench.inbox import SseParser

    stream = ("event: ready\r\ndata: {}\r\n\r\n: ping\r\n\r\n"
              'id: 7\r\nevent: message\r\ndata: {"id": 7, "conversation_id": 3}\r\n\r\n'
              "data: a\ndata: b\n\n")
    p = SseParser()
    got = [e for line in stream.splitlines(keepends=True) if (e := p.feed(line)) is not None]
    assert got == [("ready", "{}"), ("message", '{"id": 7, "conversation_id": 3}'), ("message", "a\nb")]


def test_inbox_aim_and_its_report() -> None:
    from bench.inbox import ROUTE_NAMES, aim_met, route_summary
    from bench.sections.inbox import inbox_section

    fast = {n: route_summary([0.004] * 99 + [0.030], 0) for n in ROUTE_NAMES}
    sse = {"count": 100, "missed": 0, "p50": 0.005, "p99": 0.02, "max": 0.03}
    assert aim_met(fast, sse) == {"reads": True, "events": True}
    slow_reply = {**fast, "reply": route_summary([0.2] * 10, 0)}
    assert aim_met(slow_reply, sse)["reads"]  # the reply is reported, not judged
    one_slow = {**fast, "detail": route_summary([0.004] * 98 + [0.080, 0.090], 0)}
    assert not aim_met(one_slow, sse)["reads"]
    errors = {**fast, "list status=open": route_summary([0.004] * 10, 1)}
    assert not aim_met(errors, sse)["reads"]
    assert not aim_met(fast, {**sse, "missed": 1})["events"]
    assert not aim_met(fast, {**sse, "p99": 1.5})["events"]
    assert fast["detail"]["requests"] == 100 and errors["list status=open"]["requests"] == 11

    seed = {"conversations": 200, "messages": 2000, "contacts": 200, "outbound_log": 900, "tasks": 4,
            "notifications": 4, "seconds": 0.4}
    text = "\n".join(inbox_section({"seed": seed, "agents": 50, "seconds": 15, "think_s": 0.5,
                                    "requests_per_s": 90, "routes": one_slow, "sse": sse,
                                    "aim": aim_met(one_slow, sse), "error_samples": []}))
    for name in ROUTE_NAMES:
        assert f"| {name} |" in text
    assert "| detail | 4.0 | 80.0 | 90.0 | 100 | 0 |" in text
    assert "list and detail p99 ≤ 50 ms at 50 people, **NOT MET**" in text
    assert "an event ≤ 1 s after its message, met" in text


def test_server_times_are_the_difference_between_two_scrapes() -> None:
    from bench.inbox import server_times

    before = ('wacrm_inbox_request_duration_seconds_count{route="/conversations"} 10.0\n'
              'wacrm_inbox_request_duration_seconds_sum{route="/conversations"} 0.5\n')
    after = ('# HELP wacrm_inbox_request_duration_seconds Inbox API request duration\n'
             'wacrm_inbox_request_duration_seconds_bucket{le="0.005",route="/conversations"} 3.0\n'
             'wacrm_inbox_request_duration_seconds_count{route="/conversations"} 110.0\n'
             'wacrm_inbox_request_duration_seconds_sum{route="/conversations"} 1.5\n'
             'wacrm_inbox_request_duration_seconds_count{route="/conversations/{id}"} 4.0\n'
             'wacrm_inbox_request_duration_seconds_sum{route="/conversations/{id}"} 0.02\n'
             'wacrm_inbox_request_duration_seconds_count{route="/auth/me"} 0.0\n'
             'wacrm_inbox_request_duration_seconds_sum{route="/auth/me"} 0.0\n')
    got = server_times(before, after)
    assert set(got) == {"/conversations", "/conversations/{id}"}
    assert got["/conversations"]["requests"] == 100
    assert got["/conversations"]["mean"] == pytest.approx(0.01)
    assert got["/conversations/{id}"]["mean"] == pytest.approx(0.005)


# --- the CPU budget, wrk and the plots -------------------------------------------------------

WRK_OUTPUT = """Running 4s test @ http://127.0.0.1:8080/webhooks/whatsapp
  1 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     2.31ms  512.00us  12.40ms   80.00%
    Req/Sec    13.90k   400.00    14.50k    70.00%
  Latency Distribution
     50%    2.20ms
     75%    2.50ms
     90%    2.90ms
     99%    4.10ms
  55600 requests in 4.00s, 9.12MB read
  Non-2xx or 3xx responses: 3
Requests/sec:  13900.12
Transfer/sec:      2.28MB
"""


def test_wrk_output_is_read_in_seconds() -> None:
    from bench import wrk

    r = wrk.parse(WRK_OUTPUT)
    assert r["rps"] == pytest.approx(13900.12) and r["requests"] == 55600 and r["non_2xx"] == 3
    assert r["latency_s"]["p50"] == pytest.approx(0.0022) and r["latency_s"]["p99"] == pytest.approx(0.0041)
    assert r["socket_errors"] == 0
    assert wrk.parse("Socket errors: connect 1, read 2, write 0, timeout 4\n")["socket_errors"] == 7


def test_timeline_groups_latency_by_when_the_message_was_sent() -> None:
    sent = {f"m{i}": float(i) for i in range(100)}
    replies = [(f"m{i}", i + (0.1 if i < 50 else 0.5)) for i in range(100)] + [("m3", 99.0)]  # a late copy
    line = stats.timeline(sent, replies, buckets=2)
    assert [p["count"] for p in line] == [50, 50]
    assert line[0]["p99"] == pytest.approx(0.1) and line[1]["p50"] == pytest.approx(0.5)
    assert stats.timeline({}, []) == []


def _budget_results() -> dict[str, object]:
    return {"plan": "quick", "complete": True, "machine": {"cores": 2},
            "budget": {"offered_rate": 400, "messages_per_s": 460.0, "duration_s": 8, "lost": 0, "duplicated": 0,
                       "cpu_ms_per_message": {"serve": 0.5, "worker": 1.5, "fake-meta": 0.2, "broker": 0.4,
                                              "postgres": 1.4, "generator": 0.1}},
            "wrk": {"connections": 32, "runs": [
                {"processes": p, "worker": w, "seconds": 4, "rps": 9000.0 * p, "non_2xx": 0, "socket_errors": 0,
                 "latency_s": {"p50": 0.002, "p90": 0.003, "p99": 0.005}, "cpu_cores": {"serve": 0.9}}
                for p in (1, 2) for w in (False, True)]}}


def test_report_shows_the_budget_and_the_closed_loop_runs() -> None:
    from bench.report import render

    text = render(_budget_results())
    assert "## CPU budget per message" in text and "| **total** | **4.10** | 100 % |" in text
    assert "about 488 messages/s" in text  # 2 cores × 1000 / 4.10
    assert "## Webhook under wrk (closed loop)" in text and "| 2 | yes | 18,000 |" in text


def test_plots_are_drawn_for_what_the_run_measured(tmp_path: object) -> None:
    pytest.importorskip("matplotlib")
    from pathlib import Path

    from bench import plots

    results = _budget_results()
    results["soak"] = {"offered_rate": 50, "timeline": [{"t": 0.0, "p50": 0.1, "p99": 0.3, "count": 5},
                                                        {"t": 10.0, "p50": 0.1, "p99": 0.2, "count": 5}]}
    drawn, why = plots.draw(results, Path(str(tmp_path)))
    assert why is None
    assert [name for _, name in drawn] == ["cpu-per-message.png", "soak-latency.png"]  # no webhook or e2e runs
    for _, name in drawn:
        assert (Path(str(tmp_path)) / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_sets_the_pipeline_and_the_webhook_against_the_minimal_ones() -> None:
    from bench.report import render

    results = _budget_results()
    results["budget"]["statuses"] = {"expected": 1380, "applied": 1380}  # type: ignore[index]
    results["drain"] = {"messages": 6000, "replied": 6000, "seconds": 40.0, "messages_per_s": 150.0,
                        "cpu_cores": {"worker": 0.9}}
    results["status_backlog"] = {"statuses": 6000, "applied": 6000, "seconds": 10.0, "statuses_per_s": 600.0,
                                 "cpu_cores": {"worker": 0.8}}
    results["minimal"] = {"consumers": 2, "backlog": {"messages": 6000, "messages_per_s": 600.0},
                          "budget": {"offered_rate": 400, "messages_per_s": 460.0, "lost": 0, "duplicated": 0,
                                     "statuses": {"expected": 1380, "applied": 1380},
                                     "cpu_ms_per_message": {"serve": 0.25, "worker": 0.25, "fake-meta": 0.2,
                                                            "broker": 0.2, "postgres": 0.1, "generator": 0.1}}}
    results["wrk"]["minimal"] = {"seconds": 4, "rps": 12000.0, "non_2xx": 0, "socket_errors": 0,  # type: ignore[index]
                                 "latency_s": {"p50": 0.002, "p90": 0.003, "p99": 0.004}, "cpu_cores": {}}
    text = render(results)
    assert "(1,380 of 1,380 applied)" in text
    assert "applied at **600 statuses/s**" in text
    assert "| pipeline: messages/s from a backlog |" in text and "| 150 |" in text and "| 600 | 25 % |" in text
    assert "| pipeline: CPU-ms a message with its statuses, every process | ours | 4.10 |" in text
    assert "| 1.10 | 3.7× |" in text  # 4.10 / 1.10
    assert "| worker | 1.50 | 0.25 | 6.0× |" in text and "| **total** | **4.10** | **1.10** | **3.7×** |" in text
    assert "| minimal durable handler | no | 12,000 |" in text
    assert "did 9,000 requests/s, **75 %** of its 12,000" in text
    assert "| webhook under wrk, one process, as a fraction of the minimal durable handler | 75 % (9,000 of " \
           "12,000 req/s) | ≥ 75 % | met |" in text
