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

from wacrm.core.exits import EXIT_SCHEMA, CommandError
from wacrm.core.schema import pending_migrations

# An arbitrary constant: the advisory lock key every wacrm migration runner takes.
LOCK_KEY = 0x7761_6372_6D00  # "wacrm\0"

_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


class MigrationError(CommandError):
    """The migrations cannot be applied as they are; the message says why and what to do (exit 3)."""

    code = EXIT_SCHEMA


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


@dataclass(frozen=True, slots=True)
class MigrationStatus:
    """One migration as ``wacrm migrate --status`` shows it."""

    name: str
    checksum: str  # the file's
    state: str  # applied | pending | edited (applied, then the file changed) | unknown (applied, no file)
    applied_at: str = ""
    applied_checksum: str = ""

    def line(self) -> str:
        mark = {"applied": "✓", "pending": "·"}.get(self.state, "✗")
        when = f" {self.applied_at}" if self.applied_at else ""
        edited = f" (applied as {self.applied_checksum[:12]}, the file is now {self.checksum[:12]}: restore it and " \
                 "put the change in a new migration)" if self.state == "edited" else ""
        return f"{mark} {self.name:<36} {self.state:<8} {(self.checksum or self.applied_checksum)[:12]}{when}{edited}"


async def status(conn: asyncpg.Connection, migrations: list[Migration] | None = None) -> list[MigrationStatus]:
    """Each migration file against ``schema_migrations``, then what the database has that no file is."""
    migrations = discover() if migrations is None else migrations
    applied = await _applied(conn)
    out = []
    for m in migrations:
        row = applied.get(m.version)
        if row is None:
            out.append(MigrationStatus(m.name, m.checksum, "pending"))
        else:
            state = "applied" if row["checksum"] == m.checksum else "edited"
            out.append(MigrationStatus(m.name, m.checksum, state, f"{row['applied_at']:%Y-%m-%d %H:%M}",
                                       row["checksum"]))
    known = {m.version for m in migrations}
    for version, row in sorted(applied.items()):
        if version not in known:
            out.append(MigrationStatus(row["name"], "", "unknown", f"{row['applied_at']:%Y-%m-%d %H:%M}",
                                       row["checksum"]))
    return out


async def pending(conn: asyncpg.Connection, migrations: list[Migration] | None = None) -> list[Migration]:
    """Migrations not yet applied; raises :class:`MigrationError` if an applied one was edited, or the
    database has one this code does not know."""
    migrations = discover() if migrations is None else migrations
    rows = await status(conn, migrations)
    for r in rows:
        if r.state == "edited":
            raise MigrationError(
                f"migration {r.name} was edited after it was applied on {r.applied_at} "
                f"(checksum {r.applied_checksum[:12]}… in the database, {r.checksum[:12]}… on disk). "
                "Restore the file as it was and put the change in a new numbered migration.")
    unknown = [r.name for r in rows if r.state == "unknown"]
    if unknown:
        raise MigrationError(
            f"the database has migrations this code does not know: {', '.join(unknown)}. "
            "Run a newer wacrm, or restore the missing files.")
    todo = {r.name for r in rows if r.state == "pending"}
    return [m for m in migrations if m.name in todo]


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
        raise MigrationError(pending_migrations([m.name for m in todo]))


class DatabaseUnreachable(CommandError):
    """The database did not answer; the message names the variable (DIRECT_URL or DATABASE_URL) and the cause."""


async def run_migrations(database_url: str, timeout: float, out: Callable[[str], None] = print, *,
                         variable: str = "DATABASE_URL") -> int:
    """Connect, apply what is pending (each applied file reported to ``out``), return how many were applied.

    ``database_url`` must reach PostgreSQL with a session of its own (``DIRECT_URL``, not a transaction
    pooler): the advisory lock is held across the migrations' transactions."""
    from wacrm.storage.db import connect

    try:
        conn = await connect(database_url, timeout=timeout)
    except Exception as exc:
        raise DatabaseUnreachable(f"cannot connect to {variable}: {type(exc).__name__}: {exc}") from None
    try:
        done = await migrate(conn, log=out)
    finally:
        await conn.close()
    if not done:
        out(f"schema is up to date ({len(discover())} migrations applied)")
    return len(done)
