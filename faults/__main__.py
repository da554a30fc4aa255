"""``python -m faults`` (``make faults``): a tool of the checkout, not part of the installed wacrm."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from wacrm.core import eventloop


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m faults", description="The fault suite: runs each scenario on real processes (embedded "
        "PostgreSQL and broker, serve, worker, fake-meta, a fake LLM) under signed webhook load, injects its "
        "faults, drains, counts lost, doubled and unanswered messages and writes a report. Exit 1 if any "
        "scenario is not ok. Loopback only.")
    p.add_argument("--scenario", action="append", default=[], metavar="NAME",
                   help="run only this scenario (repeatable); default: all")
    p.add_argument("--quick", action="store_true", help="the short forms (the ones `make test` runs)")
    p.add_argument("--out", default="FAULTS.md", help="where to write the report (default FAULTS.md)")
    args = p.parse_args(argv)
    from faults.run import run, select

    try:
        select(args.scenario)
    except ValueError as exc:
        print(f"python -m faults: {exc}", file=sys.stderr)
        return 2
    eventloop.install()
    try:
        return run(args.scenario, args.quick, Path(args.out), " ".join(["make faults", *sys.argv[1:]]))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
