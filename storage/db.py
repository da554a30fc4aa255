"""The asyncpg pool: one per process, every query bounded by a timeout."""

from __future__ import annotations

import asyncpg
import orjson


async def _init(conn: asyncpg.Connection) -> None:
    for kind in ("json", "jsonb"):
        await conn.set_type_codec(kind, encoder=lambda v: orjson.dumps(v).decode(), decoder=orjson.loads,
                                  schema="pg_catalog")


async def create_pool(dsn: str, *, timeout: float, min_size: int = 1, max_size: int = 10) -> asyncpg.Pool:
    """A pool whose connections decode json/jsonb with orjson and time out every statement."""
    pool = await asyncpg.create_pool(
        dsn, min_size=min_size, max_size=max_size, init=_init, timeout=timeout, command_timeout=timeout,
        server_settings={"application_name": "wacrm"})
    assert pool is not None
    return pool


async def connect(dsn: str, *, timeout: float) -> asyncpg.Connection:
    conn = await asyncpg.connect(dsn, timeout=timeout, command_timeout=timeout)
    await _init(conn)
    return conn
