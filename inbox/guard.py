"""The inbox API's middleware: every route but ``auth/login`` and ``openapi.json`` needs a
signed-in user — a session cookie (:mod:`inbox.sessions`; then unsafe methods must also send
``X-CSRF-Token`` and, when the browser sends one, an ``Origin`` this server answers for) or
``Authorization: Bearer <token>``.

While the database schema is behind the code every route answers 500 ``DB_MISMATCH``
(:mod:`inbox.schema`). Every failure is the contract's JSON error: a value the database cannot
take is 422 ``INVALID``, the database unreachable 503 ``UNAVAILABLE``, anything else 500
``INTERNAL`` (the exception goes to the log, never to the caller).
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Awaitable, Callable

import asyncpg
from aiohttp import web

from wacrm.core import metrics
from wacrm.core.schema import is_schema_behind, schema_behind
from wacrm.inbox import auth, openapi, sessions
from wacrm.inbox.keys import CSRF, HUB, POOL, SCHEMA, SETTINGS, USER
from wacrm.inbox.protocol import ApiError, has_nul, invalid
from wacrm.inbox.sessions import CSRF_HEADER, origin_allowed, session_cookie

log = logging.getLogger("wacrm.inbox")

UNSAFE = frozenset({"POST", "PUT", "PATCH", "DELETE"})
PUBLIC = frozenset({sessions.login})  # the routes that need no sign-in
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Schema first, then who is asking; every error as the contract's JSON."""
    started = time.perf_counter()
    route = request.match_info.route.resource.canonical if request.match_info.route.resource else "unmatched"
    outcome = "ok"
    try:
        if request.match_info.handler is openapi.serve:  # the contract needs no sign-in and no database
            return await handler(request)
        problem = await request.app[SCHEMA].problem(request.app[POOL])
        if problem is not None:
            raise ApiError(500, "DB_MISMATCH", problem)
        if request.match_info.handler not in PUBLIC:
            await _authenticate(request)
        if any(has_nul(k) or has_nul(v) for k, v in request.query.items()):
            raise invalid("the query string must not contain NUL characters (%00)")
        try:
            return await handler(request)
        finally:
            if request.method not in ("GET", "HEAD", "OPTIONS"):
                request.app[HUB].changed()  # this write's own event may not have arrived yet
    except ApiError as exc:
        outcome = exc.code
        return exc.response()
    except web.HTTPException as exc:
        outcome = str(exc.status)
        code = {404: "NOT_FOUND", 405: "INVALID"}.get(exc.status, "INVALID")
        return ApiError(exc.status, code, exc.reason).response()
    except Exception as exc:
        if _bad_value(exc):  # a value the database cannot take (out of range, not text): the request's fault
            outcome = "INVALID"
            return invalid(f"a value in the request is out of range or not valid ({type(exc).__name__})").response()
        if is_schema_behind(exc):
            request.app[SCHEMA].invalidate()
            outcome = "DB_MISMATCH"
            return ApiError(500, "DB_MISMATCH", schema_behind(cause=type(exc).__name__)).response()
        if isinstance(exc, (OSError, asyncpg.PostgresConnectionStatusError, asyncpg.InterfaceError,
                            TimeoutError)):
            outcome = "UNAVAILABLE"
            log.warning("inbox %s: the database is unavailable (%s)", route, type(exc).__name__)
            return ApiError(503, "UNAVAILABLE", "the database is unavailable; try again").response()
        outcome = "INTERNAL"
        log.exception("inbox %s failed", route)
        return ApiError(500, "INTERNAL", "internal error; see the server log").response()
    finally:
        metrics.INBOX_REQUESTS.labels(route, outcome).inc()
        metrics.INBOX_DURATION.labels(route).observe(time.perf_counter() - started)


def _bad_value(exc: Exception) -> bool:
    """asyncpg could not encode an argument (an integer beyond 64 bits …), or PostgreSQL refused a value
    (SQLSTATE class 22, data exception: a number out of range, a character it cannot store)."""
    return isinstance(exc, asyncpg.exceptions._base.DataError) or (
        isinstance(exc, asyncpg.PostgresError) and str(getattr(exc, "sqlstate", "")).startswith("22"))


async def _authenticate(request: web.Request) -> None:
    s = request.app[SETTINGS]
    header = request.headers.get("Authorization", "")
    async with request.app[POOL].acquire() as conn:
        if header.startswith("Bearer "):
            user = await auth.user_for_token(conn, header[7:].strip())
            if user is None:
                raise ApiError(401, "UNAUTHENTICATED", "the API token is unknown or revoked")
            request[USER] = user
            return
        session_id = session_cookie(request)
        session = await auth.session_for(conn, session_id, s.session_idle_s) if session_id else None
    if session is None:
        raise ApiError(401, "UNAUTHENTICATED", "sign in first (POST /api/v1/auth/login) or send a Bearer token")
    if request.method in UNSAFE:
        sent = request.headers.get(CSRF_HEADER, "")
        if not hmac.compare_digest(sent.encode(), session.csrf_token.encode()):
            raise ApiError(403, "FORBIDDEN", f"the {CSRF_HEADER} header is missing or wrong")
        if not origin_allowed(request):
            raise ApiError(403, "FORBIDDEN", "requests from this Origin are not allowed")
    request[USER] = session.user
    request[CSRF] = session.csrf_token
