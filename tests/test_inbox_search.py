"""The inbox list's search finds what its box promises ("Search name, phone or text"), and no input to
any inbox route is a server error: `wacrm serve --only inbox` as a real process on a real, seeded
database, asked over HTTP as a signed-in person (an admin's API token)."""

from __future__ import annotations

import http.client
import json
import signal
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from conftest import run_sync
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.inbox import Seed, create_agents, seed
from wacrm.core import procs
from wacrm.core.embedded import free_port, wait_for_port
from wacrm.inbox import api
from wacrm.storage.migrate import run_migrations


@dataclass(frozen=True)
class Inbox:
    port: int
    token: str  # an admin's API token
    database_url: str

    def request(self, method: str, target: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, Any]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request(method, target, body=body, headers={"Authorization": f"Bearer {self.token}",
                                                             "Content-Type": "application/json", **(headers or {})})
            resp = conn.getresponse()
            if resp.getheader("Content-Type", "").startswith("text/event-stream"):
                return resp.status, None  # the live stream: its answer is the status
            raw = resp.read()
        finally:
            conn.close()
        try:
            return resp.status, json.loads(raw)
        except ValueError:
            return resp.status, raw

    def search(self, q: str) -> list[int]:
        status, data = self.request("GET", "/api/v1/conversations?" + urllib.parse.urlencode({"q": q}))
        assert status == 200, data
        return [c["id"] for c in data["conversations"]]


@pytest.fixture(scope="module")
def inbox(make_database: Callable[[], str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Inbox]:
    url = make_database()

    async def prepare() -> str:
        await run_migrations(url, 10.0, out=lambda m: None)
        conn = await asyncpg.connect(url)
        try:
            users, tokens = await create_agents(conn, 1)
            await seed(conn, Seed(300, 1500, agents=1, batch=300), users, lambda m: None)
            return tokens[-1]  # the admin's
        finally:
            await conn.close()

    token = run_sync(prepare())
    port = free_port()
    env = procs.env_with(DATABASE_URL=url, PORT=str(port), HOST="127.0.0.1", KAFKA_BOOTSTRAP_SERVERS=None)
    proc = procs.spawn(procs.python_cmd("serve", "--only", "inbox"),
                       log_path=tmp_path_factory.mktemp("inbox") / "serve.log", env=env)
    try:
        wait_for_port(port, 60, proc)
        yield Inbox(port, token, url)
    finally:
        procs.stop(proc, signal.SIGTERM, 20)


def fetch(inbox: Inbox, sql: str, *args: Any) -> list[asyncpg.Record]:
    async def go() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(inbox.database_url)
        try:
            return await conn.fetch(sql, *args)
        finally:
            await conn.close()

    return run_sync(go())


def a_live_conversation(inbox: Inbox, skip: int = 0) -> asyncpg.Record:
    return fetch(inbox, """SELECT c.id, k.id contact_id, k.wa_id, k.profile_name FROM conversations c
                           JOIN contacts k ON k.id = c.contact_id WHERE c.deleted_at IS NULL
                           ORDER BY c.id OFFSET $1 LIMIT 1""", 10 + skip)[0]


def test_search_finds_a_phone_number_typed_any_way(inbox: Inbox) -> None:
    c = a_live_conversation(inbox)
    digits = c["wa_id"]  # 1555000000010: as a person types it
    for typed in (f"+{digits[0]} {digits[1:4]} {digits[4:7]} {digits[7:]}", f"+{digits}",
                  f"({digits[1:4]}) {digits[4:7]}-{digits[7:]}", digits[-6:]):
        assert c["id"] in inbox.search(typed), typed


def test_search_finds_the_customers_words_and_names_in_any_case(inbox: Inbox) -> None:
    c = a_live_conversation(inbox, 1)
    fetch(inbox, """UPDATE messages SET body = 'Does the blue kettle come in green?'
                    WHERE id = (SELECT min(id) FROM messages WHERE conversation_id = $1)""", c["id"])
    for words in ("blue kettle", "KETTLE COME IN", "Does the blue kettle come in green?"):
        assert inbox.search(words) == [c["id"]], words  # an early message of the thread, not only the last
    assert c["id"] in inbox.search(c["profile_name"].upper())
    assert inbox.search("kettle purple") == []


def test_search_takes_wildcards_literally(inbox: Inbox) -> None:
    c = a_live_conversation(inbox, 2)
    fetch(inbox, "UPDATE contacts SET profile_name = 'Zoe 100% sure_thing' WHERE id = $1", c["contact_id"])
    assert inbox.search("100%") == [c["id"]]
    assert inbox.search("%") == [c["id"]] and inbox.search("_") == [c["id"]]
    assert inbox.search("e_t") == [c["id"]]  # "sure_thing", not "e" + any character + "t"
    assert inbox.search("%%%%") == [] and inbox.search("Zoe\\") == []


def test_a_nul_byte_is_refused_not_a_server_error(inbox: Inbox) -> None:
    status, data = inbox.request("GET", "/api/v1/conversations?q=a%00b")
    assert status == 422 and data["ok"] is False and data["code"] == "INVALID" and "NUL" in data["error"]
    c = a_live_conversation(inbox, 3)
    note = json.dumps({"text": "a\0b"}).encode()
    status, data = inbox.request("POST", f"/api/v1/conversations/{c['id']}/notes", note)
    assert status == 422 and data["code"] == "INVALID" and "NUL" in data["error"]


# --- every route, odd input ---------------------------------------------------------------------

def inbox_routes() -> list[tuple[str, str]]:
    """(method, path) of every route of the inbox API's router."""
    app = web.Application()
    api.add_routes(app)
    return sorted({(r.method, r.resource.canonical) for r in app.router.routes()
                   if r.resource is not None and r.method != "HEAD"})


ROUTES = inbox_routes()
KEYS = ("q", "status", "assignee", "page", "before", "state", "deleted", "number", "waiting", "text",
        "idempotency_key", "template", "user_id", "snoozed_until", "until", "stage", "email", "password",
        "name", "language", "parameters", "phone", "paused")
odd_text = st.one_of(st.text(max_size=40), st.sampled_from(("", "0", "-1", "1.5", "²", "١٢", "9" * 19, "9" * 40,
                                                           "\x00", "%", "_", "\\", "'", "null", "2026-13-45",
                                                           "9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00+14:00")))
json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2 ** 70), max_value=2 ** 70),
              st.floats(allow_nan=False, allow_infinity=False), odd_text),
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(max_size=5)), inner, max_size=4)),
    max_leaves=8)
bodies = st.one_of(
    st.none(), st.binary(max_size=60),
    st.dictionaries(st.sampled_from(KEYS), json_values, max_size=5).map(lambda d: json.dumps(d).encode()),
    json_values.map(lambda v: json.dumps(v).encode()))
path_ids = st.one_of(st.sampled_from(("1", "2", "3", "0")), st.integers(min_value=-10, max_value=10 ** 25).map(str),
                     odd_text.filter(bool))
raw_junk = st.sampled_from(("", "&q=%00", "&q=%ff%fe", "&page=%", "&=x", "&q", "&%zz=1", "&q=%E2%82", "&&&"))


@settings(derandomize=True, max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(route=st.sampled_from(ROUTES), ids=path_ids,
       query=st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(max_size=5)), odd_text, max_size=4),
       junk=raw_junk, body=bodies)
def test_no_input_to_any_inbox_route_is_a_server_error(inbox: Inbox, route: tuple[str, str], ids: str,
                                                         query: dict[str, str], junk: str, body: bytes | None) -> None:
    method, path = route
    target = "/api/v1" + path.replace("{id}", urllib.parse.quote(ids, safe="")) + "?" + \
        urllib.parse.urlencode(query) + junk
    status, data = inbox.request(method, target, body if method in ("POST", "PUT", "PATCH") else None)
    assert status < 500, (method, target, body, status, data)
    if status >= 400:
        assert isinstance(data, dict) and data.get("ok") is False and isinstance(data.get("code"), str) \
            and isinstance(data.get("error"), str), (method, target, status, data)
