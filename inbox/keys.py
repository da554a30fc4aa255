"""The inbox API's typed state: what its application holds (:class:`aiohttp.web.AppKey`, set by
:func:`inbox.server.make_inbox_api`) and what a request carries once signed in
(:class:`aiohttp.web.RequestKey`, set by :mod:`inbox.guard`)."""

from __future__ import annotations

import aiohttp
import asyncpg
from aiohttp import web

from wacrm.core.settings import Settings
from wacrm.inbox import events, intelligence, listing
from wacrm.inbox.auth import User
from wacrm.inbox.schema import SchemaGuard
from wacrm.orchestrator.rules import Rules

SETTINGS = web.AppKey("inbox_settings", Settings)
POOL = web.AppKey("inbox_pool", asyncpg.Pool)
HUB = web.AppKey("inbox_hub", events.Hub)
SCHEMA = web.AppKey("inbox_schema", SchemaGuard)
RULES = web.AppKey("inbox_rules", Rules)
COUNTS = web.AppKey("inbox_counts", listing.CountsCache)
LLM = web.AppKey[intelligence.Llm | None]("inbox_llm")  # None: no LLM configured, the rules decide
GRAPH_SESSION = web.AppKey("inbox_graph_session", aiohttp.ClientSession)  # the template sync's Graph API calls

USER = web.RequestKey("inbox_user", User)  # who is asking (every route but the public ones)
CSRF = web.RequestKey("inbox_csrf", str)  # the session's CSRF token (signed in by cookie, not by Bearer token)
