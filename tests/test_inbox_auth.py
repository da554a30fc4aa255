"""Sign-in to the inbox on the session's system: cookies, rotation, CSRF and Origin, roles, API
tokens (made and revoked with ``wacrm users``), and the sign-in rate limit."""

from __future__ import annotations

import subprocess
import uuid
from http.cookies import SimpleCookie

import asyncpg
import pytest
from conftest import Stack
from inbox_client import PASSWORD, Api, make_user, sign_in
from test_openapi import contract, documented_routes

from wacrm.core import procs


def _signed_in_routes() -> list[tuple[str, str]]:
    """Every route of the contract (inbox/openapi.json) that needs sign-in, with 1 for each id."""
    paths = contract()["paths"]
    return sorted((method, path.lstrip("/").replace("{id}", "1")) for method, path in documented_routes(contract())
                  if paths[path][method.lower()].get("security") != [])


ROUTES = _signed_in_routes()


async def test_every_route_needs_a_signed_in_user(stack: Stack) -> None:
    anonymous = Api(stack.base)
    for method, path in ROUTES:
        status, body = await anonymous.call(method, path, {})
        assert (status, body["ok"], body["code"]) == (401, False, "UNAUTHENTICATED"), (method, path)
    forged = Api(stack.base, token="wacrm_not-a-real-token")
    status, body = await forged.call("GET", "conversations")
    assert (status, body["code"]) == (401, "UNAUTHENTICATED")


async def test_sign_in_sets_a_host_cookie_and_each_sign_in_rotates_the_session(stack: Stack,
                                                                              db: asyncpg.Connection) -> None:
    user = await make_user(db)
    api = await sign_in(stack.base, user.email)
    cookie = SimpleCookie()
    cookie.load(api.set_cookies[0])
    (morsel,) = cookie.values()
    assert morsel.key == "__Host-wacrm_session"
    assert morsel["secure"] and morsel["httponly"] and morsel["samesite"] == "Lax" and morsel["path"] == "/"
    assert not morsel["domain"]
    me = await api.get("auth/me")
    assert me["user"]["email"] == user.email and me["csrf_token"] == api.csrf
    # Only the hash of the session id is stored.
    raw_id = api.cookie.split("=", 1)[1]
    assert await db.fetchval("SELECT count(*) FROM sessions WHERE id_hash = $1", raw_id) == 0

    # Signing in again from the same browser ends the old session.
    again = Api(stack.base, cookie=api.cookie)
    status, body = await again.call("POST", "auth/login", {"email": user.email, "password": PASSWORD})
    assert status == 200 and body["csrf_token"] != api.csrf
    status, body = await api.call("GET", "auth/me")
    assert (status, body["code"]) == (401, "UNAUTHENTICATED")

    fresh = await sign_in(stack.base, user.email)
    assert (await fresh.post("auth/logout"))["ok"]
    status, _ = await fresh.call("GET", "conversations")
    assert status == 401


async def test_unsafe_requests_with_the_cookie_need_the_csrf_token_and_an_allowed_origin(
        stack: Stack, db: asyncpg.Connection) -> None:
    api = await sign_in(stack.base, (await make_user(db)).email)
    status, body = await api.call("POST", "tasks/999999999/done", csrf=False)
    assert (status, body["code"]) == (403, "FORBIDDEN") and "X-CSRF-Token" in body["error"]
    status, body = await api.call("POST", "tasks/999999999/done", headers={"X-CSRF-Token": "guess"})
    assert (status, body["code"]) == (403, "FORBIDDEN")
    status, body = await api.call("POST", "tasks/999999999/done", headers={"Origin": "https://evil.example"})
    assert (status, body["code"]) == (403, "FORBIDDEN") and "Origin" in body["error"]
    # The right token from the page's own origin passes (and the task does not exist).
    status, body = await api.call("POST", "tasks/999999999/done", headers={"Origin": stack.base})
    assert (status, body["code"]) == (404, "NOT_FOUND")
    # Signing in from another site is refused too (login CSRF).
    status, body = await Api(stack.base).call("POST", "auth/login", {"email": "x@example.com", "password": "x"},
                                               headers={"Origin": "https://evil.example"})
    assert (status, body["code"]) == (403, "FORBIDDEN")


def _wacrm(stack: Stack, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    env = procs.env_with(DATABASE_URL=stack.database_url)
    return subprocess.run(procs.python_cmd(*args), env=env, input=stdin, capture_output=True, text=True, timeout=60)


async def test_users_cli_adds_people_and_tokens_work_until_revoked(stack: Stack) -> None:
    email = f"Cli-{uuid.uuid4().hex[:8]}@Example.com"
    added = _wacrm(stack, "users", "add", email, "--role", "admin", stdin="a long enough password\n")
    assert added.returncode == 0, added.stderr
    assert f"added admin {email.lower()}" in added.stdout and "password" not in added.stdout
    generated = _wacrm(stack, "users", "add", f"gen-{uuid.uuid4().hex[:8]}@example.com", stdin="")
    assert generated.returncode == 0 and "password (shown once): " in generated.stdout
    twice = _wacrm(stack, "users", "add", email, stdin="another password\n")
    assert twice.returncode == 1 and "exists already" in twice.stderr and "Traceback" not in twice.stderr
    listed = _wacrm(stack, "users", "list")
    assert listed.returncode == 0 and email.lower() in listed.stdout

    await sign_in(stack.base, email, "a long enough password")  # the password from standard input works
    issued = _wacrm(stack, "users", "token", email)
    assert issued.returncode == 0
    token = issued.stdout.strip()
    assert token.startswith("wacrm_")
    api = Api(stack.base, token=token)
    assert (await api.get("auth/me"))["user"]["role"] == "admin"
    # A token needs no CSRF token: it is not sent by browsers on their own.
    status, body = await api.call("POST", "tasks/999999999/done")
    assert (status, body["code"]) == (404, "NOT_FOUND")
    revoked = _wacrm(stack, "users", "token", email, "--revoke")
    assert revoked.returncode == 0 and "revoked 1 token" in revoked.stdout
    status, body = await api.call("GET", "conversations")
    assert (status, body["code"]) == (401, "UNAUTHENTICATED")


async def test_agents_are_refused_admin_routes(stack: Stack, db: asyncpg.Connection) -> None:
    agent = await sign_in(stack.base, (await make_user(db, "agent")).email)
    for method, path in [("POST", "admin/conversations/1/delete"), ("POST", "admin/conversations/1/restore"),
                         ("GET", "admin/conversations?deleted=true")]:
        status, body = await agent.call(method, path)
        assert (status, body["code"]) == (403, "FORBIDDEN"), path


@pytest.mark.parametrize("limit_by", ["account", "address"])
async def test_sign_in_is_rate_limited(stack: Stack, db: asyncpg.Connection, limit_by: str) -> None:
    user = await make_user(db)
    if limit_by == "account":
        wrong = [user.email] * 5  # LOGIN_FAILURES_PER_ACCOUNT default
    else:  # failures spread over accounts that do not even exist, from one address
        await db.execute("DELETE FROM login_failures WHERE address = '127.0.0.1'")
        wrong = [f"nobody-{i}@example.com" for i in range(20)]
    for email in wrong:
        status, body = await Api(stack.base).call("POST", "auth/login", {"email": email, "password": "wrong"})
        assert (status, body["code"]) == (401, "UNAUTHENTICATED")
    status, body = await Api(stack.base).call("POST", "auth/login", {"email": user.email, "password": PASSWORD})
    assert (status, body["code"]) == (429, "RATE_LIMITED")
    await db.execute("DELETE FROM login_failures WHERE address = '127.0.0.1' OR email = $1", user.email)
    await sign_in(stack.base, user.email)


async def test_a_session_ends_when_idle_too_long_or_past_its_absolute_expiry(stack: Stack,
                                                                           db: asyncpg.Connection) -> None:
    from wacrm.inbox.auth import digest

    user = await make_user(db)
    idle, old = await sign_in(stack.base, user.email), await sign_in(stack.base, user.email)
    assert (await idle.get("auth/me"))["user"]["id"] == user.id
    # SESSION_IDLE_SECONDS (8 hours by default) without a request; SESSION_MAX_SECONDS since sign-in.
    await db.execute("UPDATE sessions SET last_seen_at = now() - interval '9 hours' WHERE id_hash = $1",
                     digest((idle.cookie or "=").split("=", 1)[1]))
    await db.execute("UPDATE sessions SET expires_at = now() - interval '1 second' WHERE id_hash = $1",
                     digest((old.cookie or "=").split("=", 1)[1]))
    for api in (idle, old):
        status, body = await api.call("GET", "auth/me")
        assert (status, body["code"]) == (401, "UNAUTHENTICATED")
