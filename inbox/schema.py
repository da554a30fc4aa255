"""Is the database behind this code? One cached answer per inbox process.

:class:`SchemaGuard` answers from a check (pending migrations, and the columns the inbox reads,
:data:`EXPECTED_COLUMNS`) redone at most every :data:`RECHECK_S` seconds, or at once after a query
failed on a missing table, column or function (:func:`core.schema.is_schema_behind`). While the
schema is behind, every inbox route answers 500 ``DB_MISMATCH`` naming ``wacrm migrate``; the
problem is logged once a minute, not once a request.
"""

from __future__ import annotations

import logging
import time

import asyncpg

from wacrm.core.schema import pending_migrations, schema_behind
from wacrm.storage.migrate import MigrationError, pending

log = logging.getLogger("wacrm.inbox")

RECHECK_S = 10.0
LOG_EVERY_S = 60.0

# The columns the inbox reads that the newest migrations added (a column dropped by hand shows here).
EXPECTED_COLUMNS: tuple[tuple[str, str], ...] = (
    ("users", "password_hash"), ("sessions", "csrf_token"), ("api_tokens", "token_hash"),
    ("login_failures", "address"), ("conversations", "inbox_status"), ("conversations", "deleted_at"),
    ("conversations", "intelligence"), ("conversations", "messages_since_intelligence"), ("leads", "score"),
    ("notes", "body"), ("notifications", "snoozed_until"), ("outbound_log", "author_user_id"),
    ("inbox_events", "kind"), ("notification_states", "read_at"),
    ("tasks", "done_at"),
)


async def problems(conn: asyncpg.Connection) -> str | None:
    """What is behind, in one line, or None."""
    try:
        todo = await pending(conn)
    except MigrationError as exc:
        return str(exc)
    if todo:
        return pending_migrations([m.name for m in todo])
    rows = await conn.fetch(
        """SELECT x.t, x.c FROM unnest($1::text[], $2::text[]) AS x(t, c)
           WHERE NOT EXISTS (SELECT 1 FROM information_schema.columns i
                             WHERE i.table_schema = current_schema() AND i.table_name = x.t AND i.column_name = x.c)""",
        [t for t, _ in EXPECTED_COLUMNS], [c for _, c in EXPECTED_COLUMNS])
    if rows:
        missing = ", ".join(f"{r['t']}.{r['c']}" for r in rows)
        return schema_behind(f"missing {missing}")
    return None


class SchemaGuard:
    """The cached answer to "is the schema current?" for one process."""

    def __init__(self) -> None:
        self._checked_at = float("-inf")
        self._problem: str | None = None
        self._logged_at = float("-inf")

    def invalidate(self) -> None:
        self._checked_at = float("-inf")

    async def problem(self, pool: asyncpg.Pool) -> str | None:
        now = time.monotonic()
        if now - self._checked_at >= RECHECK_S:
            async with pool.acquire() as conn:
                self._problem = await problems(conn)
            self._checked_at = now
        if self._problem is not None and now - self._logged_at >= LOG_EVERY_S:
            self._logged_at = now
            log.error("inbox: %s (every inbox request answers 500 DB_MISMATCH until then)", self._problem)
        return self._problem
