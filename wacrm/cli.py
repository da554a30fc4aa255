"""The ``wacrm`` command. Each subcommand loads the settings once and reports problems plainly:
a message on stderr and a non-zero exit, never a traceback for a configuration or input error.

Exit codes: 0 ok, 1 failure (a service unreachable, a request refused), 2 bad configuration
or usage, 3 the database schema is behind (run ``wacrm migrate``).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from wacrm.core import eventloop
from wacrm.core.settings import Settings, SettingsError, load
from wacrm.devstate import DEFAULT_STATE_DIR, read_state, with_running_dev
from wacrm.whatsapp.limits import ACCESS_TOKEN_MAX_CHARS, is_access_token

EXIT_FAIL, EXIT_CONFIG, EXIT_SCHEMA = 1, 2, 3


class CommandError(Exception):
    """A failure to report on stderr with an exit code, without a traceback."""

    def __init__(self, message: str, code: int = EXIT_FAIL) -> None:
        super().__init__(message)
        self.code = code


def _settings(profile: str, needs: set[str] | None = None, state_dir: Path = DEFAULT_STATE_DIR) -> Settings:
    """The settings from the environment; ``DATABASE_URL`` and ``KAFKA_BOOTSTRAP_SERVERS``, when unset,
    from the ``wacrm dev`` running on ``state_dir`` (:func:`wacrm.devstate.with_running_dev`)."""
    env, used = with_running_dev(os.environ, state_dir)
    if used:
        print(f"wacrm: {used}", file=sys.stderr)
    try:
        return load(env, profile, needs=frozenset(needs or ()))  # type: ignore[arg-type]
    except SettingsError as exc:
        raise CommandError(str(exc), EXIT_CONFIG) from None


def _db_settings() -> Settings:
    """The settings of a command that needs the database (``DATABASE_URL``, or a running ``wacrm dev``'s)."""
    s = _settings("tool", {"DATABASE_URL"})
    if s.database_url is None:
        raise CommandError("DATABASE_URL: required by this command and not set", EXIT_CONFIG)
    return s


def _schema_behind() -> CommandError:
    """What a command says when a table or column it reads is missing: the schema is behind the code."""
    return CommandError("the database schema is behind this code. Run: wacrm migrate", EXIT_SCHEMA)


def _logging(level: str, fmt: str = "text", *, batched: bool = False) -> None:
    from wacrm.core.logs import configure

    configure(level, fmt, batched=batched)


async def _check_schema(s: Settings) -> None:
    """Refuse to go on (exit 3) when the database is behind the code."""
    problem = await _schema_problem(s)
    if problem is not None:
        raise CommandError(problem, EXIT_SCHEMA)


# --- migrate -------------------------------------------------------------------------------

def cmd_migrate(args: argparse.Namespace) -> int:
    """Over ``DIRECT_URL`` (default ``DATABASE_URL``): the advisory lock needs a session of its own."""
    s = _settings("prod", {"DATABASE_URL"})
    assert s.direct_url
    if args.status:
        return asyncio.run(_migrate_status(s.direct_url, s.db_timeout_s, s.direct_variable))
    asyncio.run(run_migrations(s.direct_url, s.db_timeout_s, variable=s.direct_variable))
    return 0


async def _connected(database_url: str, timeout: float, variable: str = "DATABASE_URL") -> Any:
    """A connection of its own (a session); tools pass ``DIRECT_URL``, which a transaction pooler is not."""
    from wacrm.storage.db import connect

    try:
        return await connect(database_url, timeout=timeout)
    except Exception as exc:
        raise CommandError(f"cannot connect to {variable}: {type(exc).__name__}: {exc}") from None


async def _migrate_status(database_url: str, timeout: float, variable: str) -> int:
    """Applied and pending migrations with checksums; exit 1 when any is pending, edited or unknown."""
    from wacrm.storage.migrate import FIX_COMMAND, MigrationError, status

    conn = await _connected(database_url, timeout, variable)
    try:
        rows = await status(conn)
    except MigrationError as exc:
        raise CommandError(str(exc), EXIT_SCHEMA) from None
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
    s = _db_settings()
    return asyncio.run(_verify_schema(s, args.quiet))


async def _verify_schema(s: Settings, quiet: bool) -> int:
    from wacrm.storage.verify import verify

    assert s.direct_url
    conn = await _connected(s.direct_url, s.db_timeout_s, s.direct_variable)
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


async def run_migrations(database_url: str, timeout: float, out: Any = print, *, variable: str = "DATABASE_URL") -> int:
    """``storage.migrate.run_migrations`` with its failures as command errors (exit 1 unreachable, 3 refused)."""
    from wacrm.storage.migrate import DatabaseUnreachable, MigrationError
    from wacrm.storage.migrate import run_migrations as apply

    try:
        return await apply(database_url, timeout, out, variable=variable)
    except DatabaseUnreachable as exc:
        raise CommandError(str(exc)) from None
    except MigrationError as exc:
        raise CommandError(str(exc), EXIT_SCHEMA) from None


# --- topics --------------------------------------------------------------------------------

def cmd_topics(args: argparse.Namespace) -> int:
    s = _settings("prod", {"KAFKA_BOOTSTRAP_SERVERS"})
    asyncio.run(create_topics(s))
    return 0


async def create_topics(s: Settings, out: Any = print) -> None:
    """``topics.admin.create_topics`` with its failure as a command error (exit 1)."""
    from wacrm.topics.admin import TopicsError
    from wacrm.topics.admin import create_topics as create

    try:
        await create(s, out)
    except TopicsError as exc:
        raise CommandError(str(exc)) from None


# --- serve ---------------------------------------------------------------------------------

async def _schema_problem(s: Settings) -> str | None:
    """What is behind in the database (the fix named), ``None`` when it is current (asked over ``DIRECT_URL``)."""
    from wacrm.storage.migrate import MigrationError, require_current

    assert s.direct_url
    conn = await _connected(s.direct_url, s.db_timeout_s, s.direct_variable)
    try:
        await require_current(conn)
    except MigrationError as exc:
        return str(exc)
    finally:
        await conn.close()
    return None


def _processes(text: str) -> int:
    """``--processes``: a whole number from 1 to 64."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, not {text!r}") from None
    if not 1 <= n <= 64:
        raise argparse.ArgumentTypeError(f"must be from 1 to 64, not {n}")
    return n


def cmd_serve(args: argparse.Namespace) -> int:
    """The webhook and the inbox (or one, ``--only``). Neither a database that is down nor a schema
    that is behind stops it: the webhook never uses the database (``--only webhook`` needs no
    ``DATABASE_URL``) and keeps accepting; the inbox answers 500 DB_MISMATCH, or is not ready (/readyz)
    until its database answers."""
    from aiohttp import web

    from wacrm.inbox.openapi import MissingDocument
    from wacrm.inbox.server import make_app
    from wacrm.inbox.web import MissingAsset
    from wacrm.orchestrator.rules import RulesError

    needs = set() if args.only == "webhook" else {"DATABASE_URL"}
    if args.only != "inbox":
        needs |= {"KAFKA_BOOTSTRAP_SERVERS", "WHATSAPP_APP_SECRET", "WHATSAPP_VERIFY_TOKEN"}
    s = _settings("prod", needs)
    _logging(s.log_level, s.log_format, batched=True)
    if args.processes > 1:  # N copies of this command, each one process on the shared port
        from wacrm.core import copies, procs

        one = procs.python_cmd("serve", "--reuse-port", *(["--only", args.only] if args.only else []))
        logging.getLogger("wacrm").info("serving with %d processes on port %d (SO_REUSEPORT)", args.processes, s.port)
        return copies.run(one, args.processes)
    log = logging.getLogger("wacrm")
    if args.only != "webhook":
        try:
            problem = asyncio.run(_schema_problem(s))
        except CommandError as exc:  # the database is down: the inbox becomes ready when it answers
            log.error("%s (serving anyway: the inbox is not ready until the database answers%s)", exc,
                      "" if args.only else "; the webhook keeps accepting")
        else:
            if problem:
                log.error("%s (serving anyway: the webhook keeps accepting, the inbox answers DB_MISMATCH)", problem)
            else:
                asyncio.run(_check_token_key(s))  # a wrong TOKEN_ENCRYPTION_KEY stops it here (exit 2)
    try:
        app = make_app(s, args.only)
    except RulesError as exc:
        raise CommandError(f"RULES_FILE: {exc}", EXIT_CONFIG) from None
    except (MissingAsset, MissingDocument) as exc:  # a broken install: say which file, do not serve a blank page
        raise CommandError(str(exc), EXIT_FAIL) from None
    what = {"webhook": "webhook", "inbox": "inbox"}.get(args.only, "webhook and inbox")
    log.info("%s listening on http://%s:%d", what, s.host, s.port)
    web.run_app(app, host=s.host, port=s.port, print=None, access_log=None,
                shutdown_timeout=10, handle_signals=True, reuse_port=args.reuse_port or None)
    return 0


# --- users ---------------------------------------------------------------------------------

async def _users(args: argparse.Namespace, s: Settings, password: str | None) -> None:
    import asyncpg

    from wacrm.inbox import auth

    assert s.direct_url
    conn = await _connected(s.direct_url, s.db_timeout_s, s.direct_variable)
    try:
        if args.users_command == "add":
            generated = password is None
            secret = password if password is not None else auth.generate_password()
            try:
                user = await auth.add_user(conn, args.email, args.role, await auth.hash_password_async(secret),
                                           args.name)
            except asyncpg.UniqueViolationError:
                raise CommandError(f"a user with the email {auth.normalize_email(args.email)} exists already") \
                    from None
            print(f"added {user.role} {user.email} (id {user.id})")
            if generated:
                print(f"password (shown once): {secret}")
        elif args.users_command == "token":
            found = await auth.find_user(conn, args.email)
            if found is None:
                raise CommandError(f"no user with the email {auth.normalize_email(args.email)}")
            if args.revoke:
                print(f"revoked {await auth.revoke_tokens(conn, found[0].id)} token(s) of {found[0].email}")
            else:
                print(await auth.issue_token(conn, found[0].id))
        else:
            rows = await auth.list_users(conn)
            if not rows:
                print("no users yet: wacrm users add EMAIL --role admin")
            for r in rows:
                state = " disabled" if r["disabled_at"] else ""
                print(f"{r['id']:>5}  {r['role']:<6} {r['email']:<40} tokens: {r['tokens']}{state}")
    except (asyncpg.UndefinedTableError, asyncpg.UndefinedColumnError):
        raise _schema_behind() from None
    finally:
        await conn.close()


def cmd_users(args: argparse.Namespace) -> int:
    s = _db_settings()
    password = None
    if args.users_command == "add" and not sys.stdin.isatty():
        password = sys.stdin.readline().rstrip("\n") or None
        if password is not None and len(password) < 8:
            raise CommandError("the password on standard input must have at least 8 characters", EXIT_CONFIG)
    asyncio.run(_users(args, s, password))
    return 0


# --- numbers -------------------------------------------------------------------------------

async def _check_token_key(s: Settings) -> None:
    """Every stored access token decrypts with ``TOKEN_ENCRYPTION_KEY``, or exit 2 naming it: a wrong key
    stops a process at its start, not at its first send."""
    import asyncpg

    from wacrm.storage import numbers

    assert s.direct_url
    conn = await _connected(s.direct_url, s.db_timeout_s, s.direct_variable)
    try:
        await numbers.check_tokens(conn, numbers.TokenCipher(s.token_encryption_key))
    except numbers.TokenKeyError as exc:
        raise CommandError(str(exc), EXIT_CONFIG) from None
    except (asyncpg.UndefinedTableError, asyncpg.UndefinedColumnError):
        raise _schema_behind() from None
    finally:
        await conn.close()


def _rate(text: str) -> float:
    """``--rate-limit``: sends per second, more than 0 and at most 1000."""
    try:
        rate = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of sends per second, not {text!r}") from None
    if not 0 < rate <= 1000:
        raise argparse.ArgumentTypeError(f"must be more than 0 and at most 1000, not {text}")
    return rate


async def _numbers(args: argparse.Namespace, s: Settings, token: str | None) -> list[str]:
    import asyncpg

    from wacrm.storage import numbers

    assert s.direct_url
    conn = await _connected(s.direct_url, s.db_timeout_s, s.direct_variable)
    try:
        if args.numbers_command == "add":
            assert token is not None
            cipher = numbers.TokenCipher(s.token_encryption_key)
            async with conn.transaction():
                await numbers.check_tokens(conn, cipher)  # one key for every stored token
                number, resumed = await numbers.add(conn, numbers.NewNumber(
                    args.phone_number_id, args.waba_id, token, args.label, args.rate_limit, args.coexistence), cipher)
            return [f"added {number.phone_number_id} (WABA {number.waba_id}"
                    + (f", {number.label}" if number.label else "") + "): active"
                    + (f"; {resumed} waiting repl{'y' if resumed == 1 else 'ies'} resumed" if resumed else "")]
        if args.numbers_command == "disable":
            async with conn.transaction():
                disabled = await numbers.disable(conn, args.phone_number_id)
            if disabled is None:
                raise CommandError(f"no business number {args.phone_number_id} (wacrm numbers list)")
            return [f"disabled {disabled.phone_number_id}: its webhooks are skipped and its replies wait until "
                    "`wacrm numbers add` enables it again"]
        rows = await numbers.list_numbers(conn)
        head = f"{'PHONE NUMBER ID':<20} {'WABA':<18} {'LABEL':<20} {'DISPLAY':<16} {'RATE/S':>7} {'COEX':<5} " \
               f"{'TOKEN':<12} STATE"
        lines = [f"{n.phone_number_id:<20} {n.waba_id or '-':<18} {(n.label or '-')[:20]:<20} "
                 f"{n.display_phone_number or '-':<16} "
                 f"{n.send_rate(s.rate_limit_per_s):>7g} {'yes' if n.coexistence else 'no':<5} {n.token_source:<12} "
                 f"{n.state}" + (f" ({n.state_reason})" if n.state != "active" and n.state_reason else "")
                 for n in rows]
        return [head, *lines, f"{len(rows)} business number(s)"]
    except numbers.TokenKeyError as exc:
        raise CommandError(str(exc), EXIT_CONFIG) from None
    except (asyncpg.UndefinedTableError, asyncpg.UndefinedColumnError):
        raise _schema_behind() from None
    finally:
        await conn.close()


def cmd_numbers(args: argparse.Namespace) -> int:
    s = _db_settings()
    token = None
    if args.numbers_command == "add":
        if s.token_encryption_key is None:
            raise CommandError("TOKEN_ENCRYPTION_KEY: required to store an access token and not set (32 random "
                               "bytes in url-safe base64; `wacrm dev` makes one)", EXIT_CONFIG)
        if sys.stdin.isatty():
            import getpass

            token = getpass.getpass("access token: ")
        else:
            token = sys.stdin.readline().strip()
        if not is_access_token(token):
            raise CommandError("the access token on standard input must be one line of 1 to "
                               f"{ACCESS_TOKEN_MAX_CHARS} characters without spaces", EXIT_CONFIG)
    for line in asyncio.run(_numbers(args, s, token)):
        print(line)
    return 0


# --- trace ---------------------------------------------------------------------------------

async def _bus_facts(s: Settings, rows: Any, request_id: str, timeout: float) -> Any:
    """When the raw body was accepted, and the dead letters that carry ``request_id`` (``topics.scan``)."""
    import orjson

    from wacrm.storage.trace import BusFacts
    from wacrm.topics import DLQ, RAW, scan

    client = s.kafka_client_kwargs()
    letters = []
    for rec in await scan.with_request_id(client, DLQ, request_id, timeout):
        try:
            letter = orjson.loads(rec.value)
        except orjson.JSONDecodeError:
            letter = {"reason": "unreadable dead letter", "error": rec.value[:200]}
        letters.append({**letter, "at_ref": f"{rec.topic}:{rec.partition}@{rec.offset}", "at": rec.timestamp})
    ref: dict[str, Any] | None = (rows.inbound[0]["raw_ref"] if rows.inbound else None) or \
        next(({"topic": x.get("source_topic"), "partition": x.get("source_partition"), "offset": x.get("source_offset")}
              for x in letters if x.get("source_topic") == RAW), None)
    raw = None
    if ref and ref.get("topic") is not None:
        raw = await scan.at(client, str(ref["topic"]), int(ref["partition"]), int(ref["offset"]), timeout)
    where = f"{ref['topic']}:{ref['partition']}@{ref['offset']}" if ref else None
    return BusFacts(raw.timestamp if raw is not None else None, where, letters)


async def _trace(s: Settings, request_id: str, use_bus: bool, timeout: float) -> list[str]:
    import asyncpg

    from wacrm.storage import trace

    assert s.direct_url
    conn = await _connected(s.direct_url, s.db_timeout_s, s.direct_variable)
    try:
        rows = await trace.load(conn, request_id)
    except (asyncpg.UndefinedTableError, asyncpg.UndefinedColumnError):
        raise _schema_behind() from None
    finally:
        await conn.close()
    bus = trace.BusFacts()
    if use_bus:
        try:
            bus = await _bus_facts(s, rows, request_id, timeout)
        except Exception as exc:  # the database's part is still worth printing
            print(f"wacrm trace: the bus could not be read ({type(exc).__name__}); dead letters not shown",
                  file=sys.stderr)
    if rows.empty and not bus.dead_letters:
        where = "the database or wa.dlq" if use_bus else "the database (the bus was not read)"
        raise CommandError(f"no request {request_id!r} in {where}: unknown request id, or its rows were written "
                           "before request ids were recorded")
    return trace.render(rows, bus)


def cmd_trace(args: argparse.Namespace) -> int:
    from wacrm.topics.records import valid_request_id

    s = _db_settings()
    if valid_request_id(args.request_id) is None:
        raise CommandError("REQUEST_ID must be 1 to 128 printable characters without spaces", EXIT_CONFIG)
    use_bus = not args.no_bus and s.kafka_bootstrap_servers is not None
    for line in asyncio.run(_trace(s, args.request_id, use_bus, args.bus_timeout)):
        print(line)
    return 0


# --- replay and dlq --------------------------------------------------------------------------

def _epoch(text: str | None, option: str) -> float | None:
    """An ISO 8601 time (UTC when it names no zone) as epoch seconds."""
    from datetime import UTC, datetime

    if text is None:
        return None
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        raise CommandError(f"{option}: {text!r} is not an ISO 8601 time (e.g. 2026-11-28T14:05:00Z)",
                           EXIT_CONFIG) from None
    return (at if at.tzinfo else at.replace(tzinfo=UTC)).timestamp()


def _bus_settings(needs_db: bool) -> Settings:
    s = _settings("tool", {"KAFKA_BOOTSTRAP_SERVERS"} | ({"DATABASE_URL"} if needs_db else set()))
    for name, value in (("KAFKA_BOOTSTRAP_SERVERS", s.kafka_bootstrap_servers),
                        ("DATABASE_URL", s.database_url if needs_db else "")):
        if value is None:
            raise CommandError(f"{name}: required by this command and not set", EXIT_CONFIG)
    return s


def _progress_line(done: int, total: int, last: list[float]) -> None:
    now = time.monotonic()
    if done == total or now - last[0] >= 1.0:
        last[0] = now
        print(f"\rreplay: {done}/{total} records read", end="\n" if done == total else "", file=sys.stderr,
              flush=True)


async def _replay(args: argparse.Namespace, s: Settings) -> list[str]:
    from wacrm.topics import replay

    sel = replay.Selection(args.from_offset, args.to_offset, _epoch(args.from_time, "--from-time"),
                           _epoch(args.to_time, "--to-time"), None if args.key is None else args.key.encode())
    conn = None if args.dry_run or s.direct_url is None else \
        await _connected(s.direct_url, s.db_timeout_s, s.direct_variable)
    try:
        before = await replay.counts(conn) if conn is not None else None
        last = [time.monotonic()]
        try:
            results = await asyncio.wait_for(
                replay.replay(s.kafka_client_kwargs(), args.topic, sel, args.dry_run,
                              lambda done, total: _progress_line(done, total, last)), args.timeout)
        except LookupError as exc:
            raise CommandError(str(exc)) from None
        except TimeoutError:
            raise CommandError(f"the replay took more than --timeout {args.timeout:g}s; what was produced "
                               "stays produced (replaying it again changes nothing)") from None
        except Exception as exc:
            raise CommandError(f"cannot read or produce on the broker at KAFKA_BOOTSTRAP_SERVERS="
                               f"{s.kafka_bootstrap_servers}: {type(exc).__name__}: {exc}") from None
        verb = "would replay" if args.dry_run else "replayed"
        lines = [f"partition {r.span.partition}: offsets {r.span.start}..{r.span.end - 1} "
                 f"({r.span.size} records, start found by {r.span.found_by}), {verb} {r.matched}"
                 if r.span.size else f"partition {r.span.partition}: nothing in the range" for r in results]
        lines.append(f"{verb} {sum(r.matched for r in results)} records of {args.topic}")
        if conn is not None and before is not None:
            started = time.monotonic()
            read = await replay.consumed(s.kafka_client_kwargs(), s.kafka_group_id, args.topic, results, args.settle)
            after, settled = await replay.settled_counts(conn, max(0.0, args.settle - (time.monotonic() - started)))
            moved = replay.changes(before, after)
            note = "" if read and settled else \
                f" (the pipeline had not {'settled' if read else 'read every replayed record'} after {args.settle:g}s)"
            lines.append("nothing changed" + note if not moved else
                         "changed: " + ", ".join(f"{t} {d:+d}" for t, d in moved.items()) + note)
        return lines
    finally:
        if conn is not None:
            await conn.close()


def cmd_replay(args: argparse.Namespace) -> int:
    if (args.from_offset is None) == (args.from_time is None):
        raise CommandError("give one of --from-offset or --from-time", EXIT_CONFIG)
    if args.to_offset is not None and args.to_time is not None:
        raise CommandError("give at most one of --to-offset or --to-time", EXIT_CONFIG)
    s = _bus_settings(needs_db=False)
    for line in asyncio.run(_replay(args, s)):
        print(line)
    return 0


def _dlq_filter(args: argparse.Namespace) -> Any:
    from wacrm.topics.dlq import Filter

    return Filter(args.reason, args.agent, _epoch(args.since, "--since"), _epoch(args.until, "--until"))


def _when(epoch: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(epoch))


async def _dlq(args: argparse.Namespace, s: Settings) -> list[str]:
    from wacrm.topics import dlq

    client = s.kafka_client_kwargs()
    if args.dlq_command == "list":
        found = await dlq.letters(client, _dlq_filter(args), args.bus_timeout)
        rows = [f"{x.id:<10} {_when(x.at)}  {x.agent:<8} {x.reason:<32} {x.origin}" for x in found]
        return [f"{'ID':<10} {'TIME (UTC)':<19}  {'AGENT':<8} {'REASON':<32} ORIGIN", *rows,
                f"{len(found)} dead letters"]
    if args.dlq_command == "show":
        try:
            x = await dlq.letter(client, args.id, args.bus_timeout)
        except ValueError as exc:
            raise CommandError(str(exc), EXIT_CONFIG) from None
        if x is None:
            raise CommandError(f"no dead letter {args.id} in wa.dlq")
        return [f"id:         {x.id}", f"time:       {_when(x.at)} UTC", f"agent:      {x.agent}",
                f"reason:     {x.reason}", f"error:      {x.error}", f"origin:     {x.origin}",
                f"request id: {x.request_id or '-'}",
                *([f"reduced:    the letter kept the start of a {x.details.get('value_chars')}-character value"]
                  if x.reduced else []), "value:", x.value]
    from wacrm.storage import repo

    assert s.direct_url
    conn = await _connected(s.direct_url, s.db_timeout_s, s.direct_variable)
    try:
        results = await dlq.redrive(client, conn, _dlq_filter(args), args.dry_run, args.bus_timeout,
                                    lambda r: print(f"{r.letter.id:<10} {r.letter.origin:<28} {r.outcome}"),
                                    requeue=repo.redrive_ledger_row)
    finally:
        await conn.close()
    verb = "would redrive" if args.dry_run else "redrove"
    count = sum(r.outcome in ("redriven", "would redrive") for r in results)
    return [f"{verb} {count} dead letters" + ("" if results else " (none matched, or all were redriven before)")]


def cmd_dlq(args: argparse.Namespace) -> int:
    import asyncpg

    s = _bus_settings(needs_db=args.dlq_command == "redrive")
    try:
        lines = asyncio.run(_dlq(args, s))
    except CommandError:
        raise
    except asyncpg.UndefinedTableError:
        raise CommandError("the database schema is behind this code (no dlq_redrives table). Run: wacrm migrate",
                           EXIT_SCHEMA) from None
    except Exception as exc:
        raise CommandError(f"cannot read wa.dlq: {type(exc).__name__}: {exc}") from None
    for line in lines:
        print(line)
    return 0


# --- worker --------------------------------------------------------------------------------

def cmd_worker(args: argparse.Namespace) -> int:
    import faust

    from wacrm.agents.app import build
    from wacrm.core import liveness
    from wacrm.orchestrator.rules import RulesError

    s = _settings("prod", {"DATABASE_URL", "KAFKA_BOOTSTRAP_SERVERS", "WHATSAPP_ACCESS_TOKEN"})
    assert s.database_url
    asyncio.run(_check_schema(s))
    asyncio.run(_check_token_key(s))
    try:
        app, resources = build(s)
    except RulesError as exc:
        raise CommandError(f"RULES_FILE: {exc}", EXIT_CONFIG) from None
    if s.worker_metrics_port:  # /metrics, and /livez: 200 while the event loop beats (deploy/k8s/worker.yaml)
        try:
            liveness.serve(s.worker_metrics_port, s.host, resources.heartbeat)
        except OSError as exc:
            raise CommandError(f"WORKER_METRICS_PORT: cannot listen on {s.host}:{s.worker_metrics_port}: {exc}",
                               EXIT_CONFIG) from None

    class Worker(faust.Worker):
        def on_setup_root_logger(self, logger: logging.Logger, level: int) -> None:
            super().on_setup_root_logger(logger, level)
            # ours instead of mode's: request ids, JSON, repeats summarised, written in batches
            _logging(s.log_level, s.log_format, batched=True)

    worker = Worker(app, resources, loglevel=s.log_level, quiet=True, redirect_stdouts=False)
    worker.execute_from_commandline()  # returns by SystemExit when the worker stops
    return 0


# --- templates -----------------------------------------------------------------------------

def _slot(name: str) -> str:
    return "{{" + name + "}}"


def _template_params(parameters: dict[str, Any]) -> str:
    """What a send of a template must fill, in one short line: ``header{{1}} body{{1}},{{2}} button0``."""
    parts: list[str] = []
    header = parameters.get("header")
    if header:
        parts.append("header:" + (",".join(_slot(p["name"]) for p in header["params"])
                                  if header["kind"] == "text" else header["kind"]))
    if parameters.get("body"):
        parts.append("body:" + ",".join(_slot(p["name"]) for p in parameters["body"]))
    parts += [f"button{b['index']}:{b['type']}" for b in parameters.get("buttons") or []]
    return " ".join(parts) or "-"


async def _templates(args: argparse.Namespace, s: Settings) -> int:
    import aiohttp
    import asyncpg

    from wacrm.inbox import catalogue
    from wacrm.orchestrator.rules import RulesError, load_rules
    from wacrm.storage import templates as tstore
    from wacrm.storage.db import create_pool

    assert s.direct_url
    try:
        rules = load_rules(Path(s.rules_file) if s.rules_file else None)
    except RulesError as exc:
        raise CommandError(f"RULES_FILE: {exc}", EXIT_CONFIG) from None
    try:
        pool = await create_pool(s.direct_url, timeout=s.db_timeout_s, min_size=1, max_size=2)
    except Exception as exc:
        raise CommandError(f"cannot connect to {s.direct_variable}: {type(exc).__name__}: {exc}") from None
    try:
        if args.templates_command == "sync":
            def page(waba: str, pages: int, count: int) -> None:
                print(f"\rWABA {waba}: page {pages} read, {count} templates so far", end="", file=sys.stderr,
                      flush=True)

            async with aiohttp.ClientSession() as session:
                synced = await catalogue.sync(pool, session, s, rules, on_page=page)
            print(file=sys.stderr)
            if not synced:
                raise CommandError("no WhatsApp Business Account is configured (WHATSAPP_BUSINESS_ACCOUNT_ID)",
                                   EXIT_CONFIG)
            for result in synced:
                print(result.line())
            return 0 if all(r.ok for r in synced) else EXIT_FAIL
        async with pool.acquire() as conn:
            wabas = [a.waba_id for a in await tstore.accounts(conn, s)]
            rows = await tstore.catalogue(conn, wabas, args.status.upper() if args.status else None)
            syncs = await tstore.sync_states(conn, wabas)
        for sync in syncs:
            state = "ok" if sync["ok"] else f"FAILED: {sync['error']}" if sync["ok"] is False else "running"
            print(f"WABA {sync['waba_id']}: last sync {sync['finished_at'] or sync['started_at']} {state}; "
                  f"last good {sync['last_good_at'] or 'never'}")
        print(f"{'name':<22} {'language':<8} {'category':<14} {'status':<12} {'quality':<8} parameters")
        for t in rows:
            print(f"{t['name']:<22} {t['language']:<8} {t['category']:<14} {t['status']:<12} "
                  f"{t['quality'] or '-':<8} {_template_params(t['parameters'])}")
        print(f"{len(rows)} template(s)")
        return 0
    except (asyncpg.UndefinedTableError, asyncpg.UndefinedColumnError):
        raise _schema_behind() from None
    finally:
        await pool.close()


def cmd_templates(args: argparse.Namespace) -> int:
    """Beside a running ``wacrm dev`` (``WHATSAPP_API_BASE_URL`` unset), its fake Graph API is asked."""
    env_base = os.environ.get("WHATSAPP_API_BASE_URL", "").strip()
    s = _db_settings()
    state = read_state(DEFAULT_STATE_DIR)
    if not env_base and state and state.get("fake_meta_url") and s.database_url == state.get("database_url"):
        s = s.replace(whatsapp_api_base_url=state["fake_meta_url"])
    return asyncio.run(_templates(args, s))


# --- fake-meta -----------------------------------------------------------------------------

def cmd_fake_meta(args: argparse.Namespace) -> int:
    from wacrm.whatsapp.fake_meta import load_templates, serve

    _logging("WARNING")
    try:
        templates = load_templates(Path(args.templates) if args.templates else None)
    except ValueError as exc:
        raise CommandError(f"--templates: {exc}", EXIT_CONFIG) from None
    secret = args.app_secret or os.environ.get("WHATSAPP_APP_SECRET", "").strip() or None
    if args.webhook_url and not secret:
        raise CommandError("--webhook-url needs the app secret to sign the statuses: --app-secret or "
                           "WHATSAPP_APP_SECRET", EXIT_CONFIG)
    where = (f"; statuses posted to {args.webhook_url}" if args.webhook_url
             else "; no statuses posted (no --webhook-url)")
    tokens = dict(t.split("=", 1) for t in args.token)
    print(f"fake Graph API on http://{args.host}:{args.port} (recorded sends: GET /__sent){where}", flush=True)
    try:
        asyncio.run(serve(args.host, args.port, webhook_url=args.webhook_url, app_secret=secret, tokens=tokens,
                          templates=templates))
    except KeyboardInterrupt:
        pass
    except OSError as exc:
        raise CommandError(f"cannot listen on {args.host}:{args.port}: {exc}") from None
    return 0


def _number_token(text: str) -> str:
    """``--token PHONE_NUMBER_ID=TOKEN``."""
    number, sep, token = text.partition("=")
    if not sep or not number.strip() or not token:
        raise argparse.ArgumentTypeError("must be PHONE_NUMBER_ID=TOKEN")
    return f"{number.strip()}={token}"


def _install_sigterm_as_interrupt() -> None:
    import signal

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


# --- media ---------------------------------------------------------------------------------

def cmd_media(args: argparse.Namespace) -> int:
    from wacrm import media_cmd

    s = _db_settings()
    if s.media_retention_days is None:
        print("MEDIA_RETENTION_DAYS is not set: media is kept forever, nothing to prune")
        return 0
    try:
        asyncio.run(media_cmd.prune(s, dry_run=args.dry_run))
    except media_cmd.PruneError as exc:
        raise CommandError(str(exc)) from None
    return 0


# --- simulate ------------------------------------------------------------------------------

def _simulated_body(args: argparse.Namespace) -> dict[str, Any]:
    """The webhook body ``simulate`` posts: a text, or an image or document message (the file's
    mime type and sha256, the text as its caption), dated ``--at`` if given."""
    import mimetypes

    from wacrm.whatsapp import simulate

    at = _epoch(args.at, "--at")
    if at is not None and at > time.time() + 60:
        raise CommandError(f"--at: {args.at!r} is in the future; a customer's message is dated when they sent it",
                           EXIT_CONFIG)
    who = dict(wa_id=args.from_ or None, name=args.name, user_id=args.user_id, phone_number_id=args.phone_number_id,
               message_id=args.message_id, timestamp=int(at) if at is not None else None)
    path, kind = (args.image, "image") if args.image else (args.document, "document") if args.document else (None, "")
    if path is None:
        if not args.text:
            raise CommandError("give --text, or --image FILE / --document FILE (with --text as the caption)",
                               EXIT_CONFIG)
        return simulate.text_body(text=args.text, **who)
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise CommandError(f"--{kind}: cannot read {path}: {exc.strerror}", EXIT_CONFIG) from None
    mime = mimetypes.guess_type(path)[0] or ("application/octet-stream" if kind == "document" else "")
    if kind == "image" and mime not in ("image/jpeg", "image/png"):
        raise CommandError(f"--image: {path} is not a JPEG or PNG image (WhatsApp's image types); send it with "
                           "--document instead", EXIT_CONFIG)
    part = simulate.media_part(kind, data, mime, caption=args.text or None, filename=Path(path).name)  # type: ignore[arg-type]
    return simulate.message_body(kind, part, **who)


async def _simulate(args: argparse.Namespace, secret: str, url: str, fake_meta: str | None,
                    database_url: str | None) -> int:
    import aiohttp

    from wacrm import media_cmd
    from wacrm.whatsapp import signature, simulate

    built = _simulated_body(args)
    message = built["entry"][0]["changes"][0]["value"]["messages"][0]
    body, message_id = simulate.dumps(built), message["id"]
    headers = {"Content-Type": "application/json", "X-Hub-Signature-256": signature.sign(secret, body)}
    if args.request_id:
        headers["X-Request-Id"] = args.request_id
    timeout = aiohttp.ClientTimeout(total=15)
    kind = message["type"]
    async with aiohttp.ClientSession(timeout=timeout) as session:
        if fake_meta and kind in ("image", "document"):  # Meta has the file before its webhook names it
            try:
                await media_cmd.give_fake_meta(session, fake_meta, Path(args.image or args.document), message[kind])
            except media_cmd.FakeMetaRefused as exc:
                raise CommandError(str(exc)) from None
        seen = len(await _sent(session, fake_meta)) if fake_meta and not args.no_wait else 0
        try:
            async with session.post(url, data=body, headers=headers) as resp:
                text = await resp.text()
                print(f"POST {url} -> {resp.status} {text}")
                print(f"message id: {message_id}")
                print(f"request id: {resp.headers.get('X-Request-Id', '-')} (wacrm trace ID shows its path)")
                if resp.status != 200:
                    return EXIT_FAIL
        except aiohttp.ClientError as exc:
            raise CommandError(f"cannot reach the webhook at {url}: {exc} (is `wacrm dev` or `wacrm serve` "
                               "running?)") from None
        age_h = (time.time() - int(message["timestamp"])) / 3600
        if age_h > 24:
            print(f"the message is dated {_when(int(message['timestamp']))} UTC, {age_h:.0f} hours ago: the "
                  "24-hour window is closed")
        if not fake_meta or args.no_wait:
            return 0
        code = await _await_reply(args, session, fake_meta, database_url, message_id, seen)
        if kind in ("image", "document") and database_url is not None:
            print(await media_cmd.downloaded(database_url, message[kind]["id"], args.wait))
        return code


async def _await_reply(args: argparse.Namespace, session: Any, fake_meta: str, database_url: str | None,
                       message_id: str, seen: int) -> int:
    """What the customer received for ``message_id``: the sends fake-meta took whose ledger row
    answers it (:mod:`wacrm.received`), within ``--wait``. Silence is reported only once the
    database says none is coming, and why (``storage.replies.silence_reason``), or after the bound."""
    from wacrm.storage.db import connect

    conn = None
    if database_url is not None:
        try:
            conn = await connect(database_url, timeout=5)
        except Exception as exc:  # the database is optional here: the reply is then told by its recipient
            print(f"wacrm simulate: the database is not reachable ({type(exc).__name__}); the reply is told by "
                  "its recipient only", file=sys.stderr)
    recipient = f"+{args.from_}" if args.from_ else args.user_id
    deadline = time.monotonic() + args.wait
    try:
        while True:
            got = await _received(conn, (await _sent(session, fake_meta))[seen:], message_id, recipient)
            if got:
                for text in got:
                    print(f"reply sent to {recipient}: {text!r}")
                return 0
            silence = await _silence(conn, message_id)
            if silence is not None:
                intended, why = silence
                print(f"no reply, {'as intended' if intended else 'a failure'}: {why}",
                      file=sys.stdout if intended else sys.stderr)
                return 0 if intended else EXIT_FAIL
            if time.monotonic() >= deadline:
                break
            await asyncio.sleep(0.3)
    finally:
        if conn is not None:
            await conn.close()
    print(f"no reply recorded by {fake_meta} within {args.wait:g}s (`wacrm trace` with the request id the "
          "webhook returned shows where it stopped)", file=sys.stderr)
    return EXIT_FAIL


async def _received(conn: Any, sent: list[dict[str, Any]], message_id: str, recipient: str | None) -> list[str]:
    """The texts of the sends Meta took that answer ``message_id`` (by their ledger rows; without a
    database, the sends to ``recipient``)."""
    from wacrm import received
    from wacrm.storage import repo

    if conn is None:
        return [received.what_was_sent(x["body"]) for x in sent if isinstance(x.get("body"), dict)
                and recipient in (x["body"].get("to"), x["body"].get("recipient"))][:1]
    answers = await repo.answered_messages(conn, received.ledger_rows(sent))
    return [received.what_was_sent(x["body"]) for x, answered in received.replies(sent, answers)
            if answered == message_id]


async def _sent(session: Any, fake_meta: str | None) -> list[dict[str, Any]]:
    async with session.get(f"{fake_meta}/__sent") as resp:
        return list(await resp.json())


async def _silence(conn: Any, message_id: str) -> tuple[bool, str] | None:
    """Why the message got no reply, from the database, once decided (None: not known, or no database)."""
    from wacrm.storage.replies import silence_reason

    return await silence_reason(conn, message_id) if conn is not None else None


def cmd_simulate(args: argparse.Namespace) -> int:
    s = _settings("dev", state_dir=Path(args.state_dir))
    state = read_state(Path(args.state_dir))
    secret = os.environ.get("WHATSAPP_APP_SECRET") or (state or {}).get("app_secret")
    if not secret:
        raise CommandError("no app secret: set WHATSAPP_APP_SECRET, or start `wacrm dev` first", EXIT_CONFIG)
    url = args.url or (state or {}).get("webhook_url") or f"http://127.0.0.1:{s.port}/webhooks/whatsapp"
    fake_meta = args.fake_meta or (state or {}).get("fake_meta_url")
    return asyncio.run(_simulate(args, secret, url, fake_meta, s.database_url))


# --- dev -----------------------------------------------------------------------------------

def cmd_dev(args: argparse.Namespace) -> int:
    from wacrm.dev import run_dev

    return run_dev(Path(args.state_dir))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="wacrm", description="WhatsApp CRM pipeline. Configuration comes from environment variables "
        "(see the README); `wacrm dev` needs none.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    d = sub.add_parser("dev", help="run the whole system on this machine (embedded PostgreSQL and broker)",
                       description="Start the embedded PostgreSQL (data under STATE_DIR), migrate, start the "
                       "embedded broker, create the topics, start the fake Graph API (unless "
                       "WHATSAPP_API_BASE_URL is set), the webhook server and the worker. Ctrl-C stops all.")
    d.add_argument("--state-dir", default=".wacrm", help="where data, logs and the dev state live (default .wacrm)")
    d.set_defaults(func=cmd_dev)

    sv = sub.add_parser("serve", help="webhook, inbox, health and /metrics (needs DATABASE_URL, "
                        "KAFKA_BOOTSTRAP_SERVERS, WHATSAPP_APP_SECRET, WHATSAPP_VERIFY_TOKEN)",
                        description="Serves on HOST:PORT the webhook Meta calls (POST /webhooks/whatsapp: answered "
                        "200 only once the bus has the body; GET: the subscription handshake), the inbox API and "
                        "pages (/api/v1, /inbox), /healthz, /readyz and /metrics. A database that is down or a "
                        "schema that is behind does not stop it: the webhook never uses the database, and /readyz "
                        "reports the inbox not ready (the combined server answers 200 while its webhook half is "
                        "ready). SIGTERM drains and stops within the shutdown bound.")
    sv.add_argument("--only", choices=("webhook", "inbox"), default=None,
                    help="serve only the webhook (which needs no database), or only the inbox (which needs only "
                         "DATABASE_URL)")
    sv.add_argument("--processes", type=_processes, default=1, metavar="N",
                    help="N processes sharing the port (SO_REUSEPORT), each with its own event loop, for a "
                         "machine with spare cores; /metrics of any of them reports all (default 1)")
    sv.add_argument("--reuse-port", action="store_true",
                    help="bind with SO_REUSEPORT, so that other serve processes can share the port "
                         "(what --processes starts each of its processes with)")
    sv.set_defaults(func=cmd_serve)
    us = sub.add_parser("users", help="people who sign in to the inbox (needs DATABASE_URL)",
                        description="Adds, lists and issues API tokens for the people of the inbox. Roles: "
                        "admin (also deletes and restores conversations) and agent.")
    usub = us.add_subparsers(dest="users_command", required=True, metavar="ACTION")
    ua = usub.add_parser("add", help="add a user; the password is read from standard input, or generated and "
                         "printed once", description="Adds a person who signs in to the inbox. The password is "
                         "read from standard input when one is piped in; otherwise one is generated and printed "
                         "once (it is stored only as an argon2id hash).")
    ua.add_argument("email", help="the address they sign in with")
    ua.add_argument("--role", choices=("admin", "agent"), default="agent",
                    help="agent (default) or admin (also deletes and restores conversations)")
    ua.add_argument("--name", default=None, help="the name shown in the inbox (default: the email's local part)")
    ut = usub.add_parser("token", help="print a new API token for the user (Authorization: Bearer …)",
                         description="Prints a new API token for scripts (sent as Authorization: Bearer TOKEN); "
                         "stored hashed, shown once. --revoke revokes every token of the user instead.")
    ut.add_argument("email", help="the user the token acts as")
    ut.add_argument("--revoke", action="store_true", help="revoke every token of the user instead")
    usub.add_parser("list", help="list users", description="Lists the users: email, role, name, and whether "
                    "they are disabled.")
    us.set_defaults(func=cmd_users)
    nu = sub.add_parser("numbers", help="the business numbers this deployment serves, each with its own access "
                        "token (needs DATABASE_URL; add needs TOKEN_ENCRYPTION_KEY)",
                        description="Adds, lists and disables business numbers. A number's access token is stored "
                        "encrypted with TOKEN_ENCRYPTION_KEY and never shown. WHATSAPP_PHONE_NUMBER_ID with "
                        "WHATSAPP_ACCESS_TOKEN configures one number without this command.")
    nsub = nu.add_subparsers(dest="numbers_command", required=True, metavar="ACTION")
    na = nsub.add_parser("add", help="add a number, or replace an existing one's settings and token; the token is "
                         "read from standard input",
                         description="Adds the number (or replaces every setting and the token of an existing one) "
                         "and makes it active: replies waiting because Meta refused its old token go out at once, "
                         "without a restart. The access token is read from standard input.")
    na.add_argument("phone_number_id", metavar="PHONE_NUMBER_ID", help="Meta's id of the business number")
    na.add_argument("--waba-id", required=True, help="the WhatsApp Business Account the number belongs to")
    na.add_argument("--label", default=None, help="a name people see in the inbox, e.g. 'Lisbon shop'")
    na.add_argument("--rate-limit", type=_rate, default=None, metavar="N",
                    help="sends per second from this number, per worker (default RATE_LIMIT_PER_SECOND)")
    na.add_argument("--coexistence", action="store_true",
                    help="the number is also used in the WhatsApp Business app: Meta caps it at 20 sends/s")
    nsub.add_parser("list", help="the numbers, their settings and state (never a token)",
                    description="Lists every business number: id, WABA, label, display number, send limit, "
                    "coexistence, where its token comes from (stored, or the environment) and its state "
                    "(active, token_rejected, disabled).")
    nd = nsub.add_parser("disable", help="stop serving a number (its webhooks are skipped, its replies wait)",
                         description="Disables the number: its webhooks are skipped (they stay on the raw topic, "
                         "for `wacrm replay`) and its replies wait. `wacrm numbers add` enables it again.")
    nd.add_argument("phone_number_id", metavar="PHONE_NUMBER_ID", help="the number to disable")
    nu.set_defaults(func=cmd_numbers)
    sub.add_parser("worker", help="the agents: ingest, inbound, sender, status (needs DATABASE_URL, "
                   "KAFKA_BOOTSTRAP_SERVERS, WHATSAPP_ACCESS_TOKEN)",
                   description="Runs the agents in one consumer group (KAFKA_GROUP_ID): ingest splits webhook "
                   "bodies, inbound stores and decides, sender calls the Graph API, status applies Meta's "
                   "statuses; plus the reply, outbox and ambiguous-send timers. /metrics and /livez on "
                   "WORKER_METRICS_PORT. Refuses to start (exit 3) when the schema is behind; SIGTERM finishes "
                   "the batch in hand within STOP_GRACE_SECONDS.").set_defaults(func=cmd_worker)
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
                        "keys, functions and triggers with the live schema's. One line per item (✓, or ✗ with "
                        "the fix); exit 1 on any gap. Changes nothing.")
    vs.add_argument("--quiet", action="store_true", help="print only the gaps and the summary")
    vs.set_defaults(func=cmd_verify_schema)
    sub.add_parser("topics", help="create every topic with its final partition count "
                   "(needs KAFKA_BOOTSTRAP_SERVERS)",
                   description="Creates every topic of the catalogue (wa.webhook.raw, wa.inbound, wa.status, "
                   "wa.outbound, the retry topics, wa.dlq) with TOPIC_PARTITIONS partitions and "
                   "TOPIC_REPLICATION_FACTOR replicas. Idempotent; reports a topic whose partition count "
                   "differs (exit 1): growing a topic would move conversations between partitions.").set_defaults(
                       func=cmd_topics)

    tr = sub.add_parser("trace", help="the path of one webhook call through every stage, with times "
                        "(needs DATABASE_URL; reads wa.dlq too when KAFKA_BOOTSTRAP_SERVERS is set)",
                        description="Prints what one webhook call caused: received, stored (message ids, "
                        "conversation), decided (reply, handover, no reply and why), sent (Graph message id), "
                        "delivered/read, or where it stopped and why (dead letter, task, still queued, ambiguous). "
                        "Exit 1 when the request id is unknown.")
    tr.add_argument("request_id", metavar="REQUEST_ID", help="the X-Request-Id the webhook returned (or was sent)")
    tr.add_argument("--no-bus", action="store_true", help="read only the database: no dead letters, no receive time")
    tr.add_argument("--bus-timeout", type=float, default=10.0,
                    help="seconds to spend reading the bus (wa.dlq, the raw body) (default 10)")
    tr.set_defaults(func=cmd_trace)

    rp = sub.add_parser("replay", help="produce a range of a topic's records again into the same topic "
                        "(needs KAFKA_BOOTSTRAP_SERVERS; DATABASE_URL for the summary)",
                        description="Re-reads a topic range per partition, by offset or by time, optionally "
                        "only one key's records, and produces them again into the same partition; the pipeline "
                        "handles them again and, every effect being idempotent, already-handled events change "
                        "nothing. Then waits for the row counts of messages, outbound_log, message_status_events "
                        "and tasks to settle and prints what changed.")
    rp.add_argument("--topic", required=True, help="the topic to replay, e.g. wa.webhook.raw")
    rp.add_argument("--from-offset", type=int, help="first offset to replay, in every partition")
    rp.add_argument("--from-time", help="replay from the first record at or after this ISO 8601 time (UTC "
                    "unless a zone is given)")
    rp.add_argument("--to-offset", type=int, help="last offset to replay, inclusive (default: the end)")
    rp.add_argument("--to-time", help="last record time to replay, inclusive (default: the end)")
    rp.add_argument("--key", help="replay only the records with this key (a conversation key)")
    rp.add_argument("--dry-run", action="store_true", help="only count, per partition, what would be replayed")
    rp.add_argument("--settle", type=float, default=30.0,
                    help="seconds to wait at most for the pipeline to drain before the summary (default 30)")
    rp.add_argument("--timeout", type=float, default=600.0, help="seconds the replay may take (default 600)")
    rp.set_defaults(func=cmd_replay)

    dq = sub.add_parser("dlq", help="list, show and redrive the dead letters of wa.dlq "
                        "(needs KAFKA_BOOTSTRAP_SERVERS; redrive needs DATABASE_URL too)",
                        description="A dead letter's ID is PARTITION:OFFSET of its record in wa.dlq.")
    dsub = dq.add_subparsers(dest="dlq_command", required=True, metavar="ACTION")
    dl = dsub.add_parser("list", help="a table of the dead letters: id, time, agent, reason, origin",
                         description="Lists the dead letters of wa.dlq, oldest first: ID (PARTITION:OFFSET), time "
                         "(UTC), agent, reason and origin (the topic:partition@offset of the event that failed).")
    dsh = dsub.add_parser("show", help="one dead letter: its record, reason, error, origin and request id",
                          description="Prints one dead letter: time, agent, reason, the full error, where it came "
                          "from, its request id (for `wacrm trace`) and the value it kept.")
    dsh.add_argument("id", metavar="ID", help="PARTITION:OFFSET in wa.dlq, as `wacrm dlq list` prints it")
    dr = dsub.add_parser("redrive", help="send the matching letters back to the topic they came from, each at "
                         "most once (recorded in the dlq_redrives table)",
                         description="Sends each matching letter's original record back to the topic and partition "
                         "it came from, at most once per letter (recorded in dlq_redrives in the same step); a "
                         "sender's letter queues its failed ledger row again instead (sent to the contact's "
                         "current phone). Fix the cause first, and run with --dry-run to see what would go.")
    dr.add_argument("--dry-run", action="store_true", help="only list what would be redriven")
    for action in (dl, dr):
        action.add_argument("--reason", help="only letters whose reason contains this text (any case)")
        action.add_argument("--agent", help="only letters of this agent (ingest, inbound, sender, status)")
        action.add_argument("--since", help="only letters written at or after this ISO 8601 time")
        action.add_argument("--until", help="only letters written at or before this ISO 8601 time")
    for action in (dl, dsh, dr):
        action.add_argument("--bus-timeout", type=float, default=30.0,
                            help="seconds to spend reading the bus (default 30)")
    dq.set_defaults(func=cmd_dlq)

    tp = sub.add_parser("templates", help="the template catalogue: sync it with Meta, list it (needs DATABASE_URL)",
                        description="The approved message templates of each WhatsApp Business Account "
                        "(WHATSAPP_BUSINESS_ACCOUNT_ID), as the inbox offers them outside the 24-hour window.")
    tsub = tp.add_subparsers(dest="templates_command", required=True, metavar="ACTION")
    tsub.add_parser("sync", help="read every page of GET /{version}/{waba_id}/message_templates now and store it",
                    description="Syncs the catalogue now, with a progress line per page; a failed sync keeps the "
                    "last good catalogue and says why (exit 1). The inbox server also syncs at start and every "
                    "TEMPLATE_SYNC_SECONDS.")
    tl = tsub.add_parser("list", help="the catalogue: name, language, category, status, quality, parameters",
                         description="Lists the stored catalogue and each account's last sync.")
    tl.add_argument("--status", default=None, help="only templates in this status (APPROVED, PAUSED, REJECTED …)")
    tp.set_defaults(func=cmd_templates)
    md = sub.add_parser("media", help="the media store: prune media past MEDIA_RETENTION_DAYS (needs DATABASE_URL)",
                        description="prune: media stored more than MEDIA_RETENTION_DAYS days ago becomes expired "
                        "(its messages say so) and the files no message still shows are deleted from the media "
                        "store (MEDIA_DIR or MEDIA_S3_BUCKET). Unset MEDIA_RETENTION_DAYS keeps media forever.")
    msub = md.add_subparsers(dest="media_command", required=True)
    mp = msub.add_parser("prune", help="expire media past MEDIA_RETENTION_DAYS and delete its files",
                         description="Media stored more than MEDIA_RETENTION_DAYS days ago becomes expired (its "
                         "messages say so) and every file no stored message still shows is deleted from the "
                         "media store. With MEDIA_RETENTION_DAYS unset, media is kept forever and nothing is "
                         "pruned. Run it daily (cron, a Kubernetes CronJob).")
    mp.add_argument("--dry-run", action="store_true", help="say what would be expired and deleted, change nothing")
    md.set_defaults(func=cmd_media)

    f = sub.add_parser("fake-meta", help="a local stand-in for the Graph API that records what it receives",
                       description="Answers POST /{version}/{phone_number_id}/messages as Meta does, records every "
                       "request (GET /__sent), can be told to fail (POST /__fail) or follow a script "
                       "(POST /__script), and with --webhook-url posts signed sent/delivered/read statuses back. "
                       "For development and tests only: loopback, no authentication.")
    f.add_argument("--port", type=int, default=8090, help="the port to listen on (default 8090)")
    f.add_argument("--host", default="127.0.0.1", help="the address to listen on (default 127.0.0.1)")
    f.add_argument("--webhook-url", default=None,
                   help="post signed sent/delivered/read status webhooks for every accepted send here, as Meta does "
                   "(default: none)")
    f.add_argument("--app-secret", default=None, help="the app secret that signs them (default WHATSAPP_APP_SECRET)")
    f.add_argument("--templates", metavar="FILE", default=None,
                   help="the template catalogue GET /{version}/{waba_id}/message_templates serves, paged: a JSON list "
                   "of Meta's template objects (default: a shipped sample of two dozen)")
    f.add_argument("--token", action="append", default=[], type=_number_token, metavar="PHONE_NUMBER_ID=TOKEN",
                   help="calls for this number must carry this bearer token, else 401 (code 190) as Meta answers "
                   "a revoked token; repeat for each number (default: any bearer; POST /__tokens changes them)")
    f.set_defaults(func=cmd_fake_meta)

    sm = sub.add_parser("simulate", help="sign and POST a realistic inbound message (text, image or document) to "
                        "a running webhook",
                        description="Builds a Cloud API `messages` webhook body, signs it with the app secret "
                        "(WHATSAPP_APP_SECRET, or the one `wacrm dev` generated) and POSTs it. With the fake "
                        "Graph API, waits for what the customer received for it (the sends whose ledger row answers "
                        "it) and prints it; when the database says no reply is meant to come (the customer opted "
                        "out, a person owns the conversation, the rules chose none, the 24-hour window had closed) "
                        "it says why and exits 0.")
    sm.add_argument("--text", default=None, help="the customer's message (with --image or --document: the caption)")
    media = sm.add_mutually_exclusive_group()
    media.add_argument("--image", metavar="FILE", default=None,
                       help="send an image message (JPEG or PNG) for FILE: its mime type and sha256, --text as caption")
    media.add_argument("--document", metavar="FILE", default=None,
                       help="send a document message for FILE: its name, mime type and sha256, --text as caption")
    sm.add_argument("--at", metavar="ISO_TIME", default=None,
                    help="when the customer sent it (ISO 8601, UTC unless a zone is given; default now): more "
                    "than 24 hours ago, the 24-hour window is closed")
    sm.add_argument("--from", dest="from_", default="15550002222", help="customer phone (wa_id); '' for none")
    sm.add_argument("--name", default="Alice Test", help="customer profile name")
    sm.add_argument("--user-id", default=None, help="business-scoped user id, e.g. US.1000000000000000001")
    sm.add_argument("--phone-number-id", default="200000000000001", help="the business number's id")
    sm.add_argument("--message-id", default=None, help="wamid to use (default: a new unique one)")
    sm.add_argument("--url", default=None, help="webhook URL (default: the running `wacrm dev`, else PORT)")
    sm.add_argument("--fake-meta", default=None, help="fake Graph API base URL to watch for the reply")
    sm.add_argument("--request-id", default=None, help="the X-Request-Id to send (default: the webhook makes one)")
    sm.add_argument("--wait", type=float, default=15.0, help="seconds to wait for the reply (default 15)")
    sm.add_argument("--no-wait", action="store_true", help="do not wait for the reply")
    sm.add_argument("--state-dir", default=".wacrm",
                    help="the state directory of the running `wacrm dev` to use (its --state-dir; default .wacrm)")
    sm.set_defaults(func=cmd_simulate)

    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    eventloop.install()
    if args.command == "fake-meta":
        _install_sigterm_as_interrupt()
    try:
        return int(args.func(args) or 0)
    except CommandError as exc:
        print(f"wacrm {args.command}: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return 130
