"""The inbox API's contract: ``openapi.json`` beside this module, an OpenAPI 3.1 document.

It is the reference for every route of ``/api/v1`` — parameters, bodies, answers and the error
codes each route returns — and ``tests/test_openapi.py`` holds it to the routes
:func:`inbox.api.add_routes` registers, both ways. :func:`serve` answers
``GET /api/v1/openapi.json`` with the bytes read once when the application is made
(:func:`load`), with no sign-in and no database.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import orjson
from aiohttp import web

PATH = Path(__file__).with_name("openapi.json")


class MissingDocument(RuntimeError):
    """``openapi.json`` is not installed or is not JSON; the server does not start."""


@dataclass(frozen=True, slots=True)
class Document:
    body: bytes
    etag: str


DOCUMENT = web.AppKey("inbox_openapi", Document)


def load(path: Path = PATH) -> Document:
    """The document and its ETag; raises :class:`MissingDocument` naming the file."""
    try:
        body = path.read_bytes()
        orjson.loads(body)
    except (OSError, orjson.JSONDecodeError) as exc:
        raise MissingDocument(f"the inbox API cannot start: {path} is missing or not JSON ({exc}); "
                              "reinstall wacrm: `pip install -e .` ships inbox/openapi.json") from None
    return Document(body, '"' + hashlib.sha256(body).hexdigest()[:32] + '"')


async def serve(request: web.Request) -> web.Response:
    """``GET openapi.json``: the document, or 304 when ``If-None-Match`` names its ETag."""
    doc = request.app[DOCUMENT]
    headers = {"ETag": doc.etag, "Cache-Control": "no-cache"}
    if doc.etag in request.headers.get("If-None-Match", ""):
        return web.Response(status=304, headers=headers)
    return web.Response(body=doc.body, content_type="application/json", headers=headers)
