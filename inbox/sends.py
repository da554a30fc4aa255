"""A person's replies: ``POST conversations/{id}/messages`` (a text, a template or a file) and
``POST outbound/{id}/retry``.

Every reply goes through the ledger like the bot's (:func:`storage.ledger.queue_manual_reply`),
once per idempotency key, and ends the customer's wait; the sender agent sends it. Free text and
files need the customer-service window open (409 ``WINDOW_CLOSED`` lists the templates that may go
instead); a template is checked against the catalogue (:mod:`inbox.template_api`).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import asyncpg
from aiohttp import web

from wacrm.inbox import files, store
from wacrm.inbox.auth import User
from wacrm.inbox.keys import POOL, USER
from wacrm.inbox.protocol import ApiError, body_of, conversation_or_404, invalid, not_found, ok, path_id
from wacrm.inbox.template_api import checked_template, template_of, templates_and_consent
from wacrm.media import StoreUnavailable
from wacrm.storage import ledger, waiting
from wacrm.whatsapp import reasons
from wacrm.whatsapp.limits import TEXT_MAX_CHARS, window_open

log = logging.getLogger("wacrm.inbox")


async def send_message(request: web.Request) -> web.Response:
    """A person's reply, through the ledger with the request's idempotency key."""
    cid = path_id(request)
    if request.content_type == "multipart/form-data":
        return await _send_file(request, cid)
    body = await body_of(request)
    key = body.get("idempotency_key")
    if not isinstance(key, str) or not 1 <= len(key) <= 200:
        raise invalid("idempotency_key is required (1 to 200 characters), new for each reply")
    text, template = body.get("text"), body.get("template")
    if (text is None) == (template is None):
        raise invalid("send either text or template")
    if text is not None and (not isinstance(text, str) or not text.strip() or len(text) > TEXT_MAX_CHARS):
        raise invalid(f"text must be 1 to {TEXT_MAX_CHARS} characters")
    tpl = template_of(template) if template is not None else None
    user: User = request[USER]
    shown = str(text)
    async with request.app[POOL].acquire() as conn, conn.transaction():
        if tpl is None:
            await _refuse_closed_window(request, conn, cid)  # 404 too, for no such conversation
        else:
            await conversation_or_404(conn, cid)  # 404 for no such conversation
            tpl, shown = await checked_template(request, conn, cid, tpl)
        return await _queue(conn, cid, shown, f"{user.id}:{key}", user.id, template=tpl)


async def _send_file(request: web.Request, cid: int) -> web.Response:
    """A person's file (multipart ``file``, ``caption``, ``idempotency_key``; :mod:`inbox.files`): checked
    by its bytes and Meta's size limits, kept in the media store, queued in the ledger as an intent of kind
    ``media`` naming it; the sender uploads it to the number and sends it by id. The window is looked at
    before the body is read, so a closed one costs no upload."""
    async with request.app[POOL].acquire() as conn:
        await _refuse_closed_window(request, conn, cid)
    try:
        received = await files.receive(request)
    except files.Refused as exc:
        raise ApiError(exc.status, exc.code, exc.error) from None
    try:
        key = received.fields.get("idempotency_key", "")
        if not 1 <= len(key) <= 200:
            raise invalid("idempotency_key is required (1 to 200 characters), new for each reply")
        try:
            caption = files.caption_of(received)
        except files.Refused as exc:
            raise ApiError(exc.status, exc.code, exc.error) from None
        try:
            await files.keep(request.app[files.STORE], received)
        except StoreUnavailable:
            log.warning("inbox: the media store is unavailable; a file was not taken")
            raise ApiError(503, "UNAVAILABLE", "the media store is unavailable; try again") from None
    finally:
        await received.discard()
    user: User = request[USER]
    async with request.app[POOL].acquire() as conn, conn.transaction():
        await _refuse_closed_window(request, conn, cid)
        return await _queue(conn, cid, received.line(caption), f"{user.id}:{key}", user.id,
                            media=received.media(caption))


async def _queue(conn: asyncpg.Connection, cid: int, shown: str, request_id: str, user_id: int, *,
                 template: dict[str, Any] | None = None, media: dict[str, Any] | None = None) -> web.Response:
    """Queue a person's reply in the ledger (once per ``request_id``) and end the customer's wait: 202
    with the ledger row; 422 when the idempotency key was used in another conversation."""
    created = await ledger.queue_manual_reply(conn, cid, shown, request_id, user_id, template, media)
    row = await store.ledger_row(conn, ledger.manual_reply_key(request_id))
    assert row is not None
    if row["conversation_id"] != cid:
        raise invalid("this idempotency_key was used for a reply in another conversation")
    await waiting.end(conn, cid)  # a person answered: the customer no longer waits
    return ok(202, outbound={"id": row["id"], "state": row["state"]}, created=created)


async def _refuse_closed_window(request: web.Request, conn: asyncpg.Connection, cid: int) -> None:
    """409 ``WINDOW_CLOSED`` when only a template may go to this conversation (free text, a file); 404
    when there is no such conversation."""
    if not window_open((await conversation_or_404(conn, cid))["last_inbound_at"], datetime.now(UTC)):
        raise ApiError(409, "WINDOW_CLOSED", "the 24-hour window is closed: only a template can be sent",
                       templates=(await templates_and_consent(request, conn, cid))["templates"],
                       next_step=reasons.words({"code": reasons.REENGAGEMENT})["next_step"])


async def retry_outbound(request: web.Request) -> web.Response:
    """Send a failed reply again under its own ledger row, as the person's own send (202); 409
    ``NOT_RETRYABLE`` unless it is ``failed`` (a second retry finds it queued already)."""
    oid = path_id(request)
    user: User = request[USER]
    async with request.app[POOL].acquire() as conn, conn.transaction():
        result = await ledger.retry_failed(conn, oid, user.id)
    if result.state is None:
        raise not_found("reply")
    if not result.requeued:
        state = "being retried" if result.state == "failed" else result.state
        raise ApiError(409, "NOT_RETRYABLE", f"reply {oid} is {state}, not failed: only a failed reply can be retried",
                       state=result.state)
    log.info("user %d retries ledger row %d", user.id, oid)
    return ok(202, outbound={"id": oid, "state": "queued", "conversation_id": result.conversation_id})
