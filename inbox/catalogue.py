"""The template catalogue's sync with Meta: every page of each account's templates
(:mod:`whatsapp.template_list`), stored as the catalogue (:mod:`storage.templates`), then the rules
file's window template checked against it.

Who runs it: the inbox server, at start and every ``TEMPLATE_SYNC_SECONDS`` (its template sync
loop, :mod:`inbox.server`), and on demand (``POST /api/v1/templates/sync``, ``wacrm templates
sync``); the worker only reads the table. Several inbox processes agree in the database
(:func:`storage.templates.claim_sync`): one syncs per period.

A failed sync changes nothing in the catalogue (the last good one stays) and records why.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import aiohttp
import asyncpg

from wacrm.core.settings import Settings
from wacrm.orchestrator.rules import Rules
from wacrm.storage import templates as catalogue
from wacrm.whatsapp import template_list
from wacrm.whatsapp.templates import APPROVED, Template

log = logging.getLogger("wacrm.templates")

START_MIN_AGE_S = 30.0  # processes starting together sync once


@dataclass(frozen=True, slots=True)
class Synced:
    """What one account's sync did (``skipped``: another process is syncing it now)."""

    waba_id: str
    ok: bool
    templates: int = 0
    approved: int = 0
    pages: int = 0
    error: str | None = None
    window_problem: str | None = None
    skipped: bool = False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def line(self) -> str:
        if self.skipped:
            return f"WABA {self.waba_id}: another process is syncing it right now"
        if not self.ok:
            return f"WABA {self.waba_id}: sync failed, the last good catalogue is kept: {self.error}"
        warn = f"; warning: {self.window_problem}" if self.window_problem else ""
        return (f"WABA {self.waba_id}: {self.templates} templates ({self.approved} approved) from "
                f"{self.pages} page(s){warn}")


def window_problem(rules: Rules, found: list[Template]) -> str | None:
    """Why the rules file's window template cannot be sent from this account, or ``None``."""
    wt = rules.window_template
    if wt is None:
        return None
    match = next((t for t in found if t.name == wt.name and t.language == wt.language), None)
    if match is None:
        return (f"the rules file's window_template {wt.name} ({wt.language}) is not in the account's catalogue: "
                "outside the 24-hour window the bot cannot answer until it is approved at Meta")
    if match.status != APPROVED:
        return (f"the rules file's window_template {wt.name} ({wt.language}) is {match.status} at Meta: "
                "outside the 24-hour window the bot cannot answer until it is approved")
    return None


async def sync(pool: asyncpg.Pool, session: aiohttp.ClientSession, settings: Settings, rules: Rules, *,
               min_age_s: float = 0.0, on_page: Callable[[str, int, int], None] | None = None) -> list[Synced]:
    """Sync every account whose last sync started ``min_age_s`` ago or more (0: now, whatever)."""
    async with pool.acquire() as conn:
        accounts = await catalogue.accounts(conn, settings)
    out: list[Synced] = []
    for account in accounts:
        if account.token is None:
            why = "no number of this account has a usable access token (wacrm numbers add)"
            out.append(Synced(account.waba_id, ok=False, error=why))
            continue
        async with pool.acquire() as conn:
            started = await catalogue.claim_sync(conn, account.waba_id, min_age_s)
        if started is None:
            out.append(Synced(account.waba_id, ok=True, skipped=True))
            continue
        pages = 0

        def page(n: int, count: int, waba: str = account.waba_id) -> None:
            nonlocal pages
            pages = n
            if on_page is not None:
                on_page(waba, n, count)

        try:
            found, pages = await template_list.fetch_all(
                session, settings.whatsapp_api_base_url, settings.whatsapp_api_version, account.waba_id,
                account.token, timeout=settings.graph_timeout_s, on_page=page)
        except template_list.ListError as exc:
            log.warning("template sync of WABA %s failed; the last good catalogue is kept: %s", account.waba_id, exc)
            async with pool.acquire() as conn:
                await catalogue.sync_failed(conn, account.waba_id, str(exc), pages)
            out.append(Synced(account.waba_id, ok=False, pages=pages, error=str(exc)))
            continue
        problem = window_problem(rules, found)
        async with pool.acquire() as conn, conn.transaction():
            await catalogue.replace_catalogue(conn, account.waba_id, found, started, pages)
            if await catalogue.set_window_problem(conn, account.waba_id, problem) and problem:
                await catalogue.notify_admins(conn, "window_template", f"WABA {account.waba_id}: {problem}")
        if problem:
            log.warning("WABA %s: %s", account.waba_id, problem)
        result = Synced(account.waba_id, ok=True, templates=len(found),
                        approved=sum(t.status == APPROVED for t in found), pages=pages, window_problem=problem)
        log.info("template sync: %s", result.line())
        out.append(result)
    return out
