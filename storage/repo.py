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


@dataclass(frozen=True, slots=True)
class ConversationState:
    """What the reply engines need to know about a conversation at the time of a message."""

    conversation_id: int
    contact_id: int
    contact_created: bool
    opted_out: bool
    assigned_user_id: int | None
    needs_human: bool
    bot_paused: bool
    ownership_version: int
    last_inbound_at: datetime | None


async def _upsert_contact(conn: asyncpg.Connection, msg: InboundMessage) -> tuple[int, bool, bool]:
    c = msg.customer
    row = await conn.fetchrow(
        """SELECT id, opted_out FROM contacts
           WHERE phone_number_id = $1 AND (wa_id = $2 OR user_id = $3)
           ORDER BY (wa_id = $2) DESC NULLS LAST, id LIMIT 1 FOR UPDATE""",
        msg.phone_number_id, c.wa_id, c.user_id)
    if row is not None:
        await conn.execute(
            """UPDATE contacts SET wa_id = COALESCE(wa_id, $2), user_id = COALESCE(user_id, $3),
                   profile_name = COALESCE($4, profile_name), username = COALESCE($5, username),
                   parent_user_id = COALESCE($6, parent_user_id), updated_at = now()
               WHERE id = $1""",
            row["id"], c.wa_id, c.user_id, c.profile_name, c.username, c.parent_user_id)
        return row["id"], False, row["opted_out"]
    contact_id = await conn.fetchval(
        """INSERT INTO contacts (phone_number_id, wa_id, user_id, profile_name, username, parent_user_id)
           VALUES ($1, $2, $3, $4, $5, $6) RETURNING id""",
        msg.phone_number_id, c.wa_id, c.user_id, c.profile_name, c.username, c.parent_user_id)
    return contact_id, True, False


async def _open_conversation(conn: asyncpg.Connection, msg: InboundMessage, contact_id: int) -> asyncpg.Record:
    select = """SELECT id, assigned_user_id, needs_human, bot_paused, ownership_version, last_inbound_at
                FROM conversations WHERE phone_number_id = $1 AND contact_id = $2 AND status = 'open'"""
    row = await conn.fetchrow(select + " FOR UPDATE", msg.phone_number_id, contact_id)
    if row is None:
        row = await conn.fetchrow(
            """INSERT INTO conversations (conversation_key, phone_number_id, contact_id) VALUES ($1, $2, $3)
               ON CONFLICT DO NOTHING
               RETURNING id, assigned_user_id, needs_human, bot_paused, ownership_version, last_inbound_at""",
            msg.conversation_key, msg.phone_number_id, contact_id)
        if row is None:  # created concurrently by another worker
            row = await conn.fetchrow(select + " FOR UPDATE", msg.phone_number_id, contact_id)
    assert row is not None
    return row


async def store_inbound(conn: asyncpg.Connection, msg: InboundMessage) -> ConversationState | None:
    """Match contact, conversation and lead and store the message; ``None`` if it was stored before.

    Must run inside a transaction; on ``None`` the caller rolls it back so a duplicate
    changes nothing.
    """
    contact_id, created, opted_out = await _upsert_contact(conn, msg)
    conv = await _open_conversation(conn, msg, contact_id)
    message_id = await conn.fetchval(
        """INSERT INTO messages (channel, provider_message_id, conversation_id, contact_id, direction, type,
                                 body, payload, status, status_at, provider_timestamp, raw_ref)
           VALUES ($1, $2, $3, $4, 'inbound', $5, $6, $7, 'received', now(), $8, $9)
           ON CONFLICT (channel, provider_message_id) DO NOTHING RETURNING id""",
        CHANNEL, msg.message_id, conv["id"], contact_id, msg.type, msg.text, msg.payload,
        _ts(msg.timestamp), dataclasses.asdict(msg.raw_ref))
    if message_id is None:
        return None
    if created:
        referral = msg.payload.get("referral") if isinstance(msg.payload.get("referral"), dict) else None
        await conn.execute(
            """INSERT INTO leads (contact_id, source, referral) VALUES ($1, $2, $3)
               ON CONFLICT (contact_id) DO NOTHING""",
            contact_id, "referral" if referral else "organic", referral)
    await conn.execute(
        """UPDATE conversations SET last_inbound_at = GREATEST(last_inbound_at, $2),
               last_message_at = GREATEST(last_message_at, $2), unread_count = unread_count + 1
           WHERE id = $1""",
        conv["id"], _ts(msg.timestamp))
    return ConversationState(
        conversation_id=conv["id"], contact_id=contact_id, contact_created=created, opted_out=opted_out,
        assigned_user_id=conv["assigned_user_id"], needs_human=conv["needs_human"],
        bot_paused=conv["bot_paused"], ownership_version=conv["ownership_version"],
        last_inbound_at=conv["last_inbound_at"])


async def queue_intent(conn: asyncpg.Connection, intent: SendIntent) -> bool:
    """Record a send intent in the ledger (state ``queued``); False if its key exists already."""
    inserted = await conn.fetchval(
        """INSERT INTO outbound_log (dedupe_key, conversation_id, intent) VALUES ($1, $2, $3)
           ON CONFLICT (dedupe_key) DO NOTHING RETURNING id""",
        intent.dedupe_key, intent.conversation_id, dataclasses.asdict(intent))
    return inserted is not None


async def queued_intent(conn: asyncpg.Connection, dedupe_key: str) -> dict[str, Any] | None:
    """The intent of a ledger row still waiting to be sent (for republishing after a crash)."""
    row = await conn.fetchrow("SELECT intent FROM outbound_log WHERE dedupe_key = $1 AND state = 'queued'",
                              dedupe_key)
    return None if row is None else row["intent"]


@dataclass(frozen=True, slots=True)
class Claim:
    outbound_log_id: int
    attempts: int


async def claim(conn: asyncpg.Connection, dedupe_key: str) -> Claim | str | None:
    """Take a queued intent for sending: a :class:`Claim`, else the row's current state (``None``: no row)."""
    row = await conn.fetchrow(
        """UPDATE outbound_log SET state = 'sending', attempts = attempts + 1, claimed_at = now()
           WHERE dedupe_key = $1 AND state = 'queued' RETURNING id, attempts""", dedupe_key)
    if row is not None:
        return Claim(row["id"], row["attempts"])
    return await conn.fetchval("SELECT state FROM outbound_log WHERE dedupe_key = $1", dedupe_key)


async def ownership_version(conn: asyncpg.Connection, conversation_id: int) -> int | None:
    return await conn.fetchval("SELECT ownership_version FROM conversations WHERE id = $1", conversation_id)


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
           SELECT $1, $2, c.id, c.contact_id, 'outbound', 'text', $3, $4, 'accepted', now(), now(), $5
           FROM conversations c WHERE c.id = $6
           ON CONFLICT (channel, provider_message_id) DO NOTHING""",
        CHANNEL, wamid, intent.text, payload, claim_.outbound_log_id, intent.conversation_id)
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
