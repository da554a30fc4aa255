"""The inbox API (``/api/v1/``); its contract is the OpenAPI document ``inbox/openapi.json``,
served at ``GET /api/v1/openapi.json`` (:mod:`inbox.openapi`).

Every route but ``auth/login`` and ``openapi.json`` needs a signed-in user (:func:`guard`): a
session cookie from ``POST auth/login`` — then unsafe methods must also send ``X-CSRF-Token``
and, when the browser sends one, an ``Origin`` this server answers for — or
``Authorization: Bearer <token>``. Errors are
``{"ok": false, "code", "error"}`` (:class:`ApiError`); while the database schema is behind the
code every route answers 500 ``DB_MISMATCH`` (:mod:`inbox.schema`).

The session cookie is ``__Host-wacrm_session`` (Secure, HttpOnly, SameSite=Lax, Path=/) when the
inbox is served over https or on a loopback address (browsers accept Secure cookies on
http://localhost); served over plain http on another address it is ``wacrm_session`` without
Secure, since a browser would never send a Secure cookie back there.

Nothing here logs a phone number, a message text, a password or a token.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import re
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import aiohttp
import asyncpg
import orjson
import phonenumbers
from aiohttp import web

from wacrm.core import metrics
from wacrm.core.settings import Settings
from wacrm.inbox import auth, catalogue, events, files, intelligence, openapi, store
from wacrm.inbox.auth import User
from wacrm.inbox.schema import SchemaGuard, is_drift
from wacrm.media import StoreUnavailable
from wacrm.orchestrator.rules import Rules
from wacrm.storage import numbers, replies, repo, waiting
from wacrm.storage import templates as tstore
from wacrm.whatsapp import reasons
from wacrm.whatsapp import templates as wt
from wacrm.whatsapp.graph import InvalidRecipient, recipient_field

log = logging.getLogger("wacrm.inbox")

SETTINGS = web.AppKey("inbox_settings", Settings)
POOL = web.AppKey("inbox_pool", asyncpg.Pool)
HUB = web.AppKey("inbox_hub", events.Hub)
SCHEMA = web.AppKey("inbox_schema", SchemaGuard)
RULES = web.AppKey("inbox_rules", Rules)
COUNTS = web.AppKey("inbox_counts", store.CountsCache)
LLM = web.AppKey("inbox_llm", object)  # tuple[aiohttp.ClientSession, intelligence.LlmConfig] | None
GRAPH_SESSION = web.AppKey("inbox_graph_session", aiohttp.ClientSession)  # the template sync's Graph API calls
USER = "inbox_user"

COOKIE_SECURE, COOKIE_PLAIN = "__Host-wacrm_session", "wacrm_session"
CSRF_HEADER = "X-CSRF-Token"
UNSAFE = frozenset({"POST", "PUT", "PATCH", "DELETE"})
MAX_TEXT = 4096


class ApiError(Exception):
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
    if _has_nul(data):
        raise invalid("the body must not contain NUL characters (\\u0000)")
    return data


def _has_nul(value: Any) -> bool:
    """Whether a JSON value holds a NUL character, which PostgreSQL text cannot store."""
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    return isinstance(value, list) and any(map(_has_nul, value))


def _int_param(raw: str, name: str) -> int:
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 18:
        raise invalid(f"{name} must be a positive whole number")
    return int(raw)


def _path_id(request: web.Request, name: str = "id") -> int:
    return _int_param(request.match_info[name], name)


def _future_time(value: Any, name: str) -> datetime:
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


def _user_json(u: User) -> dict[str, Any]:
    return {"id": u.id, "email": u.email, "name": u.name, "role": u.role}


# --- sign-in ----------------------------------------------------------------------------------

def _is_loopback(host: str) -> bool:
    """Whether a Host header ("127.0.0.1:8080", "[::1]:8080", "localhost") names this machine."""
    try:
        name = urllib.parse.urlsplit(f"//{host}").hostname or ""
    except ValueError:
        return False
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def cookie_name(request: web.Request) -> str:
    """Which session cookie this request's origin can keep (see the module docstring)."""
    return COOKIE_SECURE if request.secure or _is_loopback(request.host) else COOKIE_PLAIN


def _session_id(request: web.Request) -> str | None:
    return request.cookies.get(COOKIE_SECURE) or request.cookies.get(COOKIE_PLAIN)


def _origin_allowed(request: web.Request) -> bool:
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
    if not _origin_allowed(request):
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
        old = _session_id(request)
        if old:  # rotation: whatever id the browser had is dead now
            await auth.end_session(conn, old)
        session_id, csrf = await auth.start_session(conn, user.id, s.session_max_s)
    metrics.INBOX_LOGINS.labels("ok").inc()
    log.info("user %d signed in", user.id)
    response = ok(user=_user_json(user), csrf_token=csrf)
    name = cookie_name(request)
    response.set_cookie(name, session_id, max_age=int(s.session_max_s), path="/", httponly=True,
                        secure=name == COOKIE_SECURE, samesite="Lax")
    return response


async def logout(request: web.Request) -> web.Response:
    session_id = _session_id(request)
    if session_id:
        async with request.app[POOL].acquire() as conn:
            await auth.end_session(conn, session_id)
    response = ok()
    for name in (COOKIE_SECURE, COOKIE_PLAIN):
        if name in request.cookies:
            response.del_cookie(name, path="/", secure=name == COOKIE_SECURE, httponly=True, samesite="Lax")
    return response


async def me(request: web.Request) -> web.Response:
    return ok(user=_user_json(request[USER]), csrf_token=request.get("inbox_csrf"))


PUBLIC = frozenset({login})
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
        if any(_has_nul(k) or _has_nul(v) for k, v in request.query.items()):
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
        if is_drift(exc):
            request.app[SCHEMA].invalidate()
            outcome = "DB_MISMATCH"
            return ApiError(500, "DB_MISMATCH", f"the database schema is behind this code ({type(exc).__name__}). "
                            "Run: wacrm migrate").response()
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
        session_id = _session_id(request)
        session = await auth.session_for(conn, session_id, s.session_idle_s) if session_id else None
    if session is None:
        raise ApiError(401, "UNAUTHENTICATED", "sign in first (POST /api/v1/auth/login) or send a Bearer token")
    if request.method in UNSAFE:
        sent = request.headers.get(CSRF_HEADER, "")
        if not hmac.compare_digest(sent.encode(), session.csrf_token.encode()):
            raise ApiError(403, "FORBIDDEN", f"the {CSRF_HEADER} header is missing or wrong")
        if not _origin_allowed(request):
            raise ApiError(403, "FORBIDDEN", "requests from this Origin are not allowed")
    request[USER] = session.user
    request["inbox_csrf"] = session.csrf_token


def _admin(request: web.Request) -> User:
    user: User = request[USER]
    if not user.is_admin:
        raise ApiError(403, "FORBIDDEN", "admins only")
    return user


# --- conversations ----------------------------------------------------------------------------

async def list_conversations(request: web.Request) -> web.Response:
    q = request.query
    status = q.get("status", "all")
    if status not in (*store.STATUSES, "all"):
        raise invalid("status must be open, pending, resolved, snoozed or all")
    assignee = q.get("assignee", "all")
    if assignee not in ("me", "unassigned", "all"):
        raise invalid("assignee must be me, unassigned or all")
    page = _int_param(q.get("page", "1"), "page")
    if page < 1:
        raise invalid("page starts at 1")
    waits = q.get("waiting", "false")
    if waits not in ("true", "false"):
        raise invalid("waiting must be true or false")
    number = q.get("number")
    if number is not None and not _PHONE_NUMBER_ID.fullmatch(number):
        raise invalid("number must be a business number's phone_number_id")
    stamp = request.app[HUB].stamp()
    async with request.app[POOL].acquire() as conn:
        items, counts = await store.list_conversations(
            conn, store.ListQuery(status, assignee, q.get("q"), page, waiting=waits == "true", number=number),
            request[USER].id, request.app[COUNTS], stamp)
    return ok(conversations=items, meta={"page": page, "per_page": store.PER_PAGE, "counts": counts})


async def _conversation(conn: asyncpg.Connection, cid: int) -> asyncpg.Record:
    row = await store.conversation(conn, cid)
    if row is None:
        raise not_found("conversation")
    return row


async def get_conversation(request: web.Request) -> web.Response:
    cid = _path_id(request)
    before = request.query.get("before")
    before_id = _int_param(before, "before") if before is not None else None
    async with request.app[POOL].acquire() as conn, conn.transaction():
        row = await _conversation(conn, cid)
        data = await store.detail(conn, row, before_id)
        data["waiting"] = (await waiting.waits(conn, [cid])).get(cid)
        data.update(await _templates_and_consent(request, conn, cid))
    store.explain_errors(data)
    return ok(conversation=data)


# --- templates, consent and account state -------------------------------------------------------

async def _account(request: web.Request, conn: asyncpg.Connection, cid: int) -> tstore.Account | None:
    pnid = await conn.fetchval("SELECT phone_number_id FROM conversations WHERE id = $1", cid)
    return await tstore.account_of(conn, request.app[SETTINGS], pnid) if pnid else None


async def _templates_and_consent(request: web.Request, conn: asyncpg.Connection, cid: int) -> dict[str, Any]:
    """What the reply box needs beside the thread: the approved templates of the conversation's number,
    the contact's marketing opt-out, and its account's restriction."""
    account = await _account(request, conn, cid)
    opted = await conn.fetchval("SELECT k.marketing_opt_out FROM conversations c JOIN contacts k "
                                "ON k.id = c.contact_id WHERE c.id = $1", cid)
    return {"templates": await tstore.catalogue(conn, [account.waba_id], wt.APPROVED) if account else [],
            "marketing_opt_out": bool(opted),
            "account": await tstore.account_state(conn, account.waba_id) if account else None}


def _template_of(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict) or not isinstance(value.get("name"), str) or not value["name"].strip() \
            or not isinstance(value.get("language"), str) or not value["language"].strip():
        raise invalid("template needs a name and a language")
    params = value.get("parameters", {})
    if not isinstance(params, (list, dict)):
        raise invalid("template.parameters must be an object with header, body and buttons")
    return {"name": value["name"].strip(), "language": value["language"].strip(), "parameters": params}


async def _checked_template(request: web.Request, conn: asyncpg.Connection, cid: int,
                            tpl: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """A person's template send checked against the catalogue: the intent's template (with the
    components Meta expects) and the text the customer sees; 422 ``INVALID`` naming each missing or
    unknown parameter, 409 ``ACCOUNT_RESTRICTED``, ``TEMPLATE_NOT_APPROVED`` or ``MARKETING_OPTED_OUT``."""
    account = await _account(request, conn, cid)
    if account is None:
        raise invalid("no WhatsApp Business Account is configured for this number (WHATSAPP_BUSINESS_ACCOUNT_ID), "
                      "so no template can be checked")
    ctx = await tstore.send_context(conn, account.waba_id, tpl["name"], tpl["language"], cid)
    if ctx.template is None:
        raise invalid(f"no template {tpl['name']} ({tpl['language']}) in the catalogue of WABA {account.waba_id}: "
                      "choose one from GET /api/v1/templates, or sync the catalogue (POST /api/v1/templates/sync)")
    refused = wt.refusal(ctx.template, marketing_opt_out=ctx.marketing_opt_out,
                         restricted_until=ctx.restricted_until, now=datetime.now(UTC))
    if refused is not None:
        raise ApiError(409, refused.code, refused.error)
    spec = ctx.template.parameters
    problems = wt.problems(spec, tpl["parameters"])
    if problems:
        raise ApiError(422, "INVALID", f"template {tpl['name']} ({tpl['language']}): " + "; ".join(problems),
                       problems=problems)
    return ({**tpl, "category": ctx.template.category,
             "components": wt.send_components(spec, tpl["parameters"])}, wt.render(ctx.template, tpl["parameters"]))


async def list_templates(request: web.Request) -> web.Response:
    """The catalogue: every template of every account (``number``: of that business number's account;
    ``status``: only those), with each account's last sync and state."""
    status = request.query.get("status")
    if status is not None and not (status.isascii() and status.replace("_", "").isalpha() and len(status) < 40):
        raise invalid("status must be a template status such as APPROVED, PAUSED or REJECTED")
    settings = request.app[SETTINGS]
    async with request.app[POOL].acquire() as conn:
        number = request.query.get("number")
        if number is not None:
            account = await tstore.account_of(conn, settings, number)
            found = [account] if account else []
        else:
            found = await tstore.accounts(conn, settings)
        wabas = [a.waba_id for a in found]
        events = 10 if request[USER].is_admin else 0
        return ok(templates=await tstore.catalogue(conn, wabas, status.upper() if status else None),
                  syncs=await tstore.sync_states(conn, wabas),
                  accounts=[await tstore.account_state(conn, w, events=events) for w in wabas])


async def sync_templates(request: web.Request) -> web.Response:
    """Admins: sync the catalogue with Meta now; 502 ``SYNC_FAILED`` (the last good catalogue kept) says why."""
    _admin(request)
    synced = await catalogue.sync(request.app[POOL], request.app[GRAPH_SESSION], request.app[SETTINGS],
                                  request.app[RULES])
    if not synced:
        raise invalid("no WhatsApp Business Account is configured (WHATSAPP_BUSINESS_ACCOUNT_ID): nothing to sync")
    failed = [s for s in synced if not s.ok]
    if failed:
        raise ApiError(502, "SYNC_FAILED", "; ".join(s.line() for s in failed), syncs=[s.as_dict() for s in synced])
    return ok(syncs=[s.as_dict() for s in synced])


async def send_message(request: web.Request) -> web.Response:
    """A person's reply, through the ledger with the request's idempotency key."""
    cid = _path_id(request)
    if request.content_type == "multipart/form-data":
        return await _send_file(request, cid)
    body = await body_of(request)
    key = body.get("idempotency_key")
    if not isinstance(key, str) or not 1 <= len(key) <= 200:
        raise invalid("idempotency_key is required (1 to 200 characters), new for each reply")
    text, template = body.get("text"), body.get("template")
    if (text is None) == (template is None):
        raise invalid("send either text or template")
    if text is not None and (not isinstance(text, str) or not text.strip() or len(text) > MAX_TEXT):
        raise invalid(f"text must be 1 to {MAX_TEXT} characters")
    tpl = _template_of(template) if template is not None else None
    user: User = request[USER]
    shown = str(text)
    async with request.app[POOL].acquire() as conn, conn.transaction():
        if tpl is None:
            await _refuse_closed_window(request, conn, cid)  # 404 too, for no such conversation
        else:
            await _conversation(conn, cid)  # 404 for no such conversation
            tpl, shown = await _checked_template(request, conn, cid, tpl)
        request_id = f"{user.id}:{key}"
        created = await replies.queue_manual_reply(conn, cid, shown, request_id, user.id, tpl)
        ledger = await store.ledger_row(conn, replies.manual_reply_key(request_id))
        assert ledger is not None
        if ledger["conversation_id"] != cid:
            raise invalid("this idempotency_key was used for a reply in another conversation")
        await waiting.end(conn, cid)  # a person answered: the customer no longer waits
    return ok(202, outbound={"id": ledger["id"], "state": ledger["state"]}, created=created)


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
    request_id = f"{user.id}:{key}"
    async with request.app[POOL].acquire() as conn, conn.transaction():
        await _refuse_closed_window(request, conn, cid)
        created = await replies.queue_manual_reply(conn, cid, received.line(caption), request_id, user.id,
                                                   media=received.media(caption))
        ledger = await store.ledger_row(conn, replies.manual_reply_key(request_id))
        assert ledger is not None
        if ledger["conversation_id"] != cid:
            raise invalid("this idempotency_key was used for a reply in another conversation")
        await waiting.end(conn, cid)  # a person answered: the customer no longer waits
    return ok(202, outbound={"id": ledger["id"], "state": ledger["state"]}, created=created)


async def _refuse_closed_window(request: web.Request, conn: asyncpg.Connection, cid: int) -> None:
    """409 ``WINDOW_CLOSED`` when only a template may go to this conversation (free text, a file); 404
    when there is no such conversation."""
    until = store.window_open_until((await _conversation(conn, cid))["last_inbound_at"])
    if until is None or until <= datetime.now(UTC):
        raise ApiError(409, "WINDOW_CLOSED", "the 24-hour window is closed: only a template can be sent",
                       templates=(await _templates_and_consent(request, conn, cid))["templates"],
                       next_step=reasons.words({"code": reasons.REENGAGEMENT})["next_step"])


async def assign(request: web.Request) -> web.Response:
    cid = _path_id(request)
    body = await body_of(request)
    user: User = request[USER]
    target = body.get("user_id", user.id)
    if not isinstance(target, int) or isinstance(target, bool):
        raise invalid("user_id must be a user's id")
    if target != user.id and not user.is_admin:
        raise ApiError(403, "FORBIDDEN", "agents may only assign conversations to themselves")
    async with request.app[POOL].acquire() as conn, conn.transaction():
        await _conversation(conn, cid)
        if await auth.user_by_id(conn, target) is None:
            raise invalid("no such user")
        version = await replies.assign(conn, cid, target)
        await waiting.end(conn, cid)  # a person took it: the customer no longer waits
    return ok(conversation={"id": cid, "assignee_id": target, "ownership_version": version})


async def release(request: web.Request) -> web.Response:
    cid = _path_id(request)
    async with request.app[POOL].acquire() as conn, conn.transaction():
        await _conversation(conn, cid)
        version = await replies.release(conn, cid)
        await waiting.end(conn, cid)  # handed back to the bot: nobody is waited for
    return ok(conversation={"id": cid, "assignee_id": None, "ownership_version": version})


async def set_status(request: web.Request) -> web.Response:
    cid = _path_id(request)
    body = await body_of(request)
    status = body.get("status")
    if status not in store.STATUSES:
        raise invalid("status must be open, pending, resolved or snoozed")
    until = _future_time(body.get("snoozed_until"), "snoozed_until") if status == "snoozed" else None
    async with request.app[POOL].acquire() as conn, conn.transaction():
        await _conversation(conn, cid)
        await store.set_status(conn, cid, status, until)
    return ok(conversation={"id": cid, "status": status, "snoozed_until": until.isoformat() if until else None})


async def add_note(request: web.Request) -> web.Response:
    cid = _path_id(request)
    text = (await body_of(request)).get("text")
    if not isinstance(text, str) or not text.strip() or len(text) > MAX_TEXT:
        raise invalid(f"text must be 1 to {MAX_TEXT} characters")
    async with request.app[POOL].acquire() as conn, conn.transaction():
        await _conversation(conn, cid)
        note = await store.add_note(conn, cid, request[USER].id, text)
    return ok(201, note=note)


async def refresh_intelligence(request: web.Request) -> web.Response:
    cid = _path_id(request)
    async with request.app[POOL].acquire() as conn:
        await _conversation(conn, cid)
    result = await intelligence.refresh(request.app[POOL], cid, request.app[RULES].intelligence,
                                        llm=request.app[LLM], trigger="request")  # type: ignore[arg-type]
    if result is None:
        raise not_found("conversation")
    return ok(intelligence=result.as_dict())


async def set_lead(request: web.Request) -> web.Response:
    """A person sets the lead's stage (any stage, backwards too)."""
    cid = _path_id(request)
    stage = (await body_of(request)).get("stage")
    stages = request.app[RULES].intelligence.stages
    if stage not in stages:
        raise invalid(f"stage must be one of {', '.join(stages)}")
    async with request.app[POOL].acquire() as conn, conn.transaction():
        row = await _conversation(conn, cid)
        if row["lead_id"] is None:
            raise not_found("lead")
        await store.set_lead_stage(conn, row["lead_id"], stage, request[USER].id)
    return ok(lead={"id": row["lead_id"], "stage": stage})


async def set_bot(request: web.Request) -> web.Response:
    """Pause or resume the bot in one conversation (``{"paused": true|false}``)."""
    cid = _path_id(request)
    paused = (await body_of(request)).get("paused")
    if not isinstance(paused, bool):
        raise invalid("paused must be true or false")
    async with request.app[POOL].acquire() as conn, conn.transaction():
        await _conversation(conn, cid)
        version = await replies.set_bot_paused(conn, cid, paused)
    return ok(conversation={"id": cid, "bot_paused": paused, "ownership_version": version})


async def retry_outbound(request: web.Request) -> web.Response:
    """Send a failed reply again under its own ledger row, as the person's own send (202); 409
    ``NOT_RETRYABLE`` unless it is ``failed`` (a second retry finds it queued already)."""
    oid = _path_id(request)
    user: User = request[USER]
    async with request.app[POOL].acquire() as conn, conn.transaction():
        result = await repo.retry_failed(conn, oid, user.id)
    if result.state is None:
        raise not_found("reply")
    if not result.requeued:
        state = "being retried" if result.state == "failed" else result.state
        raise ApiError(409, "NOT_RETRYABLE", f"reply {oid} is {state}, not failed: only a failed reply can be retried",
                       state=result.state)
    log.info("user %d retries ledger row %d", user.id, oid)
    return ok(202, outbound={"id": oid, "state": "queued", "conversation_id": result.conversation_id})


def _phone_of(value: Any, region: str | None) -> str:
    """A phone a person typed, as E.164 (``+`` and digits); 422 naming ``phone`` otherwise."""
    if not isinstance(value, str) or not value.strip() or len(value) > 40:
        raise invalid("phone must be a phone number, e.g. +351912345678")
    try:
        field, e164 = recipient_field(value, region)
    except InvalidRecipient:
        field, e164 = "", ""
    if field != "to" or not phonenumbers.is_valid_number(phonenumbers.parse(e164)):
        where = f" (numbers without a country code are read as {region})" if region else ""
        raise invalid(f"phone {value.strip()!r} is not a valid phone number in international format, "
                      f"e.g. +351912345678{where}")
    return e164


async def update_contact(request: web.Request) -> web.Response:
    """A person corrects a contact's ``name`` and/or ``phone`` (normalised to E.164)."""
    contact_id = _path_id(request)
    body = await body_of(request)
    unknown = sorted(set(body) - {"name", "phone"})
    if unknown:
        raise invalid(f"unknown field(s): {', '.join(unknown)}; a contact has name and phone")
    if "name" not in body and "phone" not in body:
        raise invalid("send name and/or phone")
    name = body.get("name")
    if "name" in body and (not isinstance(name, str) or not name.strip() or len(name) > 200):
        raise invalid("name must be 1 to 200 characters")
    e164 = _phone_of(body["phone"], request.app[SETTINGS].default_phone_region) if "phone" in body else None
    async with request.app[POOL].acquire() as conn, conn.transaction():
        outcome = await store.update_contact(conn, contact_id, name.strip() if isinstance(name, str) else None,
                                             e164[1:] if e164 else None)
        if outcome == "missing":
            raise not_found("contact")
        if outcome == "taken":
            raise invalid(f"phone {e164} belongs to another contact of this business number")
        row = await store.contact(conn, contact_id)
    assert row is not None
    return ok(contact=store.contact_json(row))


# --- notifications and tasks ------------------------------------------------------------------

async def list_notifications(request: web.Request) -> web.Response:
    async with request.app[POOL].acquire() as conn:
        items, unread = await store.notifications(conn, request[USER].id)
    return ok(notifications=items, meta={"unread": unread})


async def read_notification(request: web.Request) -> web.Response:
    nid = _path_id(request)
    async with request.app[POOL].acquire() as conn:
        if not await store.notification_update(conn, nid, request[USER].id, read=True):
            raise not_found("notification")
    return ok(notification={"id": nid})


async def snooze_notification(request: web.Request) -> web.Response:
    nid = _path_id(request)
    until = _future_time((await body_of(request)).get("until"), "until")
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
    tid = _path_id(request)
    async with request.app[POOL].acquire() as conn:
        if not await store.task_done(conn, tid):
            raise not_found("task")
    return ok(task={"id": tid, "state": "done"})


# --- admin ------------------------------------------------------------------------------------

async def admin_delete(request: web.Request) -> web.Response:
    user = _admin(request)
    cid = _path_id(request)
    async with request.app[POOL].acquire() as conn:
        if await store.conversation(conn, cid, include_deleted=True) is None:
            raise not_found("conversation")
        await store.set_deleted(conn, cid, user.id)
    return ok(conversation={"id": cid, "deleted": True})


async def admin_restore(request: web.Request) -> web.Response:
    _admin(request)
    cid = _path_id(request)
    async with request.app[POOL].acquire() as conn:
        if await store.conversation(conn, cid, include_deleted=True) is None:
            raise not_found("conversation")
        await store.set_deleted(conn, cid, None)
    return ok(conversation={"id": cid, "deleted": False})


async def admin_list(request: web.Request) -> web.Response:
    _admin(request)
    if request.query.get("deleted", "true") != "true":
        raise invalid("only deleted=true is listed here; GET /api/v1/conversations lists the others")
    page = _int_param(request.query.get("page", "1"), "page")
    if page < 1:
        raise invalid("page starts at 1")
    stamp = request.app[HUB].stamp()
    async with request.app[POOL].acquire() as conn:
        items, counts = await store.list_conversations(
            conn, store.ListQuery("all", "all", request.query.get("q"), page, deleted=True), request[USER].id,
            request.app[COUNTS], stamp)
    return ok(conversations=items, meta={"page": page, "per_page": store.PER_PAGE, "counts": counts})


# --- business numbers (admins) ----------------------------------------------------------------

_PHONE_NUMBER_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")  # Meta's ids are digits
_NUMBER_FIELDS = {"phone_number_id", "waba_id", "label", "access_token", "rate_limit_per_s", "coexistence"}


async def list_numbers(request: web.Request) -> web.Response:
    _admin(request)
    async with request.app[POOL].acquire() as conn:
        found = await numbers.list_numbers(conn)
    return ok(numbers=[n.as_json() for n in found])


def _new_number(body: dict[str, Any]) -> numbers.NewNumber:
    unknown = sorted(set(body) - _NUMBER_FIELDS)
    if unknown:
        raise invalid(f"unknown field(s): {', '.join(unknown)}; a number has {', '.join(sorted(_NUMBER_FIELDS))}")
    pid, waba, token = body.get("phone_number_id"), body.get("waba_id"), body.get("access_token")
    if not isinstance(pid, str) or not _PHONE_NUMBER_ID.fullmatch(pid):
        raise invalid("phone_number_id is required: Meta's id of the business number")
    if not isinstance(waba, str) or not _PHONE_NUMBER_ID.fullmatch(waba):
        raise invalid("waba_id is required: the WhatsApp Business Account's id")
    if not isinstance(token, str) or not token or len(token) > 4096 or any(c.isspace() for c in token):
        raise invalid("access_token is required: 1 to 4096 characters without spaces")
    label = body.get("label")
    if label is not None and (not isinstance(label, str) or not label.strip() or len(label) > 100):
        raise invalid("label must be 1 to 100 characters")
    rate = body.get("rate_limit_per_s")
    if rate is not None and (isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 < rate <= 1000):
        raise invalid("rate_limit_per_s must be more than 0 and at most 1000 sends per second")
    coexistence = body.get("coexistence", False)
    if not isinstance(coexistence, bool):
        raise invalid("coexistence must be true or false")
    return numbers.NewNumber(pid, waba, token, label.strip() if label else None,
                             float(rate) if rate is not None else None, coexistence)


async def add_number(request: web.Request) -> web.Response:
    """Add a number or replace an existing one's settings and token; replies waiting for a new token go."""
    user = _admin(request)
    new = _new_number(await body_of(request))
    key = request.app[SETTINGS].token_encryption_key
    if key is None:
        raise ApiError(409, "NO_ENCRYPTION_KEY", "TOKEN_ENCRYPTION_KEY is not set on the server: an access token "
                       "cannot be stored (the environment's number needs none)")
    cipher = numbers.TokenCipher(key)
    async with request.app[POOL].acquire() as conn, conn.transaction():
        try:
            await numbers.check_tokens(conn, cipher)
        except numbers.TokenKeyError as exc:
            raise ApiError(409, "NO_ENCRYPTION_KEY", str(exc)) from None
        number, resumed = await numbers.add(conn, new, cipher)
    log.info("user %d added business number %s (%d waiting replies resumed)", user.id, number.phone_number_id,
             resumed)
    return ok(201, number=number.as_json(), resumed=resumed)


async def live_events(request: web.Request) -> web.StreamResponse:
    return await events.stream(request, request.app[HUB], request.app[POOL])


def add_routes(app: web.Application) -> None:
    r = app.router
    app[openapi.DOCUMENT] = openapi.load()
    r.add_get("/openapi.json", openapi.serve)
    r.add_post("/auth/login", login)
    r.add_post("/auth/logout", logout)
    r.add_get("/auth/me", me)
    r.add_get("/conversations", list_conversations)
    r.add_get("/conversations/{id}", get_conversation)
    r.add_post("/conversations/{id}/messages", send_message)
    r.add_post("/conversations/{id}/assign", assign)
    r.add_post("/conversations/{id}/release", release)
    r.add_post("/conversations/{id}/status", set_status)
    r.add_post("/conversations/{id}/notes", add_note)
    r.add_post("/conversations/{id}/intelligence/refresh", refresh_intelligence)
    r.add_post("/conversations/{id}/lead", set_lead)
    r.add_post("/conversations/{id}/bot", set_bot)
    r.add_post("/outbound/{id}/retry", retry_outbound)
    r.add_patch("/contacts/{id}", update_contact)
    r.add_get("/notifications", list_notifications)
    r.add_post("/notifications/{id}/read", read_notification)
    r.add_post("/notifications/{id}/snooze", snooze_notification)
    r.add_get("/tasks", list_tasks)
    r.add_post("/tasks/{id}/done", task_done)
    r.add_post("/admin/conversations/{id}/delete", admin_delete)
    r.add_post("/admin/conversations/{id}/restore", admin_restore)
    r.add_get("/admin/conversations", admin_list)
    r.add_get("/numbers", list_numbers)
    r.add_post("/numbers", add_number)
    r.add_get("/events", live_events)
    r.add_get("/templates", list_templates)
    r.add_post("/templates/sync", sync_templates)


