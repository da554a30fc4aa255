"""The inbox phase's seed, request mix and verdict.

A database of its own (migrated, empty) is seeded with conversations, their messages, contacts, leads,
the bot's replies in the ledger, tasks and notifications, with a mix of statuses, owners, ages and unread
counts such that every list filter of the contract returns rows. :func:`seed` writes with COPY with the
triggers off (``session_replication_role = replica``): the rows are consistent by construction, and
per-row triggers would measure the triggers, not the inbox. The people who work the seeded inbox are
:mod:`bench.inbox_people`; the pure parts here (the seed's shape, the request mix, the SSE parser, the
verdict) are tested in ``tests/test_bench_unit.py``.
"""

from __future__ import annotations

import itertools
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from bench import stats
from wacrm.inbox import auth

PHONE_NUMBER_ID = "bench-inbox"
LIST_P99_AIM_S = 0.050  # list and detail, at 50 concurrent agents
EVENT_AIM_S = 1.0  # a stored message's event at an open stream
STATUS_MIX = (("open", 40), ("pending", 20), ("resolved", 30), ("snoozed", 10))  # percent
UNASSIGNED_PERCENT = 40
DELETED_PER_MILLE = 10
WINDOW_OPEN_PERCENT = 10  # last customer message within 24 hours: a free-text reply is allowed
HEAVY_EVERY = 100  # every 100th conversation is a long one (pages of messages)
HEAVY_WEIGHT = 20
TASK_EVERY = 50
STAGES = ("new", "contacted", "qualified", "won", "lost")
NAMES = ("Ana", "Bruno", "Carla", "Diego", "Elena", "Fabio", "Gina", "Hugo", "Ines", "Joao", "Karin", "Luis")
SEARCH = "Karin 1"  # a name fragment a person would type: matches about one contact in a hundred
DAY_S = 86400.0
MESSAGE_GAP_S = 60.0


@dataclass(frozen=True, slots=True)
class Seed:
    conversations: int
    messages: int
    agents: int = 50
    batch: int = 5000  # conversations per COPY batch


@dataclass(frozen=True, slots=True)
class Load:
    seconds: float
    think_s: float  # mean pause between one person's requests
    events: int  # SSE delays timed
    event_gap_s: float


FULL_SEED = Seed(100_000, 1_000_000)
QUICK_SEED = Seed(10_000, 100_000)
FULL_LOAD = Load(seconds=60, think_s=0.5, events=100, event_gap_s=0.3)
QUICK_LOAD = Load(seconds=15, think_s=0.5, events=40, event_gap_s=0.2)


# --- the seed's shape (pure) -------------------------------------------------------------------

_MASK = (1 << 64) - 1


def _mix(i: int, salt: int) -> int:
    """A well-spread, repeatable number for conversation ``i``, independent across ``salt`` values
    (the splitmix64 finaliser)."""
    x = (i * 0x9E3779B97F4A7C15 + salt * 0xD1B54A32D192ED03) & _MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)


@dataclass(frozen=True, slots=True)
class Shape:
    """One seeded conversation: what a person sees of it in the list."""

    status: str
    assignee: int | None  # the index of the agent (0-based), None: unassigned
    deleted: bool
    age_s: float  # its last message, seconds before the seed's time
    stage: str
    unread: int

    @property
    def window_open(self) -> bool:
        return self.age_s < DAY_S - 3600  # an hour of margin for the run itself


def shape(i: int, agents: int) -> Shape:
    h = _mix(i, 1)
    pct = h % 100
    status = "open"
    for name, share in STATUS_MIX:
        if pct < share:
            status = name
            break
        pct -= share
    owner = _mix(i, 2)
    assignee = None if owner % 100 < UNASSIGNED_PERCENT else (owner // 100) % agents
    age = _mix(i, 3)
    age_s = float(age % int(DAY_S - 7200)) if age % 100 < WINDOW_OPEN_PERCENT else DAY_S + float(age % (59 * 86400))
    return Shape(status=status, assignee=assignee, deleted=_mix(i, 4) % 1000 < DELETED_PER_MILLE, age_s=age_s,
                 stage=STAGES[_mix(i, 5) % len(STAGES)], unread=_mix(i, 6) % 4 if status == "open" else 0)


def message_counts(conversations: int, messages: int) -> list[int]:
    """How many messages each conversation gets: at least one, every ``HEAVY_EVERY``-th one many
    more (long threads that page), summing to ``messages`` exactly."""
    if messages < conversations:
        raise ValueError("need at least one message per conversation")
    weights = [HEAVY_WEIGHT if i % HEAVY_EVERY == 0 else 1 + _mix(i, 7) % 3 for i in range(conversations)]
    extra = messages - conversations
    total = sum(weights)
    counts = [1 + extra * w // total for w in weights]
    short = messages - sum(counts)
    for i in range(short):  # the rounding remainder, one each
        counts[i % conversations] += 1
    return counts


def wa_id(i: int) -> str:
    return f"1555{i:09d}"


def profile_name(i: int) -> str:
    return f"{NAMES[i % len(NAMES)]} {i}"


# --- the request mix (pure) --------------------------------------------------------------------

LIST_ROUTES: tuple[tuple[str, str], ...] = (
    ("list status=all", "status=all&assignee=all"),
    ("list status=open", "status=open&assignee=all"),
    ("list status=pending", "status=pending&assignee=all"),
    ("list status=resolved", "status=resolved&assignee=all"),
    ("list status=snoozed", "status=snoozed&assignee=all"),
    ("list assignee=me", "status=all&assignee=me"),
    ("list assignee=unassigned", "status=all&assignee=unassigned"),
    ("list open+me", "status=open&assignee=me"),
    ("list q=", "status=all&assignee=all&q=" + SEARCH.replace(" ", "%20")),
    ("list page=5", "status=all&assignee=all&page=5"),
)
DETAIL = "detail"
REPLY = "reply"
ROUTE_NAMES = (*(name for name, _ in LIST_ROUTES), DETAIL, REPLY)


def request_cycle(agent: int) -> Iterator[str]:
    """The routes one person visits, in turn, starting at a different one per person so that
    every route is busy at every moment."""
    names = ROUTE_NAMES
    start = agent % len(names)
    return itertools.cycle(names[start:] + names[:start])


def targets(seed: Seed) -> tuple[list[int], list[int]]:
    """(conversation ids a person may open, those a free-text reply may go to): not deleted; open window."""
    visible, replyable = [], []
    for i in range(seed.conversations):
        s = shape(i, seed.agents)
        if not s.deleted:
            visible.append(i + 1)
            if s.window_open:
                replyable.append(i + 1)
    return visible, replyable


# --- SSE (pure) --------------------------------------------------------------------------------

@dataclass
class SseParser:
    """Server-Sent Events, line by line: :meth:`feed` returns ``(event, data)`` at each blank line
    that ends an event with data."""

    event: str = "message"
    data: list[str] = field(default_factory=list)

    def feed(self, line: str) -> tuple[str, str] | None:
        line = line.rstrip("\r\n")
        if not line:
            out = (self.event, "\n".join(self.data)) if self.data else None
            self.event, self.data = "message", []
            return out
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "event":
            self.event = value
        elif name == "data":
            self.data.append(value)
        return None


# --- the verdict (pure) ------------------------------------------------------------------------

def route_summary(latencies: list[float], errors: int) -> dict[str, Any]:
    s = stats.summarize(latencies)
    return {"p50": s.p50, "p99": s.p99, "max": s.max, "requests": s.count + errors, "errors": errors}


def server_times(before: str, after: str) -> dict[str, dict[str, float]]:
    """The server's own time per route group between two ``/metrics`` texts: requests and mean
    seconds, from ``wacrm_inbox_request_duration_seconds`` (the time inside the handler, without
    the client's or the network's)."""
    def sums(text: str) -> dict[tuple[str, str], float]:
        out: dict[tuple[str, str], float] = {}
        for line in text.splitlines():
            for part in ("sum", "count"):
                prefix = f"wacrm_inbox_request_duration_seconds_{part}{{route=\""
                if line.startswith(prefix):
                    route, _, value = line[len(prefix):].partition("\"} ")
                    out[(route, part)] = float(value)
        return out

    a, b = sums(before), sums(after)
    result = {}
    for route, part in b:
        if part != "count":
            continue
        n = b[(route, "count")] - a.get((route, "count"), 0.0)
        if n > 0:
            result[route] = {"requests": n, "mean": (b[(route, "sum")] - a.get((route, "sum"), 0.0)) / n}
    return result


def aim_met(routes: dict[str, dict[str, Any]], sse: dict[str, Any]) -> dict[str, bool]:
    """Lists and the detail within ``LIST_P99_AIM_S`` at p99 without errors; events within ``EVENT_AIM_S``."""
    def ok(r: dict[str, Any]) -> bool:
        return r["errors"] == 0 and r["requests"] > 0 and r["p99"] <= LIST_P99_AIM_S

    reads = [r for name, r in routes.items() if name != REPLY]
    return {"reads": bool(reads) and all(ok(r) for r in reads),
            "events": sse.get("count", 0) > 0 and sse.get("missed", 1) == 0 and sse["p99"] <= EVENT_AIM_S}


# --- seeding -----------------------------------------------------------------------------------

async def create_agents(conn: asyncpg.Connection, count: int) -> tuple[list[int], list[str]]:
    """``count`` agents (and one admin, last), each with an API token: (user ids, tokens)."""
    hashed = await auth.hash_password_async(uuid.uuid4().hex)  # nobody signs in with it
    ids, tokens = [], []
    for n in range(count + 1):
        role = "admin" if n == count else "agent"
        user = await auth.add_user(conn, f"bench-{role}-{n}@example.com", role, hashed)
        ids.append(user.id)
        tokens.append(await auth.issue_token(conn, user.id))
    return ids, tokens


async def seed(conn: asyncpg.Connection, plan: Seed, users: list[int],
               progress: Callable[[str], None]) -> dict[str, Any]:
    """Seed ``plan`` into an empty, migrated database; returns what was written and how long it took."""
    started = time.monotonic()
    now = datetime.now(UTC)
    counts = message_counts(plan.conversations, plan.messages)
    written = {"contacts": 0, "conversations": 0, "leads": 0, "messages": 0, "outbound_log": 0, "tasks": 0,
               "notifications": 0}
    # No triggers and no FK checks: the rows are consistent by construction.
    await conn.execute("SET session_replication_role = replica")
    try:
        message_id = outbound_id = task_id = 0
        for lo in range(0, plan.conversations, plan.batch):
            rows = _batch(plan, users, counts, lo, min(lo + plan.batch, plan.conversations), now, message_id,
                          outbound_id, task_id)
            message_id += len(rows["messages"])
            outbound_id += len(rows["outbound_log"])
            task_id += len(rows["tasks"])
            async with conn.transaction():
                for table, records in rows.items():
                    if records:
                        await conn.copy_records_to_table(table, records=records, columns=_COLUMNS[table])
                        written[table] += len(records)
            progress(f"seeded {written['conversations']:,}/{plan.conversations:,} conversations, "
                     f"{written['messages']:,} messages ({time.monotonic() - started:.0f}s)")
    finally:
        await conn.execute("RESET session_replication_role")
    for table in written:
        await conn.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                           f"GREATEST((SELECT max(id) FROM {table}), 1))")
    await conn.execute("VACUUM ANALYZE")  # statistics and the visibility map, as autovacuum would leave them
    return {**written, "seconds": time.monotonic() - started}


_COLUMNS: dict[str, tuple[str, ...]] = {
    "contacts": ("id", "phone_number_id", "wa_id", "profile_name", "created_at", "updated_at"),
    "leads": ("id", "contact_id", "stage", "score", "created_at"),
    "conversations": ("id", "conversation_key", "phone_number_id", "contact_id", "status", "assigned_user_id",
                      "inbox_status", "snoozed_until", "deleted_at", "unread_count", "last_inbound_at",
                      "last_outbound_at", "last_message_at", "created_at"),
    "outbound_log": ("id", "dedupe_key", "conversation_id", "state", "intent", "provider_message_id", "created_at",
                     "finished_at"),
    "messages": ("id", "provider_message_id", "conversation_id", "contact_id", "direction", "type", "body",
                 "status", "outbound_log_id", "created_at"),
    "tasks": ("id", "conversation_id", "kind", "title", "status", "created_at"),
    "notifications": ("id", "user_id", "task_id", "kind", "body", "read_at", "created_at"),
}


def _batch(plan: Seed, users: list[int], counts: list[int], lo: int, hi: int, now: datetime, message_id: int,
           outbound_id: int, task_id: int) -> dict[str, list[tuple[Any, ...]]]:
    """The rows of conversations ``lo``..``hi`` (0-based); ids continue from the given ones."""
    rows: dict[str, list[tuple[Any, ...]]] = {t: [] for t in _COLUMNS}
    for i in range(lo, hi):
        s = shape(i, plan.agents)
        cid = i + 1
        last = now - timedelta(seconds=s.age_s)
        n = counts[i]
        first = last - timedelta(seconds=MESSAGE_GAP_S * (n - 1))
        wa = wa_id(i)
        rows["contacts"].append((cid, PHONE_NUMBER_ID, wa, profile_name(i), first, last))
        rows["leads"].append((cid, cid, s.stage, _mix(i, 8) % 101, first))
        last_in = last_out = None
        for j in range(n):
            message_id += 1
            at = first + timedelta(seconds=MESSAGE_GAP_S * j)
            inbound = (n - 1 - j) % 2 == 0  # the last message is the customer's
            out_id = None
            if inbound:
                last_in = at
            else:
                last_out = at
                outbound_id += 1
                out_id = outbound_id
                rows["outbound_log"].append((out_id, f"bench:{cid}:{j}", cid, "sent",
                                             f'{{"text": "reply {j}"}}', f"wamid.SEEDOUT.{cid}.{j}", at, at))
            rows["messages"].append((message_id, f"wamid.SEED.{cid}.{j}", cid, cid,
                                     "inbound" if inbound else "outbound", "text",
                                     f"{'question' if inbound else 'answer'} {j} in conversation {cid}",
                                     "received" if inbound else "read", out_id, at))
        rows["conversations"].append((
            cid, f"{PHONE_NUMBER_ID}:{wa}", PHONE_NUMBER_ID, cid, "open",
            users[s.assignee] if s.assignee is not None else None, s.status,
            now + timedelta(days=1) if s.status == "snoozed" else None,
            last if s.deleted else None, s.unread, last_in, last_out, last, first))
        if i % TASK_EVERY == 0:
            task_id += 1
            done = (i // TASK_EVERY) % 2 == 1
            rows["tasks"].append((task_id, cid, "handover", f"Customer asked for a person ({cid})",
                                  "done" if done else "open", last))
            owner = users[s.assignee] if s.assignee is not None else None
            rows["notifications"].append((task_id, owner, task_id, "handover", f"Conversation {cid} needs a person",
                                          last if done else None, last))
    return rows
