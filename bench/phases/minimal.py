"""The minimal pipeline (:mod:`bench.minimal`) beside ours: on a fresh broker and the same PostgreSQL, its
webhook, its consumers (as many as our workers) and a fake-meta of its own posting the statuses back;
the CPU a message at the budget's rate, and the rate at which its consumers answer a backlog."""

from __future__ import annotations

import asyncio
import math
import sys
import time
from typing import Any

import asyncpg

from bench import drive, probes, stats
from bench.drive import STATUSES_PER_REPLY, brief_e2e
from bench.fmt import cpu_list
from bench.phases.budget import DRAIN_BACKLOG
from bench.system import Bench, log
from wacrm.core.settings import load as load_settings


async def minimal(b: Bench) -> None:
    """Our pipeline stopped, the minimal one started; its budget and its backlog measured; it stopped."""
    assert b.broker is not None
    p = b.plan
    log("minimal pipeline: fresh broker; its webhook, consumers and fake-meta")
    b.stop_workers()
    b.stop("serve")
    await b.new_broker()
    partitions = load_settings(b.env()).topic_partitions
    assert b.broker is not None
    b.start("fake-meta-minimal", b.fake_meta_cmd("fake-meta-minimal", "minimal"), b.ports["fake-meta-minimal"])
    b.start("minimal", [sys.executable, "-m", "bench.minimal", "webhook", "--port", str(b.ports["minimal"]),
                        "--bootstrap", b.broker.bootstrap, "--secret", b.secret,
                        "--partitions", str(partitions)], b.ports["minimal"])
    try:
        _start_consumers(b)
        await minimal_step(b, 20, 3, "mwarm")
        budget = await minimal_step(b, p.budget_rate, p.budget_s, "mbudget")
        log(f"minimal pipeline, budget: {brief_e2e(budget)}; CPU-ms per message: "
            + cpu_list(budget["cpu_ms_per_message"]))
        backlog = await minimal_backlog(b)
    finally:
        for name in [n for n in b.children if n.startswith("minimal")] + ["fake-meta-minimal"]:
            b.stop(name)
    b.results["minimal"] = {"budget": budget, "backlog": backlog, "consumers": b.workers,
                            "partitions": partitions}


def _start_consumers(b: Bench) -> None:
    assert b.broker is not None
    for n in range(b.workers):
        b.start(f"minimal-consumer-{n + 1}",
                [sys.executable, "-m", "bench.minimal", "consumer", "--bootstrap", b.broker.bootstrap,
                 "--group", f"{b.group}-minimal", "--database-url", b.ceiling_db,
                 "--graph", b.url("fake-meta-minimal")])


def _tracked(b: Bench) -> probes.Tracked:
    assert b.broker is not None and b.pg is not None and b.broker.proc and b.pg.proc
    return {"serve": [(b.children["minimal"].pid, False)],
            "worker": [(proc.pid, False) for n, proc in b.children.items() if n.startswith("minimal-consumer")],
            "fake-meta": [(b.children["fake-meta-minimal"].pid, False)],
            "broker": [(b.broker.proc.pid, False)], "postgres": [(b.pg.proc.pid, True)]}


async def _counts(conn: asyncpg.Connection, tag: str) -> asyncpg.Record:
    return await conn.fetchrow(
        """SELECT count(*) FILTER (WHERE l.state = 'sent') AS sent, min(m.received_at) AS first_stored,
                  max(l.updated_at) FILTER (WHERE l.state = 'sent') AS last_sent,
                  (SELECT count(*) FROM minimal_statuses s JOIN minimal_ledger x ON x.wamid = s.wamid
                   WHERE x.reply_to LIKE $1) AS statuses
           FROM minimal_messages m LEFT JOIN minimal_ledger l ON l.reply_to = m.provider_message_id
           WHERE m.provider_message_id LIKE $1""", f"wamid.BENCH\\_{tag}\\_%")


async def minimal_step(b: Bench, rate: float, seconds: float, tag: str) -> dict[str, Any]:
    """As :func:`bench.drive.e2e_step`, against the minimal pipeline: every message answered once, its
    statuses stored."""
    fake = b.url("fake-meta-minimal")
    await drive.fake_meta_sent(fake, clear=True)
    cpu = probes.CpuMeter(_tracked(b))
    load, ids_path = await drive.load(b, b.ports["minimal"], rate, seconds, tag=tag, ids=True)
    assert ids_path is not None
    sent_at = {mid: float(at) for mid, _, at in (x.partition("\t") for x in ids_path.read_text().splitlines())}
    expected = len(sent_at)
    conn = await asyncpg.connect(b.ceiling_db)
    try:
        until = time.monotonic() + b.plan.drain_s
        while time.monotonic() < until:
            c = await _counts(conn, tag)
            if c["sent"] >= expected and c["statuses"] >= STATUSES_PER_REPLY * c["sent"]:
                break
            await asyncio.sleep(0.25)
        cores = cpu.cores()
        span = max(cpu.span, 1e-9)
        cores["generator"] = load["generator_cpu_s"] / span
        await asyncio.sleep(0.5)  # a duplicate would come right behind
        sent = await drive.fake_meta_sent(fake)
        rows = await conn.fetch("SELECT provider_message_id FROM minimal_messages "
                                "WHERE provider_message_id LIKE $1", f"wamid.BENCH\\_{tag}\\_%")
        c = await _counts(conn, tag)
    finally:
        await conn.close()
    replies = [(x["body"]["context"]["message_id"], x["received_at"]) for x in sent
               if "id" in (x.get("answered") or {}) and isinstance(x.get("body"), dict)]
    delivery = stats.count_delivery(sent_at, (m for m, _ in replies), {r[0]: 1 for r in rows})
    summary = stats.summarize(stats.latencies(sent_at, replies))
    return {"offered_rate": rate, "duration_s": seconds, "load": load, "messages": expected,
            "messages_per_s": expected / seconds, "cpu_cores": cores,
            "cpu_ms_per_message": {k: v * span * 1000 / max(expected, 1) for k, v in cores.items()},
            "lost": delivery.lost, "duplicated": delivery.duplicated, "replies_per_s": 0.0,
            "latency_s": {"p50": summary.p50, "p95": summary.p95, "p99": summary.p99, "max": summary.max},
            "statuses": {"expected": STATUSES_PER_REPLY * c["sent"], "applied": c["statuses"]}}


async def minimal_backlog(b: Bench) -> dict[str, Any]:
    """The minimal pipeline's consumers from a backlog (as :func:`bench.phases.budget.drain`): messages/s
    from the first message stored to the last reply sent."""
    rate, seconds = DRAIN_BACKLOG
    for name in [n for n in b.children if n.startswith("minimal-consumer")]:
        b.stop(name)
    _, ids_path = await drive.load(b, b.ports["minimal"], rate, seconds, tag="mdrain", ids=True)
    assert ids_path is not None
    expected = len(ids_path.read_text().splitlines())
    _start_consumers(b)
    conn = await asyncpg.connect(b.ceiling_db)
    try:
        until = time.monotonic() + b.plan.drain_s * 3
        while True:
            c = await _counts(conn, "mdrain")
            if c["sent"] >= expected or time.monotonic() >= until:
                break
            await asyncio.sleep(0.1)
    finally:
        await conn.close()
    took = (c["last_sent"] - c["first_stored"]).total_seconds() if c["last_sent"] else math.nan
    result = {"messages": expected, "replied": c["sent"], "seconds": took,
              "messages_per_s": c["sent"] / took if took and not math.isnan(took) else 0.0}
    log(f"minimal pipeline, backlog: {c['sent']} of {expected} answered in {took:.1f}s: "
        f"{result['messages_per_s']:.0f}/s")
    return result
