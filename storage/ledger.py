"""The send ledger (``outbound_log``): its states, its keys, and the SQL that moves a row between states.

One row per reply to send. A row is ``queued`` (waiting to be published and claimed), ``retry_wait``
(waiting for its next attempt), ``sending`` (claimed, its Graph API call in flight), then ``sent``,
``failed`` or ``dropped``; a call that got no answer is ``ambiguous`` until its answer, a status or the
settle timer decides (``unconfirmed``: a person checks). The states and their groups are written only
here; SQL uses them through :func:`sql_in`. What the sender reads and records is :mod:`storage.ledger_send`.

Every state change is guarded by the states it expects (``WHERE id = $1 AND state = ANY(...)``) and
says whether it happened: a guard that does not match means another worker (or the settle timer, or
a status) moved the row first, and the caller reports it instead of carrying on as if it had won.
``sent`` is overwritten only by Meta's own ``failed`` status for that message (:func:`fail_sent`); a
``failed`` row goes back to ``queued`` only by a person's or an operator's retry (:func:`retry_failed`).
Like :mod:`storage.repo`, functions run inside the caller's transaction.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from wacrm.storage.repo import create_task
from wacrm.topics.records import SendIntent, intent_from_dict

QUEUED = "queued"
RETRY_WAIT = "retry_wait"
SENDING = "sending"
SENT = "sent"
AMBIGUOUS = "ambiguous"
UNCONFIRMED = "unconfirmed"
FAILED = "failed"
DROPPED = "dropped"

WAITING = (QUEUED, RETRY_WAIT)  # to be claimed for an attempt
UNFINISHED = (*WAITING, SENDING)  # what a later reply of the same conversation waits behind
IN_DOUBT = (AMBIGUOUS, UNCONFIRMED)  # a call without an answer that nothing settled yet
UNSETTLED = (SENDING, *IN_DOUBT)  # Meta may have the message; its answer or status settles it
NOT_SENT = (FAILED, DROPPED, *IN_DOUBT)  # a reply that did not (surely) reach the customer


def sql_in(states: tuple[str, ...]) -> str:
    """``states`` as an SQL list: ``sql_in(WAITING)`` is ``('queued', 'retry_wait')``. In the same order
    as written in the partial indexes' predicates (migrations), so the planner matches them."""
    return "(" + ", ".join(f"'{s}'" for s in states) + ")"


def auto_reply_key(message_id: str) -> str:
    """The ledger's dedupe key of the bot's reply to customer message ``message_id``."""
    return f"auto:{message_id}"


def manual_reply_key(request_id: str) -> str:
    """The ledger's dedupe key of a person's reply sent by request ``request_id``."""
    return f"manual:{request_id}"


def failed_task_key(outbound_log_id: int) -> str:
    """The dedupe key of the task a failed ledger row leaves for a person (one per failure: a retry
    renames it, so the row failing again leaves a new one)."""
    return f"outbound:{outbound_log_id}:failed"


# --- into the ledger, and the outbox --------------------------------------------------------------

# One row whether it inserted or not, so that a pipelined batch's results line up with its intents.
_QUEUE = """
    WITH inserted AS (
        INSERT INTO outbound_log (dedupe_key, conversation_id, intent, automatic, published_at, request_id)
        VALUES ($1, $2, $3, $4, CASE WHEN $5 THEN now() END, $6)
        ON CONFLICT (dedupe_key) DO NOTHING RETURNING id)
    SELECT EXISTS (SELECT 1 FROM inserted)"""


def queue_args(intent: SendIntent, published: bool) -> tuple[Any, ...]:
    """The parameters of ``_QUEUE`` (also :func:`storage.replies.answer_many`'s)."""
    # the jsonb codec serialises the dataclass itself (orjson), without asdict's deep copy
    return intent.dedupe_key, intent.conversation_id, intent, intent.automatic, published, intent.request_id


async def queue(conn: asyncpg.Connection, intent: SendIntent, *, published: bool) -> bool:
    """Put an intent in the ledger (state ``queued``); False if its dedupe key exists already.

    ``published``: the caller publishes it right after the commit; otherwise the outbox sweep does.
    """
    return bool(await conn.fetchval(_QUEUE, *queue_args(intent, published)))


async def queue_manual_reply(conn: asyncpg.Connection, conversation_id: int, text: str, request_id: str,
                             user_id: int | None = None, template: dict[str, Any] | None = None,
                             media: dict[str, Any] | None = None) -> bool:
    """A person's reply: same ledger, limits and retries as the bot's; published by the outbox sweep.

    ``template`` ({"name", "language", "parameters"}) sends an approved template instead of ``text``;
    ``media`` (:attr:`SendIntent.media`) a file in the media store, ``text`` then being its line in the
    thread; ``user_id`` is recorded as the reply's author.
    """
    row = await conn.fetchrow(
        """SELECT c.conversation_key, c.phone_number_id, COALESCE(k.wa_id, k.user_id) customer
           FROM conversations c JOIN contacts k ON k.id = c.contact_id WHERE c.id = $1""", conversation_id)
    if row is None:
        raise LookupError(f"no conversation {conversation_id}")
    intent = SendIntent(dedupe_key=manual_reply_key(request_id), conversation_key=row["conversation_key"],
                        conversation_id=conversation_id, phone_number_id=row["phone_number_id"],
                        to=row["customer"], text=text, automatic=False, accepted_at=time.time(),
                        kind="template" if template else "media" if media else "text", template=template,
                        media=media)
    new = await queue(conn, intent, published=False)
    if new and user_id is not None:
        await conn.execute("UPDATE outbound_log SET author_user_id = $2 WHERE dedupe_key = $1",
                           intent.dedupe_key, user_id)
    return new


REPUBLISH_AFTER_S = 60  # a queued intent whose publish was not followed by a claim is published again
RETRY_GRACE_S = 30  # a retry the retry topic did not deliver in time is published by the sweep


async def due_for_publishing(conn: asyncpg.Connection, limit: int) -> list[SendIntent]:
    """The outbox: queued intents never (or long ago) published, and retries overdue; marked published."""
    rows = await conn.fetch(
        """UPDATE outbound_log SET published_at = now()
           WHERE id IN (SELECT id FROM outbound_log
                        WHERE (state = 'queued' AND (published_at IS NULL
                                                     OR published_at < now() - make_interval(secs => $2)))
                           OR (state = 'retry_wait' AND published_at IS NULL AND next_attempt_at <= now())
                           OR (state = 'retry_wait' AND next_attempt_at < now() - make_interval(secs => $3)
                               AND published_at < now() - make_interval(secs => $3))
                        ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED)
           RETURNING intent, attempts""", limit, REPUBLISH_AFTER_S, RETRY_GRACE_S)
    return [dataclasses.replace(intent_from_dict(r["intent"]), attempt=r["attempts"], not_before=None) for r in rows]


async def queued_intent(conn: asyncpg.Connection, dedupe_key: str) -> dict[str, Any] | None:
    """The intent of a ledger row still waiting to be sent (for republishing after a crash)."""
    row = await conn.fetchrow("SELECT intent FROM outbound_log WHERE dedupe_key = $1 AND state = 'queued'",
                              dedupe_key)
    return None if row is None else row["intent"]


# --- a row's state changes ---------------------------------------------------------------------

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
_CLAIM = f"""
    WITH earlier AS (
        SELECT e.id, e.state, e.next_attempt_at FROM outbound_log e
        WHERE e.conversation_id = (SELECT conversation_id FROM outbound_log WHERE id = $1) AND e.id < $1
          AND e.state IN {sql_in(UNFINISHED)} AND e.id <> ALL($3::bigint[])
        ORDER BY e.id DESC LIMIT 1),
    claimed AS (
        UPDATE outbound_log SET state = 'sending', attempts = attempts + 1, claimed_at = now()
        WHERE id = $1 AND state IN {sql_in(WAITING)} AND attempts = $2 AND NOT EXISTS (SELECT 1 FROM earlier)
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
