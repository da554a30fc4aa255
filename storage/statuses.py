"""The SQL behind delivery statuses: a batch of them recorded and applied in two statements.

Like :mod:`storage.repo`, it runs inside the caller's transaction.
"""

from __future__ import annotations

from datetime import UTC, datetime

import asyncpg
import orjson

from wacrm.topics.records import StatusUpdate

CHANNEL = "whatsapp"

# The batch's distinct (message, status) pairs recorded once each (one seen before is a duplicate;
# what Meta sent is on the raw topic, so the event keeps only what is read of it), with the rank of
# each one's message as the statement began (NULL: no such message yet; such a status is kept and
# applied when the send is recorded, storage.repo's _RECORD_SENT). A key lookup per status and one
# hash of the inserted keys: no plan here rescans a CTE per row, which PostgreSQL chose for a
# single statement that also ranked and moved the messages (seconds for a batch of 200).
_RECORD = """
    WITH input AS (
        SELECT * FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::text[], $5::text[])
            WITH ORDINALITY AS i(message_id, status, occurred_at, errors, request_id, n)),
    inserted AS (
        INSERT INTO message_status_events (channel, provider_message_id, status, occurred_at, errors, request_id)
        SELECT 'whatsapp', message_id, status, occurred_at, errors::jsonb, request_id FROM input
        ON CONFLICT (channel, provider_message_id, status) DO NOTHING
        RETURNING provider_message_id, status)
    SELECT x.provider_message_id IS NOT NULL AS inserted, m.id, wacrm_status_rank(m.status) AS rank
    FROM input i LEFT JOIN inserted x ON x.provider_message_id = i.message_id AND x.status = i.status
         LEFT JOIN LATERAL (SELECT id, status FROM messages
                            WHERE channel = 'whatsapp' AND provider_message_id = i.message_id LIMIT 1) m ON true
    ORDER BY i.n"""

# Each message moved once, to the last of the batch's statuses that moves it; never backwards (the
# rank is checked again on the row, which another transaction may have moved meanwhile). The rows by
# primary key with = ANY(), each one's values by its position: a join with the unnested arrays
# planned as a scan of every message on a small table.
_MOVE = """
    UPDATE messages m SET status = ($2::text[])[array_position($1::bigint[], m.id)],
        status_at = ($3::timestamptz[])[array_position($1::bigint[], m.id)],
        error = COALESCE((($4::text[])[array_position($1::bigint[], m.id)])::jsonb, m.error)
    WHERE m.id = ANY($1::bigint[])
      AND wacrm_status_rank(($2::text[])[array_position($1::bigint[], m.id)]) > wacrm_status_rank(m.status)
    RETURNING m.id"""

#: wacrm_status_rank (migration 0001's function) in Python: what a status moves past.
RANK = {"sent": 1, "delivered": 2, "read": 3, "played": 3, "failed": 4}


def _ts(epoch: float | None) -> datetime | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, tz=UTC)


def _errors(st: StatusUpdate) -> str | None:
    return orjson.dumps(st.errors).decode() if st.errors else None


async def apply_statuses(conn: asyncpg.Connection, statuses: list[StatusUpdate],
                         request_ids: list[str | None] | None = None) -> list[str]:
    """Record each status once per (message, status) (with the request id of the webhook call that
    brought it) and move its message forward, with the outcomes of applying them one after the other,
    in two statements for the batch; the outcome of each, in order.

    ``duplicate``: seen before. ``applied``: the message changed. ``stale``: an older state
    than the message has. ``pending``: no such message yet (kept, applied when it is stored).
    """
    if not statuses:
        return []
    first: dict[tuple[str, str], int] = {}  # a batch's later copies of a (message, status) are duplicates
    for n, st in enumerate(statuses):
        first.setdefault((st.message_id, st.status), n)
    picked = list(first.values())
    ids = request_ids or [None] * len(statuses)
    rows = await conn.fetch(_RECORD, [statuses[n].message_id for n in picked], [statuses[n].status for n in picked],
                            [_ts(statuses[n].timestamp) for n in picked], [_errors(statuses[n]) for n in picked],
                            [ids[n] for n in picked])
    out = ["duplicate"] * len(statuses)
    rank: dict[int, int] = {}  # each known message's rank as the batch moves it, by message row id
    moves: dict[int, tuple[StatusUpdate, str | None]] = {}  # row id -> its last moving status, the last errors
    moving: list[tuple[int, int]] = []  # (status index, row id)
    for n, r in zip(picked, rows, strict=True):
        st, row_id = statuses[n], r["id"]
        if not r["inserted"]:
            continue
        if row_id is None:
            out[n] = "pending"
            continue
        if RANK.get(st.status, 0) <= rank.setdefault(row_id, r["rank"]):
            out[n] = "stale"
            continue
        rank[row_id] = RANK.get(st.status, 0)
        moves[row_id] = (st, _errors(st) or (moves[row_id][1] if row_id in moves else None))
        moving.append((n, row_id))
    moved: set[int] = set()
    if moves:
        moved = {r[0] for r in await conn.fetch(
            _MOVE, list(moves), [st.status for st, _ in moves.values()],
            [_ts(st.timestamp) for st, _ in moves.values()], [errors for _, errors in moves.values()])}
    for n, row_id in moving:  # a status whose message another transaction moved past it meanwhile is stale
        out[n] = "applied" if row_id in moved else "stale"
    return out
