"""``wacrm simulate``: sign and POST a realistic inbound message to a running webhook, then wait for
what the customer received for it (from the fake Graph API), or for the database to say why nothing will come."""

from __future__ import annotations

import argparse
import asyncio
import mimetypes
import sys
import time
from pathlib import Path
from typing import Any

from wacrm.cli.shared import epoch, settings, when
from wacrm.core.exits import EXIT_CONFIG, EXIT_FAIL, CommandError
from wacrm.core.settings import env_value
from wacrm.devstate import read_state


def add(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    sm = sub.add_parser("simulate", help="sign and POST a realistic inbound message (text, image or document) to "
                        "a running webhook",
                        description="Builds a Cloud API `messages` webhook body, signs it with the app secret "
                        "(WHATSAPP_APP_SECRET, or the one `wacrm dev` generated) and POSTs it. With the fake "
                        "Graph API, waits for what the customer received for it (the sends whose ledger row answers "
                        "it) and prints it; when the database says no reply is meant to come (the customer opted "
                        "out, a person owns the conversation, the rules chose none, the 24-hour window had closed) "
                        "it says why and exits 0.")
    sm.add_argument("--text", default=None, help="the customer's message (with --image or --document: the caption)")
    media = sm.add_mutually_exclusive_group()
    media.add_argument("--image", metavar="FILE", default=None,
                       help="send an image message (JPEG or PNG) for FILE: its mime type and sha256, --text as caption")
    media.add_argument("--document", metavar="FILE", default=None,
                       help="send a document message for FILE: its name, mime type and sha256, --text as caption")
    sm.add_argument("--at", metavar="ISO_TIME", default=None,
                    help="when the customer sent it (ISO 8601, UTC unless a zone is given; default now): more "
                    "than 24 hours ago, the 24-hour window is closed")
    sm.add_argument("--from", dest="from_", default="15550002222", help="customer phone (wa_id); '' for none")
    sm.add_argument("--name", default="Alice Test", help="customer profile name")
    sm.add_argument("--user-id", default=None, help="business-scoped user id, e.g. US.1000000000000000001")
    sm.add_argument("--phone-number-id", default="200000000000001", help="the business number's id")
    sm.add_argument("--message-id", default=None, help="wamid to use (default: a new unique one)")
    sm.add_argument("--url", default=None, help="webhook URL (default: the running `wacrm dev`, else PORT)")
    sm.add_argument("--fake-meta", default=None, help="fake Graph API base URL to watch for the reply")
    sm.add_argument("--request-id", default=None, help="the X-Request-Id to send (default: the webhook makes one)")
    sm.add_argument("--wait", type=float, default=15.0, help="seconds to wait for the reply (default 15)")
    sm.add_argument("--no-wait", action="store_true", help="do not wait for the reply")
    sm.add_argument("--state-dir", default=".wacrm",
                    help="the state directory of the running `wacrm dev` to use (its --state-dir; default .wacrm)")
    sm.set_defaults(func=cmd_simulate)


def _simulated_body(args: argparse.Namespace) -> dict[str, Any]:
    """The webhook body ``simulate`` posts: a text, or an image or document message (the file's
    mime type and sha256, the text as its caption), dated ``--at`` if given."""
    from wacrm.whatsapp import simulate

    at = epoch(args.at, "--at")
    if at is not None and at > time.time() + 60:
        raise CommandError(f"--at: {args.at!r} is in the future; a customer's message is dated when they sent it",
                           EXIT_CONFIG)
    who = dict(wa_id=args.from_ or None, name=args.name, user_id=args.user_id, phone_number_id=args.phone_number_id,
               message_id=args.message_id, timestamp=int(at) if at is not None else None)
    path, kind = (args.image, "image") if args.image else (args.document, "document") if args.document else (None, "")
    if path is None:
        if not args.text:
            raise CommandError("give --text, or --image FILE / --document FILE (with --text as the caption)",
                               EXIT_CONFIG)
        return simulate.text_body(text=args.text, **who)
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise CommandError(f"--{kind}: cannot read {path}: {exc.strerror}", EXIT_CONFIG) from None
    mime = mimetypes.guess_type(path)[0] or ("application/octet-stream" if kind == "document" else "")
    if kind == "image" and mime not in ("image/jpeg", "image/png"):
        raise CommandError(f"--image: {path} is not a JPEG or PNG image (WhatsApp's image types); send it with "
                           "--document instead", EXIT_CONFIG)
    part = simulate.media_part(kind, data, mime, caption=args.text or None, filename=Path(path).name)  # type: ignore[arg-type]
    return simulate.message_body(kind, part, **who)


async def _simulate(args: argparse.Namespace, secret: str, url: str, fake_meta: str | None,
                    database_url: str | None) -> int:
    import aiohttp

    from wacrm import media_cmd
    from wacrm.whatsapp import signature, simulate

    built = _simulated_body(args)
    message = built["entry"][0]["changes"][0]["value"]["messages"][0]
    body, message_id = simulate.dumps(built), message["id"]
    headers = {"Content-Type": "application/json", "X-Hub-Signature-256": signature.sign(secret, body)}
    if args.request_id:
        headers["X-Request-Id"] = args.request_id
    timeout = aiohttp.ClientTimeout(total=15)
    kind = message["type"]
    async with aiohttp.ClientSession(timeout=timeout) as session:
        if fake_meta and kind in ("image", "document"):  # Meta has the file before its webhook names it
            try:
                await media_cmd.give_fake_meta(session, fake_meta, Path(args.image or args.document), message[kind])
            except media_cmd.FakeMetaRefused as exc:
                raise CommandError(str(exc)) from None
        seen = len(await _sent(session, fake_meta)) if fake_meta and not args.no_wait else 0
        try:
            async with session.post(url, data=body, headers=headers) as resp:
                text = await resp.text()
                print(f"POST {url} -> {resp.status} {text}")
                print(f"message id: {message_id}")
                print(f"request id: {resp.headers.get('X-Request-Id', '-')} (wacrm trace ID shows its path)")
                if resp.status != 200:
                    return EXIT_FAIL
        except aiohttp.ClientError as exc:
            raise CommandError(f"cannot reach the webhook at {url}: {exc} (is `wacrm dev` or `wacrm serve` "
                               "running?)") from None
        age_h = (time.time() - int(message["timestamp"])) / 3600
        if age_h > 24:
            print(f"the message is dated {when(int(message['timestamp']))} UTC, {age_h:.0f} hours ago: the "
                  "24-hour window is closed")
        if not fake_meta or args.no_wait:
            return 0
        code = await _await_reply(args, session, fake_meta, database_url, message_id, seen)
        if kind in ("image", "document") and database_url is not None:
            print(await media_cmd.downloaded(database_url, message[kind]["id"], args.wait))
        return code


async def _await_reply(args: argparse.Namespace, session: Any, fake_meta: str, database_url: str | None,
                       message_id: str, seen: int) -> int:
    """What the customer received for ``message_id``: the sends fake-meta took whose ledger row
    answers it (:mod:`wacrm.received`), within ``--wait``. Silence is reported only once the
    database says none is coming, and why (``storage.replies.silence_reason``), or after the bound."""
    from wacrm.storage.db import connect

    conn = None
    if database_url is not None:
        try:
            conn = await connect(database_url, timeout=5)
        except Exception as exc:  # the database is optional here: the reply is then told by its recipient
            print(f"wacrm simulate: the database is not reachable ({type(exc).__name__}); the reply is told by "
                  "its recipient only", file=sys.stderr)
    recipient = f"+{args.from_}" if args.from_ else args.user_id
    deadline = time.monotonic() + args.wait
    try:
        while True:
            got = await _received(conn, (await _sent(session, fake_meta))[seen:], message_id, recipient)
            if got:
                for text in got:
                    print(f"reply sent to {recipient}: {text!r}")
                return 0
            silence = await _silence(conn, message_id)
            if silence is not None:
                intended, why = silence
                print(f"no reply, {'as intended' if intended else 'a failure'}: {why}",
                      file=sys.stdout if intended else sys.stderr)
                return 0 if intended else EXIT_FAIL
            if time.monotonic() >= deadline:
                break
            await asyncio.sleep(0.3)
    finally:
        if conn is not None:
            await conn.close()
    print(f"no reply recorded by {fake_meta} within {args.wait:g}s (`wacrm trace` with the request id the "
          "webhook returned shows where it stopped)", file=sys.stderr)
    return EXIT_FAIL


async def _received(conn: Any, sent: list[dict[str, Any]], message_id: str, recipient: str | None) -> list[str]:
    """The texts of the sends Meta took that answer ``message_id`` (by their ledger rows; without a
    database, the sends to ``recipient``)."""
    from wacrm import received
    from wacrm.storage import ledger_send

    if conn is None:
        return [received.what_was_sent(x["body"]) for x in sent if isinstance(x.get("body"), dict)
                and recipient in (x["body"].get("to"), x["body"].get("recipient"))][:1]
    answers = await ledger_send.answered_messages(conn, received.ledger_rows(sent))
    return [received.what_was_sent(x["body"]) for x, answered in received.replies(sent, answers)
            if answered == message_id]


async def _sent(session: Any, fake_meta: str | None) -> list[dict[str, Any]]:
    async with session.get(f"{fake_meta}/__sent") as resp:
        return list(await resp.json())


async def _silence(conn: Any, message_id: str) -> tuple[bool, str] | None:
    """Why the message got no reply, from the database, once decided (None: not known, or no database)."""
    from wacrm.storage.replies import silence_reason

    return await silence_reason(conn, message_id) if conn is not None else None


def cmd_simulate(args: argparse.Namespace) -> int:
    s = settings("dev", state_dir=Path(args.state_dir))
    state = read_state(Path(args.state_dir))
    secret = env_value("WHATSAPP_APP_SECRET") or (state or {}).get("app_secret")
    if not secret:
        raise CommandError("no app secret: set WHATSAPP_APP_SECRET, or start `wacrm dev` first", EXIT_CONFIG)
    url = args.url or (state or {}).get("webhook_url") or f"http://127.0.0.1:{s.port}/webhooks/whatsapp"
    fake_meta = args.fake_meta or (state or {}).get("fake_meta_url")
    return asyncio.run(_simulate(args, secret, url, fake_meta, s.database_url))

