"""The SQL behind delivery statuses: a batch of them recorded and applied in one statement.

Like :mod:`storage.repo`, it runs inside the caller's transaction.
"""

from __future__ import annotations

from datetime import UTC, datetime

import asyncpg
import orjson

from wacrm.topics.records import StatusUpdate

CHANNEL = "whatsapp"

# One statement for a batch, with the outcomes of applying its statuses one after the other:
# - each (message, status) is recorded once (the first of a batch's copies; a later one, or one seen
#   before, is a duplicate); what Meta sent is on the raw topic, so the event keeps what is read of it;
# - a new status moves its message when it ranks above the message's status and above every new
#   status of the same message earlier in the batch (a status never moves a message backwards);
# - each message is updated once, to the last status that moves it (with the last errors given);
# - ``known``: the message existed when the statement began (a status of an unknown one is kept in
#   message_status_events and applied when the send is recorded, storage.repo's _RECORD_SENT).
_APPLY = """
    WITH input AS (
        SELECT * FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::text[], $5::text[])
            WITH ORDINALITY AS i(message_id, status, occurred_at, errors, request_id, n)),
    inserted AS (
        INSERT INTO message_status_events (channel, provider_message_id, status, occurred_at, errors, request_id)
        SELECT 'whatsapp', message_id, status, occurred_at, errors::jsonb, request_id FROM input ORDER BY n
        ON CONFLICT (channel, provider_message_id, status) DO NOTHING
        RETURNING provider_message_id, status),
    fresh AS (
        SELECT i.*, wacrm_status_rank(i.status) AS rank FROM input i
        JOIN inserted x ON x.provider_message_id = i.message_id AND x.status = i.status
        WHERE i.n = (SELECT min(j.n) FROM input j WHERE j.message_id = i.message_id AND j.status = i.status)),
    known AS (
        SELECT provider_message_id, wacrm_status_rank(status) AS rank FROM messages
        WHERE channel = 'whatsapp' AND provider_message_id IN (SELECT message_id FROM input)),
    ranked AS (
        SELECT f.*, k.provider_message_id IS NOT NULL AS known,
               k.provider_message_id IS NOT NULL AND f.rank > GREATEST(k.rank, max(f.rank) OVER (
                   PARTITION BY f.message_id ORDER BY f.n ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING)) AS moves
        FROM fresh f LEFT JOIN known k ON k.provider_message_id = f.message_id),
    final AS (
        SELECT DISTINCT ON (r.message_id) r.message_id, r.status, r.occurred_at,
               (SELECT e.errors::jsonb FROM ranked e WHERE e.message_id = r.message_id AND e.moves AND e.errors IS NOT NULL
                ORDER BY e.n DESC LIMIT 1) AS errors
        FROM ranked r WHERE r.moves ORDER BY r.message_id, r.n DESC),
    moved AS (
        UPDATE messages m SET status = f.status, status_at = f.occurred_at, error = COALESCE(f.errors, m.error)
        FROM final f
        WHERE m.channel = 'whatsapp' AND m.provider_message_id = f.message_id
          AND wacrm_status_rank(f.status) > wacrm_status_rank(m.status)
        RETURNING m.provider_message_id)
    SELECT r.n IS NOT NULL AS inserted, COALESCE(r.moves, false)
               AND EXISTS (SELECT 1 FROM moved WHERE moved.provider_message_id = i.message_id) AS moved,
           COALESCE(r.known, EXISTS (SELECT 1 FROM known k WHERE k.provider_message_id = i.message_id)) AS known
    FROM input i LEFT JOIN ranked r ON r.n = i.n ORDER BY i.n"""


def _ts(epoch: float | None) -> datetime | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, tz=UTC)


async def apply_statuses(conn: asyncpg.Connection, statuses: list[StatusUpdate],
                         request_ids: list[str | None] | None = None) -> list[str]:
    """Record each status once per (message, status) (with the request id of the webhook call that
    brought it) and move its message forward, as if one after the other, in one statement; the
    outcome of each, in order.

    ``duplicate``: seen before. ``applied``: the message changed. ``stale``: an older state
    than the message has. ``pending``: no such message yet (kept, applied when it is stored).
    """
    if not statuses:
        return []
    rows = await conn.fetch(_APPLY, [st.message_id for st in statuses], [st.status for st in statuses],
                            [_ts(st.timestamp) for st in statuses],
                            [orjson.dumps(st.errors).decode() if st.errors else None for st in statuses],
                            request_ids or [None] * len(statuses))
    return ["duplicate" if not r["inserted"] else "applied" if r["moved"] else "stale" if r["known"] else "pending"
            for r in rows]
