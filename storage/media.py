"""The media ledger (table ``media``, migration 0021): claims, outcomes, the republishing sweep, retention.

A row is made by a trigger when a customer's media message is stored. Every change of state is one
statement guarded by the state it expects, so two workers (a redelivery, a replay, a restart) never
download the same media id twice: only the one whose claim returned a row goes on.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from wacrm.storage import ledger
from wacrm.topics.records import MediaJob

#: The states the inbox shows (``downloading`` is shown as ``pending``).
STATES = ("pending", "stored", "failed", "too_large", "expired")
#: A fresh row not claimed this long after it was made (or published) is published again by the sweep.
REPUBLISH_AFTER_S = 30.0


@dataclass(frozen=True, slots=True)
class Claimed:
    id: int
    provider_media_id: str
    message_id: int
    conversation_id: int
    phone_number_id: str
    type: str
    mime_type: str | None
    sha256: str | None  # as the webhook gave it (base64), or hex
    attempts: int  # with this one


_CLAIM = """
    UPDATE media SET state = 'downloading', attempts = attempts + 1, claimed_at = now(), updated_at = now()
    WHERE provider_media_id = $1
      AND ((state = 'pending' AND next_attempt_at <= now())
           OR (state = 'downloading' AND claimed_at < now() - make_interval(secs => $2)))
    RETURNING id, provider_media_id, message_id, conversation_id, phone_number_id, type, mime_type, sha256, attempts"""


async def claim(conn: asyncpg.Connection, media_id: str, lease_s: float) -> Claimed | None:
    """Take the download of ``media_id``: pending and due, or claimed by a worker whose lease ran out.
    ``None``: done already, not due yet, or being downloaded by another worker."""
    row = await conn.fetchrow(_CLAIM, media_id, lease_s)
    return None if row is None else Claimed(**dict(row))


async def _finish(conn: asyncpg.Connection, row_id: int, sets: str, *args: Any) -> bool:
    """Move a claimed row (``downloading``) to its outcome; the thread hears of it as a message event."""
    done = await conn.fetchrow(
        f"""UPDATE media SET {sets}, claimed_at = NULL, updated_at = now()
            WHERE id = $1 AND state = 'downloading' RETURNING conversation_id, message_id""", row_id, *args)
    if done is not None:
        await conn.execute("SELECT wacrm_inbox_event('message', $1, $2, NULL)", done["conversation_id"],
                           done["message_id"])
    return done is not None


async def stored(conn: asyncpg.Connection, row_id: int, sha256: str, size: int, mime_type: str | None) -> bool:
    return await _finish(conn, row_id, "state = 'stored', sha256 = $2, size = $3, "
                         "mime_type = COALESCE($4, mime_type), stored_at = now(), error = NULL",
                         sha256, size, mime_type)


async def failed(conn: asyncpg.Connection, row_id: int, state: str, error: dict[str, Any],
                 size: int | None = None) -> bool:
    """``failed`` (a checksum mismatch, a permanent Graph error, retries used up) or ``too_large``."""
    assert state in ("failed", "too_large")
    return await _finish(conn, row_id, "state = $2, error = $3, size = COALESCE($4, size)", state, error, size)


async def retry_later(conn: asyncpg.Connection, row_id: int, delay_s: float, error: dict[str, Any],
                      refund: bool = False) -> bool:
    """Back to ``pending`` until ``delay_s`` from now; the sweep publishes it again when due. ``refund``:
    the attempt is not counted (the number waits for a token: no fault of this download's)."""
    return await conn.fetchval(
        """UPDATE media SET state = 'pending', next_attempt_at = now() + make_interval(secs => $2), error = $3,
                  claimed_at = NULL, published_at = NULL, updated_at = now(),
                  attempts = CASE WHEN $4 THEN greatest(attempts - 1, 0) ELSE attempts END
           WHERE id = $1 AND state = 'downloading' RETURNING true""", row_id, delay_s, error, refund) or False


async def release(conn: asyncpg.Connection, row_id: int) -> bool:
    """Give a claim back untried (the store was unavailable): pending at once, the attempt not counted."""
    return await conn.fetchval(
        """UPDATE media SET state = 'pending', attempts = greatest(attempts - 1, 0), claimed_at = NULL,
                  updated_at = now()
           WHERE id = $1 AND state = 'downloading' RETURNING true""", row_id) or False


async def due_for_publishing(conn: asyncpg.Connection, lease_s: float, limit: int) -> list[MediaJob]:
    """Rows to put on ``wa.media`` again: retries now due, fresh rows nobody claimed for
    :data:`REPUBLISH_AFTER_S` (their record was lost), claims whose worker died (lease over); marked published."""
    rows = await conn.fetch(
        """UPDATE media SET published_at = now()
           WHERE id IN (SELECT id FROM media
                        WHERE ((state = 'pending' AND next_attempt_at <= now()
                                AND (attempts > 0 OR created_at < now() - make_interval(secs => $3)))
                               OR (state = 'downloading' AND claimed_at < now() - make_interval(secs => $2)))
                          AND (published_at IS NULL OR published_at < now() - make_interval(secs => $3))
                        ORDER BY next_attempt_at LIMIT $1 FOR UPDATE SKIP LOCKED)
           RETURNING provider_media_id, conversation_key""", limit, lease_s, REPUBLISH_AFTER_S)
    return [MediaJob(r["provider_media_id"], r["conversation_key"]) for r in rows]


@dataclass(frozen=True, slots=True)
class Served:
    """What ``GET /api/v1/media/{id}`` needs of a row."""

    state: str
    sha256: str | None
    size: int | None
    mime_type: str | None
    filename: str | None
    type: str


async def for_serving(conn: asyncpg.Connection, row_id: int) -> Served | None:
    row = await conn.fetchrow("SELECT state, sha256, size, mime_type, filename, type FROM media WHERE id = $1",
                              row_id)
    return None if row is None else Served(**dict(row))


@dataclass(frozen=True, slots=True)
class Pruned:
    media: int  # rows marked expired
    files: list[str]  # keys no longer referenced by a stored row: to delete from the store


async def expire(conn: asyncpg.Connection, days: int, *, dry_run: bool = False) -> Pruned:
    """Mark media stored more than ``days`` ago ``expired``; the files only they used are returned
    for deleting (a file another, newer message still shows, or a person's reply not sent yet names,
    is kept). Run in a transaction."""
    before = datetime.now(UTC) - timedelta(days=days)
    if dry_run:
        rows = await conn.fetch("SELECT sha256 FROM media WHERE state = 'stored' AND stored_at < $1", before)
    else:
        rows = await conn.fetch(
            """UPDATE media SET state = 'expired', updated_at = now() WHERE state = 'stored' AND stored_at < $1
               RETURNING sha256, conversation_id, message_id""", before)
        for r in rows:
            await conn.execute("SELECT wacrm_inbox_event('message', $1, $2, NULL)", r["conversation_id"],
                               r["message_id"])
    keys = sorted({r["sha256"] for r in rows})
    still = {r["sha256"] for r in await conn.fetch(
        "SELECT DISTINCT sha256 FROM media WHERE state = 'stored' AND sha256 = ANY($1)"
        + (" AND stored_at >= $2" if dry_run else ""), keys, *([before] if dry_run else []))}
    if keys:  # a file a person's reply still has to send (queued, retrying, failed and retryable) stays
        still |= {r["sha256"] for r in await conn.fetch(_UNSENT_FILES, keys)}
    return Pruned(len(rows), [k for k in keys if k not in still])


_UNSENT_FILES = f"""
    SELECT DISTINCT intent -> 'media' ->> 'sha256' AS sha256 FROM outbound_log
    WHERE intent ->> 'kind' = 'media' AND state NOT IN {ledger.sql_in((ledger.SENT, ledger.DROPPED))}
      AND intent -> 'media' ->> 'sha256' = ANY($1)"""


# --- sending: a person's file uploaded to Meta (migration 0023) ----------------------------------

async def upload_of(conn: asyncpg.Connection, outbound_log_id: int) -> str | None:
    """Meta's media id of the file a media reply uploaded before (None: not uploaded yet)."""
    return await conn.fetchval("SELECT media_upload_id FROM outbound_log WHERE id = $1", outbound_log_id)


async def record_upload(conn: asyncpg.Connection, outbound_log_id: int, media_id: str) -> bool:
    """Keep the upload's media id on the claimed ledger row (``sending``) before the send, so a retry sends
    it again rather than uploading anew; renews the claim. False when the row is no longer ``sending``."""
    return await conn.fetchval(
        """UPDATE outbound_log SET media_upload_id = $2, claimed_at = now() WHERE id = $1 AND state = 'sending'
           RETURNING true""", outbound_log_id, media_id) or False


async def renew_claim(conn: asyncpg.Connection, outbound_log_id: int) -> bool:
    """A long upload is still going: the row stays ``sending`` past the in-flight bound, which is the
    bound of one Graph call (a crashed worker's row is still found once its renewals stop)."""
    return await conn.fetchval(
        "UPDATE outbound_log SET claimed_at = now() WHERE id = $1 AND state = 'sending' RETURNING true",
        outbound_log_id) or False
