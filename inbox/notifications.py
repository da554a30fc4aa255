"""A person's notifications (read and snoozed are each person's own) and the team's tasks:
``GET notifications``, ``POST notifications/{id}/read|snooze``, ``GET tasks``, ``POST tasks/{id}/done``."""

from __future__ import annotations

from aiohttp import web

from wacrm.inbox import store
from wacrm.inbox.keys import POOL, USER
from wacrm.inbox.protocol import body_of, future_time, invalid, not_found, ok, path_id


async def list_notifications(request: web.Request) -> web.Response:
    async with request.app[POOL].acquire() as conn:
        items, unread = await store.notifications(conn, request[USER].id)
    return ok(notifications=items, meta={"unread": unread})


async def read_notification(request: web.Request) -> web.Response:
    nid = path_id(request)
    async with request.app[POOL].acquire() as conn:
        if not await store.notification_update(conn, nid, request[USER].id, read=True):
            raise not_found("notification")
    return ok(notification={"id": nid})


async def snooze_notification(request: web.Request) -> web.Response:
    nid = path_id(request)
    until = future_time((await body_of(request)).get("until"), "until")
    async with request.app[POOL].acquire() as conn:
        if not await store.notification_update(conn, nid, request[USER].id, snooze_until=until):
            raise not_found("notification")
    return ok(notification={"id": nid, "snoozed_until": until.isoformat()})


async def list_tasks(request: web.Request) -> web.Response:
    state = request.query.get("state", "open")
    if state not in ("open", "done"):
        raise invalid("state must be open or done")
    async with request.app[POOL].acquire() as conn:
        return ok(tasks=await store.tasks(conn, state))


async def task_done(request: web.Request) -> web.Response:
    tid = path_id(request)
    async with request.app[POOL].acquire() as conn:
        if not await store.task_done(conn, tid):
            raise not_found("task")
    return ok(task={"id": tid, "state": "done"})
