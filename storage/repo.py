"""Repositories: the SQL behind each effect. Every write is idempotent by a unique key.

Functions take a connection already inside a transaction (the caller owns it), so an
agent can put several effects in one commit.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import asyncpg

from topics.records import InboundMessage, SendIntent, StatusUpdate

CHANNEL = "whatsapp"


def _ts(epoch: float | None) -> datetime | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, tz=timezone.utc)


async def _merge_contacts(conn: asyncpg.Connection, primary: int, secondary: int) -> None:
    """Fold ``secondary`` into ``primary``: one customer seen under two identities becomes one contact.

    Its conversations and messages move over (an open conversation of its own is closed when
    the primary has one open, to keep one open conversation per customer); its lead goes
    unless the primary has none.
    """
    await conn.execute(
        """UPDATE conversations s SET status = 'closed'
           WHERE s.contact_id = $2 AND s.status = 'open'
             AND EXISTS (SELECT 1 FROM conversations p WHERE p.contact_id = $1 AND p.status = 'open'
                         AND p.phone_number_id = s.phone_number_id)""", primary, secondary)
    await conn.execute("UPDATE conversations SET contact_id = $1 WHERE contact_id = $2", primary, secondary)
    await conn.execute("UPDATE messages SET contact_id = $1 WHERE contact_id = $2", primary, secondary)
    await conn.execute(
        """UPDATE leads SET contact_id = $1 WHERE contact_id = $2
           AND NOT EXISTS (SELECT 1 FROM leads WHERE contact_id = $1)""", primary, secondary)
    await conn.execute("DELETE FROM leads WHERE contact_id = $1", secondary)
    merged = await conn.fetchrow(
        "DELETE FROM contacts WHERE id = $1 RETURNING wa_id, user_id, parent_user_id, username, profile_name, "
        "opted_out, previous_wa_ids", secondary)
    await conn.execute(
        """UPDATE contacts SET wa_id = COALESCE(wa_id, $2), user_id = COALESCE(user_id, $3),
               parent_user_id = COALESCE(parent_user_id, $4), username = COALESCE(username, $5),
               profile_name = COALESCE(profile_name, $6), opted_out = opted_out OR $7,
               previous_wa_ids = previous_wa_ids || $8, updated_at = now()
           WHERE id = $1""",
        primary, merged["wa_id"], merged["user_id"], merged["parent_user_id"], merged["username"],
        merged["profile_name"], merged["opted_out"], merged["previous_wa_ids"])


async def _upsert_contact(conn: asyncpg.Connection, msg: InboundMessage) -> tuple[int, bool]:
    """Find the customer by phone or business-scoped id (linking the two), or create them.

    Returns (contact id, created).
    """
    c = msg.customer
    rows = await conn.fetch(
        """SELECT id FROM contacts WHERE phone_number_id = $1 AND (wa_id = $2 OR user_id = $3)
           ORDER BY id FOR UPDATE""",
        msg.phone_number_id, c.wa_id, c.user_id)
    if not rows:
        contact_id = await conn.fetchval(
            """INSERT INTO contacts (phone_number_id, wa_id, user_id, profile_name, username, parent_user_id)
               VALUES ($1, $2, $3, $4, $5, $6) RETURNING id""",
            msg.phone_number_id, c.wa_id, c.user_id, c.profile_name, c.username, c.parent_user_id)
        return contact_id, True
    contact_id = rows[0]["id"]
    for other in rows[1:]:  # the phone and the user id were two contacts until this message linked them
        await _merge_contacts(conn, contact_id, other["id"])
    await conn.execute(
        """UPDATE contacts SET wa_id = COALESCE($2, wa_id), user_id = COALESCE(user_id, $3),
               profile_name = COALESCE($4, profile_name), username = COALESCE($5, username),
               parent_user_id = COALESCE($6, parent_user_id), updated_at = now()
           WHERE id = $1""",
        contact_id, c.wa_id, c.user_id, c.profile_name, c.username, c.parent_user_id)
    return contact_id, False


async def change_number(conn: asyncpg.Connection, contact_id: int, phone_number_id: str, new_wa_id: str) -> None:
    """A customer moved to a new phone number (system ``user_changed_number``): keep one contact."""
    other = await conn.fetchval(
        "SELECT id FROM contacts WHERE phone_number_id = $1 AND wa_id = $2 AND id <> $3 FOR UPDATE",
        phone_number_id, new_wa_id, contact_id)
    if other is not None:
        await _merge_contacts(conn, contact_id, other)
    await conn.execute(
        """UPDATE contacts SET previous_wa_ids = CASE WHEN wa_id IS NULL OR wa_id = $2 OR wa_id = ANY(previous_wa_ids)
                                                     THEN previous_wa_ids ELSE previous_wa_ids || wa_id END,
               wa_id = $2, updated_at = now()
           WHERE id = $1""", contact_id, new_wa_id)


async def _open_conversation(conn: asyncpg.Connection, msg: InboundMessage, contact_id: int) -> int:
    select = """SELECT id FROM conversations
                WHERE phone_number_id = $1 AND contact_id = $2 AND status = 'open' FOR UPDATE"""
    conversation_id = await conn.fetchval(select, msg.phone_number_id, contact_id)
    if conversation_id is None:
        conversation_id = await conn.fetchval(
            """INSERT INTO conversations (conversation_key, phone_number_id, contact_id) VALUES ($1, $2, $3)
               ON CONFLICT DO NOTHING RETURNING id""",
            msg.conversation_key, msg.phone_number_id, contact_id)
        if conversation_id is None:  # created concurrently by another worker
            conversation_id = await conn.fetchval(select, msg.phone_number_id, contact_id)
    assert conversation_id is not None
    return int(conversation_id)


async def store_inbound(conn: asyncpg.Connection, msg: InboundMessage) -> int | None:
    """Match contact, conversation and lead and store the message; returns the conversation id,
    ``None`` if the message was stored before.

    Must run inside a transaction; on ``None`` the caller rolls it back so a duplicate
    changes nothing.
    """
    contact_id, created = await _upsert_contact(conn, msg)
    conversation_id = await _open_conversation(conn, msg, contact_id)
    message_id = await conn.fetchval(
        """INSERT INTO messages (channel, provider_message_id, conversation_id, contact_id, direction, type,
                                 body, payload, status, status_at, provider_timestamp, raw_ref, content, context,
                                 referral, error)
           VALUES ($1, $2, $3, $4, 'inbound', $5, $6, $7, 'received', now(), $8, $9, $10, $11, $12, $13)
           ON CONFLICT (channel, provider_message_id) DO NOTHING RETURNING id""",
        CHANNEL, msg.message_id, conversation_id, contact_id, msg.type, msg.text, msg.payload,
        _ts(msg.timestamp), dataclasses.asdict(msg.raw_ref), msg.content or None, msg.context, msg.referral,
        msg.errors or None)
    if message_id is None:
        return None
    if created:
        await conn.execute(
            """INSERT INTO leads (contact_id, source, referral, first_message_id) VALUES ($1, $2, $3, $4)
               ON CONFLICT (contact_id) DO NOTHING""",
            contact_id, "referral" if msg.referral else "organic", msg.referral, msg.message_id)
    if msg.type == "system" and msg.content.get("system_type") == "user_changed_number" \
            and msg.content.get("new_wa_id"):
        await change_number(conn, contact_id, msg.phone_number_id, msg.content["new_wa_id"])
    await conn.execute(
        """UPDATE conversations SET last_inbound_at = GREATEST(last_inbound_at, $2),
               last_message_at = GREATEST(last_message_at, $2), unread_count = unread_count + 1
           WHERE id = $1""",
        conversation_id, _ts(msg.timestamp))
    return conversation_id


async def queued_intent(conn: asyncpg.Connection, dedupe_key: str) -> dict[str, Any] | None:
    """The intent of a ledger row still waiting to be sent (for republishing after a crash)."""
    row = await conn.fetchrow("SELECT intent FROM outbound_log WHERE dedupe_key = $1 AND state = 'queued'",
                              dedupe_key)
    return None if row is None else row["intent"]


@dataclass(frozen=True, slots=True)
class Claim:
    outbound_log_id: int
    attempts: int


async def claim(conn: asyncpg.Connection, dedupe_key: str, attempts_before: int = 0) -> Claim | str | None:
    """Take an intent for sending: a :class:`Claim`, else the row's current state (``None``: no row).

    Only a row waiting (``queued`` or ``retry_wait``) with exactly ``attempts_before`` attempts
    is claimed, so a stale redelivery of an earlier attempt cannot jump the retry schedule.
    """
    row = await conn.fetchrow(
        """UPDATE outbound_log SET state = 'sending', attempts = attempts + 1, claimed_at = now()
           WHERE dedupe_key = $1 AND state IN ('queued', 'retry_wait') AND attempts = $2
           RETURNING id, attempts""", dedupe_key, attempts_before)
    if row is not None:
        return Claim(row["id"], row["attempts"])
    state = await conn.fetchval("SELECT state FROM outbound_log WHERE dedupe_key = $1", dedupe_key)
    return "superseded" if state in ("queued", "retry_wait") else state


async def record_sent(conn: asyncpg.Connection, intent: SendIntent, claim_: Claim, wamid: str,
                      payload: dict[str, Any]) -> None:
    """The Graph API accepted the intent: ledger, outbound message and conversation in one commit.

    Statuses that arrived before this (they can overtake the send's response) are applied here.
    """
    await conn.execute(
        """UPDATE outbound_log SET state = 'sent', provider_message_id = $2, finished_at = now(), error = NULL
           WHERE id = $1""", claim_.outbound_log_id, wamid)
    await conn.execute(
        """INSERT INTO messages (channel, provider_message_id, conversation_id, contact_id, direction, type, body,
                                 payload, status, status_at, provider_timestamp, outbound_log_id)
           SELECT $1, $2, c.id, c.contact_id, 'outbound', $7, $3, $4, 'accepted', now(), now(), $5
           FROM conversations c WHERE c.id = $6
           ON CONFLICT (channel, provider_message_id) DO NOTHING""",
        CHANNEL, wamid, intent.text, payload, claim_.outbound_log_id, intent.conversation_id,
        payload.get("type", "text"))
    await conn.execute(
        "UPDATE conversations SET last_outbound_at = now(), last_message_at = now() WHERE id = $1",
        intent.conversation_id)
    await conn.execute(
        """UPDATE messages m SET status = e.status, status_at = e.occurred_at, error = e.errors
           FROM (SELECT status, occurred_at, errors FROM message_status_events
                 WHERE channel = $1 AND provider_message_id = $2
                 ORDER BY wacrm_status_rank(status) DESC LIMIT 1) e
           WHERE m.channel = $1 AND m.provider_message_id = $2
             AND wacrm_status_rank(e.status) > wacrm_status_rank(m.status)""",
        CHANNEL, wamid)


async def record_failed(conn: asyncpg.Connection, claim_: Claim, state: str, error: dict[str, Any],
                        conversation_id: int, task_kind: str, task_title: str) -> None:
    """The intent will not be sent (``failed``, ``ambiguous`` or ``dropped``); a human gets a task."""
    await conn.execute(
        "UPDATE outbound_log SET state = $2, error = $3, finished_at = now() WHERE id = $1",
        claim_.outbound_log_id, state, error)
    await create_task(conn, conversation_id, task_kind, task_title, error,
                      dedupe_key=f"outbound:{claim_.outbound_log_id}:{state}")


async def mark_state(conn: asyncpg.Connection, dedupe_key: str, state: str, error: dict[str, Any]) -> int | None:
    """Move a ledger row to ``state`` by key (used for ambiguous claims); returns its id."""
    return await conn.fetchval(
        "UPDATE outbound_log SET state = $2, error = $3, finished_at = now() WHERE dedupe_key = $1 RETURNING id",
        dedupe_key, state, error)


async def create_task(conn: asyncpg.Connection, conversation_id: int | None, kind: str, title: str,
                      details: dict[str, Any], *, dedupe_key: str) -> None:
    """A task for a human plus a notification, once per ``dedupe_key``."""
    task_id = await conn.fetchval(
        """INSERT INTO tasks (conversation_id, kind, title, details, dedupe_key) VALUES ($1, $2, $3, $4, $5)
           ON CONFLICT (dedupe_key) DO NOTHING RETURNING id""",
        conversation_id, kind, title, details, dedupe_key)
    if task_id is not None:
        await conn.execute("INSERT INTO notifications (task_id, kind, body) VALUES ($1, $2, $3)",
                           task_id, kind, title)


async def apply_status(conn: asyncpg.Connection, st: StatusUpdate) -> str:
    """Record a status once per (message, status) and move the message forward; returns the outcome.

    ``duplicate``: seen before. ``applied``: the message changed. ``stale``: an older state
    than the message has. ``pending``: no such message yet (kept, applied when it is stored).
    """
    occurred = _ts(st.timestamp)
    inserted = await conn.fetchval(
        """INSERT INTO message_status_events (channel, provider_message_id, status, occurred_at, errors, payload)
           VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (channel, provider_message_id, status) DO NOTHING
           RETURNING id""",
        CHANNEL, st.message_id, st.status, occurred, st.errors or None, st.payload)
    if inserted is None:
        return "duplicate"
    updated = await conn.fetchval(
        """UPDATE messages SET status = $3, status_at = $4, error = COALESCE($5, error)
           WHERE channel = $1 AND provider_message_id = $2
             AND wacrm_status_rank($3) > wacrm_status_rank(status)
           RETURNING id""",
        CHANNEL, st.message_id, st.status, occurred, st.errors or None)
    if updated is not None:
        return "applied"
    exists = await conn.fetchval(
        "SELECT 1 FROM messages WHERE channel = $1 AND provider_message_id = $2", CHANNEL, st.message_id)
    return "stale" if exists else "pending"
