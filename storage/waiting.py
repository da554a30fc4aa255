"""A customer waiting for a person: the one home of that rule.

A conversation waits while it has an open task of a kind that means a person must act (the
customer asked for a person, the bot was unsure and handed over, the bot promised a person's
answer, a reply failed, a send is in doubt, the 24-hour window closed on a reply). It waits
since the oldest such task was created, for that task's reason. Taking the conversation over,
handing it back to the bot or a person's reply ends the wait: :func:`end` marks those tasks done
(their notifications then read for everyone) in the caller's transaction; the database tells
every open page (migration 0017's triggers).

Like :mod:`storage.repo`, functions run inside the caller's transaction.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import asyncpg

# Task kind → (reason, in words). The kinds are created by storage.replies (handover, follow_up),
# agents.sending / agents.sender (send_failed, retries_exhausted, invalid_recipient, text_too_long,
# window_closed), agents.status (delivery_failed) and storage.repo (send_ambiguous).
REASONS: dict[str, tuple[str, str]] = {
    "handover": ("handover", "the customer asked for a person"),
    "bot_unsure": ("bot_unsure", "the bot was unsure and handed over"),
    "follow_up": ("follow_up", "the bot promised that a person would answer"),
    "send_failed": ("reply_failed", "a reply failed"),
    "retries_exhausted": ("reply_failed", "a reply failed"),
    "invalid_recipient": ("reply_failed", "a reply failed"),
    "text_too_long": ("reply_failed", "a reply failed"),
    "delivery_failed": ("reply_failed", "a reply failed"),
    "send_ambiguous": ("send_ambiguous", "a reply may not have reached the customer"),
    "window_closed": ("window_closed", "the 24-hour window closed before a reply went"),
}
KINDS = tuple(k for k in REASONS if k != "bot_unsure")
# A handover the bot decided on itself (rules' fallback or the model), not one the customer asked for.
UNSURE_RULES = ("fallback_handover", "llm_handover")

_KINDS_SQL = "(" + ", ".join(f"'{k}'" for k in KINDS) + ")"
# An open task of the conversation ``c`` that makes it wait (index tasks_open_conversation, 0017).
OPEN_TASK = f"t.conversation_id = c.id AND t.status = 'open' AND t.kind IN {_KINDS_SQL}"
# The conversations with an open waiting task, as an array computed once (an InitPlan): the list
# then reads just those conversations by id, where EXISTS or IN makes PostgreSQL hash the open
# tasks and pass over every conversation.
_WAITING_IDS = f"ARRAY(SELECT t.conversation_id FROM tasks t WHERE t.status = 'open' AND t.kind IN {_KINDS_SQL})"
# The list's filter and order for ``waiting=true``: waiting ones only, the longest wait first.
FILTER = f"c.id = ANY({_WAITING_IDS})"
ORDER = f"(SELECT min(t.created_at) FROM tasks t WHERE {OPEN_TASK}), c.id"


def wait_json(since: datetime, kind: str, rule: str | None) -> dict[str, Any]:
    """The ``waiting`` object of a conversation: ``since``, ``reason`` and ``reason_text``."""
    key = "bot_unsure" if kind == "handover" and rule in UNSURE_RULES else kind
    reason, text = REASONS.get(key, (kind, kind.replace("_", " ")))
    return {"since": since.isoformat(), "reason": reason, "reason_text": text}


async def waits(conn: asyncpg.Connection, conversation_ids: list[int]) -> dict[int, dict[str, Any]]:
    """The wait of each of these conversations that waits (its oldest open waiting task), by id."""
    if not conversation_ids:
        return {}
    rows = await conn.fetch(
        f"""SELECT DISTINCT ON (t.conversation_id) t.conversation_id, t.created_at, t.kind, t.details->>'rule' rule
            FROM tasks t WHERE t.conversation_id = ANY($1::bigint[]) AND t.status = 'open' AND t.kind IN {_KINDS_SQL}
            ORDER BY t.conversation_id, t.created_at, t.id""", conversation_ids)
    return {r["conversation_id"]: wait_json(r["created_at"], r["kind"], r["rule"]) for r in rows}


async def count(conn: asyncpg.Connection, deleted: bool = False) -> int:
    """How many conversations wait (among the deleted ones with ``deleted``)."""
    return int(await conn.fetchval(
        f"SELECT count(*) FROM conversations c WHERE {FILTER} AND c.deleted_at IS {'NOT ' if deleted else ''}NULL"))


async def end(conn: asyncpg.Connection, conversation_id: int) -> int:
    """A person took the conversation or answered it: its waiting tasks are done (their
    notifications count as read for everyone from then). How many tasks it closed."""
    done = await conn.execute(
        f"""UPDATE tasks t SET status = 'done' WHERE t.conversation_id = $1 AND t.status = 'open'
            AND t.kind IN {_KINDS_SQL}""", conversation_id)
    return int(done.split()[-1])
