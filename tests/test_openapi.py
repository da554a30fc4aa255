"""The inbox API's contract, ``inbox/openapi.json``: a valid OpenAPI 3.1 document that names every
route the server has and no route it lacks, whose answers are the shapes the server sends, and
that anyone can read at ``GET /api/v1/openapi.json``.

The answers are checked on the session's system (real PostgreSQL, broker, worker; fake-meta for
Meta) against the document's schema for the status they came with. The document closes its
objects, so a field the server sends that the document does not name fails here too."""

from __future__ import annotations

import re
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson
import pytest
from aiohttp import web
from conftest import Stack, eventually
from inbox_client import Api, customer_says, make_user, phone, sign_in
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate
from test_replies import ledger, script

from wacrm.core.settings import load
from wacrm.inbox import openapi
from wacrm.inbox.server import add_inbox
from wacrm.orchestrator.rules import load_rules

METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")


def contract() -> dict[str, Any]:
    return orjson.loads(openapi.load().body)


def documented_routes(doc: dict[str, Any]) -> set[tuple[str, str]]:
    """(METHOD, path under the server URL) of every operation in the document."""
    return {(method.upper(), path) for path, item in doc["paths"].items() for method in item if method in METHODS}


def served_routes(prefix: str) -> set[tuple[str, str]]:
    """(METHOD, path under ``prefix``) of every route the inbox API registers, mounted as ``wacrm serve``
    mounts it (HEAD, which aiohttp adds beside each GET, left out)."""
    api_app = add_inbox(web.Application(), load({}, "dev"), load_rules())
    routes = set()
    for route in api_app.router.routes():
        if route.method == "HEAD" or route.resource is None:
            continue
        path = route.resource.canonical
        assert path.startswith(prefix + "/"), f"{path} is not under the document's server URL {prefix}"
        routes.add((route.method, path.removeprefix(prefix)))
    return routes


def test_the_document_is_valid_openapi_3_1() -> None:
    doc = contract()
    assert doc["openapi"].startswith("3.1.")
    validate(doc)  # raises naming the first problem


def test_every_route_is_in_the_document_and_every_documented_route_exists() -> None:
    doc = contract()
    (server,) = doc["servers"]
    served, documented = served_routes(server["url"]), documented_routes(doc)
    assert served == documented, (
        f"served but not in inbox/openapi.json: {sorted(served - documented)}; "
        f"in inbox/openapi.json but not served: {sorted(documented - served)}")


def test_every_route_lists_the_errors_the_guard_answers_on_any_route() -> None:
    """Every route but the document itself answers 422 (a NUL in the query string, a value the database
    cannot hold), 500 and 503; every route but sign-in 401; every unsafe one 403 (CSRF, Origin)."""
    doc = contract()
    missing = []
    for method, path in documented_routes(doc):
        if path == "/openapi.json":
            continue
        listed = set(doc["paths"][path][method.lower()]["responses"])
        wanted = {"422", "500", "503"} | ({"401"} if path != "/auth/login" else set()) | (
            {"403"} if method in ("POST", "PUT", "PATCH", "DELETE") else set())
        missing += [f"{method} {path}: {code}" for code in sorted(wanted - listed)]
    assert not missing, f"inbox/openapi.json leaves out answers the server gives: {missing}"


def test_a_missing_document_stops_the_server_naming_the_file(tmp_path: Path) -> None:
    gone = tmp_path / "openapi.json"
    with pytest.raises(openapi.MissingDocument, match=re.escape(f"{gone} is missing")):
        openapi.load(gone)
    gone.write_text("{not json")
    with pytest.raises(openapi.MissingDocument, match="not JSON"):
        openapi.load(gone)


def _answer_schema(doc: dict[str, Any], method: str, path: str, status: int) -> dict[str, Any]:
    responses = doc["paths"][path][method.lower()]["responses"]
    assert str(status) in responses, f"{method} {path} answered {status}, which the document does not list"
    answer = responses[str(status)]
    if "$ref" in answer:
        answer = doc["components"]["responses"][answer["$ref"].rsplit("/", 1)[1]]
    return {**answer["content"]["application/json"]["schema"], "components": doc["components"]}


async def _conforms(doc: dict[str, Any], api: Api, method: str, path: str, url: str | None = None,
                    body: Any = None) -> Any:
    """Call the route and check its answer against the document's schema for that status."""
    status, answer = await api.call(method, url or path.lstrip("/"), body)
    errors = sorted(Draft202012Validator(_answer_schema(doc, method, path, status)).iter_errors(answer), key=str)
    assert not errors, f"{method} {url or path} {status} differs from inbox/openapi.json: " + "; ".join(
        f"{'/'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}" for e in errors[:5])
    return answer


async def test_anyone_reads_the_document_and_the_server_answers_as_it_says(stack: Stack,
                                                                          db: asyncpg.Connection) -> None:
    doc = contract()
    async with aiohttp.ClientSession() as s, s.get(f"{stack.base}/api/v1/openapi.json") as r:
        assert r.status == 200 and r.content_type == "application/json"
        assert await r.json() == doc
        etag = r.headers["ETag"]
    async with aiohttp.ClientSession() as s, s.get(f"{stack.base}/api/v1/openapi.json",
                                                   headers={"If-None-Match": etag}) as r:
        assert r.status == 304

    anonymous = Api(stack.base)
    await _conforms(doc, anonymous, "GET", "/conversations")  # 401 UNAUTHENTICATED
    await _conforms(doc, anonymous, "POST", "/auth/login", body={"email": "", "password": ""})  # 422
    agent = await sign_in(stack.base, (await make_user(db, "agent")).email)
    await _conforms(doc, agent, "GET", "/auth/me")
    name = f"Contract {uuid.uuid4().hex[:6]}"
    wa_id = phone()
    await customer_says(stack, wa_id, "How much is the price?", name)

    async def listed() -> list[dict[str, Any]]:
        return (await agent.get(f"conversations?q={name}"))["conversations"]

    (item,) = await eventually(listed, 30, "the conversation listed")
    cid = item["id"]
    await _conforms(doc, agent, "GET", "/conversations", f"conversations?q={name}")
    await _conforms(doc, agent, "GET", "/conversations", "conversations?status=closed")  # 422 INVALID
    await _conforms(doc, agent, "POST", "/conversations/{id}/intelligence/refresh",
                    f"conversations/{cid}/intelligence/refresh")
    await _conforms(doc, agent, "POST", "/conversations/{id}/assign", f"conversations/{cid}/assign")
    await _conforms(doc, agent, "POST", "/conversations/{id}/notes", f"conversations/{cid}/notes", {"text": "a note"})
    await _conforms(doc, agent, "POST", "/conversations/{id}/messages", f"conversations/{cid}/messages",
                    {"text": "A person answers", "idempotency_key": str(uuid.uuid4())})
    detail = await _conforms(doc, agent, "GET", "/conversations/{id}", f"conversations/{cid}")
    assert detail["conversation"]["messages"] and detail["conversation"]["intelligence"]
    await _conforms(doc, agent, "GET", "/conversations/{id}", "conversations/999999999")  # 404 NOT_FOUND
    await _conforms(doc, agent, "POST", "/conversations/{id}/status", f"conversations/{cid}/status",
                    {"status": "resolved"})
    await _conforms(doc, agent, "GET", "/notifications")
    await _conforms(doc, agent, "GET", "/tasks")
    await _conforms(doc, agent, "POST", "/admin/conversations/{id}/delete",
                    f"admin/conversations/{cid}/delete")  # 403: admins only
    await _conforms(doc, agent, "POST", "/conversations/{id}/lead", f"conversations/{cid}/lead", {"stage": "qualified"})
    await _conforms(doc, agent, "POST", "/conversations/{id}/lead", f"conversations/{cid}/lead", {"stage": "?"})  # 422
    await _conforms(doc, agent, "POST", "/tasks/{id}/done", "tasks/999999999/done")  # 404
    admin = await sign_in(stack.base, (await make_user(db, "admin")).email)
    await _conforms(doc, admin, "POST", "/admin/conversations/{id}/delete", f"admin/conversations/{cid}/delete")
    deleted = await _conforms(doc, admin, "GET", "/admin/conversations", f"admin/conversations?q={name}")
    assert [c["id"] for c in deleted["conversations"]] == [cid] and deleted["conversations"][0]["deleted_at"]
    await _conforms(doc, admin, "POST", "/admin/conversations/{id}/restore", f"admin/conversations/{cid}/restore")
    await _conforms(doc, agent, "POST", "/auth/logout")
    await _conforms(doc, agent, "GET", "/auth/me")  # 401: signed out


async def _waiting_ones(api: Api, q: str) -> list[dict[str, Any]]:
    conversations: list[dict[str, Any]] = (await api.get(f"conversations?waiting=true&q={q}"))["conversations"]
    return conversations


def _of(items: list[dict[str, Any]], cid: int, kind: str) -> dict[str, Any] | None:
    return next((x for x in items if x["conversation_id"] == cid and x["kind"] == kind), None)


async def test_the_queue_of_waiting_customers_answers_as_the_document_says(stack: Stack,
                                                                         db: asyncpg.Connection) -> None:
    doc = contract()
    agent = await sign_in(stack.base, (await make_user(db, "agent")).email)
    tag = uuid.uuid4().hex[:8]
    await customer_says(stack, phone(), "I want to talk to a human please", f"Waits {tag}")  # a handover
    (item,) = await eventually(lambda: _waiting_ones(agent, tag), 60, "the handover in the waiting list")
    cid = item["id"]

    listed = await _conforms(doc, agent, "GET", "/conversations", f"conversations?waiting=true&q={tag}")
    (waiting,) = listed["conversations"]
    assert waiting["waiting"]["reason"] == "handover" and listed["meta"]["counts"]["waiting"] >= 1
    await _conforms(doc, agent, "GET", "/conversations", "conversations?waiting=maybe")  # 422 INVALID
    await _conforms(doc, agent, "GET", "/conversations", "conversations?q=%00")  # 422 INVALID, not a 500
    detail = await _conforms(doc, agent, "GET", "/conversations/{id}", f"conversations/{cid}")
    assert detail["conversation"]["waiting"] == waiting["waiting"]

    tasks = await _conforms(doc, agent, "GET", "/tasks", "tasks?state=open")
    task = _of(tasks["tasks"], cid, "handover")
    assert task is not None and task["contact"]["name"] == f"Waits {tag}" and task["done_at"] is None

    async def notified() -> dict[str, Any] | None:
        return _of((await agent.get("notifications"))["notifications"], cid, "handover")

    await eventually(notified, 60, "the handover's notification")
    notifications = await _conforms(doc, agent, "GET", "/notifications")
    note = _of(notifications["notifications"], cid, "handover")
    assert note is not None and note["contact"]["name"] == f"Waits {tag}" and note["done"] is False
    await _conforms(doc, agent, "POST", "/notifications/{id}/snooze", f"notifications/{note['id']}/snooze",
                    {"until": "2099-01-01T00:00:00Z"})
    await _conforms(doc, agent, "POST", "/notifications/{id}/read", f"notifications/{note['id']}/read")
    await _conforms(doc, agent, "POST", "/notifications/{id}/read", "notifications/999999999/read")  # 404

    await _conforms(doc, agent, "POST", "/conversations/{id}/assign", f"conversations/{cid}/assign")  # ends the wait
    done = _of((await _conforms(doc, agent, "GET", "/tasks", "tasks?state=done"))["tasks"], cid, "handover")
    assert done is not None and done["done_at"] is not None
    await _conforms(doc, agent, "POST", "/conversations/{id}/release", f"conversations/{cid}/release")


async def test_a_failed_reply_and_its_mending_answer_as_the_document_says(stack: Stack,
                                                                        db: asyncpg.Connection) -> None:
    doc = contract()
    agent = await sign_in(stack.base, (await make_user(db, "agent")).email)
    wa_id, name = phone(), f"Mends {uuid.uuid4().hex[:6]}"
    await script(stack, [{"to": f"+{wa_id}", "code": 131026, "http_status": 400}])  # Meta refuses the number
    mid = await customer_says(stack, wa_id, "Hello, is the shop open today?", name)

    async def failed() -> asyncpg.Record | None:
        row = await ledger(db, f"auto:{mid}")
        return row if row is not None and row["state"] == "failed" else None

    row = await eventually(failed, 60, "the bot's reply failed")
    cid, oid = row["conversation_id"], row["id"]
    contact_id = await db.fetchval("SELECT contact_id FROM conversations WHERE id = $1", cid)

    detail = await _conforms(doc, agent, "GET", "/conversations/{id}", f"conversations/{cid}")
    (shown,) = [m for m in detail["conversation"]["messages"] if m["outbound_id"] == oid]
    assert shown["id"] is None and shown["status"] == "failed" and shown["retryable"]  # Meta never took it
    assert shown["error"]["code"] == 131026 and shown["reason_text"] and shown["next_step"]
    task = _of((await _conforms(doc, agent, "GET", "/tasks", "tasks?state=open"))["tasks"], cid, "invalid_recipient")
    assert task is not None and task["contact_id"] == contact_id and task["outbound_id"] == oid
    assert task["reason_text"] and task["next_step"]

    contact_path = f"contacts/{contact_id}"
    refused = await _conforms(doc, agent, "PATCH", "/contacts/{id}", contact_path, {"phone": "not a phone"})
    assert refused["code"] == "INVALID" and "phone" in refused["error"]
    await _conforms(doc, agent, "PATCH", "/contacts/{id}", contact_path, {"email": "x@example.com"})  # 422
    await _conforms(doc, agent, "PATCH", "/contacts/{id}", "contacts/999999999", {"name": "Nobody"})  # 404
    fixed = await _conforms(doc, agent, "PATCH", "/contacts/{id}", contact_path, {"name": f"{name} (shop)"})
    assert fixed["contact"]["name"] == f"{name} (shop)" and fixed["contact"]["phone"] == f"+{wa_id}"

    queued = await _conforms(doc, agent, "POST", "/outbound/{id}/retry", f"outbound/{oid}/retry")
    assert queued["outbound"] == {"id": oid, "state": "queued", "conversation_id": cid}
    again = await _conforms(doc, agent, "POST", "/outbound/{id}/retry", f"outbound/{oid}/retry")
    assert again["code"] == "NOT_RETRYABLE" and again["state"] != "failed"
    await _conforms(doc, agent, "POST", "/outbound/{id}/retry", "outbound/999999999/retry")  # 404
    await _conforms(doc, agent, "GET", "/conversations/{id}", f"conversations/{cid}")  # the reply on its way

    bot = f"conversations/{cid}/bot"
    paused = await _conforms(doc, agent, "POST", "/conversations/{id}/bot", bot, {"paused": True})
    assert paused["conversation"]["bot_paused"] is True
    await _conforms(doc, agent, "POST", "/conversations/{id}/bot", bot, {"paused": "yes"})  # 422
    listed = await _conforms(doc, agent, "GET", "/conversations", f"conversations?q={wa_id}")
    assert [c["bot_paused"] for c in listed["conversations"]] == [True]
    await _conforms(doc, agent, "POST", "/conversations/{id}/bot", bot, {"paused": False})

    await db.execute("UPDATE conversations SET last_inbound_at = now() - interval '25 hours' WHERE id = $1", cid)
    closed = await _conforms(doc, agent, "POST", "/conversations/{id}/messages", f"conversations/{cid}/messages",
                             {"text": "Are you there?", "idempotency_key": str(uuid.uuid4())})
    assert closed["code"] == "WINDOW_CLOSED" and "template" in closed["next_step"]
