"""What a message costs and what the workers carry: the CPU each process spends a message at a fixed rate,
with the SQL statements and the WAL; the rate at which the workers answer a backlog; and the rate at
which they apply a backlog of statuses."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import asyncpg
import orjson

from bench import drive, probes
from bench.drive import SENDS_METRIC, SENT, brief_e2e, e2e_step, fresh_pipeline, metric
from bench.fmt import cpu_list
from bench.system import Bench, log
from wacrm.whatsapp import fake_meta

DRAIN_BACKLOG = (1000, 6)  # bodies/s for seconds, put on the bus with the workers stopped
STATUS_BACKLOG = (400, 5)  # the status line's replies: bodies/s for seconds, their statuses held back


async def budget(b: Bench) -> None:
    """The CPU each message costs every process, at a fixed rate inside what the pipeline carries, from
    customers who have written before (as in a running business): the figure each change to the hot
    path is judged by; with the SQL statements and the WAL each message cost."""
    p = b.plan
    if p.fresh_broker_per_phase:  # the customers stay in PostgreSQL
        await fresh_pipeline(b)
    log(f"CPU budget: {p.budget_rate} bodies/s for {p.budget_s:.0f}s")
    conn = await asyncpg.connect(b.db_url)
    try:
        await conn.execute("SELECT pg_stat_statements_reset()")
        wal_before = await conn.fetchval("SELECT pg_current_wal_lsn()")
        step = await e2e_step(b, p.budget_rate, p.budget_s, "budget")
        wal_bytes = await conn.fetchval("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), $1)", wal_before)
        rows = await conn.fetch(
            """SELECT regexp_replace(query, '\\s+', ' ', 'g') AS query, calls, total_exec_time
               FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
               ORDER BY total_exec_time DESC""")
    finally:
        await conn.close()
    n = max(step["messages"], 1)
    step["wal_bytes_per_message"] = float(wal_bytes) / n  # PostgreSQL's write volume (every database)
    step["statements"] = [{"query": r["query"][:160], "per_message": r["calls"] / n,
                           "ms_per_message": r["total_exec_time"] / n} for r in rows]
    b.results["budget"] = step
    log(f"CPU budget: {brief_e2e(step)}; CPU-ms per message: " + cpu_list(step["cpu_ms_per_message"])
        + f"; {sum(x['per_message'] for x in step['statements']):.1f} statements and "
        f"{step['wal_bytes_per_message'] / 1024:.1f} KiB of WAL per message")
    for x in step["statements"][:15]:
        log(f"  {x['per_message']:5.2f}/msg {x['ms_per_message']:6.3f} ms/msg  {x['query'][:110]}")


async def drain(b: Bench) -> None:
    """What the pipeline behind the webhook carries: a backlog put on the raw topic with the workers
    stopped, then the messages/s from the moment they have joined until the last reply is at the Graph
    API. The webhook and the generator do not share the cores meanwhile (they are done)."""
    rate, seconds = DRAIN_BACKLOG
    log(f"drain: a backlog of {rate * seconds} bodies with the workers stopped, then the replies/s")
    b.stop_workers()
    await drive.fake_meta_sent(b.url("fake-meta"), clear=True)
    load, ids_path = await drive.load(b, b.ports["serve"], rate, seconds, tag="drain", ids=True)
    assert ids_path is not None
    expected = len(ids_path.read_text().splitlines())
    b.start_workers(b.workers)
    await b.wait_workers()
    started = time.monotonic()
    cpu = probes.CpuMeter(b.tracked())
    done = 0.0
    while time.monotonic() - started < b.plan.drain_s * 3:
        done = await metric(b, SENDS_METRIC, SENT)
        if done >= expected:
            break
        await asyncio.sleep(0.1)
    took = time.monotonic() - started
    cores = cpu.cores()
    b.results["drain"] = {"messages": expected, "replied": done, "seconds": took,
                          "messages_per_s": done / max(took, 1e-9), "cpu_cores": cores,
                          "webhook_errors": load["errors"]}
    log(f"drain: {done:.0f} of {expected} messages answered in {took:.1f}s: {done / max(took, 1e-9):.0f}/s; "
        "CPU (cores): " + cpu_list(cores))


async def status_backlog(b: Bench) -> None:
    """Status processing alone: replies sent with fake-meta's statuses held back, then their statuses
    (three a reply, one a body as Meta posts them) put on the raw topic with the workers stopped; the
    statuses/s the workers apply from the moment they have joined."""
    sent, expected = await _replies_without_statuses(b)
    now = int(time.time())
    bodies = [orjson.dumps(fake_meta.status_webhook(x["body"], x["phone_number_id"], x["answered"]["id"], st,
                                                     now))
              for x in sent if "id" in (x.get("answered") or {}) for st in ("sent", "delivered", "read")]
    log(f"status backlog: {len(bodies)} statuses of {expected} replies, put on the bus with the workers stopped")
    b.stop_workers()
    await drive.post_all(b.url("serve", "/webhooks/whatsapp"), bodies, b.secret)
    b.start_workers(b.workers)
    await b.wait_workers()
    started = time.monotonic()
    cpu = probes.CpuMeter(b.tracked())
    applied = await drive.wait_statuses(b, 0.0, len(bodies), started + b.plan.drain_s * 3)
    took = time.monotonic() - started
    b.results["status_backlog"] = {"statuses": len(bodies), "applied": applied, "seconds": took,
                                   "statuses_per_s": applied / max(took, 1e-9), "cpu_cores": cpu.cores()}
    log(f"status backlog: {applied:.0f} of {len(bodies)} applied in {took:.1f}s: "
        f"{applied / max(took, 1e-9):.0f}/s")


async def _replies_without_statuses(b: Bench) -> tuple[list[dict[str, Any]], int]:
    """Replies to :data:`STATUS_BACKLOG`'s messages, sent with fake-meta's statuses held back: (what
    fake-meta recorded, how many messages the webhook accepted)."""
    rate, seconds = STATUS_BACKLOG
    fake = b.url("fake-meta")
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{fake}/__statuses", json={"enabled": False}) as r:
            r.raise_for_status()
        try:
            async with s.delete(f"{fake}/__sent") as r:
                r.raise_for_status()
            sent_before = await metric(b, SENDS_METRIC, SENT)
            _, ids_path = await drive.load(b, b.ports["serve"], rate, seconds, tag="sback", ids=True)
            assert ids_path is not None
            expected = len(ids_path.read_text().splitlines())
            until = time.monotonic() + b.plan.drain_s
            while time.monotonic() < until:
                if await metric(b, SENDS_METRIC, SENT) - sent_before >= expected:
                    break
                await asyncio.sleep(0.25)
            async with s.get(f"{fake}/__sent") as r:
                sent = orjson.loads(await r.read())
        finally:
            async with s.post(f"{fake}/__statuses", json={"enabled": True}) as r:
                r.raise_for_status()
    return sent, expected
