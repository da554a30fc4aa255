"""Live events for the inbox: PostgreSQL ``LISTEN wacrm_inbox`` fanned out to Server-Sent Events.

The database writes every event (a stored message, a status change, a conversation's owner or
status, a notification) to ``inbox_events`` and NOTIFYs it in the same transaction, by triggers
(migration 0008), so every writer — agents, the API, a script — is covered and an event is seen
only once its change is committed. Events carry ids only; the page refetches what changed.

One :class:`Hub` per process holds one listening connection (reconnected with backoff; after a
reconnect it replays from the log what it missed) and a queue per open stream. A stream that
sends ``Last-Event-ID`` first gets the logged events after that id. :meth:`Hub.close` ends every
stream, so the server stops within its shutdown bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import asyncpg
import orjson
from aiohttp import web
from aiohttp_sse import sse_response

from wacrm.core import metrics
from wacrm.core.schema import is_schema_behind
from wacrm.storage.db import connect

log = logging.getLogger("wacrm.inbox.events")

CHANNEL = "wacrm_inbox"
REPLAY_LIMIT = 1000  # events replayed after a reconnect; older gaps: the page refetches everything
QUEUE_SIZE = 1000
LISTEN_WAIT_S = 15.0  # how long a new stream waits for the hub's listener before it gives up
PING_S = 15.0

# The event kinds that can change what the conversation list counts: a message (a new conversation,
# a reopened one) and a conversation's owner, status or deletion. Delivery ticks and notifications
# cannot; they are most of the events.
CHANGES_CONVERSATIONS = frozenset({"message", "conversation"})

_CLOSE: dict[str, Any] = {}  # the sentinel that ends a stream

_COLUMNS = "id, kind, conversation_id, message_id, notification_id"


def _event(row: asyncpg.Record | dict[str, Any]) -> dict[str, Any]:
    return {k: row[k] for k in ("id", "kind", "conversation_id", "message_id", "notification_id")
            if row[k] is not None}


async def events_after(conn: asyncpg.Connection, after: int, limit: int = REPLAY_LIMIT) -> list[dict[str, Any]]:
    rows = await conn.fetch(f"SELECT {_COLUMNS} FROM inbox_events WHERE id > $1 ORDER BY id LIMIT $2", after, limit)
    return [_event(r) for r in rows]


class Hub:
    def __init__(self, dsn: str, timeout: float) -> None:
        self._dsn = dsn
        self._timeout = timeout
        self._queues: set[asyncio.Queue[dict[str, Any]]] = set()
        self._task: asyncio.Task[None] | None = None
        self._closed = asyncio.Event()
        self._last_id = 0
        self._changes = 0
        self.listening = asyncio.Event()

    def stamp(self) -> int | None:
        """A number that moves whenever the conversations may have changed (a message or conversation
        event arrived, this process wrote, the listener reconnected); ``None`` while not listening,
        when nothing can be known. What was read under one stamp may be reused while it stays."""
        return self._changes if self.listening.is_set() else None

    def changed(self) -> None:
        """This process wrote: its own event may not have arrived yet."""
        self._changes += 1

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="inbox-events-listener")

    async def close(self) -> None:
        """End every open stream and stop listening."""
        self._closed.set()
        for q in list(self._queues):
            self._offer(q, _CLOSE)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def subscribe(self) -> asyncio.Queue[dict[str, Any]]:
        q: asyncio.Queue[dict[str, Any]] = asyncio.Queue(QUEUE_SIZE)
        self._queues.add(q)
        return q

    def unsubscribe(self, q: asyncio.Queue[dict[str, Any]]) -> None:
        self._queues.discard(q)

    def _offer(self, q: asyncio.Queue[dict[str, Any]], event: dict[str, Any]) -> None:
        try:
            q.put_nowait(event)
        except asyncio.QueueFull:  # a stream that does not read: end it; the page reconnects and refetches
            self._queues.discard(q)
            with contextlib.suppress(asyncio.QueueEmpty):
                q.get_nowait()
            q.put_nowait(_CLOSE)

    def _dispatch(self, event: dict[str, Any]) -> None:
        if event["kind"] in CHANGES_CONVERSATIONS:
            self._changes += 1
        self._last_id = max(self._last_id, int(event["id"]))
        for q in list(self._queues):
            self._offer(q, event)

    def _on_notify(self, conn: Any, pid: int, channel: str, payload: str) -> None:
        try:
            self._dispatch(_event(orjson.loads(payload)))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            log.warning("ignored a malformed %s notification", CHANNEL)

    async def _run(self) -> None:
        backoff = 0.5
        while not self._closed.is_set():
            conn: asyncpg.Connection | None = None
            try:
                conn = await connect(self._dsn, timeout=self._timeout)
                await conn.add_listener(CHANNEL, self._on_notify)
                if self._last_id:  # missed while reconnecting
                    for event in await events_after(conn, self._last_id):
                        self._dispatch(event)
                else:
                    self._last_id = int(await conn.fetchval("SELECT COALESCE(max(id), 0) FROM inbox_events"))
                self._changes += 1
                self.listening.set()
                backoff = 0.5
                while not conn.is_closed() and not self._closed.is_set():
                    await asyncio.sleep(1.0)
                    await conn.fetchval("SELECT 1")  # notices a dead connection
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any failure: listen again after a pause
                # A schema behind the code is reported (once a minute) by the schema guard.
                level = logging.DEBUG if is_schema_behind(exc) else logging.WARNING
                log.log(level, "inbox events: listening failed (%s: %s); again in %.1fs", type(exc).__name__, exc,
                        backoff)
            finally:
                self.listening.clear()
                if conn is not None:
                    with contextlib.suppress(Exception):
                        await conn.close(timeout=2)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 10.0)


async def stream(request: web.Request, hub: Hub, pool: asyncpg.Pool) -> web.StreamResponse:
    """``GET /api/v1/events``: one SSE event per logged event (``event:`` its kind, ``id:`` its id,
    ``data:`` its ids as JSON); ``Last-Event-ID`` resumes after that id."""
    raw_last = request.headers.get("Last-Event-ID") or request.query.get("last_event_id") or ""
    last = int(raw_last) if raw_last.isdigit() else None
    q = hub.subscribe()
    metrics.INBOX_SSE_STREAMS.inc()
    try:
        async with sse_response(request, ping_interval=PING_S) as sse:
            with contextlib.suppress(ConnectionError):  # the client left: nothing more to send
                await _pump(sse, hub, q, pool, last)
        return sse
    finally:
        hub.unsubscribe(q)
        metrics.INBOX_SSE_STREAMS.dec()


async def _pump(sse: Any, hub: Hub, q: asyncio.Queue[dict[str, Any]], pool: asyncpg.Pool, last: int | None) -> None:
    sent: set[int] = set()
    if last is not None:
        async with pool.acquire() as conn:
            backlog = await events_after(conn, last)
        for event in backlog:
            await sse.send(orjson.dumps(event).decode(), id=str(event["id"]), event=event["kind"])
            sent.add(event["id"])
    # "ready" promises that every later event reaches this stream: not before the hub listens (an event
    # committed before the listener's first connection would be skipped). A hub that cannot listen ends
    # the stream; the page's EventSource connects again.
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(hub.listening.wait(), LISTEN_WAIT_S)
    if not hub.listening.is_set():
        return
    await sse.send("{}", event="ready")  # no id: the stream is live from here
    while not hub.closed and sse.is_connected():
        try:
            event = await asyncio.wait_for(q.get(), PING_S)
        except TimeoutError:
            continue  # a client gone away shows in is_connected once a ping failed
        if event is _CLOSE:
            break
        if event["id"] in sent or (last is not None and event["id"] <= last):
            continue
        await sse.send(orjson.dumps(event).decode(), id=str(event["id"]), event=event["kind"])
