"""``wacrm dev``: the whole system on this machine (:mod:`wacrm.dev`)."""

from __future__ import annotations

import argparse
from pathlib import Path


def add(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    d = sub.add_parser("dev", help="run the whole system on this machine (embedded PostgreSQL and broker)",
                       description="Start the embedded PostgreSQL (data under STATE_DIR), migrate, start the "
                       "embedded broker, create the topics, start the fake Graph API (unless "
                       "WHATSAPP_API_BASE_URL is set), the webhook server and the worker. Ctrl-C stops all.")
    d.add_argument("--state-dir", default=".wacrm", help="where data, logs and the dev state live (default .wacrm)")
    d.set_defaults(func=cmd_dev)


def cmd_dev(args: argparse.Namespace) -> int:
    from wacrm.dev import run_dev

    return run_dev(Path(args.state_dir))

