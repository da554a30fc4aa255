"""Migration runner: numbered SQL files applied in order, each once, each in a transaction.

``schema_migrations`` records version, name, checksum and time. A PostgreSQL advisory lock
serialises runners that start together. A file edited after it was applied stops the run
(:class:`MigrationError`) instead of leaving the schema and the files out of step.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import asyncpg

# An arbitrary constant: the advisory lock key every wacrm migration runner takes.
LOCK_KEY = 0x7761_6372_6D00  # "wacrm\0"
FIX_COMMAND = "wacrm migrate"

_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


class MigrationError(Exception):
    """The migrations cannot be applied as they are; the message says why and what to do."""


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def discover(directory: Path | None = None) -> list[Migration]:
    """The migration files, in version order (the shipped ``migrations`` package by default)."""
    files = ([(p.name, p.read_text()) for p in Path(directory).iterdir()] if directory is not None else
             [(r.name, r.read_text()) for r in resources.files("wacrm.migrations").iterdir()])
    found: dict[int, Migration] = {}
    for filename, text in files:
        if not filename.endswith(".sql"):
            continue
        m = _NAME.match(filename)
        if not m:
            raise MigrationError(f"migration file {filename!r} is not named NNNN_lowercase_name.sql")
        version = int(m.group(1))
        if version in found:
            raise MigrationError(f"two migration files have version {version:04d}: "
                                 f"{found[version].name} and {filename}")
        found[version] = Migration(version, filename, text)
    return [found[v] for v in sorted(found)]


_CREATE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version     integer PRIMARY KEY,
    name        text NOT NULL,
    checksum    text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
)"""


async def _applied(conn: asyncpg.Connection) -> dict[int, asyncpg.Record]:
    exists = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
    if not exists:
        return {}
    rows = await conn.fetch("SELECT version, name, checksum, applied_at FROM schema_migrations ORDER BY version")
    return {r["version"]: r for r in rows}


def _check_edits(migrations: list[Migration], applied: dict[int, asyncpg.Record]) -> None:
    for m in migrations:
        row = applied.get(m.version)
        if row is not None and row["checksum"] != m.checksum:
            raise MigrationError(
                f"migration {m.name} was edited after it was applied on {row['applied_at']:%Y-%m-%d %H:%M} "
                f"(checksum {row['checksum'][:12]}… in the database, {m.checksum[:12]}… on disk). "
                "Restore the file as it was and put the change in a new numbered migration.")
    known = {m.version for m in migrations}
    unknown = sorted(v for v in applied if v not in known)
    if unknown:
        raise MigrationError(
            f"the database has migrations this code does not know: {', '.join(applied[v]['name'] for v in unknown)}. "
            "Run a newer wacrm, or restore the missing files.")


async def pending(conn: asyncpg.Connection, migrations: list[Migration] | None = None) -> list[Migration]:
    """Migrations not yet applied; raises :class:`MigrationError` if an applied one was edited."""
    migrations = discover() if migrations is None else migrations
    applied = await _applied(conn)
    _check_edits(migrations, applied)
    return [m for m in migrations if m.version not in applied]


async def migrate(conn: asyncpg.Connection, migrations: list[Migration] | None = None,
                  log: Callable[[str], None] | None = None) -> list[Migration]:
    """Apply pending migrations in order under the advisory lock; return those applied."""
    migrations = discover() if migrations is None else migrations
    done: list[Migration] = []
    await conn.execute("SELECT pg_advisory_lock($1)", LOCK_KEY)
    try:
        await conn.execute(_CREATE)
        for m in await pending(conn, migrations):
            async with conn.transaction():
                await conn.execute(m.sql)
                await conn.execute("INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                                   m.version, m.name, m.checksum)
            done.append(m)
            if log is not None:
                log(f"applied {m.name}")
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", LOCK_KEY)
    return done


async def require_current(conn: asyncpg.Connection) -> None:
    """Refuse to run against a schema that is behind the code (serve and worker call this)."""
    todo = await pending(conn)
    if todo:
        raise MigrationError(
            f"the database schema is behind this code: {len(todo)} pending migration(s) "
            f"({', '.join(m.name for m in todo)}). Run: {FIX_COMMAND}")


class DatabaseUnreachable(Exception):
    """The database did not answer; the message names DATABASE_URL and the cause."""


async def run_migrations(database_url: str, timeout: float, out: Callable[[str], None] = print) -> int:
    """Connect, apply what is pending (each applied file reported to ``out``), return how many were applied."""
    from wacrm.storage.db import connect

    try:
        conn = await connect(database_url, timeout=timeout)
    except Exception as exc:
        raise DatabaseUnreachable(f"cannot connect to DATABASE_URL: {type(exc).__name__}: {exc}") from None
    try:
        done = await migrate(conn, log=out)
    finally:
        await conn.close()
    if not done:
        out(f"schema is up to date ({len(discover())} migrations applied)")
    return len(done)
