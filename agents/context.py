"""Resources the agents share, owned by one service with a managed lifetime.

:class:`Resources` opens the database pool, the HTTP session, the Graph API client and the
business numbers' lookup (:class:`storage.numbers.Numbers`: each Graph call's token; the
environment's number made a row first), the media store (with the media endpoint's client) and
the orchestrator's LLM client when one is configured (:attr:`core.settings.Settings.llm`) when the
worker starts, and closes them, with the lag probe, when it stops. Agents wait on
``ready`` before their first event. While it runs, its timer beats the worker's
:class:`~wacrm.core.liveness.Heartbeat` on the event loop (``/livez``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import aiohttp
import asyncpg
import faust
from mode import Service

from wacrm.core.liveness import BEAT_EVERY_S, Heartbeat
from wacrm.core.secret import reveal
from wacrm.core.settings import Settings
from wacrm.media import MediaStore, open_store
from wacrm.orchestrator.llm import LlmClient
from wacrm.orchestrator.service import Orchestrator
from wacrm.storage import numbers as business_numbers
from wacrm.storage.db import create_pool
from wacrm.topics.lag import LagProbe
from wacrm.whatsapp.graph import GraphClient
from wacrm.whatsapp.media import MediaClient

log = logging.getLogger("wacrm.worker")


class Resources(Service):
    """Database pool, HTTP session, Graph API client, lag probe and event-loop heartbeat of one worker process."""

    def __init__(self, settings: Settings, orchestrator: Orchestrator, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.settings = settings
        self.orchestrator = orchestrator
        self.ready = asyncio.Event()
        self._pool: asyncpg.Pool | None = None
        self._session: aiohttp.ClientSession | None = None
        self._graph: GraphClient | None = None
        self._numbers: business_numbers.Numbers | None = None
        self.topics: dict[str, faust.TopicT] = {}
        self.lag_probe: LagProbe | None = None  # the health timer's, started on its first sample
        self.heartbeat = Heartbeat()
        self._media = contextlib.AsyncExitStack()
        self._media_store: MediaStore | None = None
        self._media_client: MediaClient | None = None

    async def on_start(self) -> None:
        s = self.settings
        assert s.database_url is not None
        # a connection per lane of the inbound and sender batches, plus the status agent and the timers
        self._pool = await create_pool(s.database_url, timeout=s.db_timeout_s, max_size=2 * s.batch_lanes + 4,
                                       pooled=s.database_pooled)
        self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=200))
        self._graph = GraphClient(self._session, s.graph_messages_url_base, timeout=s.graph_timeout_s,
                                  default_region=s.default_phone_region)
        async with self._pool.acquire() as conn:
            await business_numbers.ensure_environment_number(conn, s.whatsapp_phone_number_id,
                                                             s.whatsapp_business_account_id, resume_refused=True)
        self._numbers = business_numbers.Numbers(
            self._pool, business_numbers.TokenCipher(s.token_encryption_key),
            (s.whatsapp_phone_number_id, s.whatsapp_access_token) if s.whatsapp_access_token else None)
        self._media_store = await self._media.enter_async_context(open_store(s))
        self._media_client = MediaClient(self._session, s.graph_messages_url_base, timeout=s.graph_timeout_s)
        if (endpoint := s.llm) is not None:
            llm = self.orchestrator.rules.llm
            self.orchestrator.llm = LlmClient(self._session, endpoint.base_url, reveal(endpoint.api_key),
                                              endpoint.model, timeout=llm.timeout_seconds,
                                              max_reply_chars=llm.max_reply_chars)
        self.ready.set()

    @Service.timer(BEAT_EVERY_S, exec_first=True)
    async def _beat(self) -> None:
        """The event loop is alive: it runs this every few seconds (a stuck loop stops beating)."""
        self.heartbeat.beat()

    async def on_stop(self) -> None:
        self.ready.clear()
        if self.lag_probe is not None:
            await self.lag_probe.stop()
        await self._media.aclose()
        if self._session is not None:
            await self._session.close()
        if self._pool is not None:
            await asyncio.wait_for(self._pool.close(), timeout=10)

    @property
    def pool(self) -> asyncpg.Pool:
        assert self._pool is not None, "Resources not started"
        return self._pool

    @property
    def graph(self) -> GraphClient:
        assert self._graph is not None, "Resources not started"
        return self._graph

    @property
    def numbers(self) -> business_numbers.Numbers:
        """The business numbers: ``await numbers.token_for(phone_number_id)`` for every Graph API call."""
        assert self._numbers is not None, "Resources not started"
        return self._numbers


    @property
    def media_store(self) -> MediaStore:
        assert self._media_store is not None, "Resources not started"
        return self._media_store

    @property
    def media_client(self) -> MediaClient:
        assert self._media_client is not None, "Resources not started"
        return self._media_client
