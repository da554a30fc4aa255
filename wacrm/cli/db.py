"""``wacrm migrate`` and ``wacrm verify-schema``: the database schema, over ``DIRECT_URL`` (default
``DATABASE_URL``), which a transaction pooler is not."""

from __future__ import annotations

import argparse
import asyncio

from wacrm.cli.shared import db_settings, direct_session, settings
from wacrm.core.exits import EXIT_FAIL
from wacrm.core.settings import Settings


def add(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    mg = sub.add_parser("migrate", help="apply pending database migrations (needs DATABASE_URL)",
                        description="Applies the numbered migrations not yet applied, in order, each in its own "
                        "transaction, under an advisory lock (two at once are safe), over DIRECT_URL when it is set "
                        "(the lock needs a session: not a transaction pooler). Refuses (exit 3) when an "
                        "applied migration's file was edited afterwards.")
    mg.add_argument("--status", action="store_true", help="list applied and pending migrations with their "
                    "checksums instead of applying anything; exit 1 when any is pending, edited or unknown")
    mg.set_defaults(func=cmd_migrate)
    vs = sub.add_parser("verify-schema", help="check the live database against what the migrations make "
                        "(needs DATABASE_URL)",
                        description="Applies every migration to a scratch schema inside a transaction that is "
                        "rolled back, then compares its tables, columns and types, indexes, constraints, foreign "
                        "keys, functions, triggers and tables' storage parameters with the live schema's. "
                        "One line per item (✓, or ✗ with "
                        "the fix); exit 1 on any gap. Changes nothing.")
    vs.add_argument("--quiet", action="store_true", help="print only the gaps and the summary")
    vs.set_defaults(func=cmd_verify_schema)


def cmd_migrate(args: argparse.Namespace) -> int:
    """Over ``DIRECT_URL`` (default ``DATABASE_URL``): the advisory lock needs a session of its own.
    Exit 1 when the database is unreachable, 3 when a migration is refused (``storage.migrate``'s errors)."""
    from wacrm.storage.migrate import run_migrations

    s = settings("prod", {"DATABASE_URL"})
    assert s.direct_url
    if args.status:
        return asyncio.run(_migrate_status(s))
    asyncio.run(run_migrations(s.direct_url, s.db_timeout_s, variable=s.direct_variable))
    return 0


async def _migrate_status(s: Settings) -> int:
    """Applied and pending migrations with checksums; exit 1 when any is pending, edited or unknown."""
    from wacrm.core.schema import FIX_COMMAND
    from wacrm.storage.migrate import status

    conn = await direct_session(s)
    try:
        rows = await status(conn)  # a MigrationError is reported with its exit code, 3
    finally:
        await conn.close()
    for row in rows:
        print(row.line())
    behind = [r for r in rows if r.state != "applied"]
    print(f"{len(rows) - len(behind)} applied, {sum(r.state == 'pending' for r in behind)} pending"
          + (f", {len(behind) - sum(r.state == 'pending' for r in behind)} edited or unknown" if behind else ""))
    if any(r.state == "pending" for r in behind):
        print(f"run: {FIX_COMMAND}")
    return EXIT_FAIL if behind else 0


def cmd_verify_schema(args: argparse.Namespace) -> int:
    s = db_settings()
    return asyncio.run(_verify_schema(s, args.quiet))


async def _verify_schema(s: Settings, quiet: bool) -> int:
    from wacrm.storage.verify import verify

    conn = await direct_session(s)
    try:
        checks = await verify(conn)
    finally:
        await conn.close()
    gaps = [c for c in checks if not c.ok]
    for c in checks:
        if not (quiet and c.ok):
            print(c.line())
    kinds = sorted({c.item.kind for c in checks})
    print(f"{len(checks) - len(gaps)} of {len(checks)} items as the migrations make them ({', '.join(kinds)})"
          + (f"; {len(gaps)} gap(s)" if gaps else ""))
    return EXIT_FAIL if gaps else 0
