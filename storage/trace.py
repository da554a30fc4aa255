"""``wacrm trace REQUEST_ID``: the rows one webhook call caused, and their story in time order.

:func:`load` reads the rows (inbound messages, the replies' ledger rows and messages, their
statuses, tasks); :func:`render` is pure: the stages with their times, and where the call
stopped and why. What only the bus knows (when the webhook accepted the body, dead letters)
is read by the caller (``topics.scan``) and passed in.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg

from wacrm.storage.replies import HUMAN_OWNED

_INBOUND = f"""
    SELECT m.id, m.provider_message_id, m.conversation_id, m.type, m.created_at, m.raw_ref,
           c.reply_upto_message_id >= m.id AS answered, c.reply_due_at,
           {HUMAN_OWNED} AS human_owned, k.opted_out
    FROM messages m JOIN conversations c ON c.id = m.conversation_id JOIN contacts k ON k.id = c.contact_id
    WHERE m.request_id = $1 AND m.direction = 'inbound' ORDER BY m.id"""
_LEDGER = """
    SELECT id, dedupe_key, conversation_id, state, attempts, provider_message_id, error, created_at, claimed_at,
           finished_at, published_at, next_attempt_at, settled_by, intent->>'kind' AS kind,
           intent->>'reply_to' AS reply_to
    FROM outbound_log WHERE request_id = $1 ORDER BY id"""
_OUTBOUND = """
    SELECT id, provider_message_id, outbound_log_id, status, created_at, conversation_id, type FROM messages
    WHERE request_id = $1 AND direction = 'outbound' ORDER BY id"""
_STATUSES = """
    SELECT provider_message_id, status, occurred_at, received_at, errors FROM message_status_events
    WHERE channel = 'whatsapp' AND provider_message_id = ANY($1::text[]) ORDER BY received_at, id"""
_STATUS_CALL = """
    SELECT provider_message_id, status, occurred_at, received_at, errors FROM message_status_events
    WHERE request_id = $1 ORDER BY id"""
_TASKS = "SELECT id, kind, title, status, created_at FROM tasks WHERE request_id = $1 ORDER BY id"


@dataclass(frozen=True, slots=True)
class Rows:
    """What the database holds for one request id."""

    request_id: str
    inbound: list[dict[str, Any]] = field(default_factory=list)
    ledger: list[dict[str, Any]] = field(default_factory=list)
    outbound: list[dict[str, Any]] = field(default_factory=list)
    statuses: list[dict[str, Any]] = field(default_factory=list)
    tasks: list[dict[str, Any]] = field(default_factory=list)
    status_call: list[dict[str, Any]] = field(default_factory=list)  # statuses this call brought (a status webhook)

    @property
    def empty(self) -> bool:
        return not (self.inbound or self.ledger or self.outbound or self.tasks or self.status_call)


@dataclass(frozen=True, slots=True)
class BusFacts:
    """What only the bus knows: when the raw body was accepted, and the dead letters with this request id."""

    received_at: float | None = None  # epoch seconds: the raw record's timestamp
    raw_ref: str | None = None  # "topic:partition@offset"
    dead_letters: list[dict[str, Any]] = field(default_factory=list)  # the letter, plus "at_ref"


async def load(conn: asyncpg.Connection, request_id: str) -> Rows:
    inbound = [dict(r) for r in await conn.fetch(_INBOUND, request_id)]
    ledger = [dict(r) for r in await conn.fetch(_LEDGER, request_id)]
    outbound = [dict(r) for r in await conn.fetch(_OUTBOUND, request_id)]
    wamids = [r["provider_message_id"] for r in outbound] + \
        [r["provider_message_id"] for r in ledger if r["provider_message_id"]]
    statuses = [dict(r) for r in await conn.fetch(_STATUSES, sorted(set(wamids)))] if wamids else []
    tasks = [dict(r) for r in await conn.fetch(_TASKS, request_id)]
    status_call = [dict(r) for r in await conn.fetch(_STATUS_CALL, request_id)]
    return Rows(request_id, inbound, ledger, outbound, statuses, tasks, status_call)


def _when(value: datetime | float | None) -> str:
    if value is None:
        return " " * 23
    if not isinstance(value, datetime):
        value = datetime.fromtimestamp(value, UTC)
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def _line(at: datetime | float | None, stage: str, what: str) -> str:
    return f"{_when(at)}  {stage:<12} {what}"


def _error(error: Any) -> str:
    if isinstance(error, dict):
        return str(error.get("error") or error)[:200]
    return str(error)[:200] if error else "no error recorded"


def _no_reply_reason(m: dict[str, Any], tasks: list[dict[str, Any]]) -> str:
    handovers = [t for t in tasks if t["kind"] == "handover"]
    if handovers:
        return f"handed over to a person (task {handovers[0]['id']}: {handovers[0]['title']})"
    if m["human_owned"]:
        return ("no reply: a person owns the conversation (assigned, handed over, bot paused or answered from the "
                "WhatsApp Business app)")
    if m["opted_out"]:
        return "no reply: the customer opted out"
    return (f"no reply: the rules chose none for a {m['type']} message (the worker's 'decided' log line with "
            "this request id names the rule)")


def _ledger_lines(row: dict[str, Any]) -> tuple[list[str], str | None]:
    """The lines of one ledger row, and where it stopped (None: sent)."""
    name = f"ledger row {row['id']} ({row['dedupe_key']}, {row['kind'] or 'text'})"
    lines = [_line(row["created_at"], "decided", f"reply queued: {name}")]
    state = row["state"]
    if state == "sent":
        how = f", settled by {row['settled_by']}" if row["settled_by"] else ""
        lines.append(_line(row["finished_at"], "sent", f"{name} → Graph message {row['provider_message_id']} "
                                                        f"(attempt {row['attempts']}{how})"))
        return lines, None
    stops = {
        "queued": f"still queued (published to wa.outbound at {_when(row['published_at']).strip() or 'not yet'})",
        "sending": f"in flight since {_when(row['claimed_at'])} (attempt {row['attempts']})",
        "retry_wait": f"waiting to retry at {_when(row['next_attempt_at'])} after attempt {row['attempts']}: "
                      f"{_error(row['error'])}",
        "failed": f"failed after {row['attempts']} attempt(s): {_error(row['error'])} (a task for a person)",
        "ambiguous": f"ambiguous: the Graph API may have it ({_error(row['error'])}); a status settles it, "
                     "else a person",
        "unconfirmed": f"unconfirmed: a person checks whether it went out ({_error(row['error'])})",
        "dropped": f"dropped: {_error(row['error'])}",
    }
    stop = stops.get(state, f"in state {state}")
    lines.append(_line(row["finished_at"] or row["claimed_at"], state, f"{name}: {stop}"))
    return lines, f"{name}: {stop}"


def render(rows: Rows, bus: BusFacts) -> list[str]:
    """The call's path as lines: received → stored → decided → sent → statuses, then its outcome."""
    out = [f"request {rows.request_id}"]
    stops: list[str] = []
    if bus.received_at is not None or bus.raw_ref:
        out.append(_line(bus.received_at, "received", f"webhook body on the bus at {bus.raw_ref or '?'}"))
    elif rows.inbound:
        ref = rows.inbound[0]["raw_ref"] or {}
        out.append(_line(None, "received", f"webhook body at {ref.get('topic')}:{ref.get('partition')}@"
                                           f"{ref.get('offset')} (its time is on the bus, not read)"))
    by_reply_to = {r["reply_to"]: r for r in rows.ledger}
    for m in rows.inbound:
        out.append(_line(m["created_at"], "stored", f"message {m['provider_message_id']} ({m['type']}) in "
                                                    f"conversation {m['conversation_id']} (row {m['id']})"))
        if m["provider_message_id"] in by_reply_to:
            continue  # its reply's ledger row tells the rest, below
        if m["answered"]:
            reason = _no_reply_reason(m, rows.tasks)
            out.append(_line(None, "decided", reason))
            if reason.startswith("handed over"):
                stops.append(reason)
        elif m["reply_due_at"] is not None:
            stops.append(f"message {m['provider_message_id']}: not answered yet, reply due at "
                         f"{_when(m['reply_due_at'])}")
        else:
            stops.append(f"message {m['provider_message_id']}: not answered, and no reply is scheduled")
    echoes = [m for m in rows.outbound if m["outbound_log_id"] is None]
    for m in echoes:
        out.append(_line(m["created_at"], "stored", f"echo {m['provider_message_id']} ({m['type']}) from the WhatsApp "
                                                    f"Business app in conversation {m['conversation_id']} (row "
                                                    f"{m['id']}): a person answers there, the bot stays quiet"))
    sent_wamids: list[str] = []
    for row in rows.ledger:
        lines, stop = _ledger_lines(row)
        out += lines
        if stop is None:
            sent_wamids.append(row["provider_message_id"])
        else:
            stops.append(stop)
    for st in rows.status_call:
        out.append(_line(st["received_at"], "status", f"{st['status']} of Graph message {st['provider_message_id']} "
                                                      f"recorded (Meta's time {_when(st['occurred_at'])})"))
    for st in rows.statuses:
        errors = f" errors {st['errors']}" if st["errors"] else ""
        out.append(_line(st["received_at"], st["status"], f"status of Graph message {st['provider_message_id']} "
                                                          f"(Meta's time {_when(st['occurred_at'])}){errors}"))
    for t in rows.tasks:
        if t["kind"] != "handover" or not rows.inbound:
            out.append(_line(t["created_at"], "task", f"task {t['id']} ({t['kind']}, {t['status']}): {t['title']}"))
    for letter in bus.dead_letters:
        why = f"{letter.get('reason')}: {str(letter.get('error'))[:200]}"
        out.append(_line(letter.get("at"), "dead letter", f"{letter.get('at_ref')} from {letter.get('source_topic')}:"
                                                          f"{letter.get('source_partition')}@"
                                                          f"{letter.get('source_offset')}: {why}"))
        stops.append(f"dead-lettered ({why})")
    seen = {st["provider_message_id"]: st["status"] for st in rows.statuses}
    for wamid in sent_wamids:
        if seen.get(wamid) == "failed":
            stops.append(f"Graph message {wamid}: Meta reported it failed")
    if stops:
        out += ["", "stopped:"] + [f"  {s}" for s in stops]
    elif rows.status_call and not rows.inbound:
        out += ["", f"done: a status webhook; {len(rows.status_call)} status(es) recorded"]
    elif echoes and not rows.inbound and not rows.ledger:
        out += ["", f"done: {len(echoes)} echo(es) of the WhatsApp Business app stored, never sent"]
    elif sent_wamids:
        latest = ", ".join(f"{w} {seen.get(w, 'accepted, no status yet')}" for w in sent_wamids)
        out += ["", f"done: every reply sent ({latest})"]
    return out
