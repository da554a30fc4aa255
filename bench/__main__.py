"""``python -m bench`` (``make bench``): a tool of the checkout, not part of the installed wacrm."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from wacrm.core import eventloop


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench", description="Runs the system on this machine (embedded PostgreSQL and broker, "
        "serve, worker, fake-meta) against a load generator, next to the machine's ceilings, and writes a report. "
        "Loopback only; bounded in time; stops everything it started.")
    p.add_argument("--quick", action="store_true", help="about two minutes instead of about fifteen")
    p.add_argument("--out", default="BENCHMARKS.md", help="where to write the report (default BENCHMARKS.md)")
    args = p.parse_args(argv)
    eventloop.install()
    from bench.run import run

    try:
        return run(args.quick, Path(args.out), " ".join(["make bench", *sys.argv[1:]]))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
