"""The inbox phase: a database of its own, migrated and seeded (:mod:`bench.inbox`), then ``wacrm serve
--only inbox`` on it under ``seed.agents`` people (:mod:`bench.inbox_people`); no worker runs."""

from __future__ import annotations

import os
from typing import Any

import aiohttp
import asyncpg

from bench import inbox, inbox_people, probes
from bench.system import Bench, log
from harness.databases import create_database
from wacrm.system import serve_cmd


async def inbox_phase(b: Bench, seed: inbox.Seed, load: inbox.Load) -> None:
    assert b.pg is not None
    b.stop_workers()
    for name in ("serve", "fake-meta"):  # the pipeline's phases are over; they would share the cores
        b.stop(name)
    log(f"inbox: seeding {seed.conversations:,} conversations, {seed.messages:,} messages")
    dsn, tokens, seeded = await _seeded(b, seed)
    log(f"inbox: seeded in {seeded['seconds']:.0f}s")
    proc = b.start("inbox", serve_cmd("--only", "inbox"),
                   env={"DATABASE_URL": dsn, "PORT": str(b.ports["inbox"])})
    try:
        b.processes.wait_listening("inbox", b.ports["inbox"])
        await b.wait_ready("inbox")
        log(f"inbox: {seed.agents} people for {load.seconds:.0f}s")
        assert b.pg.proc is not None
        metrics_url = b.url("inbox", "/metrics")
        before = await _text(metrics_url)
        cpu = probes.CpuMeter({"serve": [(proc.pid, False)], "postgres": [(b.pg.proc.pid, True)],
                               "bench": [(os.getpid(), False)]})
        result = await inbox_people.run_load(b.url("inbox"), tokens, dsn, seed, load)
        result["cpu_cores"] = cpu.cores()
        result["server"] = inbox.server_times(before, await _text(metrics_url))
    finally:
        b.stop("inbox")
    result["seed"] = {**seeded, "conversations": seed.conversations, "messages": seed.messages}
    result["aim"] = inbox.aim_met(result["routes"], result["sse"])
    b.results["inbox"] = result
    for name, r in result["routes"].items():
        log(f"  {name}: p50 {r['p50'] * 1000:.1f} ms, p99 {r['p99'] * 1000:.1f} ms, "
            f"{r['requests']} requests, {r['errors']} errors")
    sse = result["sse"]
    log(f"  event after its message: p50 {sse['p50'] * 1000:.0f} ms, p99 {sse['p99'] * 1000:.0f} ms "
        f"({sse['count']} events, {sse['missed']} missed)")


async def _seeded(b: Bench, seed: inbox.Seed) -> tuple[str, list[str], dict[str, Any]]:
    """A database of its own, migrated and seeded: (its URL, the people's tokens, what was written)."""
    assert b.pg is not None
    dsn = await create_database(b.pg.url, "wacrm_bench_inbox")
    conn = await asyncpg.connect(dsn)
    try:
        users, tokens = await inbox.create_agents(conn, seed.agents)
        seeded = await inbox.seed(conn, seed, users, log)
    finally:
        await conn.close()
    return dsn, tokens, seeded


async def _text(url: str) -> str:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as s, s.get(url) as r:
        return await r.text()
