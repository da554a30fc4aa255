"""A small client of the inbox API for the tests, and ways to make users and customer messages.

Sessions: the server sets ``__Host-wacrm_session`` with ``Secure`` also on http://127.0.0.1 (browsers
accept Secure cookies on loopback). aiohttp's cookie jar would not send a Secure cookie over plain
http, so :class:`Api` keeps the cookie itself and sends it in a ``Cookie`` header, as a browser would.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from typing import Any

import aiohttp
import asyncpg
import pytest
from conftest import Stack
from test_inbound_fidelity import META, contact, envelope, text_msg

from wacrm.inbox import auth

PASSWORD = "correct horse battery staple"


def phone() -> str:
    return "1557" + str(uuid.uuid4().int)[:7]


async def make_user(db: asyncpg.Connection, role: str = "agent", password: str = PASSWORD) -> auth.User:
    return await auth.add_user(db, f"{role}-{uuid.uuid4().hex[:10]}@example.com", role,
                               await auth.hash_password_async(password))


async def customer_says(stack: Stack, wa_id: str, text: str, name: str = "Cliente") -> str:
    msg = text_msg(wa_id, text, int(time.time()))
    status, _ = await stack.post(envelope({"metadata": META, "contacts": [contact(wa_id, name)], "messages": [msg]}))
    assert status == 200
    return msg["id"]


@dataclass
class Api:
    base: str
    token: str | None = None
    cookie: str | None = None  # "name=value"
    csrf: str | None = None
    origin: str | None = None
    last_headers: dict[str, Any] = field(default_factory=dict)

    async def call(self, method: str, path: str, json: Any = None, *, csrf: bool = True,
                   headers: dict[str, str] | None = None) -> tuple[int, Any]:
        h: dict[str, str] = dict(headers or {})
        if self.token:
            h["Authorization"] = f"Bearer {self.token}"
        if self.cookie:
            h["Cookie"] = self.cookie
        if self.csrf and csrf and method != "GET":
            h.setdefault("X-CSRF-Token", self.csrf)
        if self.origin:
            h.setdefault("Origin", self.origin)
        async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as s, \
                s.request(method, f"{self.base}/api/v1/{path}", json=json, headers=h) as r:
            self.last_headers = dict(r.headers)
            self.set_cookies = r.headers.getall("Set-Cookie", [])
            body = await r.json(content_type=None) if r.content_type == "application/json" else await r.text()
            return r.status, body

    async def get(self, path: str) -> Any:
        status, body = await self.call("GET", path)
        assert status == 200, (path, status, body)
        return body

    async def post(self, path: str, json: Any = None, expect: int = 200) -> Any:
        status, body = await self.call("POST", path, json)
        assert status == expect, (path, status, body)
        return body


async def sign_in(base: str, email: str, password: str = PASSWORD) -> Api:
    api = Api(base)
    status, body = await api.call("POST", "auth/login", {"email": email, "password": password})
    assert status == 200, body
    cookie = SimpleCookie()
    for header in api.set_cookies:
        cookie.load(header)
    (name,) = list(cookie)
    api.cookie = f"{name}={cookie[name].value}"
    api.csrf = body["csrf_token"]
    return api


async def latest_conversation(db: asyncpg.Connection, wa_id: str) -> int | None:
    """The customer's newest conversation, or None while none is stored."""
    return await db.fetchval("SELECT c.id FROM conversations c JOIN contacts k ON k.id = c.contact_id "
                             "WHERE k.wa_id = $1 ORDER BY c.id DESC LIMIT 1", wa_id)


async def conversation_of(db: asyncpg.Connection, wa_id: str) -> int:
    cid = await latest_conversation(db, wa_id)
    assert cid is not None
    return int(cid)


# Fixtures of the API tests (a plugin of conftest.py): a signed-in agent and admin of the session stack.
@pytest.fixture
async def agent(stack: Stack, db: asyncpg.Connection) -> Api:
    user = await make_user(db, "agent")
    api = await sign_in(stack.base, user.email)
    api.user_id = user.id  # type: ignore[attr-defined]
    return api


@pytest.fixture
async def admin(stack: Stack, db: asyncpg.Connection) -> Api:
    user = await make_user(db, "admin")
    api = await sign_in(stack.base, user.email)
    api.user_id = user.id  # type: ignore[attr-defined]
    return api
