"""The schema is behind the code: how a failure shows it, and the one message that says so.

A query naming a table, column or function the database lacks (SQLSTATE 42P01, 42703, 42883:
:data:`SCHEMA_BEHIND_SQLSTATES`) means migrations are pending, which :data:`FIX_COMMAND` fixes.
:func:`is_schema_behind` tells such a failure; :func:`schema_behind` and :func:`pending_migrations`
are the messages every process and command prints for it.
"""

from __future__ import annotations

from collections.abc import Sequence

FIX_COMMAND = "wacrm migrate"

SCHEMA_BEHIND_SQLSTATES = frozenset({
    "42P01",  # undefined_table
    "42703",  # undefined_column
    "42883",  # undefined_function
})


def is_schema_behind(exc: BaseException) -> bool:
    """A query failed because the schema lacks a table, column or function the code uses."""
    return getattr(exc, "sqlstate", None) in SCHEMA_BEHIND_SQLSTATES


def schema_behind(what: str | None = None, *, cause: str | None = None) -> str:
    """``the database schema is behind this code[: what][ (cause)]. Run: wacrm migrate``."""
    detail = (f": {what}" if what else "") + (f" ({cause})" if cause else "")
    return f"the database schema is behind this code{detail}. Run: {FIX_COMMAND}"


def pending_migrations(names: Sequence[str]) -> str:
    """:func:`schema_behind` naming the migrations not applied yet."""
    return schema_behind(f"{len(names)} pending migration(s) ({', '.join(names)})")
