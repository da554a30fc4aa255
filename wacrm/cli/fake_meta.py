"""``wacrm fake-meta``: a local stand-in for the Graph API that records what it receives."""

from __future__ import annotations

import argparse
import asyncio
import signal
from pathlib import Path
from typing import Any

from wacrm.cli.shared import setup_logging
from wacrm.core.exits import EXIT_CONFIG, CommandError
from wacrm.core.settings import env_value


def add(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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


def cmd_fake_meta(args: argparse.Namespace) -> int:
    from wacrm.whatsapp.fake_meta import load_templates, serve

    _install_sigterm_as_interrupt()
    setup_logging("WARNING")
    try:
        templates = load_templates(Path(args.templates) if args.templates else None)
    except ValueError as exc:
        raise CommandError(f"--templates: {exc}", EXIT_CONFIG) from None
    secret = args.app_secret or env_value("WHATSAPP_APP_SECRET")
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
    """SIGTERM stops the server as Ctrl-C does (``wacrm dev`` and the tests stop it with SIGTERM)."""
    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)

