"""The inbox's SQL: one conversation's detail, notes, notifications, tasks, contacts, soft delete
(the conversation list is :mod:`inbox.listing`).

Replies, assignment and release go through :mod:`storage.replies` (the one home of the ledger
and of ownership); this module reads what people see and records what only people do. Like
:mod:`storage.repo`, functions run inside the caller's transaction.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import asyncpg

from wacrm.inbox import media_json
from wacrm.storage import waiting
from wacrm.whatsapp import reasons
from wacrm.whatsapp.limits import window_open_until

MESSAGES_PER_PAGE = 50
STATUSES = ("open", "pending", "resolved", "snoozed")


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def contact_json(r: asyncpg.Record) -> dict[str, Any]:
    return {"id": r["contact_id"], "name": r["profile_name"], "phone": f"+{r['wa_id']}" if r["wa_id"] else None,
            "wa_id": r["wa_id"], "user_id": r["contact_user_id"]}


def conversation_json(r: asyncpg.Record) -> dict[str, Any]:
    return {
        "id": r["id"], "contact": contact_json(r), "status": r["inbox_status"],
        "snoozed_until": _iso(r["snoozed_until"]), "assignee_id": r["assigned_user_id"],
        "needs_human": r["needs_human"], "last_message_at": _iso(r["last_message_at"]),
        "last_message_preview": (r["preview"] or "")[:140] if r["preview"] is not None else None,
        "unread_count": r["unread_count"],
        "lead": {"id": r["lead_id"], "stage": r["stage"]} if r["lead_id"] is not None else None,
        "window_open_until": _iso(window_open_until(r["last_inbound_at"])),
        "deleted_at": _iso(r["deleted_at"]), "bot_paused": r["bot_paused"],
        "business_app_since": _iso(r["business_app_since"]),
        "number": {"phone_number_id": r["phone_number_id"], "label": r["number_label"],
                   "display_phone_number": r["display_phone_number"]},
    }


SELECT = """
    SELECT c.id, c.inbox_status, c.snoozed_until, c.assigned_user_id, c.needs_human, c.bot_paused, c.last_message_at,
           c.business_app_since,
           c.unread_count, c.last_inbound_at, c.deleted_at, c.ownership_version, c.intelligence,
           k.id contact_id, k.profile_name, k.wa_id, k.user_id contact_user_id,
           l.id lead_id, l.stage, l.score, l.source, l.stage_set_by,
           c.phone_number_id, b.label number_label, b.display_phone_number,
           (SELECT m.body FROM messages m WHERE m.conversation_id = c.id ORDER BY m.id DESC LIMIT 1) preview
    FROM conversations c JOIN contacts k ON k.id = c.contact_id LEFT JOIN leads l ON l.contact_id = c.contact_id
         LEFT JOIN business_numbers b ON b.phone_number_id = c.phone_number_id"""



async def conversation(conn: asyncpg.Connection, conversation_id: int, *,
                       include_deleted: bool = False) -> asyncpg.Record | None:
    row = await conn.fetchrow(SELECT + " WHERE c.id = $1", conversation_id)
    if row is None or (row["deleted_at"] is not None and not include_deleted):
        return None
    return row


def error_json(raw: Any) -> dict[str, Any] | None:
    """A message's or ledger row's error as the thread shows it, ``{"code", "message", "details"}``:
    the first of Meta's errors (a status's or an inbound message's list), or the ledger's own record."""
    if isinstance(raw, list):
        first = next((e for e in raw if isinstance(e, dict)), None)
        if first is None:
            return None
        data = first.get("error_data")
        data = data if isinstance(data, dict) else {}
        return {"code": first.get("code"), "message": first.get("message") or first.get("title"),
                "details": data.get("details")}
    if isinstance(raw, dict):
        if "errors" in raw and isinstance(raw["errors"], list) and raw["errors"]:
            return error_json(raw["errors"])
        return {"code": raw.get("code"), "message": raw.get("error") or raw.get("message"),
                "details": raw.get("details")}
    return None


# Who wrote a stored message. Exact: every send of ours is recorded with its ledger row, so an outbound
# message without one is an echo of the WhatsApp Business app (migration 0019).
_SOURCE = """CASE WHEN m.direction = 'inbound' THEN 'customer' WHEN m.outbound_log_id IS NULL THEN 'business_app'
                  WHEN o.automatic THEN 'bot' ELSE 'person' END"""


def _message_json(m: asyncpg.Record) -> dict[str, Any]:
    outbound = m["outbound_id"] is not None
    versions = m["versions"] or []
    return {"id": m["id"], "direction": m["direction"], "type": m["type"], "body": m["body"], "status": m["status"],
            "created_at": _iso(m["created_at"]), "sent_at": _iso(m["provider_timestamp"]),
            "provider_message_id": m["provider_message_id"], "author": m["author_user_id"],
            "error": error_json(m["error"] if m["error"] is not None or not outbound else m["ledger_error"]),
            "outbound_id": m["outbound_id"], "retryable": m["ledger_state"] == "failed", "source": m["source"],
            "edited_at": _iso(m["edited_at"]),
            "edits": [{"body": v.get("body"), "at": v.get("at")} for v in versions[:-1]],
            "deleted_by_customer": m["deleted_at"] is not None and m["direction"] == "inbound",
            "deleted_at": _iso(m["deleted_at"]), "media": media_json.of(m)}


def _unsent_failed_json(u: asyncpg.Record) -> dict[str, Any]:
    """A reply that failed before Meta took it: in the thread as a failed outbound message with no id."""
    intent = u["intent"] or {}
    kind = intent.get("kind")
    shown = (intent.get("media") or {}).get("type", "text") if kind == "media" else \
        "template" if kind == "template" else "text"
    return {"id": None, "direction": "outbound", "type": shown,
            "body": intent.get("text"), "status": "failed", "created_at": _iso(u["created_at"]), "sent_at": None,
            "provider_message_id": None, "author": u["author_user_id"], "error": error_json(u["error"]),
            "outbound_id": u["id"], "retryable": True, "source": "bot" if u["automatic"] else "person",
            "edited_at": None, "edits": [], "deleted_by_customer": False, "deleted_at": None, "media": None}


# The ledger rows that failed before Meta took them (no message names them): shown among the messages.
_FAILED_UNSENT = """
    SELECT o.id, o.intent, o.error, o.author_user_id, o.automatic, o.created_at FROM outbound_log o
    WHERE o.conversation_id = $1 AND o.state = 'failed'
      AND NOT EXISTS (SELECT 1 FROM messages m WHERE m.outbound_log_id = o.id)
      AND ($2::timestamptz IS NULL OR o.created_at >= $2) AND ($3::timestamptz IS NULL OR o.created_at < $3)
    ORDER BY o.id LIMIT 100"""


# An edit or a deletion applied to its original (migration 0019): the original shows it, not a message of its own.
# One that waits for its original is shown as it came.
_APPLIED_CHANGE = """(m.type IN ('edit', 'revoke') AND EXISTS (
    SELECT 1 FROM messages x WHERE x.channel = m.channel
      AND x.provider_message_id = m.payload -> m.type ->> 'original_message_id' AND x.contact_id = m.contact_id))"""


async def detail(conn: asyncpg.Connection, row: asyncpg.Record, before: int | None) -> dict[str, Any]:
    """The conversation with its contact, lead, intelligence, notes, unsent replies and a page of messages.

    ``messages`` holds the stored messages and, in time order among them, the replies that failed
    before Meta took them (``id`` null, ``outbound_id`` set); ``sent_at`` is Meta's time for a
    customer's message and the Graph API's acceptance for ours."""
    cid = row["id"]
    messages = await conn.fetch(
        f"""SELECT m.id, m.direction, m.type, m.body, m.status, m.created_at, m.provider_timestamp,
                   m.provider_message_id, m.error, o.author_user_id, o.id outbound_id, o.state ledger_state,
                   o.error ledger_error, {_SOURCE} source, m.edited_at, m.versions, m.deleted_at,
                   {media_json.COLUMNS}
            FROM messages m LEFT JOIN outbound_log o ON o.id = m.outbound_log_id
                 LEFT JOIN media md ON md.message_id = m.id
            WHERE m.conversation_id = $1 AND ($2::bigint IS NULL OR m.id < $2) AND NOT {_APPLIED_CHANGE}
            ORDER BY m.id DESC LIMIT $3""",
        cid, before, MESSAGES_PER_PAGE + 1)
    more = len(messages) > MESSAGES_PER_PAGE
    messages = list(reversed(messages[:MESSAGES_PER_PAGE]))
    # this page's span of time: from its oldest message (none older: from the start) to the next page's
    since = messages[0]["created_at"] if more and messages else None
    until = await conn.fetchval("SELECT created_at FROM messages WHERE id = $1", before) if before else None
    failed = await conn.fetch(_FAILED_UNSENT, cid, since, until)
    thread: list[dict[str, Any]] = []
    pending = list(failed)  # oldest first; each goes before the first message stored after it
    for m in messages:
        while pending and pending[0]["created_at"] < m["created_at"]:
            thread.append(_unsent_failed_json(pending.pop(0)))
        thread.append(_message_json(m))
    thread.extend(_unsent_failed_json(u) for u in pending)
    notes = await conn.fetch("SELECT id, user_id, body, created_at FROM notes WHERE conversation_id = $1 "
                             "ORDER BY id", cid)
    # Replies in the ledger on their way (queued, retrying, in doubt …); failed ones are in the messages.
    unsent = await conn.fetch(
        """SELECT o.id, o.state, o.intent, o.error, o.author_user_id, o.created_at FROM outbound_log o
           WHERE o.conversation_id = $1 AND NOT EXISTS (SELECT 1 FROM messages m WHERE m.outbound_log_id = o.id)
             AND o.state NOT IN ('sent', 'failed', 'dropped') ORDER BY o.id DESC LIMIT 20""", cid)
    if before is None and row["unread_count"]:
        await conn.execute("UPDATE conversations SET unread_count = 0 WHERE id = $1", cid)
    out = conversation_json(row)
    out.update(
        ownership_version=row["ownership_version"],
        lead=None if row["lead_id"] is None else {
            "id": row["lead_id"], "stage": row["stage"], "score": row["score"], "source": row["source"],
            "stage_set_by": row["stage_set_by"]},
        intelligence=row["intelligence"],
        notes=[{"id": n["id"], "author": n["user_id"], "text": n["body"], "created_at": _iso(n["created_at"])}
               for n in notes],
        outbound=[{"id": u["id"], "state": u["state"], "text": (u["intent"] or {}).get("text"),
                   "template": (u["intent"] or {}).get("template"), "error": error_json(u["error"]),
                   "author": u["author_user_id"], "created_at": _iso(u["created_at"])} for u in reversed(unsent)],
        messages=thread,
        more_before=more,
    )
    return out


async def ledger_row(conn: asyncpg.Connection, dedupe_key: str) -> asyncpg.Record | None:
    return await conn.fetchrow("SELECT id, state, conversation_id FROM outbound_log WHERE dedupe_key = $1", dedupe_key)


async def set_status(conn: asyncpg.Connection, conversation_id: int, status: str,
                     snoozed_until: datetime | None) -> None:
    """Resolving also gives a conversation taken from the WhatsApp Business app back to the bot."""
    await conn.execute("""UPDATE conversations SET inbox_status = $2, snoozed_until = $3,
                              business_app_since = CASE WHEN $2 = 'resolved' THEN NULL ELSE business_app_since END
                          WHERE id = $1""", conversation_id, status, snoozed_until)


async def reopen_snoozed(conn: asyncpg.Connection) -> int:
    """Snoozed conversations whose time came are open again; how many."""
    done = await conn.execute("""UPDATE conversations SET inbox_status = 'open', snoozed_until = NULL
                                 WHERE inbox_status = 'snoozed' AND snoozed_until <= now()""")
    return int(done.split()[-1])


async def add_note(conn: asyncpg.Connection, conversation_id: int, user_id: int, text: str) -> dict[str, Any]:
    r = await conn.fetchrow("INSERT INTO notes (conversation_id, user_id, body) VALUES ($1, $2, $3) "
                            "RETURNING id, created_at", conversation_id, user_id, text)
    return {"id": r["id"], "author": user_id, "text": text, "created_at": _iso(r["created_at"])}


async def set_lead_stage(conn: asyncpg.Connection, lead_id: int, stage: str, user_id: int) -> None:
    """A person sets the stage: any stage, backwards too."""
    await conn.execute("UPDATE leads SET stage = $2, stage_set_by = $3, stage_updated_at = now() WHERE id = $1",
                       lead_id, stage, user_id)


def _customer(r: asyncpg.Record) -> dict[str, Any] | None:
    """The customer a task or notification is about (``contact``), when it is about a conversation."""
    if r["contact_id"] is None:
        return None
    return {"id": r["contact_id"], "name": r["profile_name"], "phone": f"+{r['wa_id']}" if r["wa_id"] else None}


def _notification_json(r: asyncpg.Record) -> dict[str, Any]:
    return {"id": r["id"], "kind": r["kind"], "body": r["body"], "task_id": r["task_id"],
            "conversation_id": r["conversation_id"], "contact": _customer(r), "read_at": _iso(r["read_at"]),
            "done": r["task_status"] == "done",
            "snoozed_until": _iso(r["snoozed_until"]), "created_at": _iso(r["created_at"])}


async def notifications(conn: asyncpg.Connection, user_id: int, limit: int = 100) -> tuple[list[dict[str, Any]], int]:
    """The user's notifications (theirs and everyone's), newest first, the ones they snoozed hidden,
    each naming its customer; and how many they have not read. Read and snoozed are each person's
    own (notification_states); one whose task is done (handled) is read for everyone."""
    rows = await conn.fetch(
        """SELECT n.id, n.kind, n.body, n.task_id, t.conversation_id, t.status task_status,
                  COALESCE(s.read_at, t.done_at) read_at, s.snoozed_until, n.created_at,
                  k.id contact_id, k.profile_name, k.wa_id
           FROM notifications n LEFT JOIN tasks t ON t.id = n.task_id
           LEFT JOIN conversations c ON c.id = t.conversation_id LEFT JOIN contacts k ON k.id = c.contact_id
           LEFT JOIN notification_states s ON s.notification_id = n.id AND s.user_id = $1
           WHERE (n.user_id = $1 OR n.user_id IS NULL) AND (s.snoozed_until IS NULL OR s.snoozed_until <= now())
           ORDER BY n.id DESC LIMIT $2""", user_id, limit)
    unread = await conn.fetchval(
        """SELECT count(*) FROM notifications n LEFT JOIN tasks t ON t.id = n.task_id
           LEFT JOIN notification_states s ON s.notification_id = n.id AND s.user_id = $1
           WHERE (n.user_id = $1 OR n.user_id IS NULL) AND s.read_at IS NULL AND t.done_at IS NULL
             AND (s.snoozed_until IS NULL OR s.snoozed_until <= now())""", user_id)
    return [_notification_json(r) for r in rows], int(unread)


async def notification_update(conn: asyncpg.Connection, notification_id: int, user_id: int, *,
                              read: bool = False, snooze_until: datetime | None = None) -> bool:
    """Mark read or snooze one of the user's notifications, for them alone; False when they have no
    such notification."""
    done = await conn.execute(
        """INSERT INTO notification_states AS s (notification_id, user_id, read_at, snoozed_until)
           SELECT n.id, $2, CASE WHEN $3 THEN now() END, $4 FROM notifications n
           WHERE n.id = $1 AND (n.user_id = $2 OR n.user_id IS NULL)
           ON CONFLICT (user_id, notification_id) DO UPDATE
           SET read_at = CASE WHEN $3 THEN COALESCE(s.read_at, now()) ELSE s.read_at END,
               snoozed_until = COALESCE($4, s.snoozed_until)""", notification_id, user_id, read, snooze_until)
    return done != "INSERT 0 0"


async def tasks(conn: asyncpg.Connection, state: str, limit: int = 200) -> list[dict[str, Any]]:
    """The tasks in ``state``, newest first, each naming its customer (``contact``; an invalid recipient's
    task links to the contact to fix), the ledger row it is about (``outbound_id``, a failed reply to
    retry) and, when it is about an error, that error in words (``reason_text``, ``next_step``)."""
    rows = await conn.fetch(
        """SELECT t.id, t.kind, t.title, t.details, t.status, t.conversation_id, t.created_at, t.done_at,
                  k.id contact_id, k.profile_name, k.wa_id
           FROM tasks t LEFT JOIN conversations c ON c.id = t.conversation_id
           LEFT JOIN contacts k ON k.id = c.contact_id
           WHERE t.status = $1 AND c.deleted_at IS NULL ORDER BY t.id DESC LIMIT $2""", state, limit)
    out = []
    for r in rows:
        ledger = (r["details"] or {}).get("outbound_log_id")
        out.append({"id": r["id"], "kind": r["kind"], "title": r["title"], "details": r["details"],
                    "state": r["status"], "conversation_id": r["conversation_id"], "contact_id": r["contact_id"],
                    "contact": _customer(r), "outbound_id": ledger if isinstance(ledger, int) else None,
                    "created_at": _iso(r["created_at"]), "done_at": _iso(r["done_at"]),
                    **_task_words(r["kind"], r["details"])})
    return out


def _task_words(kind: str, details: Any) -> dict[str, Any]:
    """A task about a failed or doubtful send explains its error; other tasks (a handover) have none."""
    if kind == "send_ambiguous":
        return reasons.words({"kind": "AmbiguousGraphError"})
    return reasons.words(details if kind in waiting.REASONS and kind not in ("handover", "follow_up") else None)


def explain_errors(detail: dict[str, Any]) -> dict[str, Any]:
    """The detail's messages and unsent replies with an ``error`` gain it in words (``reason_text``,
    ``next_step``); returns ``detail``."""
    for item in (*detail.get("messages", ()), *detail.get("outbound", ())):
        if item.get("error"):
            item.update(reasons.words(item["error"]))
    return detail


async def task_done(conn: asyncpg.Connection, task_id: int) -> bool:
    done = await conn.execute("UPDATE tasks SET status = 'done' WHERE id = $1", task_id)
    return done != "UPDATE 0"


async def contact(conn: asyncpg.Connection, contact_id: int) -> asyncpg.Record | None:
    return await conn.fetchrow("SELECT id contact_id, phone_number_id, profile_name, wa_id, user_id contact_user_id "
                               "FROM contacts WHERE id = $1", contact_id)


async def update_contact(conn: asyncpg.Connection, contact_id: int, name: str | None, wa_id: str | None) -> str:
    """A person corrects a contact's name and/or phone (``wa_id``: E.164 digits without ``+``). The
    phone it replaces is kept in ``previous_wa_ids``. ``updated``, ``missing``, or ``taken`` (another
    contact of the same business number has that phone)."""
    try:
        async with conn.transaction():  # a savepoint: the unique key's refusal leaves the caller's work intact
            done = await conn.execute(
                """UPDATE contacts SET profile_name = COALESCE($2, profile_name), wa_id = COALESCE($3, wa_id),
                       previous_wa_ids = CASE WHEN $3::text IS NULL OR wa_id IS NULL OR wa_id = $3
                                                   OR wa_id = ANY(previous_wa_ids)
                                              THEN previous_wa_ids ELSE previous_wa_ids || wa_id END,
                       updated_at = now()
                   WHERE id = $1""", contact_id, name, wa_id)
    except asyncpg.UniqueViolationError:
        return "taken"
    return "updated" if done != "UPDATE 0" else "missing"


async def set_deleted(conn: asyncpg.Connection, conversation_id: int, user_id: int | None) -> bool:
    """Soft delete (``user_id``) or restore (None); every row is kept."""
    done = await conn.execute(
        """UPDATE conversations SET deleted_at = CASE WHEN $2::bigint IS NULL THEN NULL ELSE now() END,
               deleted_by = $2 WHERE id = $1""", conversation_id, user_id)
    return done != "UPDATE 0"


async def intelligence_due(conn: asyncpg.Connection, every: int, limit: int) -> list[int]:
    rows = await conn.fetch("SELECT id FROM conversations WHERE messages_since_intelligence >= $1 "
                            "AND deleted_at IS NULL ORDER BY id LIMIT $2", every, limit)
    return [r["id"] for r in rows]


async def prune_events(conn: asyncpg.Connection, keep_s: float) -> None:
    await conn.execute("DELETE FROM inbox_events WHERE created_at < now() - make_interval(secs => $1)", keep_s)
