"""``wacrm worker``: the agents in one consumer group, with /metrics and /livez."""

from __future__ import annotations

import argparse
import asyncio
import logging

from wacrm.cli.numbers import check_token_key
from wacrm.cli.shared import check_schema, settings, setup_logging
from wacrm.core.exits import EXIT_CONFIG, CommandError


def add(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    sub.add_parser("worker", help="the agents: ingest, inbound, sender, status (needs DATABASE_URL, "
                   "KAFKA_BOOTSTRAP_SERVERS, WHATSAPP_ACCESS_TOKEN)",
                   description="Runs the agents in one consumer group (KAFKA_GROUP_ID): ingest splits webhook "
                   "bodies, inbound stores and decides, sender calls the Graph API, status applies Meta's "
                   "statuses; plus the reply, outbox and ambiguous-send timers. /metrics and /livez on "
                   "WORKER_METRICS_PORT. Refuses to start (exit 3) when the schema is behind; SIGTERM finishes "
                   "the batch in hand within STOP_GRACE_SECONDS.").set_defaults(func=cmd_worker)


def cmd_worker(args: argparse.Namespace) -> int:
    import faust

    from wacrm.agents.app import build
    from wacrm.core import liveness
    from wacrm.orchestrator.rules import RulesError

    s = settings("prod", {"DATABASE_URL", "KAFKA_BOOTSTRAP_SERVERS", "WHATSAPP_ACCESS_TOKEN"})
    assert s.database_url
    asyncio.run(check_schema(s))
    asyncio.run(check_token_key(s))
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
            setup_logging(s.log_level, s.log_format, batched=True)

    worker = Worker(app, resources, loglevel=s.log_level, quiet=True, redirect_stdouts=False)
    worker.execute_from_commandline()  # returns by SystemExit when the worker stops
    return 0

