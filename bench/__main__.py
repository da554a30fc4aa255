"""``python -m bench`` (``make bench``): a tool of the checkout, not part of the installed wacrm."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench.inbox import Seed
from bench.run import run
from wacrm.core import eventloop


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench", description="Runs the system on this machine (embedded PostgreSQL and broker, "
        "serve, worker, fake-meta) against a load generator, next to the machine's ceilings, and writes a report. "
        "Loopback only; bounded in time; stops everything it started.")
    p.add_argument("--quick", action="store_true", help="about two minutes instead of about fifteen")
    p.add_argument("--out", default="BENCHMARKS.md", help="where to write the report (default BENCHMARKS.md)")
    p.add_argument("--only", choices=("inbox", "pipeline", "budget", "webhook", "media"), default=None,
                   help="run one part: 'inbox' (a seeded database and 50 people working the inbox API), "
                        "'pipeline' (the ceilings, the webhook and the pipeline end to end, without the inbox), "
                        "'budget' (the CPU and SQL statements each message costs, at a fixed rate: a minute) or "
                        "'webhook' (the webhook alone, open loop and under wrk) or 'media' (media downloads/s "
                        "and the worker's peak RSS while a 100 MB document downloads)")
    p.add_argument("--serve-processes", metavar="N", type=int, default=None,
                   help="the pipeline's `wacrm serve --processes N` (default: what `wacrm dev` would use here)")
    p.add_argument("--workers", metavar="M", type=int, default=None,
                   help="the pipeline's `wacrm worker` processes, one consumer group (default: what `wacrm dev` "
                        "would use here)")
    p.add_argument("--seed", metavar="CONVERSATIONS", type=int, default=None,
                   help="the inbox phase's seed: this many conversations and ten times as many messages "
                        "(default 100,000, or 10,000 with --quick)")
    p.add_argument("--think", metavar="SECONDS", type=float, default=None,
                   help="the inbox phase: each person's mean pause between requests (default 0.5)")
    args = p.parse_args(argv)
    if args.seed is not None and args.seed < 100:
        p.error("--seed needs at least 100 conversations")
    if args.think is not None and not 0 < args.think <= 60:
        p.error("--think must be more than 0 and at most 60 seconds")
    for name in ("serve_processes", "workers"):
        value = getattr(args, name)
        if value is not None and not 1 <= value <= 4:
            p.error(f"--{name.replace('_', '-')} must be from 1 to 4")
    eventloop.install()
    seed = Seed(args.seed, args.seed * 10) if args.seed is not None else None
    try:
        command = " ".join(["python -m bench" if args.only else "make bench", *sys.argv[1:]])
        return run(args.quick, Path(args.out), command, args.only, seed, args.think,
                   serve_processes=args.serve_processes, workers=args.workers)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
