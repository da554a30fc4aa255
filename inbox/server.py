"""What ``wacrm serve`` runs: the webhook, the inbox, or both in one aiohttp server
(:func:`make_app`: ``only=None``, ``"webhook"`` or ``"inbox"``).

:func:`make_inbox_api` is the ``/api/v1`` application. Its resources — the pool, the live-events
hub, the LLM's session, the media store, the Graph API session, and two loops (housekeeping:
snoozed conversations reopened, intelligence refreshed every ``INTELLIGENCE_EVERY_MESSAGES``
messages, the event log pruned; the template sync) — are each opened in a ``cleanup_ctx`` of
their own. On shutdown the live streams end first, so the server stops within its bound.

``/readyz``: the webhook alone asks the broker, the inbox alone its database (and schema); the
combined server reports each half apart and answers 200 while its webhook half is ready, whatever
the inbox's state (``"status": "degraded"``): a database outage must not take the webhook out of
rotation. Every answer names what is not ready with a fixed hint; exception text goes to the log.
The inbox's pool connects on demand, so a server started while PostgreSQL is down comes up, and
its inbox half becomes ready when the database answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from wacrm.core.health import healthz, metrics_view, readiness, readiness_response
from wacrm.core.settings import Settings
from wacrm.inbox import api, catalogue, events, intelligence, listing, media, store
from wacrm.inbox import web as web_pages
from wacrm.inbox.guard import guard
from wacrm.inbox.keys import COUNTS, GRAPH_SESSION, HUB, LLM, POOL, RULES, SCHEMA, SETTINGS
from wacrm.inbox.schema import SchemaGuard
from wacrm.media import open_store
from wacrm.orchestrator.rules import Rules, load_rules
from wacrm.storage import numbers
from wacrm.storage.db import create_pool
from wacrm.webhook.app import broker_problems
from wacrm.webhook.app import make_app as make_webhook_app

log = logging.getLogger("wacrm.inbox")
CleanupContext = Callable[[web.Application], AsyncIterator[None]]

TICK_S = 2.0
EVENTS_KEPT_S = 86400.0
PRUNE_EVERY_S = 600.0
INTELLIGENCE_PER_TICK = 5
INBOX_API = web.AppKey("inbox_api", web.Application)  # the combined server's inbox half, for /readyz
READY_TIMEOUT_S = 2.0  # a probe must answer within its own timeout (k8s: 1 s by default, then retried)
DATABASE_NOT_READY = "not reachable (check DATABASE_URL and the database; details in the log)"


def rules_of(settings: Settings) -> Rules:
    """The rules file the inbox reads (templates, stages); raises ``RulesError``."""
    return load_rules(Path(settings.rules_file) if settings.rules_file else None)


async def _housekeeping(app: web.Application) -> None:
    settings, pool, rules = app[SETTINGS], app[POOL], app[RULES]
    pruned_at = 0.0
    numbered = False  # the environment's number is a row (for the list of numbers and the conversations')
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(TICK_S)
        try:
            if await app[SCHEMA].problem(pool) is not None:
                continue
            async with pool.acquire() as conn:
                if not numbered:
                    await numbers.ensure_environment_number(conn, settings.whatsapp_phone_number_id,
                                                            settings.whatsapp_business_account_id,
                                                            resume_refused=False)
                    numbered = True
                await store.reopen_snoozed(conn)
                due = await store.intelligence_due(conn, settings.intelligence_every, INTELLIGENCE_PER_TICK) \
                    if settings.intelligence_every else []
                if loop.time() - pruned_at > PRUNE_EVERY_S:
                    await store.prune_events(conn, EVENTS_KEPT_S)
                    pruned_at = loop.time()
            for cid in due:
                await intelligence.refresh(pool, cid, rules.intelligence, llm=app[LLM], trigger="messages")
        except asyncio.CancelledError:
            raise
        except Exception:  # the loop goes on; the next tick tries again
            log.exception("inbox housekeeping failed; it runs again")


TEMPLATE_TICK_S = 15.0  # how often the template sync loop asks whether a sync is due


async def _template_sync(app: web.Application) -> None:
    """The catalogue at start, then every ``TEMPLATE_SYNC_SECONDS`` (or soon after a webhook named a template
    the catalogue lacks); processes agree in the database which one syncs (:mod:`inbox.catalogue`)."""
    settings, pool = app[SETTINGS], app[POOL]
    min_age = catalogue.START_MIN_AGE_S
    while True:
        try:
            if await app[SCHEMA].problem(pool) is None:
                await catalogue.sync(pool, app[GRAPH_SESSION], settings, app[RULES], min_age_s=min_age)
                min_age = settings.template_sync_s
        except asyncio.CancelledError:
            raise
        except Exception:  # the loop goes on; the next tick tries again
            log.exception("template sync failed; it runs again")
        await asyncio.sleep(TEMPLATE_TICK_S)


def make_inbox_api(settings: Settings, rules: Rules) -> web.Application:
    """The ``/api/v1`` application; each resource is opened in a ``cleanup_ctx`` of its own and
    closed in reverse order, so a failing close cannot leak the others."""
    app = web.Application(middlewares=[guard], client_max_size=256 * 1024)
    app[SETTINGS] = settings
    app[RULES] = rules
    app[SCHEMA] = SchemaGuard()
    app[COUNTS] = listing.CountsCache()
    app.cleanup_ctx.extend([_pool, _hub, _llm, _background("inbox-housekeeping", _housekeeping), _media_store,
                            _graph_session, _background("inbox-template-sync", _template_sync)])
    app.on_shutdown.append(_end_streams)  # before the server waits for open requests
    api.add_routes(app)
    return app


async def _pool(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    assert settings.database_url
    app[POOL] = await create_pool(settings.database_url, timeout=settings.db_timeout_s, min_size=0,
                                  max_size=10, pooled=settings.database_pooled)
    yield
    await app[POOL].close()


async def _hub(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    assert settings.direct_url
    app[HUB] = hub = events.Hub(settings.direct_url, settings.db_timeout_s)  # LISTEN needs a session of its own
    hub.start()
    yield
    await hub.close()


async def _end_streams(app: web.Application) -> None:
    await app[HUB].close()


async def _llm(app: web.Application) -> AsyncIterator[None]:
    """The LLM of conversation intelligence and its HTTP session; None when none is configured."""
    s = app[SETTINGS]
    if (llm := s.llm) is None:
        app[LLM] = None
        yield
        return
    async with aiohttp.ClientSession() as session:
        app[LLM] = (session, intelligence.LlmConfig(llm.base_url, llm.api_key, llm.model, s.intelligence_timeout_s))
        yield


async def _media_store(app: web.Application) -> AsyncIterator[None]:
    async with open_store(app[SETTINGS]) as opened:
        app[media.STORE] = opened
        yield


async def _graph_session(app: web.Application) -> AsyncIterator[None]:
    """The Graph API session of the template sync."""
    async with aiohttp.ClientSession() as session:
        app[GRAPH_SESSION] = session
        yield


def _background(name: str, loop: Callable[[web.Application], Coroutine[Any, Any, None]]) -> CleanupContext:
    """A ``cleanup_ctx`` that runs ``loop(app)`` as a task while the application runs."""
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(loop(app), name=name)
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    return ctx


async def inbox_problems(api_app: web.Application) -> dict[str, str]:
    """What keeps the inbox from answering: the database unreachable (or slow past
    :data:`READY_TIMEOUT_S`), or its schema behind the code (the message names ``wacrm migrate``)."""
    pool = api_app[POOL]
    try:
        async with asyncio.timeout(READY_TIMEOUT_S):
            async with pool.acquire() as conn:  # asked each time: the schema's answer is cached
                await conn.fetchval("SELECT 1")
            problem = await api_app[SCHEMA].problem(pool)
    except Exception as exc:  # any failure means not ready; the log says why
        log.warning("readyz: the database is not ready: %r", exc)
        return {"database": DATABASE_NOT_READY}
    return {"database": problem} if problem else {}


def _inbox_readyz(api_app: web.Application) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def readyz(request: web.Request) -> web.Response:
        """The inbox alone: 200 when its database answers and the schema is current, else 503."""
        problems = await inbox_problems(api_app)
        return readiness_response(readiness(problems), not problems)

    return readyz


async def combined_readyz(request: web.Request) -> web.Response:
    """Both halves: ``{"status": "ready"|"degraded"|"not_ready", "webhook": {...}, "inbox": {...}}``;
    200 while the webhook half is ready (``degraded``: the inbox is not), 503 when it is not."""
    webhook, inbox = await asyncio.gather(broker_problems(request.app), inbox_problems(request.app[INBOX_API]))
    status = "not_ready" if webhook else "degraded" if inbox else "ready"
    return readiness_response({"status": status, "webhook": readiness(webhook), "inbox": readiness(inbox)},
                              not webhook)


def add_inbox(root: web.Application, settings: Settings, rules: Rules) -> web.Application:
    """Mount the inbox API under /api/v1 and its pages; returns the API application."""
    api_app = make_inbox_api(settings, rules)
    root.add_subapp("/api/v1", api_app)
    web_pages.add_pages(root, api_app)
    return api_app


def make_app(settings: Settings, only: str | None = None) -> web.Application:
    """The server for ``wacrm serve [--only webhook|inbox]``."""
    if only == "webhook":
        return make_webhook_app(settings)
    rules = rules_of(settings)
    if only != "inbox":
        root = make_webhook_app(settings, readyz_handler=combined_readyz)
        root[INBOX_API] = add_inbox(root, settings, rules)
        return root
    root = web.Application()
    root.router.add_get("/healthz", healthz)
    root.router.add_get("/metrics", metrics_view)
    root.router.add_get("/readyz", _inbox_readyz(add_inbox(root, settings, rules)))
    return root
