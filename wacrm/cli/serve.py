"""``wacrm serve``: the webhook and the inbox on one port (or one of them, ``--only``)."""

from __future__ import annotations

import argparse
import asyncio
import logging

from wacrm.cli.numbers import check_token_key
from wacrm.cli.shared import schema_problem, settings, setup_logging
from wacrm.core.exits import EXIT_CONFIG, EXIT_FAIL, CommandError


def add(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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
    s = settings("prod", needs)
    setup_logging(s.log_level, s.log_format, batched=True)
    if args.processes > 1:  # N copies of this command, each one process on the shared port
        from wacrm.core import copies, procs

        one = procs.python_cmd("serve", "--reuse-port", *(["--only", args.only] if args.only else []))
        logging.getLogger("wacrm").info("serving with %d processes on port %d (SO_REUSEPORT)", args.processes, s.port)
        return copies.run(one, args.processes)
    log = logging.getLogger("wacrm")
    if args.only != "webhook":
        try:
            problem = asyncio.run(schema_problem(s))
        except CommandError as exc:  # the database is down: the inbox becomes ready when it answers
            log.error("%s (serving anyway: the inbox is not ready until the database answers%s)", exc,
                      "" if args.only else "; the webhook keeps accepting")
        else:
            if problem:
                log.error("%s (serving anyway: the webhook keeps accepting, the inbox answers DB_MISMATCH)", problem)
            else:
                asyncio.run(check_token_key(s))  # a wrong TOKEN_ENCRYPTION_KEY stops it here (exit 2)
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

