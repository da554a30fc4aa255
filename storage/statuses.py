"""The SQL behind delivery statuses: a batch of them recorded and applied in one statement.

Like :mod:`storage.repo`, it runs inside the caller's transaction.
"""

from __future__ import annotations

from datetime import UTC, datetime

import asyncpg
import orjson

from wacrm.topics.records import StatusUpdate

CHANNEL = "whatsapp"

# One statement for a batch of distinct (message, status) pairs, with the outcomes of applying them
# one after the other:
# - each (message, status) is recorded once (one seen before is a duplicate); what Meta sent is on
#   the raw topic, so the event keeps only what is read of it;
# - a new status moves its message when it ranks above the message's status and above every new
#   status of the same message earlier in the batch (a status never moves a message backwards);
# - each message is updated once, to the last status that moves it (with the last errors given);
# - ``known``: the message existed when the statement began (a status of an unknown one is kept in
#   message_status_events and applied when the send is recorded, storage.repo's _RECORD_SENT).
# Joins and windows (no subquery per row but the key lookups): a batch is hundreds of statuses.
_APPLY = """
    WITH input AS (
        SELECT * FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::text[], $5::text[])
            WITH ORDINALITY AS i(message_id, status, occurred_at, errors, request_id, n)),
    inserted AS (
        INSERT INTO message_status_events (channel, provider_message_id, status, occurred_at, errors, request_id)
        SELECT 'whatsapp', message_id, status, occurred_at, errors::jsonb, request_id FROM input
        ON CONFLICT (channel, provider_message_id, status) DO NOTHING
        RETURNING provider_message_id, status),
    known AS (  -- a lookup by the unique key per message (= ANY() over many ids may plan as a scan)
        SELECT DISTINCT i.message_id AS provider_message_id, m.rank FROM input i
        JOIN LATERAL (SELECT wacrm_status_rank(status) AS rank FROM messages
                      WHERE channel = 'whatsapp' AND provider_message_id = i.message_id LIMIT 1) m ON true),
    ranked AS (
        SELECT i.n, i.message_id, i.status, i.occurred_at, i.errors,
               k.rank IS NOT NULL AND wacrm_status_rank(i.status) > GREATEST(k.rank, max(wacrm_status_rank(i.status))
                   OVER (PARTITION BY i.message_id ORDER BY i.n ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING))
                   AS moves
        FROM input i JOIN inserted x ON x.provider_message_id = i.message_id AND x.status = i.status
             LEFT JOIN known k ON k.provider_message_id = i.message_id),
    last_errors AS (
        SELECT DISTINCT ON (message_id) message_id, errors FROM ranked WHERE moves AND errors IS NOT NULL
        ORDER BY message_id, n DESC),
    final AS (
        SELECT DISTINCT ON (r.message_id) r.message_id, r.status, r.occurred_at, e.errors
        FROM ranked r LEFT JOIN last_errors e ON e.message_id = r.message_id WHERE r.moves
        ORDER BY r.message_id, r.n DESC),
    moved AS (
        UPDATE messages m SET status = f.status, status_at = f.occurred_at,
            error = COALESCE(f.errors::jsonb, m.error)
        FROM final f
        WHERE m.channel = 'whatsapp' AND m.provider_message_id = f.message_id
          AND wacrm_status_rank(f.status) > wacrm_status_rank(m.status)
        RETURNING m.provider_message_id)
    SELECT r.n IS NOT NULL AS inserted, COALESCE(r.moves, false) AND d.provider_message_id IS NOT NULL AS moved,
           k.rank IS NOT NULL AS known
    FROM input i LEFT JOIN ranked r ON r.n = i.n LEFT JOIN known k ON k.provider_message_id = i.message_id
         LEFT JOIN moved d ON d.provider_message_id = i.message_id
    ORDER BY i.n"""


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
    first: dict[tuple[str, str], int] = {}  # a batch's later copies of a (message, status) are duplicates
    for n, st in enumerate(statuses):
        first.setdefault((st.message_id, st.status), n)
    picked = [statuses[n] for n in first.values()]
    ids = request_ids or [None] * len(statuses)
    rows = await conn.fetch(_APPLY, [st.message_id for st in picked], [st.status for st in picked],
                            [_ts(st.timestamp) for st in picked],
                            [orjson.dumps(st.errors).decode() if st.errors else None for st in picked],
                            [ids[n] for n in first.values()])
    out = ["duplicate"] * len(statuses)
    for n, r in zip(first.values(), rows, strict=True):
        out[n] = "duplicate" if not r["inserted"] else "applied" if r["moved"] else "stale" if r["known"] \
            else "pending"
    return out
