"""The send ledger as the sender sees it: the send-time reads of a batch, the record of what Meta took,
the settling of sends in doubt, number pauses and the delivery figures. States and keys: :mod:`storage.ledger`.

Like :mod:`storage.repo`, functions run inside the caller's transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from wacrm.storage.ledger import IN_DOUBT, UNFINISHED, UNSETTLED, Earlier, sql_in
from wacrm.storage.replies import HUMAN_OWNED
from wacrm.storage.repo import CHANNEL, create_task
from wacrm.topics.records import SendIntent, intent_from_dict


@dataclass(frozen=True, slots=True)
class LedgerRow:
    """An intent's row in ``outbound_log``: its state and the stored intent, which is what gets sent."""

    id: int
    state: str
    attempts: int
    intent: SendIntent


@dataclass(frozen=True, slots=True)
class SendChecks:
    """What the sender checks at send time."""

    ownership_version: int
    human_owned: bool
    opted_out: bool
    last_inbound_at: datetime | None
    paused_until: datetime | None
    earlier: Earlier | None = None  # an earlier unfinished reply of the conversation (outside the batch)


# One row per dedupe key, in order, NULLs when it has no ledger row. The earlier unfinished reply
# ignores the batch's own rows: they are handled in order before this one (the claim looks again).
_SEND_READS = f"""
    SELECT l.id, l.state, l.attempts, l.intent, c.ownership_version,
           {HUMAN_OWNED} AS human, k.opted_out, c.last_inbound_at,
           (SELECT until FROM number_pauses p WHERE p.phone_number_id = c.phone_number_id AND p.until > now()) paused,
           e.id AS e_id, e.state AS e_state, e.next_attempt_at AS e_next
    FROM unnest($1::text[]) WITH ORDINALITY AS x(key, n)
         LEFT JOIN outbound_log l ON l.dedupe_key = x.key
         LEFT JOIN conversations c ON c.id = l.conversation_id
         LEFT JOIN contacts k ON k.id = c.contact_id
         LEFT JOIN LATERAL (SELECT e.id, e.state, e.next_attempt_at FROM outbound_log e
                            WHERE e.conversation_id = l.conversation_id AND e.id < l.id
                              AND e.state IN {sql_in(UNFINISHED)} AND e.dedupe_key <> ALL($1::text[])
                            ORDER BY e.id DESC LIMIT 1) e ON true
    ORDER BY x.n"""


async def send_reads_many(conn: asyncpg.Connection,
                          keys: list[str]) -> list[tuple[LedgerRow, SendChecks] | None]:
    """For each dedupe key of a batch, its ledger row and the send-time checks (``None``: no row),
    in one statement."""
    if not keys:
        return []
    out: list[tuple[LedgerRow, SendChecks] | None] = []
    for r in await conn.fetch(_SEND_READS, keys):
        if r["id"] is None:
            out.append(None)
            continue
        earlier = None if r["e_id"] is None else Earlier(r["e_id"], r["e_state"], r["e_next"])
        out.append((LedgerRow(r["id"], r["state"], r["attempts"], intent_from_dict(r["intent"])),
                    SendChecks(r["ownership_version"], r["human"], r["opted_out"], r["last_inbound_at"],
                               r["paused"], earlier)))
    return out


async def pause_number(conn: asyncpg.Connection, phone_number_id: str, reason: str, seconds: float,
                       conversation_id: int | None) -> None:
    """Stop sending from a business number for a while, and alert a human once per pause."""
    created = await conn.fetchval(
        """INSERT INTO number_pauses (phone_number_id, reason, until) VALUES ($1, $2, now() + make_interval(secs => $3))
           ON CONFLICT (phone_number_id) DO UPDATE SET reason = $2, until = now() + make_interval(secs => $3),
               created_at = CASE WHEN number_pauses.until < now() THEN now() ELSE number_pauses.created_at END
           RETURNING extract(epoch FROM created_at)::bigint""", phone_number_id, reason, seconds)
    await create_task(conn, conversation_id, "sending_paused",
                      f"Sending from {phone_number_id} is paused: {reason}", {"phone_number_id": phone_number_id},
                      dedupe_key=f"pause:{phone_number_id}:{created}")


# Ledger and outbound message in one statement (the message's trigger moves the conversation, so it
# moves only when the message was stored). The ledger moves only from a state where Meta may have the
# message; the message is stored whatever the ledger's state (a message Meta took must be in the
# conversation). A status that overtook the send's response (kept in message_status_events) is the
# message's status from the start. A row settled from 'unconfirmed' closes the person's task.
_RECORD_SENT = f"""
    WITH prior AS (SELECT state FROM outbound_log WHERE id = $5),
    ledger AS (
        UPDATE outbound_log SET state = 'sent', provider_message_id = $2, finished_at = now(), error = NULL,
            settled_by = CASE WHEN $8::text = 'answer' AND state = 'sending' THEN settled_by ELSE $8::text END
        WHERE id = $5 AND state IN {sql_in(UNSETTLED)}
        RETURNING id),
    message AS (
        INSERT INTO messages (channel, provider_message_id, conversation_id, contact_id, direction, type, body,
                              payload, status, status_at, provider_timestamp, outbound_log_id, error, request_id)
        SELECT $1, $2, c.id, c.contact_id, 'outbound', $7, $3, $4, COALESCE(e.status, 'accepted'),
               COALESCE(e.occurred_at, now()), COALESCE(to_timestamp($9::float8), now()), $5, e.errors,
               (SELECT request_id FROM outbound_log WHERE id = $5)
        FROM conversations c
        LEFT JOIN LATERAL (SELECT status, occurred_at, errors FROM message_status_events
                           WHERE channel = $1 AND provider_message_id = $2
                             AND wacrm_status_rank(status) > wacrm_status_rank('accepted')
                           ORDER BY wacrm_status_rank(status) DESC LIMIT 1) e ON true
        WHERE c.id = $6
        ON CONFLICT (channel, provider_message_id) DO NOTHING
        RETURNING id),
    task AS (
        UPDATE tasks SET status = 'done' WHERE dedupe_key = 'outbound:' || $5 || ':ambiguous'
          AND EXISTS (SELECT 1 FROM ledger) AND (SELECT state FROM prior) = 'unconfirmed')
    SELECT EXISTS (SELECT 1 FROM ledger) AS settled, EXISTS (SELECT 1 FROM message) AS stored"""


RECORD_PROBLEMS = {  # record_sent_many's outcomes that a person should hear of (logged as errors)
    "conflict": "has the id of another stored message: not in the conversation, kept in a send_unrecorded task",
    "second_copy": "went out although the row was settled with another message: both are in the conversation",
}


@dataclass(frozen=True, slots=True)
class Accepted:
    """A message the Graph API took for a ledger row, to record."""

    outbound_log_id: int
    conversation_id: int
    text: str
    wamid: str
    payload: dict[str, Any]
    sent_at: float | None = None  # epoch seconds: when the Graph API accepted it (or Meta's status says sent)


async def record_sent_many(conn: asyncpg.Connection, sent: list[Accepted], *, settled_by: str) -> list[str]:
    """Record messages Meta took: ledger, outbound message and conversation, in the caller's
    transaction, one statement each, pipelined; the outcome of each.

    ``settled_by``: ``answer`` (the sender, from the call's answer; only a row that had become
    ambiguous meanwhile is marked settled) or ``status`` (a status naming the row). Outcomes:
    ``recorded``; ``already`` (the row and its message were recorded before: a replay);
    ``second_copy`` (the row was settled with another message: both are in the conversation);
    ``conflict`` (another row's or an inbound message has this id: this one is not stored in the
    conversation but kept in a ``send_unrecorded`` task, :func:`keep_unstored`; the caller logs it).
    """
    if not sent:
        return []
    rows = await conn.fetchmany(_RECORD_SENT, [
        (CHANNEL, a.wamid, a.text, a.payload, a.outbound_log_id, a.conversation_id, a.payload.get("type", "text"),
         settled_by, a.sent_at) for a in sent])
    out = []
    for a, r in zip(sent, rows, strict=True):
        if r["stored"]:
            out.append("recorded" if r["settled"] else "second_copy")
            continue
        owner = await conn.fetchrow("SELECT outbound_log_id, direction FROM messages "
                                    "WHERE channel = $1 AND provider_message_id = $2", CHANNEL, a.wamid)
        if owner is not None and owner["outbound_log_id"] == a.outbound_log_id:
            out.append("already")
        else:
            await keep_unstored(conn, a)
            out.append("conflict")
    return out


async def keep_unstored(conn: asyncpg.Connection, a: Accepted) -> None:
    """A message Meta took that :func:`record_sent_many` could not store (``conflict``): a task keeps
    the record for a person, so it is never dropped silently."""
    await create_task(conn, a.conversation_id, "send_unrecorded",
                      "A sent reply could not be stored in the conversation (its message id is taken)",
                      {"outbound_log_id": a.outbound_log_id, "provider_message_id": a.wamid, "text": a.text,
                       "payload": a.payload}, dedupe_key=f"outbound:{a.outbound_log_id}:unrecorded:{a.wamid}")


async def in_flight_too_long(conn: asyncpg.Connection, after_s: float, limit: int) -> list[int]:
    """Rows ``sending`` for longer than ``after_s`` (their worker died mid-call) become ``ambiguous``."""
    return [r["id"] for r in await conn.fetch(
        """UPDATE outbound_log SET state = 'ambiguous', finished_at = now(),
               ambiguous_since = COALESCE(ambiguous_since, now()),
               error = jsonb_build_object('error', 'in flight when its worker stopped; not resent')
           WHERE id IN (SELECT id FROM outbound_log WHERE state = 'sending'
                          AND claimed_at < now() - make_interval(secs => $1)
                        ORDER BY claimed_at LIMIT $2 FOR UPDATE SKIP LOCKED)
             AND state = 'sending'
           RETURNING id""", after_s, limit)]


async def settle_overdue(conn: asyncpg.Connection, after_s: float, resend: bool, limit: int) -> list[tuple[int, str]]:
    """Rows still ``ambiguous`` ``after_s`` after becoming so: a person checks (``unconfirmed`` and a
    ``send_ambiguous`` task), or, with ``resend``, they are queued again for the outbox (once: a
    row resent before goes to a person). Returns (id, ``task`` | ``resend``)."""
    rows = await conn.fetch(
        """UPDATE outbound_log SET
               state = CASE WHEN $2 AND settled_by IS DISTINCT FROM 'resend' THEN 'queued' ELSE 'unconfirmed' END,
               settled_by = CASE WHEN $2 AND settled_by IS DISTINCT FROM 'resend' THEN 'resend' ELSE 'task' END,
               published_at = NULL, next_attempt_at = NULL
           WHERE id IN (SELECT id FROM outbound_log WHERE state = 'ambiguous'
                          AND finished_at < now() - make_interval(secs => $1)
                        ORDER BY finished_at LIMIT $3 FOR UPDATE SKIP LOCKED)
             AND state = 'ambiguous'
           RETURNING id, conversation_id, settled_by, dedupe_key""", after_s, resend, limit)
    for r in rows:
        if r["settled_by"] == "task":
            await create_task(conn, r["conversation_id"], "send_ambiguous",
                              "A reply may or may not have reached the customer: check before sending it again",
                              {"outbound_log_id": r["id"], "dedupe_key": r["dedupe_key"]},
                              dedupe_key=f"outbound:{r['id']}:ambiguous")
    return [(r["id"], r["settled_by"]) for r in rows]


@dataclass(frozen=True, slots=True)
class Unsettled:
    """A ledger row Meta may have taken without our record of it."""

    id: int
    conversation_id: int
    state: str  # sending | ambiguous | unconfirmed
    intent: dict[str, Any]


_UNSETTLED = ("SELECT id, conversation_id, state, intent FROM outbound_log WHERE id = ANY($1::bigint[]) "
              f"AND state IN {sql_in(UNSETTLED)}")


async def unsettled(conn: asyncpg.Connection, ids: list[int]) -> dict[int, Unsettled]:
    """Of these ledger rows, those in ``sending``, ``ambiguous`` or ``unconfirmed``, by id."""
    if not ids:
        return {}
    return {r["id"]: Unsettled(r["id"], r["conversation_id"], r["state"], r["intent"])
            for r in await conn.fetch(_UNSETTLED, ids)}

async def answered_messages(conn: asyncpg.Connection, ledger_ids: list[int]) -> dict[int, str]:
    """The inbound message id each of these ledger rows answers (rows that answer none are left out).
    What a reply answers is in its intent, whether or not the customer sees it quoted."""
    rows = await conn.fetch("SELECT id, intent->>'reply_to' AS reply_to FROM outbound_log "
                            "WHERE id = ANY($1::bigint[]) AND intent->>'reply_to' IS NOT NULL", ledger_ids)
    return {r["id"]: r["reply_to"] for r in rows}


@dataclass(frozen=True, slots=True)
class DeliveryHealth:
    paused_numbers: int  # business numbers whose sends are paused now
    unsettled: int  # sends Meta may have taken that nothing settled yet (ambiguous, unconfirmed)
    oldest_unsettled_s: float  # the oldest of those, seconds since it became ambiguous (0: none)


_DELIVERY_HEALTH = f"""
    SELECT (SELECT count(*) FROM number_pauses WHERE until > now()) paused,
           count(*) unsettled,
           COALESCE(EXTRACT(EPOCH FROM now() - min(ambiguous_since)), 0)::float8 oldest
    FROM outbound_log WHERE state IN {sql_in(IN_DOUBT)}"""


async def delivery_health(conn: asyncpg.Connection) -> DeliveryHealth:
    row = await conn.fetchrow(_DELIVERY_HEALTH)
    return DeliveryHealth(int(row["paused"]), int(row["unsettled"]), float(row["oldest"]))
