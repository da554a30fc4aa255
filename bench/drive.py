"""What the phases do to a running system: offer it load, read the workers' counters, and count what
reached the customer.

:func:`e2e_step` is the unit of every end-to-end figure: the generator at a rate for a time, then a
bounded wait until every accepted message is answered and its statuses applied, then the count of
what fake-meta received against what the webhook accepted (lost, duplicated, latency).
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson

from bench import probes, stats
from bench.system import Bench, BenchError
from wacrm import received
from wacrm.core import procs
from wacrm.storage import ledger_send
from wacrm.system import LOCAL
from wacrm.whatsapp import signature

STATUSES_PER_REPLY = 3  # fake-meta posts sent, delivered and read for every send it takes, as Meta does
STATUS_METRIC = "wacrm_statuses_total"
SENDS_METRIC = "wacrm_sends_total"
SENT = 'outcome="sent"'


async def load(b: Bench, url_port: int, rate: float, seconds: float, *, tag: str, connections: int = 64,
               ids: bool = False, during: Any = None) -> tuple[dict[str, Any], Path | None]:
    """The generator at ``rate`` bodies/s; with ``ids`` (the pipeline's runs) customer messages only: their
    statuses are the real ones fake-meta posts for each reply. ``during`` is awaited every 0.25 s."""
    out = b.work / f"load-{tag}.json"
    ids_out = b.work / f"ids-{tag}.tsv" if ids else None
    cmd = [sys.executable, "-m", "bench.loadgen", "--url", f"http://{LOCAL}:{url_port}/webhooks/whatsapp",
           "--secret", b.secret, "--rate", str(rate), "--duration", str(seconds), "--tag", tag,
           "--connections", str(connections), "--out", str(out)]
    if ids_out:
        cmd += ["--ids-out", str(ids_out), "--status-share", "0"]
    proc = b.processes.start("loadgen", cmd, procs.env_with())
    limit = time.monotonic() + seconds + 90
    try:
        while proc.poll() is None:
            if time.monotonic() > limit:
                raise BenchError(f"the load generator overran its bound at {rate}/s")
            if during is not None:
                await during()
            await asyncio.sleep(0.25)
    finally:
        b.stop("loadgen")
    if proc.returncode != 0 or not out.exists():
        raise BenchError(f"the load generator failed (code {proc.returncode}); see {b.processes.log('loadgen')}")
    return orjson.loads(out.read_bytes()), ids_out


def sent_at(ids_path: Path) -> dict[str, float]:
    """The generator's accepted inbound ids with the wall time each was due."""
    out: dict[str, float] = {}
    for line in ids_path.read_text().splitlines():
        mid, _, at = line.partition("\t")
        out[mid] = float(at)
    return out


async def metric(b: Bench, name: str, labels: str = "", *, every_label: bool = False) -> float:
    """A counter summed over every worker (``every_label``: over all its label sets)."""
    prefix = f"{name}{{" if every_label else f"{name}{{{labels}}} " if labels else f"{name} "
    total = 0.0
    async with aiohttp.ClientSession() as s:
        for url in b.worker_urls():
            async with s.get(url) as r:
                text = await r.text()
            total += sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(prefix))
    return total


async def wait_statuses(b: Bench, before: float, expected: float, until: float) -> float:
    """The statuses the workers took since ``before``, once ``expected`` of them (or ``until``)."""
    applied = 0.0
    while True:
        applied = await metric(b, STATUS_METRIC, every_label=True) - before
        if applied >= expected or time.monotonic() >= until:
            return applied
        await asyncio.sleep(0.25)


async def fake_meta_sent(url: str, *, clear: bool = False) -> list[dict[str, Any]]:
    """The sends fake-meta at ``url`` recorded (``clear``: forget them instead)."""
    if clear:
        async with aiohttp.ClientSession() as s, s.delete(f"{url}/__sent") as r:
            r.raise_for_status()
        return []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as s, s.get(f"{url}/__sent") as r:
        sent: list[dict[str, Any]] = orjson.loads(await r.read())
    return sent


async def fresh_pipeline(b: Bench, *, defaults: bool = False) -> None:
    """:meth:`Bench.restart_pipeline`, then a short warm-up step (contacts, plans, connections; not judged)."""
    await b.restart_pipeline(defaults=defaults)
    await e2e_step(b, 20, 3, f"warm{b.brokers}", connections=8)


async def e2e_step(b: Bench, rate: float, seconds: float, tag: str, connections: int = 32,
                   during: Any = None) -> dict[str, Any]:
    """The pipeline at ``rate`` bodies/s for ``seconds``, drained: delivery, latency and CPU a message."""
    fake = b.url("fake-meta")
    await fake_meta_sent(fake, clear=True)
    sent_before = await metric(b, SENDS_METRIC, SENT)
    statuses_before = await metric(b, STATUS_METRIC, every_label=True)
    cpu = probes.CpuMeter(b.tracked())
    load_, ids_path = await load(b, b.ports["serve"], rate, seconds, tag=tag, connections=connections,
                                 ids=True, during=during)
    assert ids_path is not None
    due = sent_at(ids_path)
    expected = len(due)
    drain_started = time.monotonic()
    done = 0.0
    while time.monotonic() - drain_started < b.plan.drain_s:
        done = await metric(b, SENDS_METRIC, SENT) - sent_before
        if done >= expected:
            break
        await asyncio.sleep(0.25)
    drain = time.monotonic() - drain_started
    statuses = await wait_statuses(b, statuses_before, STATUSES_PER_REPLY * done, drain_started + b.plan.drain_s)
    cores = cpu.cores()  # over the load and the drain: the work these messages caused
    span = max(cpu.span, 1e-9)
    cores["generator"] = load_["generator_cpu_s"] / span
    cpu_ms = {name: c * span * 1000 / max(expected, 1) for name, c in cores.items()}
    await asyncio.sleep(0.5)  # a duplicate would come right behind
    replies, stored, together = await _answered(b, await fake_meta_sent(fake), due, tag)
    delivery = stats.count_delivery(due, (m for m, _ in replies), stored)
    summary = stats.summarize(stats.latencies(due, replies))
    timeline = stats.timeline(due, replies)
    first = min(due.values(), default=0.0)
    last_reply = max((at for m, at in replies if m in due), default=first)
    return {"offered_rate": rate, "duration_s": seconds, "load": load_, "messages": expected,
            "messages_per_s": expected / seconds, "cpu_cores": cores, "cpu_ms_per_message": cpu_ms,
            "delivery": asdict(delivery), "lost": delivery.lost, "duplicated": delivery.duplicated,
            "latency_s": {"p50": summary.p50, "p95": summary.p95, "p99": summary.p99, "max": summary.max},
            "replies_per_s": delivery.replied / max(last_reply - first, 1e-9), "drain_s": drain,
            "answered_together": together, "timeline": timeline,
            "statuses": {"expected": STATUSES_PER_REPLY * done, "applied": statuses}}


async def _answered(b: Bench, sent: list[dict[str, Any]], due: dict[str, float],
                    tag: str) -> tuple[list[tuple[str, float]], dict[str, int], int]:
    """(the replies fake-meta received, each with the message it answers; the inbound rows stored per
    message; how many messages without a reply of their own a later message's reply covered)."""
    conn = await asyncpg.connect(b.db_url)
    try:
        answers = await ledger_send.answered_messages(conn, received.ledger_rows(sent))
        replies = [(message_id, x["received_at"]) for x, message_id in received.replies(sent, answers)]
        rows = await conn.fetch(
            """SELECT provider_message_id, count(*) AS n FROM messages
               WHERE direction = 'inbound' AND provider_message_id LIKE $1 GROUP BY 1""",
            f"wamid.BENCH\\_{tag}\\_%")  # "_" escaped: in LIKE it matches any character
        # Messages without a reply of their own that a reply to a later message of the same
        # conversation covered (one reply per burst, when the burst window is on).
        unreplied = list(set(due) - {m for m, _ in replies})
        together = await conn.fetchval(
            """SELECT count(*) FROM messages m JOIN conversations c ON c.id = m.conversation_id
               WHERE m.provider_message_id = ANY($1) AND c.reply_upto_message_id >= m.id
                 AND EXISTS (SELECT 1 FROM messages o WHERE o.conversation_id = m.conversation_id
                             AND o.direction = 'inbound' AND o.id > m.id AND o.id <= c.reply_upto_message_id
                             AND o.provider_message_id LIKE $2)""",
            unreplied, f"wamid.BENCH\\_{tag}\\_%") if unreplied else 0
    finally:
        await conn.close()
    return replies, {r[0]: r[1] for r in rows}, together


async def post_all(url: str, bodies: list[bytes], secret: str, concurrency: int = 32) -> None:
    """POST every body, signed, ``concurrency`` at a time; each must be accepted."""
    queue = iter(bodies)

    async def one(s: aiohttp.ClientSession) -> None:
        for raw in queue:
            async with s.post(url, data=raw, headers={"Content-Type": "application/json",
                                                      "X-Hub-Signature-256": signature.sign(secret, raw)}) as r:
                if r.status != 200:
                    raise BenchError(f"the webhook answered {r.status} to a status body: {await r.text()}")

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as s:
        await asyncio.gather(*(one(s) for _ in range(concurrency)))


def asdict(d: stats.Delivery) -> dict[str, int]:
    return {k: getattr(d, k) for k in d.__slots__}  # type: ignore[attr-defined]


def brief_e2e(s: dict[str, Any]) -> str:
    """An end-to-end step in one line of the log."""
    lat = s["latency_s"]
    return (f"{s['messages']} msgs, replies {s['replies_per_s']:.0f}/s, p50 {lat['p50'] * 1000:.0f} ms, "
            f"p99 {lat['p99'] * 1000:.0f} ms, lost {s['lost']}, dup {s['duplicated']}, "
            f"webhook errors {s['load']['errors']}")
