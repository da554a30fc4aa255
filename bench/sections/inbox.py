"""The inbox phase's section and its lines in the summary."""

from __future__ import annotations

from typing import Any

from bench.fmt import cpu_list, met, ms, num, table
from bench.inbox import EVENT_AIM_S, LIST_P99_AIM_S, REPLY, ROUTE_NAMES


def summary_rows(r: dict[str, Any]) -> list[list[str]]:
    """The inbox's lines in the summary against the targets."""
    worst = max((x["p99"] for name, x in r["routes"].items() if name != REPLY), default=None)
    return [[f"inbox: worst list/detail p99 at {r['agents']} people (ms)", ms(worst),
             f"≤ {LIST_P99_AIM_S * 1000:.0f}", met(r["aim"]["reads"])],
            ["inbox: event after its message, p99 (ms)", ms(r["sse"]["p99"]), f"≤ {EVENT_AIM_S * 1000:.0f}",
             met(r["aim"]["events"])]]


def inbox_section(r: dict[str, Any]) -> list[str]:
    """The inbox phase: the seed, a row per route, the live events' delay and the verdict."""
    seed, sse, aim = r["seed"], r["sse"], r["aim"]
    rows = [[name, ms(x["p50"]), ms(x["p99"]), ms(x["max"]), num(x["requests"]), num(x["errors"])]
            for name in ROUTE_NAMES if (x := r["routes"].get(name))]
    out = ["## Inbox", "",
           f"A database of its own seeded with {num(seed['conversations'])} conversations and "
           f"{num(seed['messages'])} messages ({num(seed['contacts'])} contacts and leads, "
           f"{num(seed['outbound_log'])} bot replies in the ledger, {num(seed['tasks'])} tasks, "
           f"{num(seed['notifications'])} notifications) by COPY in {num(seed['seconds'], 1)} s. "
           f"Then {r['agents']} people, each with an API token and an open event stream, against "
           f"`wacrm serve --only inbox` for {num(r['seconds'])} s: each visits every route below in turn with "
           f"a pause of {num(r['think_s'], 1)} s on average between requests ({num(r['requests_per_s'])} "
           "requests/s in all). The `list` rows are `GET /api/v1/conversations` with the filters named; "
           "`detail` is `GET /api/v1/conversations/{id}` (the conversation and its newest 50 messages); "
           "`reply` is `POST /api/v1/conversations/{id}/messages`. No worker runs in this phase: a reply "
           "stays queued in the ledger, and its latency is the API's answer time.", "",
           table(["route", "p50 ms", "p99 ms", "max ms", "requests", "errors"], rows), "",
           f"Live events: a customer message stored through the inbound agent's store function "
           f"(`wacrm_store_inbound`), one at a time, reached an open `/api/v1/events` stream after p50 "
           f"{ms(sse['p50'])} ms, p99 {ms(sse['p99'])} ms, max {ms(sse['max'])} ms ({sse['count']} events, "
           f"{sse['missed']} not seen within 5 s), timed from just before the commit.", "",
           f"Aim: list and detail p99 ≤ {LIST_P99_AIM_S * 1000:.0f} ms at {r['agents']} people, "
           f"{met(aim['reads'])}; an event ≤ {EVENT_AIM_S:.0f} s after its message, {met(aim['events'])}.", ""]
    if r.get("server"):
        out += ["The server's own time per route group (`wacrm_inbox_request_duration_seconds`, from inside "
                "the handler: without the client's queueing): "
                + ", ".join(f"`{route}` {ms(x['mean'])} ms mean over {num(x['requests'])}"
                            for route, x in sorted(r["server"].items())
                            if not route.endswith("/events")) + ". "
                + "CPU over the load, in cores: " + cpu_list(r.get("cpu_cores") or {})
                + " (the simulated people run in the bench process, on the same cores).", ""]
    if r.get("error_samples"):
        out += ["First errors: " + "; ".join(f"`{e}`" for e in r["error_samples"]), ""]
    return out

