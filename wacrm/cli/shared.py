"""What the commands share: their settings (with a running ``wacrm dev``'s database and broker), a
session of their own with the database, the schema check, logging, and times on the command line."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from wacrm.core import schema
from wacrm.core.exits import EXIT_CONFIG, EXIT_SCHEMA, CommandError
from wacrm.core.settings import Profile, Settings, SettingsError, environment, for_command
from wacrm.devstate import DEFAULT_STATE_DIR, with_running_dev


def settings(profile: Profile, needs: Iterable[str] = (), *, require: Iterable[str] = (),
             state_dir: Path = DEFAULT_STATE_DIR) -> Settings:
    """The settings from the environment; ``DATABASE_URL`` and ``KAFKA_BOOTSTRAP_SERVERS``, when unset,
    from the ``wacrm dev`` running on ``state_dir`` (:func:`wacrm.devstate.with_running_dev`)."""
    env, used = with_running_dev(environment(), state_dir)
    if used:
        print(f"wacrm: {used}", file=sys.stderr)
    try:
        return for_command(env, profile, needs, require=require)
    except SettingsError as exc:
        raise CommandError(str(exc), EXIT_CONFIG) from None


def db_settings() -> Settings:
    """The settings of a command that needs the database (``DATABASE_URL``, or a running ``wacrm dev``'s)."""
    return settings("tool", {"DATABASE_URL"}, require=["DATABASE_URL"])


def bus_settings(needs_db: bool) -> Settings:
    """The settings of a command that needs the broker, and the database too with ``needs_db``."""
    needs = ["KAFKA_BOOTSTRAP_SERVERS", *(["DATABASE_URL"] if needs_db else [])]
    return settings("tool", needs, require=needs)


def schema_behind(cause: str | None = None) -> CommandError:
    """What a command says when a table or column it reads is missing: the schema is behind the code."""
    return CommandError(schema.schema_behind(cause=cause), EXIT_SCHEMA)


@contextlib.contextmanager
def schema_checked(cause: str | None = None) -> Iterator[None]:
    """A query in the block that names a table, column or function the database lacks exits 3 with the
    command that fixes it (:func:`wacrm.core.schema.is_schema_behind`)."""
    try:
        yield
    except Exception as exc:
        if schema.is_schema_behind(exc):
            raise schema_behind(cause) from None
        raise


def setup_logging(level: str, fmt: str = "text", *, batched: bool = False) -> None:
    from wacrm.core.logs import configure

    configure(level, fmt, batched=batched)


async def direct_session(s: Settings) -> Any:
    """A connection of its own (a session) over ``DIRECT_URL``, which a transaction pooler is not."""
    from wacrm.storage.db import connect

    assert s.direct_url
    try:
        return await connect(s.direct_url, timeout=s.db_timeout_s)
    except Exception as exc:
        raise CommandError(f"cannot connect to {s.direct_variable}: {type(exc).__name__}: {exc}") from None


async def schema_problem(s: Settings) -> str | None:
    """What is behind in the database (the fix named), ``None`` when it is current (asked over ``DIRECT_URL``)."""
    from wacrm.storage.migrate import MigrationError, require_current

    conn = await direct_session(s)
    try:
        await require_current(conn)
    except MigrationError as exc:
        return str(exc)
    finally:
        await conn.close()
    return None


async def check_schema(s: Settings) -> None:
    """Refuse to go on (exit 3) when the database is behind the code."""
    problem = await schema_problem(s)
    if problem is not None:
        raise CommandError(problem, EXIT_SCHEMA)


def epoch(text: str | None, option: str) -> float | None:
    """An ISO 8601 time (UTC when it names no zone) as epoch seconds."""
    if text is None:
        return None
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        raise CommandError(f"{option}: {text!r} is not an ISO 8601 time (e.g. 2026-11-28T14:05:00Z)",
                           EXIT_CONFIG) from None
    return (at if at.tzinfo else at.replace(tzinfo=UTC)).timestamp()


def when(epoch: float) -> str:
    """Epoch seconds as ``YYYY-MM-DD HH:MM:SS`` (UTC)."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(epoch))
