"""The pipeline end to end (``serve``, ``worker``, ``fake-meta``): the latency a customer sees at low
load, rising steps until one fails, the highest clean step's rate held for ``sustain_s`` (stepping down
when it does not hold), a py-spy profile of the worker at that rate in a run of its own, a soak at a
quarter of it for memory, consumer lag and CPU over time, and the customer's view with the shipped
settings. With ``Plan.fresh_broker_per_phase`` each judged run starts on a fresh broker."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import time
from pathlib import Path
from typing import Any

from bench import probes, stats
from bench.drive import brief_e2e, e2e_step, fresh_pipeline
from bench.fmt import cpu_list
from bench.system import Bench, log
from bench.targets import e2e_passes
from wacrm.core import procs
from wacrm.core.settings import load as load_settings
from wacrm.topics.lag import LagProbe

SUSTAIN_TRIES = 3
SUSTAIN_STEP_DOWN = 0.85
OWN_CODE = ("(agents/", "(storage/", "(whatsapp/", "(topics/", "(orchestrator/", "(webhook/")
SOAK_TOPICS = ["wa.webhook.raw", "wa.inbound", "wa.outbound", "wa.status"]


def record_settings(b: Bench) -> None:
    """The settings the pipeline's runs go with (those the report names)."""
    st = load_settings(b.env())
    b.results["settings"] = {
        "CONSUMER_FETCH_WAIT_MS": st.consumer_fetch_wait_ms,
        "CONSUMER_FETCH_MIN_BYTES": st.consumer_fetch_min_bytes,
        "BATCH_SIZE": st.batch_size, "BATCH_WAIT_MS": st.batch_wait_ms, "BATCH_LANES": st.batch_lanes,
        "TOPIC_PARTITIONS": st.topic_partitions, "WACRM_EVENT_LOOP": os.environ.get("WACRM_EVENT_LOOP", "uvloop")}


async def customer_view(b: Bench) -> None:
    """The latency a customer sees at low load, the pipeline alone."""
    p = b.plan
    b.results["customer"] = await e2e_step(b, p.customer_rate, p.customer_s, "cust", connections=8)
    log(f"customer view at {p.customer_rate}/s: {brief_e2e(b.results['customer'])}")


async def steps(b: Bench) -> int | None:
    """The plan's rising rates until one fails; returns the highest that passed, if any."""
    out = []
    best = None
    for rate in b.plan.e2e_rates:
        step = await e2e_step(b, rate, b.plan.e2e_step_s, f"e{rate}")
        out.append(step)
        log(f"e2e {rate}/s: {brief_e2e(step)}")
        if e2e_passes(step):
            best = rate
        else:
            break
    b.results["e2e"] = out
    return best


async def sustain(b: Bench, rate: float) -> float | None:
    """Hold the highest clean step's rate for ``sustain_s``, stepping down when it fails; then
    profile the worker in a short run at the rate that held. Returns that rate, if any."""
    p = b.plan
    tries: list[dict[str, Any]] = []
    held = None
    for _ in range(SUSTAIN_TRIES):
        log(f"sustained: {rate:.0f}/s for {p.sustain_s:.0f}s")
        if p.fresh_broker_per_phase:
            await fresh_pipeline(b)
        step = await e2e_step(b, rate, p.sustain_s, f"sus{len(tries)}")
        tries.append(step)
        log(f"sustained {rate:.0f}/s: {brief_e2e(step)}")
        if e2e_passes(step):
            held = rate
            break
        rate = round(rate * SUSTAIN_STEP_DOWN)
    b.results["sustained"] = tries
    await profile(b, held or rate)
    return held


async def profile(b: Bench, rate: float) -> None:
    """py-spy on the worker for ``profile_s`` in a run of its own at ``rate`` (the profiler costs
    CPU, so it stays out of the runs that are judged)."""
    p = b.plan
    log(f"profile: the worker at {rate:.0f}/s for {p.profile_s:.0f}s")
    if p.fresh_broker_per_phase:
        await fresh_pipeline(b)
    out = b.work / "worker-profile.txt"
    profile_at = time.monotonic() + 2
    profiler: subprocess.Popen | None = None

    async def during() -> None:
        nonlocal profiler
        if profiler is None and time.monotonic() >= profile_at:
            cmd = probes.profile_cmd(b.children["worker"].pid, p.profile_s, out)
            if cmd is not None:
                profiler = b.processes.start("py-spy", cmd, procs.env_with())

    try:
        b.results["profiled"] = await e2e_step(b, rate, p.profile_s + 4, "prof", during=during)
    finally:
        if profiler is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                profiler.wait(p.profile_s + 30)
            b.stop("py-spy")
    b.results["profile"] = _profile(out, p.profile_s)


def _profile(path: Path, seconds: float) -> dict[str, Any] | None:
    """The worker's profile (collapsed stacks) as shares: by package, innermost frames, our functions."""
    if not path.exists():
        return None
    lines = path.read_text(errors="replace").splitlines()
    return {"seconds": seconds,
            "samples": sum(int(x.rsplit(" ", 1)[1]) for x in lines if x.rsplit(" ", 1)[-1].isdigit()),
            "leaf": stats.top_costs(lines, 8), "packages": stats.costs_by_package(lines, 8),
            "own": stats.inclusive_costs(lines, OWN_CODE, 12)}


async def soak(b: Bench, rate: float) -> None:
    """Memory, consumer lag and CPU over ``soak_s`` at a fixed rate (a quarter of the sustained one)."""
    p = b.plan
    log(f"soak: {rate}/s for {p.soak_s:.0f}s (memory, lag)")
    assert b.broker is not None and b.pg is not None and b.pg.proc
    lag = LagProbe(b.group, SOAK_TOPICS, bootstrap_servers=b.broker.bootstrap)
    await lag.start()
    samples: list[dict[str, Any]] = []
    interval = max(1.0, p.soak_s / 60)
    started = time.monotonic()
    next_sample = started
    meter = probes.CpuMeter(b.tracked())

    async def during() -> None:
        nonlocal next_sample, meter
        now = time.monotonic()
        if now >= next_sample:
            next_sample += interval
            row: dict[str, Any] = {"t": now - started, "cpu": meter.cores() if meter.span >= 0.5 else {}}
            meter = probes.CpuMeter(b.tracked())
            for name, entries in b.tracked().items():
                row[name] = probes.pss_tree(entries[0][0]) if name == "postgres" else probes.rss_of(entries)
            try:
                row["lag"] = await asyncio.wait_for(lag.sample_per_topic(), 3)
            except Exception as exc:  # a missed sample is reported as missing, the soak goes on
                row["lag"] = {"error": repr(exc)}
            samples.append(row)

    try:
        step = await e2e_step(b, rate, p.soak_s, "soak", during=during)
    finally:
        await lag.stop()
    log(f"soak: {brief_e2e(step)}; CPU (cores): " + cpu_list(step["cpu_cores"]))
    b.results["soak"] = step
    b.results["samples"] = samples
    b.results["memory"] = _memory(samples)


def _memory(samples: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Each process's RSS over the soak: start, end, peak and growth (:func:`bench.stats.growth`)."""
    memory = {}
    for name in ("serve", "worker", "fake-meta", "broker", "postgres"):
        series = [r[name] for r in samples if r.get(name)]
        g = stats.growth(series)
        memory[name] = {"start": g.start, "end": g.end, "peak": g.peak, "growth": g.ratio}
    return memory


async def customer_with_defaults(b: Bench) -> None:
    """The latency a customer sees with the shipped settings: burst window, rate limits, pacing."""
    p = b.plan
    log("customer view with the default settings: fresh broker, worker without the bench's overrides")
    await fresh_pipeline(b, defaults=True)
    b.results["customer_default"] = await e2e_step(b, p.customer_rate, p.customer_s, "custd", connections=8)
    log(f"customer view, default settings: {brief_e2e(b.results['customer_default'])}")
