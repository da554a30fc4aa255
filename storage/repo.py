"""Repositories: the SQL behind each effect. Every write is idempotent by a unique key.

Functions take a connection already inside a transaction (the caller owns it), so an
agent can put several effects in one commit.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import asyncpg

from topics.records import InboundMessage, SendIntent, StatusUpdate

CHANNEL = "whatsapp"


def _ts(epoch: float | None) -> datetime | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, tz=timezone.utc)


async def lock_conversations(conn: asyncpg.Connection, *, keys: list[str] | None = None,
                             ids: list[int] | None = None) -> None:
    """Lock the open conversations of ``keys`` (or the conversations ``ids``) in id order, first
    thing in the transaction.

    Every transaction that locks several conversations (an inbound lane, the sender's record)
    takes them in id order, so two batches that share conversations wait for each other
    instead of deadlocking.
    """
    if keys is not None:
        await conn.execute("SELECT id FROM conversations WHERE conversation_key = ANY($1) AND status = 'open' "
                           "ORDER BY id FOR UPDATE", keys)
    if ids is not None:
        await conn.execute("SELECT id FROM conversations WHERE id = ANY($1) ORDER BY id FOR UPDATE", ids)


async def stored_message_ids(conn: asyncpg.Connection, message_ids: list[str]) -> set[str]:
    """Which of these provider message ids are stored already (redeliveries)."""
    return {r["provider_message_id"] for r in await conn.fetch(
        "SELECT provider_message_id FROM messages WHERE channel = $1 AND provider_message_id = ANY($2)",
        CHANNEL, message_ids)}


_STORE_INBOUND = "SELECT wacrm_store_inbound(" + ", ".join(f"${n}" for n in range(1, 21)) + ")"


def _store_args(msg: InboundMessage) -> tuple[Any, ...]:
    c = msg.customer
    changed = msg.content.get("new_wa_id") if msg.type == "system" \
        and msg.content.get("system_type") == "user_changed_number" else None
    return (CHANNEL, msg.message_id, msg.phone_number_id, msg.conversation_key, c.wa_id, c.user_id, c.profile_name,
            c.username, c.parent_user_id, msg.type, msg.text, msg.payload, _ts(msg.timestamp),
            msg.raw_ref, msg.content or None, msg.context, msg.referral, msg.errors or None,
            "referral" if msg.referral else "organic", changed or None)


async def store_inbound(conn: asyncpg.Connection, msg: InboundMessage) -> int | None:
    """Match contact, conversation and lead and store the message; returns the conversation id,
    ``None`` if the message was stored before.

    The contact is found by phone or business-scoped user id (linking the two, merging two
    contacts that turn out to be one customer) or created with a lead; a changed number
    (system ``user_changed_number``) keeps one contact. All of it is the SQL function
    ``wacrm_store_inbound`` (migration 0005): one round trip. Must run inside a transaction;
    on ``None`` the caller rolls it back so a duplicate changes nothing.
    """
    return await conn.fetchval(_STORE_INBOUND, *_store_args(msg))


async def store_inbound_many(conn: asyncpg.Connection, msgs: list[InboundMessage]) -> list[int | None]:
    """:func:`store_inbound` for each message, in order, as if one after the other, but pipelined:
    one round trip for all of them."""
    if not msgs:
        return []
    return [r[0] for r in await conn.fetchmany(_STORE_INBOUND, [_store_args(m) for m in msgs])]


async def queued_intent(conn: asyncpg.Connection, dedupe_key: str) -> dict[str, Any] | None:
    """The intent of a ledger row still waiting to be sent (for republishing after a crash)."""
    row = await conn.fetchrow("SELECT intent FROM outbound_log WHERE dedupe_key = $1 AND state = 'queued'",
                              dedupe_key)
    return None if row is None else row["intent"]


@dataclass(frozen=True, slots=True)
class Claim:
    outbound_log_id: int
    attempts: int


# One row per intent: the claimed row (id, attempts), else NULLs, with the state the row had
# before this statement (a data-modifying CTE's effects are not visible to the rest of it).
_CLAIM = """
    WITH claimed AS (
        UPDATE outbound_log SET state = 'sending', attempts = attempts + 1, claimed_at = now()
        WHERE dedupe_key = $1 AND state IN ('queued', 'retry_wait') AND attempts = $2
        RETURNING id, attempts)
    SELECT c.id, c.attempts, (SELECT state FROM outbound_log WHERE dedupe_key = $1) AS state
    FROM (SELECT 1) one LEFT JOIN claimed c ON true"""


async def claim_many(conn: asyncpg.Connection, wanted: list[tuple[str, int]]) -> list[Claim | str | None]:
    """Take intents (dedupe key, attempts before) for sending, pipelined: for each a :class:`Claim`,
    else the row's current state (``None``: no row).

    Only a row waiting (``queued`` or ``retry_wait``) with exactly the attempts the event
    expects is claimed, so a stale redelivery of an earlier attempt cannot jump the retry
    schedule; such a row answers ``superseded``.
    """
    if not wanted:
        return []
    out: list[Claim | str | None] = []
    for row in await conn.fetchmany(_CLAIM, wanted):
        if row["id"] is not None:
            out.append(Claim(row["id"], row["attempts"]))
        else:
            out.append("superseded" if row["state"] in ("queued", "retry_wait") else row["state"])
    return out


# Ledger, outbound message and conversation in one statement. A status that overtook the send's
# response (kept in message_status_events) is the message's status from the start.
_RECORD_SENT = """
    WITH ledger AS (
        UPDATE outbound_log SET state = 'sent', provider_message_id = $2, finished_at = now(), error = NULL
        WHERE id = $5),
    message AS (
        INSERT INTO messages (channel, provider_message_id, conversation_id, contact_id, direction, type, body,
                              payload, status, status_at, provider_timestamp, outbound_log_id, error)
        SELECT $1, $2, c.id, c.contact_id, 'outbound', $7, $3, $4, COALESCE(e.status, 'accepted'),
               COALESCE(e.occurred_at, now()), now(), $5, e.errors
        FROM conversations c
        LEFT JOIN LATERAL (SELECT status, occurred_at, errors FROM message_status_events
                           WHERE channel = $1 AND provider_message_id = $2
                             AND wacrm_status_rank(status) > wacrm_status_rank('accepted')
                           ORDER BY wacrm_status_rank(status) DESC LIMIT 1) e ON true
        WHERE c.id = $6
        ON CONFLICT (channel, provider_message_id) DO NOTHING)
    UPDATE conversations SET last_outbound_at = now(), last_message_at = now() WHERE id = $6"""


@dataclass(frozen=True, slots=True)
class Accepted:
    """A send the Graph API accepted, to record."""

    intent: SendIntent
    claim: Claim
    wamid: str
    payload: dict[str, Any]


async def record_sent_many(conn: asyncpg.Connection, sent: list[Accepted]) -> None:
    """The Graph API accepted these intents: ledger, outbound message and conversation, in the
    caller's transaction, one statement each, pipelined.

    Statuses that arrived before this (they can overtake the send's response) are applied here.
    """
    if sent:
        await conn.executemany(_RECORD_SENT, [
            (CHANNEL, a.wamid, a.intent.text, a.payload, a.claim.outbound_log_id, a.intent.conversation_id,
             a.payload.get("type", "text")) for a in sent])


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


# One statement per status: the event once per (message, status), the message moved forward only
# by a new event, and whether the message exists (seen before the statement, as it began).
_APPLY_STATUS = """
    WITH inserted AS (
        INSERT INTO message_status_events (channel, provider_message_id, status, occurred_at, errors, payload)
        VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (channel, provider_message_id, status) DO NOTHING
        RETURNING id),
    moved AS (
        UPDATE messages SET status = $3, status_at = $4, error = COALESCE($5, error)
        WHERE channel = $1 AND provider_message_id = $2 AND EXISTS (SELECT 1 FROM inserted)
          AND wacrm_status_rank($3) > wacrm_status_rank(status)
        RETURNING id)
    SELECT EXISTS (SELECT 1 FROM inserted) AS inserted, EXISTS (SELECT 1 FROM moved) AS moved,
           EXISTS (SELECT 1 FROM messages WHERE channel = $1 AND provider_message_id = $2) AS known"""


async def apply_statuses(conn: asyncpg.Connection, statuses: list[StatusUpdate]) -> list[str]:
    """Record each status once per (message, status) and move its message forward, in order,
    pipelined; the outcome of each.

    ``duplicate``: seen before. ``applied``: the message changed. ``stale``: an older state
    than the message has. ``pending``: no such message yet (kept, applied when it is stored).
    """
    if not statuses:
        return []
    rows = await conn.fetchmany(_APPLY_STATUS, [
        (CHANNEL, st.message_id, st.status, _ts(st.timestamp), st.errors or None, st.payload) for st in statuses])
    return ["duplicate" if not r["inserted"] else "applied" if r["moved"] else "stale" if r["known"] else "pending"
            for r in rows]
