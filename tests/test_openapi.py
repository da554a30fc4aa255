"""The inbox API's contract, ``inbox/openapi.json``: a valid OpenAPI 3.1 document that names every
route the server has and no route it lacks, whose answers are the shapes the server sends, and
that anyone can read at ``GET /api/v1/openapi.json``."""

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
