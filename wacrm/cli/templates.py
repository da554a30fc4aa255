"""``wacrm templates``: the template catalogue, synced with Meta and listed."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

from wacrm.cli.shared import db_settings, schema_checked
from wacrm.core.exits import EXIT_CONFIG, EXIT_FAIL, CommandError
from wacrm.core.settings import Settings, env_value
from wacrm.devstate import DEFAULT_STATE_DIR, read_state


def add(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    tp = sub.add_parser("templates", help="the template catalogue: sync it with Meta, list it (needs DATABASE_URL)",
                        description="The approved message templates of each WhatsApp Business Account "
                        "(WHATSAPP_BUSINESS_ACCOUNT_ID), as the inbox offers them outside the 24-hour window.")
    tsub = tp.add_subparsers(dest="templates_command", required=True, metavar="ACTION")
    tsub.add_parser("sync", help="read every page of GET /{version}/{waba_id}/message_templates now and store it",
                    description="Syncs the catalogue now, with a progress line per page; a failed sync keeps the "
                    "last good catalogue and says why (exit 1). The inbox server also syncs at start and every "
                    "TEMPLATE_SYNC_SECONDS.")
    tl = tsub.add_parser("list", help="the catalogue: name, language, category, status, quality, parameters",
                         description="Lists the stored catalogue and each account's last sync.")
    tl.add_argument("--status", default=None, help="only templates in this status (APPROVED, PAUSED, REJECTED …)")
    tp.set_defaults(func=cmd_templates)


def _slot(name: str) -> str:
    return "{{" + name + "}}"


def _template_params(parameters: dict[str, Any]) -> str:
    """What a send of a template must fill, in one short line: ``header{{1}} body{{1}},{{2}} button0``."""
    parts: list[str] = []
    header = parameters.get("header")
    if header:
        parts.append("header:" + (",".join(_slot(p["name"]) for p in header["params"])
                                  if header["kind"] == "text" else header["kind"]))
    if parameters.get("body"):
        parts.append("body:" + ",".join(_slot(p["name"]) for p in parameters["body"]))
    parts += [f"button{b['index']}:{b['type']}" for b in parameters.get("buttons") or []]
    return " ".join(parts) or "-"


async def _templates(args: argparse.Namespace, s: Settings) -> int:
    import aiohttp

    from wacrm.inbox import catalogue
    from wacrm.orchestrator.rules import RulesError, load_rules
    from wacrm.storage import templates as tstore
    from wacrm.storage.db import create_pool

    assert s.direct_url
    try:
        rules = load_rules(Path(s.rules_file) if s.rules_file else None)
    except RulesError as exc:
        raise CommandError(f"RULES_FILE: {exc}", EXIT_CONFIG) from None
    try:
        pool = await create_pool(s.direct_url, timeout=s.db_timeout_s, min_size=1, max_size=2)
    except Exception as exc:
        raise CommandError(f"cannot connect to {s.direct_variable}: {type(exc).__name__}: {exc}") from None
    try:
        if args.templates_command == "sync":
            def page(waba: str, pages: int, count: int) -> None:
                print(f"\rWABA {waba}: page {pages} read, {count} templates so far", end="", file=sys.stderr,
                      flush=True)

            async with aiohttp.ClientSession() as session:
                synced = await catalogue.sync(pool, session, s, rules, on_page=page)
            print(file=sys.stderr)
            if not synced:
                raise CommandError("no WhatsApp Business Account is configured (WHATSAPP_BUSINESS_ACCOUNT_ID)",
                                   EXIT_CONFIG)
            for result in synced:
                print(result.line())
            return 0 if all(r.ok for r in synced) else EXIT_FAIL
        async with pool.acquire() as conn:
            wabas = [a.waba_id for a in await tstore.accounts(conn, s)]
            rows = await tstore.catalogue(conn, wabas, args.status.upper() if args.status else None)
            syncs = await tstore.sync_states(conn, wabas)
        for sync in syncs:
            state = "ok" if sync["ok"] else f"FAILED: {sync['error']}" if sync["ok"] is False else "running"
            print(f"WABA {sync['waba_id']}: last sync {sync['finished_at'] or sync['started_at']} {state}; "
                  f"last good {sync['last_good_at'] or 'never'}")
        print(f"{'name':<22} {'language':<8} {'category':<14} {'status':<12} {'quality':<8} parameters")
        for t in rows:
            print(f"{t['name']:<22} {t['language']:<8} {t['category']:<14} {t['status']:<12} "
                  f"{t['quality'] or '-':<8} {_template_params(t['parameters'])}")
        print(f"{len(rows)} template(s)")
        return 0
    finally:
        await pool.close()


def cmd_templates(args: argparse.Namespace) -> int:
    """Beside a running ``wacrm dev`` (``WHATSAPP_API_BASE_URL`` unset), its fake Graph API is asked."""
    env_base = env_value("WHATSAPP_API_BASE_URL")
    s = db_settings()
    state = read_state(DEFAULT_STATE_DIR)
    if not env_base and state and state.get("fake_meta_url") and s.database_url == state.get("database_url"):
        s = s.replace(whatsapp_api_base_url=state["fake_meta_url"])
    with schema_checked():
        return asyncio.run(_templates(args, s))

