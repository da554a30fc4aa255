"""The webhook alone: ``wacrm serve`` (and the bare aiohttp handler, its ceiling) under the open-loop
generator at fixed rates and in a search for the highest rate that passes; then closed loop under wrk
with one and more serve processes, alone and with a worker consuming, beside the minimal durable handler."""

from __future__ import annotations

import asyncio
import math
import sys
import time
from pathlib import Path
from typing import Any

from bench import drive, probes, stats, wrk
from bench.bodies import BodyFactory
from bench.system import Bench, log
from bench.targets import ingest_passes
from wacrm.system import serve_cmd

WRK_CONNECTIONS = 32  # as the issue that set the webhook target measured it


async def fixed_and_search(b: Bench, port: int, label: str) -> dict[str, Any]:
    """The plan's fixed rates, then a search for the highest rate that passes (:func:`ingest_passes`)."""
    p = b.plan
    fixed = []
    for rate in p.ingest_rates:
        result, _ = await drive.load(b, port, rate, p.ingest_step_s, tag=f"{label}{rate}")
        log(f"{label} {rate}/s: {_brief(result)}")
        fixed.append(result)
    search = stats.RateSearch(start=2000, ceiling=40000, max_steps=p.search_steps, resolution=0.08)
    trials = []
    while (trial_rate := search.next_rate()) is not None:
        result, _ = await drive.load(b, port, trial_rate, p.search_step_s, tag=f"{label}s{int(trial_rate)}")
        passed = ingest_passes(result)
        search.record(trial_rate, passed)
        trials.append(result)
        log(f"{label} search {trial_rate:.0f}/s: {'pass' if passed else 'fail'} {_brief(result)}")
    best = max((t for t in trials if ingest_passes(t)), key=lambda t: t["offered_rate"], default=None)
    return {"fixed": fixed, "search": trials, "best": best}


async def http_ceiling(b: Bench) -> None:
    log("ceiling: bare aiohttp handler")
    b.start("bare", [sys.executable, "-m", "bench.bare", "--port", str(b.ports["bare"])], b.ports["bare"])
    try:
        b.results["bare"] = await fixed_and_search(b, b.ports["bare"], "bare")
    finally:
        b.stop("bare")


async def webhook(b: Bench) -> None:
    log("webhook ingest: wacrm serve alone, acks=all publish in the path; fresh broker")
    await b.new_broker()  # the produce ceiling filled the last one, and the embedded broker slows as it fills
    b.start("serve", serve_cmd(), b.ports["serve"])
    await b.wait_ready("serve")
    try:
        b.results["webhook"] = await fixed_and_search(b, b.ports["serve"], "webhook")
    finally:
        b.stop("serve")


async def webhook_closed_loop(b: Bench) -> None:
    """``wrk`` against ``wacrm serve --only webhook`` with 1 and more processes, alone and with the worker
    consuming beside it, each on a fresh broker: the webhook's throughput when the server saturates."""
    binary = wrk.ensure()
    if binary is None:
        log("webhook under wrk: skipped, wrk is not installed and apt-get could not install it")
        b.results["wrk"] = {"skipped": "wrk is not installed and apt-get could not install it"}
        return
    body = BodyFactory("wrk").messages_body(1, int(time.time())).raw
    lua = wrk.script(body, b.secret, b.work / "post.lua")
    minimal = await _wrk_minimal(b, binary, lua)
    runs = []
    for processes in b.plan.serve_processes:
        for consuming in (False, True):
            run = await _wrk_serve(b, binary, lua, processes, consuming)
            runs.append(run)
            lat = run["latency_s"]
            log(f"wrk, serve --processes {processes}{', worker consuming' if consuming else ''}: "
                f"{run['rps']:,.0f} req/s, p50 {_ms(lat['p50'])} ms, p99 {_ms(lat['p99'])} ms, "
                f"non-2xx {run['non_2xx']}, socket errors {run['socket_errors']}")
    b.results["wrk"] = {"runs": runs, "connections": WRK_CONNECTIONS, "minimal": minimal}


async def _wrk_serve(b: Bench, binary: str, lua: Path, processes: int, consuming: bool) -> dict[str, Any]:
    """wrk against ``serve --processes`` on a fresh broker (``consuming``: a worker beside it)."""
    url = b.url("serve", "/webhooks/whatsapp")
    await b.new_broker()
    b.start("serve", serve_cmd("--only", "webhook", "--processes", str(processes)), b.ports["serve"])
    await b.wait_ready("serve")
    if consuming:
        b.ensure_fake_meta()
        b.start_workers(1)
        await b.wait_workers()
    assert b.broker is not None and b.broker.proc is not None
    parts: probes.Tracked = {"serve": [(b.children["serve"].pid, True)],
                             "broker": [(b.broker.proc.pid, False)]}
    if consuming:
        parts["worker"] = [(b.children["worker"].pid, False)]
    try:
        await asyncio.to_thread(wrk.run, binary, url, lua, WRK_CONNECTIONS, 1, b.logs / "wrk.log")
        cpu = probes.CpuMeter(parts)
        run = await asyncio.to_thread(wrk.run, binary, url, lua, WRK_CONNECTIONS, b.plan.wrk_s, b.logs / "wrk.log")
        run["cpu_cores"] = cpu.cores()
    finally:
        b.stop_workers()
        b.stop("serve")
    run.update(processes=processes, worker=consuming)
    return run


async def _wrk_minimal(b: Bench, binary: str, lua: Path) -> dict[str, Any]:
    """wrk against the minimal durable handler (:mod:`bench.minimal`'s webhook), one process, fresh broker."""
    await b.new_broker()
    assert b.broker is not None and b.broker.proc is not None
    b.start("minimal", [sys.executable, "-m", "bench.minimal", "webhook", "--port", str(b.ports["minimal"]),
                        "--bootstrap", b.broker.bootstrap, "--secret", b.secret], b.ports["minimal"])
    url = b.url("minimal", "/webhooks/whatsapp")
    try:
        await asyncio.to_thread(wrk.run, binary, url, lua, WRK_CONNECTIONS, 1, b.logs / "wrk.log")
        cpu = probes.CpuMeter({"minimal": [(b.children["minimal"].pid, False)],
                               "broker": [(b.broker.proc.pid, False)]})
        run = await asyncio.to_thread(wrk.run, binary, url, lua, WRK_CONNECTIONS, b.plan.wrk_s, b.logs / "wrk.log")
        run["cpu_cores"] = cpu.cores()
    finally:
        b.stop("minimal")
    log(f"wrk, minimal durable handler: {run['rps']:,.0f} req/s, p99 {_ms(run['latency_s']['p99'])} ms")
    return run


def _ms(seconds: float | None) -> str:
    return "?" if seconds is None or math.isnan(seconds) else f"{seconds * 1000:.1f}"


def _brief(r: dict[str, Any]) -> str:
    lat = r["latency_s"]
    return (f"{r['achieved_rps']:.0f} rps, p50 {lat['p50'] * 1000:.1f} ms, p99 {lat['p99'] * 1000:.1f} ms, "
            f"errors {r['errors']}, generator behind {r['generator_behind_s'] * 1000:.0f} ms")
