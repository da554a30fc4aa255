"""The inbox phase's people: ``agents`` simulated people, each with an API token and the live event stream
open as the web page keeps it, visit every route of the request mix in turn with a pause between requests
(a person reads); alongside, the delay from a customer message stored through the inbound agent's own
store function to its event on an open ``/api/v1/events`` stream. Against a running ``wacrm serve --only
inbox`` on a database seeded by :func:`bench.inbox.seed`."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from bench import inbox, stats
from wacrm.storage import repo
from wacrm.storage.db import connect
from wacrm.topics.records import Customer, InboundMessage, RawRef


@dataclass
class Recorder:
    latencies: dict[str, list[float]] = field(default_factory=lambda: {n: [] for n in inbox.ROUTE_NAMES})
    errors: dict[str, int] = field(default_factory=lambda: {n: 0 for n in inbox.ROUTE_NAMES})
    error_samples: list[str] = field(default_factory=list)

    def error(self, route: str, what: str) -> None:
        self.errors[route] += 1
        if len(self.error_samples) < 5:
            self.error_samples.append(f"{route}: {what}")


async def _agent(base: str, token: str, n: int, visible: list[int], replyable: list[int], load: inbox.Load,
                 until: float, rec: Recorder) -> None:
    headers = {"Authorization": f"Bearer {token}"}
    rnd = random.Random(n)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(headers=headers, timeout=timeout) as s:
        live = asyncio.create_task(_drain_events(s, f"{base}/api/v1/events"))  # the page's open stream
        try:
            await asyncio.sleep(rnd.uniform(0, load.think_s * 2))  # people do not start in step
            queries = dict(inbox.LIST_ROUTES)
            for route in inbox.request_cycle(n):
                if time.monotonic() >= until:
                    break
                if route == inbox.DETAIL:
                    method, url, body = "GET", f"{base}/api/v1/conversations/{rnd.choice(visible)}", None
                elif route == inbox.REPLY:
                    method, url = "POST", f"{base}/api/v1/conversations/{rnd.choice(replyable)}/messages"
                    body = {"text": "Thanks, a colleague will call you today.", "idempotency_key": uuid.uuid4().hex}
                else:
                    method, url, body = "GET", f"{base}/api/v1/conversations?{queries[route]}", None
                t0 = time.perf_counter()
                try:
                    async with s.request(method, url, json=body) as r:
                        payload = await r.read()
                        took = time.perf_counter() - t0
                        if r.status not in (200, 202):
                            rec.error(route, f"HTTP {r.status} {payload[:200]!r}")
                        else:
                            rec.latencies[route].append(took)
                except (aiohttp.ClientError, TimeoutError) as exc:
                    rec.error(route, f"{type(exc).__name__}: {exc}")
                await asyncio.sleep(rnd.expovariate(1 / load.think_s))
        finally:
            live.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await live


async def _drain_events(s: aiohttp.ClientSession, url: str) -> None:
    with contextlib.suppress(aiohttp.ClientError, TimeoutError):
        async with s.get(url, timeout=aiohttp.ClientTimeout(total=None, sock_read=None)) as r:
            async for _ in r.content:
                pass


async def _events_delay(base: str, token: str, dsn: str, seed_plan: inbox.Seed, load: inbox.Load,
                        until: float) -> dict[str, Any]:
    """Store customer messages one at a time through the inbound agent's store function and time
    each one's ``message`` event at an open stream: from just before the commit to the event."""
    arrived: dict[int, float] = {}
    seen = asyncio.Event()
    ready = asyncio.Event()
    timeout = aiohttp.ClientTimeout(total=None, sock_read=None)

    async def listen(s: aiohttp.ClientSession) -> None:
        parser = inbox.SseParser()
        async with s.get(f"{base}/api/v1/events", timeout=timeout) as r:
            if r.status != 200:
                raise RuntimeError(f"events stream: HTTP {r.status}")
            async for raw in r.content:
                got = parser.feed(raw.decode())
                if got is None:
                    continue
                kind, data = got
                if kind == "ready":
                    ready.set()
                elif kind == "message":
                    cid = orjson.loads(data).get("conversation_id")
                    if isinstance(cid, int) and cid not in arrived:
                        arrived[cid] = time.perf_counter()
                        seen.set()

    delays: list[float] = []
    missed = 0
    rnd = random.Random(7)
    conn = await connect(dsn, timeout=10)
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as s:
        listener = asyncio.create_task(listen(s))
        try:
            await asyncio.wait_for(ready.wait(), 30)
            used: set[int] = set()
            for k in range(load.events):
                i = rnd.randrange(seed_plan.conversations)
                if i + 1 in used:
                    continue
                used.add(i + 1)
                msg = _customer_message(i, k)
                seen.clear()
                tx = conn.transaction()
                await tx.start()
                cid = await repo.store_inbound(conn, msg)
                t0 = time.perf_counter()
                await tx.commit()
                deadline = time.monotonic() + 5
                while cid not in arrived and time.monotonic() < deadline:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(seen.wait(), max(0.0, deadline - time.monotonic()))
                    seen.clear()
                if cid in arrived:
                    delays.append(arrived[cid] - t0)
                else:
                    missed += 1
                if time.monotonic() >= until:
                    break
                await asyncio.sleep(load.event_gap_s)
        finally:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiohttp.ClientError):
                await listener
            await conn.close()
    summary = stats.summarize(delays)
    return {"count": summary.count, "missed": missed, "p50": summary.p50, "p99": summary.p99, "max": summary.max}


def _customer_message(i: int, k: int) -> InboundMessage:
    """The ``k``-th timed message, from the customer of seeded conversation ``i``."""
    return InboundMessage(
        conversation_key=f"{inbox.PHONE_NUMBER_ID}:{inbox.wa_id(i)}", phone_number_id=inbox.PHONE_NUMBER_ID,
        display_phone_number=None, customer=Customer(wa_id=inbox.wa_id(i), profile_name=inbox.profile_name(i)),
        message_id=f"wamid.BENCHSSE.{uuid.uuid4().hex}", timestamp=int(time.time()), type="text",
        text=f"are you there? ({k})", payload={"type": "text", "text": {"body": f"are you there? ({k})"}},
        raw_ref=RawRef("wa.webhook.raw", 0, k), received_at=time.time())


async def run_load(base: str, tokens: list[str], dsn: str, plan: inbox.Seed, load: inbox.Load) -> dict[str, Any]:
    """The people (one per agent token; the last token, the admin's, times the events) for ``load.seconds``."""
    visible, replyable = inbox.targets(plan)
    if not visible or not replyable:
        raise ValueError("the seed has no conversation to open or to reply to; seed more")
    rec = Recorder()
    started = time.monotonic()
    until = started + load.seconds
    people = [_agent(base, tokens[n], n, visible, replyable, load, until, rec) for n in range(plan.agents)]
    results = await asyncio.gather(_events_delay(base, tokens[-1], dsn, plan, load, until + 30), *people)
    took = time.monotonic() - started
    routes = {name: inbox.route_summary(rec.latencies[name], rec.errors[name]) for name in inbox.ROUTE_NAMES}
    return {"agents": plan.agents, "seconds": took, "think_s": load.think_s,
            "requests_per_s": sum(r["requests"] for r in routes.values()) / max(took, 1e-9),
            "routes": routes, "sse": results[0], "error_samples": rec.error_samples}
