"""The ``wacrm`` console script: the parser, made of each command group's subcommands, and the entry point."""

from __future__ import annotations

import argparse
import sys

from wacrm.cli import bus, db, dev, fake_meta, media, numbers, serve, simulate, templates, users, worker
from wacrm.core import eventloop
from wacrm.core.exits import CommandError

# In the order `wacrm --help` lists them.
GROUPS = (dev, serve, users, numbers, worker, db, bus, templates, media, fake_meta, simulate)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="wacrm", description="WhatsApp CRM pipeline. Configuration comes from environment variables "
        "(see the README); `wacrm dev` needs none.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in GROUPS:
        group.add(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run one command; a :class:`CommandError` is one line on stderr and its exit code, Ctrl-C exits 130."""
    args = parser().parse_args(argv)
    eventloop.install()
    try:
        return int(args.func(args) or 0)
    except CommandError as exc:
        print(f"wacrm {args.command}: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return 130
