"""The asyncpg pool: one per process, every query bounded by a timeout, its waits and statement
times measured (``wacrm_db_pool_wait_seconds``, ``wacrm_db_statement_seconds``).

``pooled=True`` (``DATABASE_POOLER=transaction``) is for a ``DATABASE_URL`` that reaches PostgreSQL
through a transaction-mode pooler, which hands each transaction (each statement outside one) to any
server connection: asyncpg's statement cache is off, so no named prepared statement is relied on
across them (each query is parsed anew, in an unnamed statement). Direct connections keep the cache.
"""

from __future__ import annotations

import time
from typing import Any

import asyncpg
import asyncpg.pool
import orjson

from wacrm.core import metrics


def _observe(query: Any) -> None:
    """asyncpg's query logger: each statement's elapsed time, by its first word."""
    verb = (query.query.lstrip().split(None, 1) or ["?"])[0].upper()
    metrics.DB_STATEMENT.labels(verb if verb in _VERBS else "OTHER").observe(query.elapsed)


_VERBS = frozenset({"SELECT", "INSERT", "UPDATE", "DELETE", "WITH", "COPY", "BEGIN", "COMMIT", "ROLLBACK"})


def _jsonb_encode(value: Any) -> bytes:
    return b"\x01" + orjson.dumps(value)  # jsonb's binary format: a version byte, then the JSON text


def _jsonb_decode(data: bytes) -> Any:
    return orjson.loads(data[1:])


async def _init(conn: asyncpg.Connection) -> None:
    """json and jsonb through orjson; jsonb in its binary format (orjson's bytes as they are, no round
    trip through str: a message carries six jsonb values)."""
    await conn.set_type_codec("json", encoder=lambda v: orjson.dumps(v).decode(), decoder=orjson.loads,
                              schema="pg_catalog")
    await conn.set_type_codec("jsonb", encoder=_jsonb_encode, decoder=_jsonb_decode, schema="pg_catalog",
                              format="binary")


async def _init_pooled(conn: asyncpg.Connection) -> None:
    await _init(conn)
    conn.add_query_logger(_observe)


async def _keep_session(conn: asyncpg.Connection) -> None:
    """The pool's reset on release, instead of asyncpg's ``RESET ALL; CLOSE ALL; UNLISTEN *; SELECT
    pg_advisory_unlock_all()``: a round trip on every release (a fifth of a message's statements).
    Pooled connections never change their session (no SET, LISTEN, cursors or session advisory locks;
    the inbox's LISTEN and the migrations' lock use connections of their own); asyncpg still rolls
    back a transaction left open before calling this."""


class _MeasuredPool(asyncpg.pool.Pool):
    """A pool that measures how long each acquire waited for a connection."""

    async def _acquire(self, timeout: float | None) -> Any:  # asyncpg's one path for every acquire
        started = time.perf_counter()
        try:
            return await super()._acquire(timeout)  # type: ignore[misc]
        finally:
            metrics.DB_POOL_WAIT.observe(time.perf_counter() - started)


def _statement_cache(pooled: bool) -> dict[str, int]:
    return {"statement_cache_size": 0} if pooled else {}


async def create_pool(dsn: str, *, timeout: float, min_size: int = 1, max_size: int = 10,
                      pooled: bool = False) -> asyncpg.Pool:
    """A pool whose connections decode json/jsonb with orjson and time out every statement
    (``min_size=0``: nothing is connected until a query needs it, so a server down at start is no error)."""
    pool = _MeasuredPool(
        dsn, min_size=min_size, max_size=max_size, max_queries=50000, max_inactive_connection_lifetime=300.0,
        connection_class=asyncpg.Connection, record_class=asyncpg.Record, setup=None, init=_init_pooled,
        reset=_keep_session, connect=None, loop=None, timeout=timeout, command_timeout=timeout,
        server_settings={"application_name": "wacrm"}, **_statement_cache(pooled))
    await pool
    return pool


async def connect(dsn: str, *, timeout: float, pooled: bool = False) -> asyncpg.Connection:
    conn = await asyncpg.connect(dsn, timeout=timeout, command_timeout=timeout, **_statement_cache(pooled))
    await _init(conn)
    return conn
