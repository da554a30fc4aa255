"""Repositories: the SQL behind each effect. Every write is idempotent by a unique key.

Functions take a connection already inside a transaction (the caller owns it), so an
agent can put several effects in one commit.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import asyncpg

from wacrm.topics.records import InboundMessage

CHANNEL = "whatsapp"


def _ts(epoch: float | None) -> datetime | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, tz=UTC)


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


_STORE_INBOUND = "SELECT wacrm_store_inbound(" + ", ".join(f"${n}" for n in range(1, 22)) + ")"


def _store_args(msg: InboundMessage, request_id: str | None = None) -> tuple[Any, ...]:
    c = msg.customer
    changed = msg.content.get("new_wa_id") if msg.type == "system" \
        and msg.content.get("system_type") == "user_changed_number" else None
    return (CHANNEL, msg.message_id, msg.phone_number_id, msg.conversation_key, c.wa_id, c.user_id, c.profile_name,
            c.username, c.parent_user_id, msg.type, msg.text, msg.payload, _ts(msg.timestamp),
            msg.raw_ref, msg.content or None, msg.context, msg.referral, msg.errors or None,
            "referral" if msg.referral else "organic", changed or None, request_id)


async def store_inbound(conn: asyncpg.Connection, msg: InboundMessage, request_id: str | None = None) -> int | None:
    """Match contact, conversation and lead and store the message; returns the conversation id,
    ``None`` if the message was stored before.

    The contact is found by phone or business-scoped user id (linking the two, merging two
    contacts that turn out to be one customer) or created with a lead; a changed number
    (system ``user_changed_number``) keeps one contact. All of it is the SQL function
    ``wacrm_store_inbound`` (migrations 0005, 0015): one round trip; the message's trigger brings the
    conversation up to date. ``request_id``: the webhook call that brought the message (a replay
    changes nothing, so the message keeps its first). Must run inside a transaction; on ``None`` the
    caller rolls it back so a duplicate changes nothing.
    """
    return await conn.fetchval(_STORE_INBOUND, *_store_args(msg, request_id))


async def store_inbound_many(conn: asyncpg.Connection, msgs: list[InboundMessage],
                             request_ids: list[str | None]) -> list[int | None]:
    """:func:`store_inbound` (an echo: :func:`store_echo`) for each message (with its request id), in
    order, as if one after the other, but pipelined: one round trip for all the customer's messages,
    one for the echoes. The messages are of distinct conversations (a wave), so the two need no order."""
    if not msgs:
        return []
    out: list[int | None] = [None] * len(msgs)
    for echo, sql, args in ((False, _STORE_INBOUND, _store_args), (True, _STORE_ECHO, _echo_args)):
        picked = [n for n, m in enumerate(msgs) if m.echo is echo]
        if picked:
            rows = await conn.fetchmany(sql, [args(msgs[n], request_ids[n]) for n in picked])
            for n, r in zip(picked, rows, strict=True):
                out[n] = r[0]
    return out


_STORE_ECHO = "SELECT wacrm_store_echo(" + ", ".join(f"${n}" for n in range(1, 18)) + ")"


def _echo_args(msg: InboundMessage, request_id: str | None = None) -> tuple[Any, ...]:
    c = msg.customer
    return (CHANNEL, msg.message_id, msg.phone_number_id, msg.conversation_key, c.wa_id, c.user_id, c.profile_name,
            c.username, c.parent_user_id, msg.type, msg.text, msg.payload, _ts(msg.timestamp),
            msg.raw_ref, msg.content or None, msg.context, request_id)


async def store_echo(conn: asyncpg.Connection, msg: InboundMessage, request_id: str | None = None) -> int | None:
    """Store what the business sent from the WhatsApp Business app (``msg.echo``) in its customer's
    conversation, as an outbound message never sent, and hand the conversation to a person (the bot
    stays quiet until someone hands it back or resolves it); returns the conversation id, ``None``
    when the message id is stored already. The SQL function ``wacrm_store_echo`` (migration 0019)."""
    return await conn.fetchval(_STORE_ECHO, *_echo_args(msg, request_id))


def tasks_from(rows: str) -> str:
    """The SQL ending a ``WITH`` that records a task for a person, and its notification, once per
    ``dedupe_key``, for each row of ``rows``: a query or CTE name giving conversation_id, kind,
    title, details (jsonb), dedupe_key and request_id. The one home of that rule, in one statement."""
    return f"""
    task AS (
        INSERT INTO tasks (conversation_id, kind, title, details, dedupe_key, request_id)
        SELECT conversation_id, kind, title, details, dedupe_key, request_id FROM {rows}
        ON CONFLICT (dedupe_key) DO NOTHING RETURNING id, kind, title)
    INSERT INTO notifications (task_id, kind, body) SELECT id, kind, title FROM task"""


_CREATE_TASK = """
    WITH t AS (SELECT $1::bigint AS conversation_id, $2::text AS kind, $3::text AS title, $4::jsonb AS details,
                      $5::text AS dedupe_key, $6::text AS request_id),""" + tasks_from("t")


async def create_task(conn: asyncpg.Connection, conversation_id: int | None, kind: str, title: str,
                      details: dict[str, Any], *, dedupe_key: str, request_id: str | None = None) -> None:
    """A task for a human plus a notification, once per ``dedupe_key``; ``request_id``: the webhook call
    that caused it."""
    await conn.execute(_CREATE_TASK, conversation_id, kind, title, details, dedupe_key, request_id)
