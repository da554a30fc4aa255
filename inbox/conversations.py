"""Conversations: the list (filters, search, counts), one conversation's thread, and what people
do to one — take it or hand it back to the bot, set its status, note, lead stage or the bot's
pause, refresh its intelligence — and, for admins, soft delete and restore.

Taking a conversation over or handing it back ends the customer's wait (:mod:`storage.waiting`)
in the same transaction; ownership goes through :mod:`storage.replies`.
"""

from __future__ import annotations

from aiohttp import web

from wacrm.inbox import auth, intelligence, listing, store
from wacrm.inbox.auth import User
from wacrm.inbox.keys import COUNTS, HUB, LLM, POOL, RULES, USER
from wacrm.inbox.protocol import (
    META_ID,
    ApiError,
    admin,
    body_of,
    conversation_or_404,
    future_time,
    int_param,
    invalid,
    not_found,
    ok,
    page_of,
    path_id,
)
from wacrm.inbox.template_api import templates_and_consent
from wacrm.storage import replies, waiting
from wacrm.whatsapp.limits import TEXT_MAX_CHARS


async def list_conversations(request: web.Request) -> web.Response:
    q = request.query
    status = q.get("status", "all")
    if status not in (*store.STATUSES, "all"):
        raise invalid("status must be open, pending, resolved, snoozed or all")
    assignee = q.get("assignee", "all")
    if assignee not in ("me", "unassigned", "all"):
        raise invalid("assignee must be me, unassigned or all")
    page = page_of(q)
    waits = q.get("waiting", "false")
    if waits not in ("true", "false"):
        raise invalid("waiting must be true or false")
    number = q.get("number")
    if number is not None and not META_ID.fullmatch(number):
        raise invalid("number must be a business number's phone_number_id")
    stamp = request.app[HUB].stamp()
    async with request.app[POOL].acquire() as conn:
        items, counts = await listing.list_conversations(
            conn, listing.ListQuery(status, assignee, q.get("q"), page, waiting=waits == "true", number=number),
            request[USER].id, request.app[COUNTS], stamp)
    return ok(conversations=items, meta={"page": page, "per_page": listing.PER_PAGE, "counts": counts})


async def get_conversation(request: web.Request) -> web.Response:
    cid = path_id(request)
    before = request.query.get("before")
    before_id = int_param(before, "before") if before is not None else None
    async with request.app[POOL].acquire() as conn, conn.transaction():
        row = await conversation_or_404(conn, cid)
        data = await store.detail(conn, row, before_id)
        data["waiting"] = (await waiting.waits(conn, [cid])).get(cid)
        data.update(await templates_and_consent(request, conn, cid))
    store.explain_errors(data)
    return ok(conversation=data)


async def assign(request: web.Request) -> web.Response:
    cid = path_id(request)
    body = await body_of(request)
    user: User = request[USER]
    target = body.get("user_id", user.id)
    if not isinstance(target, int) or isinstance(target, bool):
        raise invalid("user_id must be a user's id")
    if target != user.id and not user.is_admin:
        raise ApiError(403, "FORBIDDEN", "agents may only assign conversations to themselves")
    async with request.app[POOL].acquire() as conn, conn.transaction():
        await conversation_or_404(conn, cid)
        if await auth.user_by_id(conn, target) is None:
            raise invalid("no such user")
        version = await replies.assign(conn, cid, target)
        await waiting.end(conn, cid)  # a person took it: the customer no longer waits
    return ok(conversation={"id": cid, "assignee_id": target, "ownership_version": version})


async def release(request: web.Request) -> web.Response:
    cid = path_id(request)
    async with request.app[POOL].acquire() as conn, conn.transaction():
        await conversation_or_404(conn, cid)
        version = await replies.release(conn, cid)
        await waiting.end(conn, cid)  # handed back to the bot: nobody is waited for
    return ok(conversation={"id": cid, "assignee_id": None, "ownership_version": version})


async def set_status(request: web.Request) -> web.Response:
    cid = path_id(request)
    body = await body_of(request)
    status = body.get("status")
    if status not in store.STATUSES:
        raise invalid("status must be open, pending, resolved or snoozed")
    until = future_time(body.get("snoozed_until"), "snoozed_until") if status == "snoozed" else None
    async with request.app[POOL].acquire() as conn, conn.transaction():
        await conversation_or_404(conn, cid)
        await store.set_status(conn, cid, status, until)
    return ok(conversation={"id": cid, "status": status, "snoozed_until": until.isoformat() if until else None})


async def add_note(request: web.Request) -> web.Response:
    cid = path_id(request)
    text = (await body_of(request)).get("text")
    if not isinstance(text, str) or not text.strip() or len(text) > TEXT_MAX_CHARS:
        raise invalid(f"text must be 1 to {TEXT_MAX_CHARS} characters")
    async with request.app[POOL].acquire() as conn, conn.transaction():
        await conversation_or_404(conn, cid)
        note = await store.add_note(conn, cid, request[USER].id, text)
    return ok(201, note=note)


async def refresh_intelligence(request: web.Request) -> web.Response:
    cid = path_id(request)
    async with request.app[POOL].acquire() as conn:
        await conversation_or_404(conn, cid)
    result = await intelligence.refresh(request.app[POOL], cid, request.app[RULES].intelligence,
                                        llm=request.app[LLM], trigger="request")
    if result is None:
        raise not_found("conversation")
    return ok(intelligence=result.as_dict())


async def set_lead(request: web.Request) -> web.Response:
    """A person sets the lead's stage (any stage, backwards too)."""
    cid = path_id(request)
    stage = (await body_of(request)).get("stage")
    stages = request.app[RULES].intelligence.stages
    if stage not in stages:
        raise invalid(f"stage must be one of {', '.join(stages)}")
    async with request.app[POOL].acquire() as conn, conn.transaction():
        row = await conversation_or_404(conn, cid)
        if row["lead_id"] is None:
            raise not_found("lead")
        await store.set_lead_stage(conn, row["lead_id"], stage, request[USER].id)
    return ok(lead={"id": row["lead_id"], "stage": stage})


async def set_bot(request: web.Request) -> web.Response:
    """Pause or resume the bot in one conversation (``{"paused": true|false}``)."""
    cid = path_id(request)
    paused = (await body_of(request)).get("paused")
    if not isinstance(paused, bool):
        raise invalid("paused must be true or false")
    async with request.app[POOL].acquire() as conn, conn.transaction():
        await conversation_or_404(conn, cid)
        version = await replies.set_bot_paused(conn, cid, paused)
    return ok(conversation={"id": cid, "bot_paused": paused, "ownership_version": version})


# --- admins ---------------------------------------------------------------------------------------

async def admin_delete(request: web.Request) -> web.Response:
    return await _set_deleted(request, admin(request).id)


async def admin_restore(request: web.Request) -> web.Response:
    admin(request)
    return await _set_deleted(request, None)


async def _set_deleted(request: web.Request, by: int | None) -> web.Response:
    """Soft delete (``by``: the admin) or restore (None) a conversation, deleted or not."""
    cid = path_id(request)
    async with request.app[POOL].acquire() as conn:
        if await store.conversation(conn, cid, include_deleted=True) is None:
            raise not_found("conversation")
        await store.set_deleted(conn, cid, by)
    return ok(conversation={"id": cid, "deleted": by is not None})


async def admin_list(request: web.Request) -> web.Response:
    admin(request)
    if request.query.get("deleted", "true") != "true":
        raise invalid("only deleted=true is listed here; GET /api/v1/conversations lists the others")
    page = page_of(request.query)
    stamp = request.app[HUB].stamp()
    async with request.app[POOL].acquire() as conn:
        items, counts = await listing.list_conversations(
            conn, listing.ListQuery("all", "all", request.query.get("q"), page, deleted=True), request[USER].id,
            request.app[COUNTS], stamp)
    return ok(conversations=items, meta={"page": page, "per_page": listing.PER_PAGE, "counts": counts})
