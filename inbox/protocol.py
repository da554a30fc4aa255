"""The inbox API's wire protocol, shared by every route: its answers (``{"ok": true, …}`` or
:class:`ApiError`'s ``{"ok": false, "code", "error"}``) and how a request's body, path and
parameters are read (a value that does not fit is 422 ``INVALID`` naming it).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson
from aiohttp import web

from wacrm.inbox import store
from wacrm.inbox.auth import User
from wacrm.inbox.keys import USER

META_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")  # the shape of Meta's ids (phone_number_id, waba_id: digits)


class ApiError(Exception):
    """An answer other than success: ``status``, the contract's ``code``, ``error`` in words, and any
    ``extra`` fields (the guard answers it as ``{"ok": false, "code", "error", **extra}``)."""

    def __init__(self, status: int, code: str, error: str, **extra: Any) -> None:
        super().__init__(error)
        self.status, self.code, self.error, self.extra = status, code, error, extra

    def response(self) -> web.Response:
        return json_response({"ok": False, "code": self.code, "error": self.error, **self.extra}, self.status)


def json_response(data: dict[str, Any], status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(data), content_type="application/json")


def ok(status: int = 200, **data: Any) -> web.Response:
    return json_response({"ok": True, **data}, status)


def invalid(error: str) -> ApiError:
    return ApiError(422, "INVALID", error)


def not_found(what: str) -> ApiError:
    return ApiError(404, "NOT_FOUND", f"no such {what}")


async def body_of(request: web.Request) -> dict[str, Any]:
    if not request.can_read_body:
        return {}
    try:
        data = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        raise invalid("the body must be a JSON object") from None
    if not isinstance(data, dict):
        raise invalid("the body must be a JSON object")
    if has_nul(data):
        raise invalid("the body must not contain NUL characters (\\u0000)")
    return data


def has_nul(value: Any) -> bool:
    """Whether a JSON value holds a NUL character, which PostgreSQL text cannot store."""
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(has_nul(k) or has_nul(v) for k, v in value.items())
    return isinstance(value, list) and any(map(has_nul, value))


def int_param(raw: str, name: str) -> int:
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 18:
        raise invalid(f"{name} must be a positive whole number")
    return int(raw)


def path_id(request: web.Request, name: str = "id") -> int:
    return int_param(request.match_info[name], name)


def future_time(value: Any, name: str) -> datetime:
    if not isinstance(value, str):
        raise invalid(f"{name} must be an ISO 8601 time with a zone, e.g. 2026-01-31T09:00:00Z")
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise invalid(f"{name} must be an ISO 8601 time with a zone, e.g. 2026-01-31T09:00:00Z") from None
    if when.tzinfo is None:
        raise invalid(f"{name} needs a time zone (Z or +01:00)")
    if when <= datetime.now(UTC):
        raise invalid(f"{name} must be in the future")
    return when


def user_json(u: User) -> dict[str, Any]:
    return {"id": u.id, "email": u.email, "name": u.name, "role": u.role}


def page_of(query: Any) -> int:
    """The ``page`` parameter of a list, from 1."""
    page = int_param(query.get("page", "1"), "page")
    if page < 1:
        raise invalid("page starts at 1")
    return page


def admin(request: web.Request) -> User:
    """The signed-in user when an admin; 403 ``FORBIDDEN`` otherwise."""
    user = request[USER]
    if not user.is_admin:
        raise ApiError(403, "FORBIDDEN", "admins only")
    return user


async def conversation_or_404(conn: asyncpg.Connection, cid: int) -> asyncpg.Record:
    """The conversation's row (not a deleted one); 404 ``NOT_FOUND`` when there is none."""
    row = await store.conversation(conn, cid)
    if row is None:
        raise not_found("conversation")
    return row
