"""The SQL behind replies: unanswered messages, ownership (handover, assignment), opt-out, and why a
message got no reply. The send ledger itself (queueing, the outbox, its states) is :mod:`storage.ledger`.

Like :mod:`storage.repo`, functions run inside the caller's transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
import orjson

from wacrm.storage.ledger import FAILED, NOT_SENT, UNFINISHED, auto_reply_key, queue_args, sql_in
from wacrm.storage.repo import create_task, tasks_from
from wacrm.topics.records import SendIntent
from wacrm.whatsapp.graph import REENGAGEMENT

#: A person owns conversation ``c`` (assigned, handed over, the bot paused, or answered from the WhatsApp
#: Business app): the bot stays quiet.
HUMAN_OWNED = "(c.assigned_user_id IS NOT NULL OR c.needs_human OR c.bot_paused OR c.business_app_since IS NOT NULL)"


@dataclass(frozen=True, slots=True)
class Pending:
    id: int
    provider_message_id: str
    type: str
    body: str | None
    provider_timestamp: datetime | None
    request_id: str | None = None  # the webhook call that brought it


@dataclass(frozen=True, slots=True)
class ReplyContext:
    """A conversation, locked, with the customer messages it has not answered yet (oldest first)."""

    conversation_id: int
    conversation_key: str
    phone_number_id: str
    contact_id: int
    customer: str  # wa_id, else the business-scoped user id
    customer_name: str | None
    opted_out: bool
    human_owned: bool
    ownership_version: int
    new_contact: bool  # nothing from this customer before these messages
    pending: tuple[Pending, ...]
    answered_upto_at: datetime | None = None  # when the last message answered before these was written


_REPLY_CONTEXT = f"""
    SELECT c.id, c.conversation_key, c.phone_number_id, c.contact_id, {HUMAN_OWNED} AS human_owned,
           c.ownership_version, k.wa_id, k.user_id, k.profile_name, k.opted_out,
           ARRAY(SELECT ROW(m.id, m.provider_message_id, m.type, m.body, m.provider_timestamp, m.request_id)
                 FROM messages m WHERE m.conversation_id = c.id AND m.direction = 'inbound'
                   AND m.id > c.reply_upto_message_id AND ($2::bigint IS NULL OR m.id <= $2)
                 ORDER BY m.id) AS pending,
           NOT EXISTS (SELECT 1 FROM messages m WHERE m.contact_id = c.contact_id
                       AND m.id <= c.reply_upto_message_id) AS first_time,
           (SELECT m.provider_timestamp FROM messages m WHERE m.id = c.reply_upto_message_id) AS answered_upto_at
    FROM conversations c JOIN contacts k ON k.id = c.contact_id WHERE c.id = $1 FOR UPDATE OF c"""


def _reply_context(row: asyncpg.Record | None) -> ReplyContext | None:
    if row is None:
        return None
    pending = tuple(Pending(*p) for p in row["pending"])
    return ReplyContext(
        conversation_id=row["id"], conversation_key=row["conversation_key"], phone_number_id=row["phone_number_id"],
        contact_id=row["contact_id"], customer=row["wa_id"] or row["user_id"], customer_name=row["profile_name"],
        opted_out=row["opted_out"],
        human_owned=row["human_owned"],
        ownership_version=row["ownership_version"], new_contact=bool(pending) and row["first_time"],
        pending=pending, answered_upto_at=row["answered_upto_at"])


async def reply_context(conn: asyncpg.Connection, conversation_id: int, upto: int | None = None) -> ReplyContext | None:
    """Lock the conversation and read what the reply engines need (``upto``: ignore newer messages)."""
    return _reply_context(await conn.fetchrow(_REPLY_CONTEXT, conversation_id, upto))


async def reply_contexts(conn: asyncpg.Connection, conversation_ids: list[int]) -> list[ReplyContext | None]:
    """:func:`reply_context` of each conversation, in order, pipelined: one round trip for all."""
    if not conversation_ids:
        return []
    by_id = {r["id"]: r for r in await conn.fetchmany(_REPLY_CONTEXT, [(c, None) for c in conversation_ids])}
    return [_reply_context(by_id.get(c)) for c in conversation_ids]


async def schedule_reply(conn: asyncpg.Connection, conversation_id: int, window_s: float) -> None:
    """Answer this conversation ``window_s`` after its latest message (at most 3 windows after the first).

    Only ever moves the due time later: a lease that :func:`lease_due` took (its due time set
    to the end of the lease while a model answers) is never shortened, so no second answer of
    the same messages starts meanwhile. The messages that arrive during the lease are answered
    after it: :func:`mark_answered` makes the conversation due again when newer messages exist.
    """
    await conn.execute(
        """UPDATE conversations SET
               reply_pending_since = COALESCE(reply_pending_since, now()),
               reply_due_at = GREATEST(reply_due_at,
                                       LEAST(now() + make_interval(secs => $2),
                                             COALESCE(reply_pending_since, now()) + make_interval(secs => $2 * 3)))
           WHERE id = $1""", conversation_id, window_s)


_MARK_ANSWERED = """
    UPDATE conversations c SET reply_upto_message_id = GREATEST(reply_upto_message_id, $2),
        reply_due_at = CASE WHEN EXISTS (SELECT 1 FROM messages m WHERE m.conversation_id = c.id
                                         AND m.direction = 'inbound' AND m.id > $2)
                            THEN now() ELSE NULL END,
        reply_pending_since = NULL
    WHERE id = $1"""


async def mark_answered(conn: asyncpg.Connection, conversation_id: int, upto: int) -> None:
    """Everything up to message ``upto`` is answered; newer messages keep the conversation due."""
    await conn.execute(_MARK_ANSWERED, conversation_id, upto)


# mark_answered and queue in one statement: the inline path answers each conversation of a wave with
# one statement instead of two (the reply, if any, and the bookkeeping of what it answers).
_ANSWER = """
    WITH answered AS (""" + _MARK_ANSWERED.replace("$1", "$7").replace("$2", "$8") + """),
    inserted AS (
        INSERT INTO outbound_log (dedupe_key, conversation_id, intent, automatic, published_at, request_id)
        SELECT $1, $2, $3, $4, CASE WHEN $5 THEN now() END, $6 WHERE $1::text IS NOT NULL
        ON CONFLICT (dedupe_key) DO NOTHING RETURNING id)
    SELECT EXISTS (SELECT 1 FROM inserted)"""


async def answer_many(conn: asyncpg.Connection, answers: list[tuple[int, int, SendIntent | None]], *,
                      published: bool) -> list[bool]:
    """For each (conversation id, upto, intent or None): :func:`mark_answered` and, with an intent,
    :func:`storage.ledger.queue` (False: its dedupe key exists already), one statement each, pipelined."""
    if not answers:
        return []
    args = [(*(queue_args(i, published) if i is not None else (None, c, None, False, False, None)), c, upto)
            for c, upto, i in answers]
    return [r[0] for r in await conn.fetchmany(_ANSWER, args)]


async def lease_due(conn: asyncpg.Connection, limit: int, lease_s: float) -> list[int]:
    """Conversations whose reply is due, leased for ``lease_s`` so no other worker or tick takes them
    meanwhile: the lease is the due time moved to its end, which :func:`schedule_reply` never
    shortens and :func:`mark_answered` ends. A lease that runs out (a crash) makes it due again."""
    rows = await conn.fetch(
        """UPDATE conversations SET reply_due_at = now() + make_interval(secs => $2)
           WHERE id IN (SELECT id FROM conversations WHERE reply_due_at <= now()
                        ORDER BY reply_due_at LIMIT $1 FOR UPDATE SKIP LOCKED)
           RETURNING id""", limit, lease_s)
    return [r["id"] for r in rows]


async def history(conn: asyncpg.Connection, conversation_id: int, limit: int) -> list[tuple[str, str]]:
    """The conversation's last ``limit`` messages with text, oldest first, as (direction, text)."""
    rows = await conn.fetch(
        """SELECT direction, body FROM messages WHERE conversation_id = $1 AND body IS NOT NULL
           ORDER BY id DESC LIMIT $2""", conversation_id, limit)
    return [(r["direction"], r["body"]) for r in reversed(rows)]


async def set_opted_out(conn: asyncpg.Connection, contact_id: int, opted_out: bool) -> None:
    await conn.execute("UPDATE contacts SET opted_out = $2, updated_at = now() WHERE id = $1", contact_id, opted_out)


async def hand_over(conn: asyncpg.Connection, conversation_id: int, reason: str, details: dict[str, Any], *,
                    request_id: str | None = None) -> int:
    """Mark the conversation as needing a human (bot stops), with a task and a notification.

    Returns the new ownership version: drafts made before it are stale.
    """
    version = await conn.fetchval(
        """UPDATE conversations SET needs_human = true, ownership_version = ownership_version + 1
           WHERE id = $1 RETURNING ownership_version""", conversation_id)
    await create_task(conn, conversation_id, "handover", f"Customer needs a person: {reason}", details,
                      dedupe_key=f"handover:{conversation_id}:{version}", request_id=request_id)
    return int(version)


@dataclass(frozen=True, slots=True)
class FollowUp:
    """The bot told the customer a person will get back to them about this message."""

    conversation_id: int
    message_id: str  # the customer message promised an answer
    details: dict[str, Any]
    request_id: str | None = None


FOLLOW_UP_TITLE = "The bot promised the customer an answer: reply"

# Each conversation waits (``pending``, no longer snoozed; not rewritten when it already waits),
# with a task for a person and its notification once per customer message: one statement for all.
_PROMISE_FOLLOW_UPS = """
    WITH f AS (
        SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[])
            AS f(conversation_id, dedupe_key, details, request_id)),
    waiting AS (
        UPDATE conversations c SET inbox_status = 'pending', snoozed_until = NULL FROM f
        WHERE c.id = f.conversation_id AND (c.inbox_status IS DISTINCT FROM 'pending' OR c.snoozed_until IS NOT NULL)),
    promised AS (
        SELECT conversation_id, 'follow_up' AS kind, $5::text AS title, details::jsonb AS details, dedupe_key,
               request_id FROM f),""" + tasks_from("promised")


async def promise_follow_ups(conn: asyncpg.Connection, follow_ups: list[FollowUp]) -> None:
    """Each conversation waits for a person (``pending``) with a task, once per customer message."""
    if not follow_ups:
        return
    await conn.execute(_PROMISE_FOLLOW_UPS, [f.conversation_id for f in follow_ups],
                       [f"follow_up:{f.message_id}" for f in follow_ups],
                       [orjson.dumps(f.details).decode() for f in follow_ups],
                       [f.request_id for f in follow_ups], FOLLOW_UP_TITLE)


async def assign(conn: asyncpg.Connection, conversation_id: int, user_id: int | None) -> int:
    """A person takes the conversation (``None``: nobody). Automatic drafts in flight become stale."""
    return int(await conn.fetchval(
        """UPDATE conversations SET assigned_user_id = $2, ownership_version = ownership_version + 1
           WHERE id = $1 RETURNING ownership_version""", conversation_id, user_id))


async def set_bot_paused(conn: asyncpg.Connection, conversation_id: int, paused: bool) -> int:
    """Pause (or resume) the bot in one conversation: the reply engines and the sender treat a paused
    conversation as owned by a person. Pausing makes automatic drafts in flight stale. Returns the
    ownership version."""
    return int(await conn.fetchval(
        """UPDATE conversations SET bot_paused = $2,
               ownership_version = ownership_version + CASE WHEN $2 AND NOT bot_paused THEN 1 ELSE 0 END
           WHERE id = $1 RETURNING ownership_version""", conversation_id, paused))


async def release(conn: asyncpg.Connection, conversation_id: int) -> int:
    """Give the conversation back to the bot (from a person, and from the WhatsApp Business app)."""
    return int(await conn.fetchval(
        """UPDATE conversations SET assigned_user_id = NULL, needs_human = false, bot_paused = false,
               business_app_since = NULL, ownership_version = ownership_version + 1
           WHERE id = $1 RETURNING ownership_version""", conversation_id))


def template_body(template: dict[str, Any]) -> str:
    """The stored text of a template message (``{"name", "language", "parameters"}``), as the thread
    shows what the customer got. Template texts are not known here (no catalogue yet), so it is the
    template's name and language with the parameters filled in: ``[template follow_up (en)] Ana · 10:00``."""
    params = [str(p) for p in template.get("parameters") or ()]
    head = f"[template {template.get('name')} ({template.get('language')})]"
    return f"{head} {' · '.join(params)}" if params else head


async def silence_reason(conn: asyncpg.Connection, message_id: str) -> tuple[bool, str] | None:
    """Why a customer message got no reply, once that is decided: (intended, why). ``None`` while the
    message is not stored or not decided yet, and while its reply is on its way or sent. Intended:
    the customer opted out, a person owns the conversation, the rules chose none, or the 24-hour
    window had closed; not intended: the reply failed or is in doubt."""
    row = await conn.fetchrow(
        f"""SELECT m.id, c.reply_upto_message_id, {HUMAN_OWNED} AS human_owned, c.business_app_since, k.opted_out,
                  o.state AS ledger_state, o.error AS ledger_error
           FROM messages m JOIN conversations c ON c.id = m.conversation_id JOIN contacts k ON k.id = c.contact_id
                LEFT JOIN outbound_log o ON o.dedupe_key = $2
           WHERE m.provider_message_id = $1 AND m.direction = 'inbound'""", message_id, auto_reply_key(message_id))
    if row is None:
        return None
    error = row["ledger_error"] if isinstance(row["ledger_error"], dict) else {}
    if row["ledger_state"] == FAILED and error.get("code") == REENGAGEMENT:
        return True, ("the 24-hour window had closed (the customer wrote more than 24 hours ago), so only an "
                      "approved template may be sent: a task asks a person for one")
    if row["ledger_state"] in NOT_SENT:
        why = f": {error['error']}" if error.get("error") else ""
        return False, f"the reply is {row['ledger_state']} in the send ledger{why}"
    if row["ledger_state"] is not None or (row["reply_upto_message_id"] or 0) < row["id"]:
        return None  # a reply is on its way or went out, or nothing is decided yet
    if row["opted_out"]:
        return True, "the customer opted out (they sent STOP; START opts back in), so the bot stays quiet"
    if row["business_app_since"] is not None:
        return True, "a person answered from the WhatsApp Business app, so the bot stays quiet until it is handed back"
    if row["human_owned"]:
        return True, "a person owns this conversation (it was handed over), so the bot stays quiet: see the inbox"
    return True, "the rules chose not to answer this message"


# Candidates from three small partial indexes (conversations_reply_due, outbound_log_unfinished,
# outbound_log_ambiguous), never a scan of the conversations or the ledger.
_AWAITING_REPLY = f"""
    WITH candidates AS (
        SELECT id FROM conversations WHERE reply_due_at IS NOT NULL
        UNION SELECT conversation_id FROM outbound_log WHERE state IN {sql_in(UNFINISHED)}
        UNION SELECT conversation_id FROM outbound_log WHERE state = 'ambiguous')
    SELECT count(*) FROM candidates x JOIN conversations c ON c.id = x.id JOIN contacts k ON k.id = c.contact_id
    WHERE c.last_inbound_at > now() - make_interval(secs => $1)
      AND c.last_inbound_at > COALESCE(c.last_outbound_at, '-infinity') AND NOT {HUMAN_OWNED} AND NOT k.opted_out"""


async def awaiting_reply(conn: asyncpg.Connection, window_s: float) -> int:
    """Conversations whose customer waits for the bot: the latest customer message, written in the
    last ``window_s``, is newer than our latest message, with messages not yet answered or a reply
    still on its way (queued, waiting to retry, in flight, ambiguous); not owned by a person, not
    opted out. A customer whose message needs no reply (a reaction) or got a decided "none" waits for nothing."""
    return int(await conn.fetchval(_AWAITING_REPLY, window_s))
