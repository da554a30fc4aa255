"""Repositories: the SQL behind each effect. Every write is idempotent by a unique key.

Functions take a connection already inside a transaction (the caller owns it), so an
agent can put several effects in one commit.
"""

from __future__ import annotations

from dataclasses import dataclass
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


async def queued_intent(conn: asyncpg.Connection, dedupe_key: str) -> dict[str, Any] | None:
    """The intent of a ledger row still waiting to be sent (for republishing after a crash)."""
    row = await conn.fetchrow("SELECT intent FROM outbound_log WHERE dedupe_key = $1 AND state = 'queued'",
                              dedupe_key)
    return None if row is None else row["intent"]


# --- the send ledger (outbound_log) -------------------------------------------------------------
#
# Every state change is guarded by the states it expects (``WHERE id = $1 AND state = ANY(...)``) and
# says whether it happened: a guard that does not match means another worker (or the settle timer, or
# a status) moved the row first, and the caller reports it instead of carrying on as if it had won.
# ``sent`` is overwritten only by Meta's own ``failed`` status for that message (:func:`fail_sent`); a
# ``failed`` row goes back to ``queued`` only by a person's or an operator's retry (:func:`retry_failed`).

WAITING = ("queued", "retry_wait")
UNSETTLED = ("sending", "ambiguous", "unconfirmed")  # Meta may have the message; its answer or status settles it


@dataclass(frozen=True, slots=True)
class Claimed:
    """The row is ours to send (``sending``); ``attempts`` counts this attempt."""

    attempts: int


@dataclass(frozen=True, slots=True)
class Earlier:
    """The latest earlier reply of the same conversation that is not finished (what a reply waits behind)."""

    id: int
    state: str  # queued | retry_wait | sending
    next_attempt_at: datetime | None


# One row: the claim (if any), the row's state before this statement, and the earlier unfinished
# reply of the conversation that kept it from being claimed. The conversation is a scalar, an index
# condition on outbound_log_unfinished (conversation_id, id) walked backward from the row. Written as
# a self-join instead, some drains of a backlog read 11,800 buffers a claim (pg_stat_statements, 8.6 ms
# each; the plan was not caught): that partial index keeps an entry for every queued and sending row
# version until vacuum, and a plan not bounded by the conversation reads them all.
_CLAIM = """
    WITH earlier AS (
        SELECT e.id, e.state, e.next_attempt_at FROM outbound_log e
        WHERE e.conversation_id = (SELECT conversation_id FROM outbound_log WHERE id = $1) AND e.id < $1
          AND e.state IN ('queued', 'retry_wait', 'sending') AND e.id <> ALL($3::bigint[])
        ORDER BY e.id DESC LIMIT 1),
    claimed AS (
        UPDATE outbound_log SET state = 'sending', attempts = attempts + 1, claimed_at = now()
        WHERE id = $1 AND state IN ('queued', 'retry_wait') AND attempts = $2 AND NOT EXISTS (SELECT 1 FROM earlier)
        RETURNING attempts)
    SELECT (SELECT attempts FROM claimed) AS claimed, (SELECT state FROM outbound_log WHERE id = $1) AS state,
           e.id AS e_id, e.state AS e_state, e.next_attempt_at AS e_next
    FROM (SELECT 1) one LEFT JOIN earlier e ON true"""


async def claim(conn: asyncpg.Connection, outbound_log_id: int, attempts: int,
                passed: list[int]) -> Claimed | Earlier | str:
    """Take a waiting row (``queued``/``retry_wait`` with exactly ``attempts`` made) for its Graph API call.

    Not claimed while an earlier reply of the same conversation is ``queued``, ``retry_wait``
    or ``sending`` (the conversation's replies leave in ledger order); ``passed`` names earlier
    rows that count as done although not recorded yet (accepted in the caller's batch). Else
    the row's state (``superseded``: waiting, but for another attempt).
    """
    return _claim_result(await conn.fetchrow(_CLAIM, outbound_log_id, attempts, passed))


async def claim_many(conn: asyncpg.Connection,
                     claims: list[tuple[int, int, list[int]]]) -> list[Claimed | Earlier | str]:
    """:func:`claim` for each (row id, attempts, passed), in order, pipelined: one round trip."""
    return [_claim_result(r) for r in await conn.fetchmany(_CLAIM, claims)] if claims else []


def _claim_result(row: asyncpg.Record) -> Claimed | Earlier | str:
    if row["claimed"] is not None:
        return Claimed(row["claimed"])
    if row["e_id"] is not None:
        return Earlier(row["e_id"], row["e_state"], row["e_next"])
    return "superseded" if row["state"] in WAITING else str(row["state"])


async def wait(conn: asyncpg.Connection, outbound_log_id: int, expected: tuple[str, ...], until: datetime,
               error: dict[str, Any], *, refund: bool, on_topic: bool, attempts: int | None = None) -> int | None:
    """Make the row wait (``retry_wait``) until ``until``; the attempts counted so far, ``None`` if the
    row was not in an ``expected`` state (with ``attempts`` made, when given).

    ``refund``: the claimed attempt does not count (a pause). ``on_topic``: a retry topic carries
    it (the outbox sweep steps in only if it is overdue); otherwise the sweep publishes it when due.
    """
    return await conn.fetchval(
        """UPDATE outbound_log SET state = 'retry_wait', error = $3, next_attempt_at = $2,
               attempts = attempts - CASE WHEN $4 THEN 1 ELSE 0 END,
               published_at = CASE WHEN $5 THEN now() END
           WHERE id = $1 AND state = ANY($6::text[]) AND ($7::int IS NULL OR attempts = $7) RETURNING attempts""",
        outbound_log_id, until, error, refund, on_topic, list(expected), attempts)


async def finish(conn: asyncpg.Connection, outbound_log_id: int, expected: tuple[str, ...], state: str,
                 error: dict[str, Any], *, attempts: int | None = None) -> bool:
    """End the row as ``state`` (``dropped``, ``failed``) if it is in an ``expected`` state."""
    assert state in ("dropped", "failed"), state
    return await conn.fetchval(
        """UPDATE outbound_log SET state = $3, error = $4, finished_at = now()
           WHERE id = $1 AND state = ANY($2::text[]) AND ($5::int IS NULL OR attempts = $5) RETURNING true""",
        outbound_log_id, list(expected), state, error, attempts) is True


async def record_failed(conn: asyncpg.Connection, outbound_log_id: int, expected: tuple[str, ...],
                        error: dict[str, Any], conversation_id: int, task_kind: str, task_title: str, *,
                        attempts: int | None = None, request_id: str | None = None) -> bool:
    """The intent will not be sent: ``failed``, and a person gets a task naming the row (which a retry
    closes, :func:`retry_failed`). False if the guard did not match."""
    if not await finish(conn, outbound_log_id, expected, "failed", error, attempts=attempts):
        return False
    await create_task(conn, conversation_id, task_kind, task_title, {**error, "outbound_log_id": outbound_log_id},
                      dedupe_key=failed_task_key(outbound_log_id), request_id=request_id)
    return True


def failed_task_key(outbound_log_id: int) -> str:
    """The dedupe key of the task a failed ledger row leaves for a person (one per failure: a retry
    renames it, so the row failing again leaves a new one)."""
    return f"outbound:{outbound_log_id}:failed"


async def fail_sent(conn: asyncpg.Connection, outbound_log_id: int, provider_message_id: str,
                    error: dict[str, Any]) -> bool:
    """Meta reported the message it took for this row as ``failed``: ``sent`` -> ``failed`` (only for
    that very message, so a later send of the row is not undone by an old status), so a person can
    retry it. False if the row is not sent with that message."""
    return await conn.fetchval(
        """UPDATE outbound_log SET state = 'failed', error = $3, finished_at = now()
           WHERE id = $1 AND state = 'sent' AND provider_message_id = $2 RETURNING true""",
        outbound_log_id, provider_message_id, error) is True


# failed -> queued in one guarded statement: of two retries at once, the second finds the row queued
# (PostgreSQL re-checks the guard on the row the first one changed) and reports that instead. The row
# goes to the contact's current phone (a person may have fixed it), with a fresh attempt count, for the
# outbox sweep to publish; a person's retry is a person's send (not automatic, authored by them: the
# bot's fencing does not drop it). The failure's tasks are done (the task key renamed, so failing again
# leaves a new task; the key is failed_task_key's). The final SELECT sees the row as the statement began.
_RETRY = """
    WITH requeued AS (
        UPDATE outbound_log o SET state = 'queued', attempts = 0, error = NULL, published_at = NULL,
            next_attempt_at = NULL, claimed_at = NULL, finished_at = NULL,
            retries = o.retries + 1, retried_at = now(), retried_by = $2,
            automatic = o.automatic AND $2::bigint IS NULL, author_user_id = COALESCE($2, o.author_user_id),
            intent = o.intent || jsonb_build_object('to', COALESCE(k.wa_id, k.user_id), 'attempt', 0,
                                                    'automatic', o.automatic AND $2::bigint IS NULL)
        FROM conversations c JOIN contacts k ON k.id = c.contact_id
        WHERE o.id = $1 AND o.state = 'failed' AND c.id = o.conversation_id
        RETURNING o.id, o.retries),
    tasks_done AS (
        UPDATE tasks t SET status = 'done',
            dedupe_key = CASE WHEN t.dedupe_key = 'outbound:' || r.id || ':failed'
                              THEN t.dedupe_key || ':retried:' || r.retries ELSE t.dedupe_key END
        FROM requeued r
        WHERE t.dedupe_key = 'outbound:' || r.id || ':failed'
           OR (t.status = 'open' AND t.kind = 'delivery_failed' AND t.details->>'outbound_log_id' = r.id::text))
    SELECT EXISTS (SELECT 1 FROM requeued) AS requeued, o.state, o.conversation_id
    FROM (SELECT 1) one LEFT JOIN outbound_log o ON o.id = $1"""


@dataclass(frozen=True, slots=True)
class Retried:
    """What :func:`retry_failed` did: ``requeued``, else the row's ``state`` (``None``: no such row)."""

    requeued: bool
    state: str | None
    conversation_id: int | None


async def retry_failed(conn: asyncpg.Connection, outbound_log_id: int, by_user: int | None) -> Retried:
    """Queue a ``failed`` ledger row again, under its own row, once per failure (see ``_RETRY``);
    ``by_user``: the person retrying (``None``: an operator's ``wacrm dlq redrive``, which leaves the
    intent as it was, so a bot reply stays subject to the bot's fencing)."""
    row = await conn.fetchrow(_RETRY, outbound_log_id, by_user)
    return Retried(bool(row["requeued"]), row["state"], row["conversation_id"])


async def redrive_ledger_row(conn: asyncpg.Connection, dedupe_key: str) -> str | None:
    """``wacrm dlq redrive`` of a sender's letter: queue its ``failed`` ledger row again (an operator's
    retry, :func:`retry_failed` with no person). ``None`` when queued, else why not."""
    row_id = await conn.fetchval("SELECT id FROM outbound_log WHERE dedupe_key = $1", dedupe_key)
    if row_id is None:
        return f"no ledger row has the dedupe key {dedupe_key!r}"
    result = await retry_failed(conn, row_id, None)
    return None if result.requeued else f"ledger row {row_id} is {result.state}, not failed"


async def mark_ambiguous(conn: asyncpg.Connection, outbound_log_id: int, error: dict[str, Any]) -> bool:
    """A call in flight that got no answer: ``sending`` → ``ambiguous`` (stamped once), never resent here."""
    return await conn.fetchval(
        """UPDATE outbound_log SET state = 'ambiguous', error = $2, finished_at = now(),
               ambiguous_since = COALESCE(ambiguous_since, now())
           WHERE id = $1 AND state = 'sending' RETURNING true""", outbound_log_id, error) is True


# Ledger and outbound message in one statement (the message's trigger moves the conversation, so it
# moves only when the message was stored). The ledger moves only from a state where Meta may have the
# message; the message is stored whatever the ledger's state (a message Meta took must be in the
# conversation). A status that overtook the send's response (kept in message_status_events) is the
# message's status from the start. A row settled from 'unconfirmed' closes the person's task.
_RECORD_SENT = """
    WITH prior AS (SELECT state FROM outbound_log WHERE id = $5),
    ledger AS (
        UPDATE outbound_log SET state = 'sent', provider_message_id = $2, finished_at = now(), error = NULL,
            settled_by = CASE WHEN $8::text = 'answer' AND state = 'sending' THEN settled_by ELSE $8::text END
        WHERE id = $5 AND state IN ('sending', 'ambiguous', 'unconfirmed')
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


async def unsettled(conn: asyncpg.Connection, ids: list[int]) -> dict[int, Unsettled]:
    """Of these ledger rows, those in ``sending``, ``ambiguous`` or ``unconfirmed``, by id."""
    if not ids:
        return {}
    return {r["id"]: Unsettled(r["id"], r["conversation_id"], r["state"], r["intent"]) for r in await conn.fetch(
        "SELECT id, conversation_id, state, intent FROM outbound_log WHERE id = ANY($1::bigint[]) "
        "AND state IN ('sending', 'ambiguous', 'unconfirmed')", ids)}


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


async def delivery_health(conn: asyncpg.Connection) -> DeliveryHealth:
    row = await conn.fetchrow(
        """SELECT (SELECT count(*) FROM number_pauses WHERE until > now()) paused,
                  count(*) unsettled,
                  COALESCE(EXTRACT(EPOCH FROM now() - min(ambiguous_since)), 0)::float8 oldest
           FROM outbound_log WHERE state IN ('ambiguous', 'unconfirmed')""")
    return DeliveryHealth(int(row["paused"]), int(row["unsettled"]), float(row["oldest"]))
