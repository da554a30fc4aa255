"""The bus: ``wacrm topics`` (create them), ``wacrm trace`` (one webhook call's path), ``wacrm replay``
(a range of a topic again) and ``wacrm dlq`` (the dead letters: list, show, redrive)."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from typing import Any

from wacrm.cli.shared import bus_settings, db_settings, direct_session, epoch, schema_checked, settings, when
from wacrm.core.exits import EXIT_CONFIG, CommandError
from wacrm.core.settings import Settings


def add(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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


def cmd_topics(args: argparse.Namespace) -> int:
    """Exit 1 when the broker is unreachable or a topic disagrees (``topics.admin.TopicsError``)."""
    from wacrm.topics.admin import create_topics

    s = settings("prod", {"KAFKA_BOOTSTRAP_SERVERS"})
    asyncio.run(create_topics(s))
    return 0


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

    from wacrm.storage import trace

    conn = await direct_session(s)
    try:
        rows = await trace.load(conn, request_id)
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

    s = db_settings()
    if valid_request_id(args.request_id) is None:
        raise CommandError("REQUEST_ID must be 1 to 128 printable characters without spaces", EXIT_CONFIG)
    use_bus = not args.no_bus and s.kafka_bootstrap_servers is not None
    with schema_checked():
        lines = asyncio.run(_trace(s, args.request_id, use_bus, args.bus_timeout))
    for line in lines:
        print(line)
    return 0


def _progress_line(done: int, total: int, last: list[float]) -> None:
    now = time.monotonic()
    if done == total or now - last[0] >= 1.0:
        last[0] = now
        print(f"\rreplay: {done}/{total} records read", end="\n" if done == total else "", file=sys.stderr,
              flush=True)


async def _replay(args: argparse.Namespace, s: Settings) -> list[str]:
    from wacrm.topics import replay

    sel = replay.Selection(args.from_offset, args.to_offset, epoch(args.from_time, "--from-time"),
                           epoch(args.to_time, "--to-time"), None if args.key is None else args.key.encode())
    conn = None if args.dry_run or s.direct_url is None else await direct_session(s)
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
    s = bus_settings(needs_db=False)
    for line in asyncio.run(_replay(args, s)):
        print(line)
    return 0


def _dlq_filter(args: argparse.Namespace) -> Any:
    from wacrm.topics.dlq import Filter

    return Filter(args.reason, args.agent, epoch(args.since, "--since"), epoch(args.until, "--until"))


async def _dlq(args: argparse.Namespace, s: Settings) -> list[str]:
    from wacrm.topics import dlq

    client = s.kafka_client_kwargs()
    if args.dlq_command == "list":
        found = await dlq.letters(client, _dlq_filter(args), args.bus_timeout)
        rows = [f"{x.id:<10} {when(x.at)}  {x.agent:<8} {x.reason:<32} {x.origin}" for x in found]
        return [f"{'ID':<10} {'TIME (UTC)':<19}  {'AGENT':<8} {'REASON':<32} ORIGIN", *rows,
                f"{len(found)} dead letters"]
    if args.dlq_command == "show":
        try:
            x = await dlq.letter(client, args.id, args.bus_timeout)
        except ValueError as exc:
            raise CommandError(str(exc), EXIT_CONFIG) from None
        if x is None:
            raise CommandError(f"no dead letter {args.id} in wa.dlq")
        return [f"id:         {x.id}", f"time:       {when(x.at)} UTC", f"agent:      {x.agent}",
                f"reason:     {x.reason}", f"error:      {x.error}", f"origin:     {x.origin}",
                f"request id: {x.request_id or '-'}",
                *([f"reduced:    the letter kept the start of a {x.details.get('value_chars')}-character value"]
                  if x.reduced else []), "value:", x.value]
    from wacrm.storage import ledger

    conn = await direct_session(s)
    try:
        results = await dlq.redrive(client, conn, _dlq_filter(args), args.dry_run, args.bus_timeout,
                                    lambda r: print(f"{r.letter.id:<10} {r.letter.origin:<28} {r.outcome}"),
                                    requeue=ledger.redrive_ledger_row)
    finally:
        await conn.close()
    verb = "would redrive" if args.dry_run else "redrove"
    count = sum(r.outcome in ("redriven", "would redrive") for r in results)
    return [f"{verb} {count} dead letters" + ("" if results else " (none matched, or all were redriven before)")]


def cmd_dlq(args: argparse.Namespace) -> int:

    s = bus_settings(needs_db=args.dlq_command == "redrive")
    try:
        with schema_checked(cause="no dlq_redrives table"):
            lines = asyncio.run(_dlq(args, s))
    except CommandError:
        raise
    except Exception as exc:
        raise CommandError(f"cannot read wa.dlq: {type(exc).__name__}: {exc}") from None
    for line in lines:
        print(line)
    return 0

