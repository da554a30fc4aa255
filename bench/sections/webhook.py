"""The webhook's sections: open loop at fixed and searched rates, and closed loop under wrk."""

from __future__ import annotations

from typing import Any

from bench.fmt import ms, num, pct, table
from bench.targets import TARGETS, WEBHOOK_P99_BOUND_S

OPEN_LOOP = (("webhook", "Webhook ingest (`wacrm serve`, durable publish in the path)"),
             ("bare", "HTTP ceiling (bare aiohttp handler)"))


def open_loop_sections(results: dict[str, Any]) -> list[str]:
    """The webhook and the bare handler under the open-loop generator: a row per rate tried, and the best."""
    out: list[str] = []
    for key, title in OPEN_LOOP:
        sec = results.get(key)
        if not sec:
            continue
        out += [f"## {title}", "",
                "Open loop: each request is due at a fixed time and its latency counts from then, so a slow "
                "server shows as latency. 64 keep-alive connections. \"behind\" is how late the generator "
                "wrote its worst request (when it is large, the generator itself was short of CPU).", "",
                table(["", "offered/s", "achieved/s", "p50 ms", "p95 ms", "p99 ms", "max ms", "errors", "behind ms"],
                      _load_rows("fixed", sec["fixed"]) + _load_rows("search", sec["search"])), ""]
        best = sec.get("best")
        out += [f"Highest rate with p99 ≤ {WEBHOOK_P99_BOUND_S * 1000:.0f} ms, no errors and ≥ 95 % of the offered "
                "rate achieved: "
                f"**{num(best['offered_rate']) if best else 'none of the rates tried'}**"
                + (f" (p99 {ms(best['latency_s']['p99'])} ms)." if best else "."), ""]
    return out


def _load_rows(label: str, runs: list[dict[str, Any]]) -> list[list[str]]:
    rows = []
    for r in runs:
        lat = r["latency_s"]
        rows.append([label, num(r["offered_rate"]), num(r["achieved_rps"]), ms(lat["p50"]), ms(lat["p95"]),
                     ms(lat["p99"]), ms(lat["max"]), num(r["errors"]), ms(r["generator_behind_s"])])
    return rows


def closed_loop_section(results: dict[str, Any]) -> list[str]:
    """The webhook under wrk: serve with 1 and more processes, alone and with the worker consuming."""
    w = results.get("wrk") or {}
    if w.get("skipped"):
        return ["## Webhook under wrk", "", f"Skipped: {w['skipped']}.", ""]
    runs = w.get("runs") or []
    if not runs:
        return []
    rows = []
    mini = w.get("minimal")
    for r in runs + ([{**mini, "processes": "minimal durable handler", "worker": False}] if mini else []):
        lat, cpu = r["latency_s"], r.get("cpu_cores") or {}
        rows.append([str(r["processes"]), "yes" if r["worker"] else "no", num(r["rps"]), ms(lat["p50"]),
                     ms(lat["p90"]), ms(lat["p99"]), num(r["non_2xx"]), num(r["socket_errors"]),
                     " · ".join(f"{k} {v:.2f}" for k, v in cpu.items())])
    return ["## Webhook under wrk (closed loop)", "",
            f"`wrk -t1 -c{w.get('connections')}` posting one signed text body as fast as `wacrm serve --only webhook "
            "--processes N` answers (each answer after the broker acknowledged the body with acks=all), "
            "each run on a fresh broker, for "
            f"{num(runs[0]['seconds'])} s after a 1 s warm-up; \"worker\": one `wacrm worker` consuming the same "
            "topic beside it. CPU in cores (serve with all its processes).", "",
            table(["serve processes", "worker", "requests/s", "p50 ms", "p90 ms", "p99 ms", "non-2xx",
                   "socket errors", "CPU (cores)"], rows), "", *_against_minimal_handler(w)]


def webhook_vs_minimal(w: dict[str, Any]) -> tuple[float, float] | None:
    """One serve process alone under wrk, and the minimal durable handler (bench/minimal.py's webhook)."""
    one = next((r for r in w.get("runs") or [] if r["processes"] == 1 and not r["worker"]), None)
    mini = w.get("minimal")
    return (one["rps"], mini["rps"]) if one and mini and mini.get("rps") else None


def _against_minimal_handler(w: dict[str, Any]) -> list[str]:
    pair = webhook_vs_minimal(w)
    if pair is None:
        return []
    return [f"\"minimal durable handler\": `bench/minimal.py`'s webhook (aiohttp, the signature checked, the body "
            "published with acks=all before the 200, nothing else), one process, on a fresh broker. One "
            f"`wacrm serve` process did {num(pair[0])} requests/s, **{pct(pair[0] / pair[1])}** of its "
            f"{num(pair[1])} (target ≥ {pct(TARGETS['webhook_vs_minimal'])}).", ""]
