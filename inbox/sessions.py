"""Signing in and out: ``POST auth/login``, ``POST auth/logout``, ``GET auth/me``.

A sign-in sets the session cookie ``__Host-wacrm_session`` (Secure, HttpOnly, SameSite=Lax,
Path=/) when the inbox is served over https or on a loopback address (browsers accept Secure
cookies on http://localhost); over plain http on another address it is ``wacrm_session`` without
Secure, since a browser would never send a Secure cookie back there. Failed sign-ins are limited
per account and per address (429 ``RATE_LIMITED``). A browser's ``Origin`` must be this server
or one of ``INBOX_ORIGINS``. Nothing here logs an email, a password or a session id.
"""

from __future__ import annotations

import logging

from aiohttp import web

from wacrm.core import metrics
from wacrm.core.settings import is_loopback
from wacrm.inbox import auth
from wacrm.inbox.keys import CSRF, POOL, SETTINGS, USER
from wacrm.inbox.protocol import ApiError, body_of, invalid, ok, user_json

log = logging.getLogger("wacrm.inbox")

COOKIE_SECURE, COOKIE_PLAIN = "__Host-wacrm_session", "wacrm_session"
CSRF_HEADER = "X-CSRF-Token"


def cookie_name(request: web.Request) -> str:
    """Which session cookie this request's origin can keep (see the module docstring)."""
    return COOKIE_SECURE if request.secure or is_loopback(request.host) else COOKIE_PLAIN


def session_cookie(request: web.Request) -> str | None:
    return request.cookies.get(COOKIE_SECURE) or request.cookies.get(COOKIE_PLAIN)


def origin_allowed(request: web.Request) -> bool:
    """A browser's Origin (or Referer) must be this server or one of INBOX_ORIGINS; scripts send none."""
    origin = request.headers.get("Origin")
    if origin is None:
        referer = request.headers.get("Referer")
        if not referer:
            return True
        parts = referer.split("/")
        origin = "/".join(parts[:3]) if len(parts) >= 3 else referer
    origin = origin.rstrip("/")
    own = {f"{request.scheme}://{request.host}", f"https://{request.host}"}
    return origin in own or origin in request.app[SETTINGS].inbox_origins


async def login(request: web.Request) -> web.Response:
    if not origin_allowed(request):
        raise ApiError(403, "FORBIDDEN", "this Origin may not sign in here")
    body = await body_of(request)
    email, password = body.get("email"), body.get("password")
    if not isinstance(email, str) or not email.strip() or not isinstance(password, str) or not password:
        raise invalid("email and password are required")
    s = request.app[SETTINGS]
    address = request.remote or "unknown"
    pool = request.app[POOL]
    async with pool.acquire() as conn:
        by_email, by_address = await auth.recent_failures(conn, email, address)
        if by_email >= s.login_failures_per_account or by_address >= s.login_failures_per_address:
            metrics.INBOX_LOGINS.labels("rate_limited").inc()
            raise ApiError(429, "RATE_LIMITED", "too many failed sign-ins; try again in 15 minutes",
                           retry_after_s=auth.FAILURE_WINDOW_S)
        found = await auth.find_user(conn, email)
    if not await auth.verify_password(found[1] if found else None, password) or found is None:
        async with pool.acquire() as conn:
            await auth.record_failure(conn, email, address)
        metrics.INBOX_LOGINS.labels("refused").inc()
        raise ApiError(401, "UNAUTHENTICATED", "the email or the password is wrong")
    user = found[0]
    async with pool.acquire() as conn, conn.transaction():
        await auth.clear_failures(conn, email)
        old = session_cookie(request)
        if old:  # rotation: whatever id the browser had is dead now
            await auth.end_session(conn, old)
        session_id, csrf = await auth.start_session(conn, user.id, s.session_max_s)
    metrics.INBOX_LOGINS.labels("ok").inc()
    log.info("user %d signed in", user.id)
    response = ok(user=user_json(user), csrf_token=csrf)
    name = cookie_name(request)
    response.set_cookie(name, session_id, max_age=int(s.session_max_s), path="/", httponly=True,
                        secure=name == COOKIE_SECURE, samesite="Lax")
    return response


async def logout(request: web.Request) -> web.Response:
    session_id = session_cookie(request)
    if session_id:
        async with request.app[POOL].acquire() as conn:
            await auth.end_session(conn, session_id)
    response = ok()
    for name in (COOKIE_SECURE, COOKIE_PLAIN):
        if name in request.cookies:
            response.del_cookie(name, path="/", secure=name == COOKIE_SECURE, httponly=True, samesite="Lax")
    return response


async def me(request: web.Request) -> web.Response:
    return ok(user=user_json(request[USER]), csrf_token=request.get(CSRF))
