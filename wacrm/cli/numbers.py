"""``wacrm numbers``: the business numbers this deployment serves, each with its own access token; and
the check that every stored token decrypts with ``TOKEN_ENCRYPTION_KEY`` (``serve``, ``worker``)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import sys
from collections.abc import AsyncIterator
from typing import Any

from wacrm.cli.shared import db_settings, direct_session, schema_checked
from wacrm.core.exits import EXIT_CONFIG, CommandError
from wacrm.core.settings import Settings
from wacrm.whatsapp.limits import ACCESS_TOKEN_MAX_CHARS, is_access_token


def add(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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


@contextlib.asynccontextmanager
async def _session(s: Settings) -> AsyncIterator[Any]:
    """A direct session for the numbers' table; a wrong ``TOKEN_ENCRYPTION_KEY`` exits 2 naming it, a table
    missing says which migration command fixes it."""
    from wacrm.storage import numbers

    conn = await direct_session(s)
    try:
        with schema_checked():
            yield conn
    except numbers.TokenKeyError as exc:
        raise CommandError(str(exc), EXIT_CONFIG) from None
    finally:
        await conn.close()


async def check_token_key(s: Settings) -> None:
    """Every stored access token decrypts with ``TOKEN_ENCRYPTION_KEY``, or exit 2 naming it: a wrong key
    stops a process at its start, not at its first send."""
    from wacrm.storage import numbers

    async with _session(s) as conn:
        await numbers.check_tokens(conn, numbers.TokenCipher(s.token_encryption_key))


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
    from wacrm.storage import numbers

    async with _session(s) as conn:
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


def cmd_numbers(args: argparse.Namespace) -> int:
    s = db_settings()
    token = None
    if args.numbers_command == "add":
        if s.token_encryption_key is None:
            raise CommandError("TOKEN_ENCRYPTION_KEY: required to store an access token and not set (32 random "
                               "bytes in url-safe base64; `wacrm dev` makes one)", EXIT_CONFIG)
        token = getpass.getpass("access token: ") if sys.stdin.isatty() else sys.stdin.readline().strip()
        if not is_access_token(token):
            raise CommandError("the access token on standard input must be one line of 1 to "
                               f"{ACCESS_TOKEN_MAX_CHARS} characters without spaces", EXIT_CONFIG)
    for line in asyncio.run(_numbers(args, s, token)):
        print(line)
    return 0

