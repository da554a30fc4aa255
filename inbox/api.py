"""The inbox API (``/api/v1/``): its route table. The contract is the OpenAPI document
``inbox/openapi.json``, served at ``GET /api/v1/openapi.json`` (:mod:`inbox.openapi`);
``tests/test_openapi.py`` holds it to this table, both ways.

Each resource's handlers are a module of their own (:mod:`inbox.sessions`, :mod:`inbox.conversations`,
:mod:`inbox.sends`, :mod:`inbox.contacts`, :mod:`inbox.notifications`, :mod:`inbox.numbers`,
:mod:`inbox.template_api`, :mod:`inbox.media`); every route passes :func:`inbox.guard.guard` (who may
ask) and answers in :mod:`inbox.protocol`'s JSON. Nothing here logs a phone number, a message text,
a password or a token.
"""

from __future__ import annotations

from aiohttp import web

from wacrm.inbox import (
    contacts,
    conversations,
    events,
    media,
    notifications,
    numbers,
    openapi,
    sends,
    sessions,
    template_api,
)
from wacrm.inbox.keys import HUB, POOL


async def live_events(request: web.Request) -> web.StreamResponse:
    return await events.stream(request, request.app[HUB], request.app[POOL])


def add_routes(app: web.Application) -> None:
    r = app.router
    app[openapi.DOCUMENT] = openapi.load()
    r.add_get("/openapi.json", openapi.serve)
    r.add_post("/auth/login", sessions.login)
    r.add_post("/auth/logout", sessions.logout)
    r.add_get("/auth/me", sessions.me)
    r.add_get("/conversations", conversations.list_conversations)
    r.add_get("/conversations/{id}", conversations.get_conversation)
    r.add_post("/conversations/{id}/messages", sends.send_message)
    r.add_post("/conversations/{id}/assign", conversations.assign)
    r.add_post("/conversations/{id}/release", conversations.release)
    r.add_post("/conversations/{id}/status", conversations.set_status)
    r.add_post("/conversations/{id}/notes", conversations.add_note)
    r.add_post("/conversations/{id}/intelligence/refresh", conversations.refresh_intelligence)
    r.add_post("/conversations/{id}/lead", conversations.set_lead)
    r.add_post("/conversations/{id}/bot", conversations.set_bot)
    r.add_post("/outbound/{id}/retry", sends.retry_outbound)
    r.add_patch("/contacts/{id}", contacts.update_contact)
    r.add_get("/notifications", notifications.list_notifications)
    r.add_post("/notifications/{id}/read", notifications.read_notification)
    r.add_post("/notifications/{id}/snooze", notifications.snooze_notification)
    r.add_get("/tasks", notifications.list_tasks)
    r.add_post("/tasks/{id}/done", notifications.task_done)
    r.add_post("/admin/conversations/{id}/delete", conversations.admin_delete)
    r.add_post("/admin/conversations/{id}/restore", conversations.admin_restore)
    r.add_get("/admin/conversations", conversations.admin_list)
    r.add_get("/numbers", numbers.list_numbers)
    r.add_post("/numbers", numbers.add_number)
    r.add_get("/events", live_events)
    r.add_get("/templates", template_api.list_templates)
    r.add_post("/templates/sync", template_api.sync_templates)
    r.add_get("/media/{id}", media.serve)
