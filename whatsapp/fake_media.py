"""The media half of ``wacrm fake-meta``: the media endpoint and its bearer-checked, expiring downloads.

- ``POST /__media`` registers a file: the body is its bytes (or none, with ``?size=N``: N random
  bytes). Query parameters: ``id`` (the media id; one is made up when absent), ``mime_type``
  (default the request's Content-Type), and for tests of bad input ``sha256`` (what the media
  endpoint claims, e.g. a wrong one), ``expired=N`` (the first N download URLs handed out for it
  are dead already: 404) and ``fail=N`` (the next N media endpoint calls answer HTTP 500, code 2).
  Answers ``{"id", "sha256", "file_size", "mime_type"}`` (the sha256 in hex, and ``sha256_b64``,
  the webhook's form).
- ``GET /{version}/{media_id}`` (a bearer token required) answers as Meta does: ``url``,
  ``mime_type``, ``sha256``, ``file_size``, ``id``; an unknown id is Meta's error 100.
- ``GET /__media/{id}/download?n=K`` (the URL above; the same bearer token required) serves the
  bytes; a URL older than :data:`URL_TTL_S` (Meta's five minutes) or marked expired answers 404.
- ``GET /__media`` lists what was registered with the number of metadata calls and downloads each had
  (and the ``phone_number_id`` each metadata call named, ``asked_for``).
- ``POST /{version}/{phone_number_id}/media`` takes an upload as Meta does (multipart: ``file``,
  ``type``, ``messaging_product=whatsapp``; the number's bearer token) and answers ``{"id"}``; the
  file is then served like a registered one. ``GET /__uploads`` lists every upload (number, type,
  file name, the part's content type, size, sha256); ``POST /__uploads/fail`` ``{"count": N}`` makes
  the next N uploads answer HTTP 500 (code 2).

When the caller names the number (``GET /{version}/{media_id}?phone_number_id=``, as Meta allows), the
metadata call and the download URL it hands out check that number's token (``FakeMeta.refuse_token``:
a number with no token configured takes any bearer).
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import BodyPartReader, web

URL_TTL_S = 300.0
Refuse = Callable[[str, str | None], "web.Response | None"]  # FakeMeta.refuse_token
CHUNK = 1024 * 1024
MAX_REGISTER_BYTES = 128 * 1024 * 1024  # a file registered by its bytes: up to a little past the document limit


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def _error(code: int, http_status: int, message: str) -> web.Response:
    return _json({"error": {"message": message, "type": "OAuthException", "code": code,
                            "fbtrace_id": "AFAKEfbtrace"}}, http_status)


def _bearer(request: web.Request) -> bool:
    auth = request.headers.get("Authorization") or ""
    return auth.startswith("Bearer ") and len(auth) > len("Bearer ")


def _count(raw: str | None) -> int:
    return int(raw) if raw and raw.isdigit() else 0


@dataclass
class _File:
    data: bytes
    mime_type: str
    sha256: str  # what the media endpoint says (hex)
    expired: int  # the first N URLs handed out are dead already
    fail: int  # the next N media endpoint calls answer 500
    urls: dict[int, float] = field(default_factory=dict)  # URL number -> when it was handed out
    url_numbers: dict[int, str] = field(default_factory=dict)  # URL number -> the number it was asked for
    asked_for: list[str | None] = field(default_factory=list)  # the phone_number_id of each metadata call
    info_calls: int = 0
    downloads: int = 0


class FakeMedia:
    def __init__(self, refuse_token: Refuse | None = None) -> None:
        self.files: dict[str, _File] = {}
        self.uploads: list[dict[str, Any]] = []
        self._urls = itertools.count(1)
        self._refuse = refuse_token
        self._fail_uploads = 0

    def _refused(self, request: web.Request, phone_number_id: str | None) -> web.Response | None:
        """The number's token checked when the number is known; else any bearer will do."""
        if phone_number_id and self._refuse is not None:
            return self._refuse(phone_number_id, request.headers.get("Authorization"))
        return None if _bearer(request) else _error(190, 401, "Missing or malformed access token")

    async def upload(self, request: web.Request) -> web.Response:
        phone_number_id = request.match_info["phone_number_id"]
        refused = self._refused(request, phone_number_id)
        if refused is not None:
            return refused
        if not request.content_type.startswith("multipart/"):
            return _error(100, 400, "The upload must be multipart/form-data")
        fields: dict[str, str] = {}
        data, filename, part_type = None, None, None
        reader = await request.multipart()
        async for part in reader:
            if not isinstance(part, BodyPartReader) or not part.name:
                continue
            if part.name == "file":
                data, filename = bytes(await part.read()), part.filename
                part_type = part.headers.get("Content-Type")
            else:
                fields[part.name] = await part.text()
        if fields.get("messaging_product") != "whatsapp":
            return _error(100, 400, "The parameter messaging_product is required and must be whatsapp")
        if data is None or not fields.get("type"):
            return _error(100, 400, "The parameters file and type are required")
        if self._fail_uploads > 0:
            self._fail_uploads -= 1
            return _error(2, 500, "Service temporarily unavailable")
        media_id = "9" + "".join(secrets.choice("0123456789") for _ in range(15))
        digest = hashlib.sha256(data).hexdigest()
        self.files[media_id] = _File(data, fields["type"], digest, 0, 0)
        self.uploads.append({"id": media_id, "phone_number_id": phone_number_id, "type": fields["type"],
                             "messaging_product": fields["messaging_product"], "filename": filename,
                             "content_type": part_type, "file_size": len(data), "sha256": digest,
                             "received_at": time.time()})
        return _json({"id": media_id})

    async def list_uploads(self, request: web.Request) -> web.Response:
        return _json(self.uploads)

    async def fail_uploads(self, request: web.Request) -> web.Response:
        try:
            count = int(orjson.loads(await request.read())["count"])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return _json({"error": 'expected {"count": N}'}, 400)
        self._fail_uploads = count
        return _json({"failing": count})

    async def register(self, request: web.Request) -> web.Response:
        q = request.query
        data = await request.read()
        if not data and q.get("size", "").isdigit():
            data = os.urandom(int(q["size"]))
        media_id = q.get("id") or "1" + "".join(secrets.choice("0123456789") for _ in range(15))
        digest = hashlib.sha256(data).digest()
        mime = q.get("mime_type") or (request.content_type if request.content_type != "application/octet-stream"
                                      else None) or "application/octet-stream"
        self.files[media_id] = _File(data, mime, q.get("sha256") or digest.hex(), _count(q.get("expired")),
                                     _count(q.get("fail")))
        return _json({"id": media_id, "sha256": digest.hex(), "sha256_b64": base64.b64encode(digest).decode(),
                      "file_size": len(data), "mime_type": mime})

    async def listing(self, request: web.Request) -> web.Response:
        return _json([{"id": k, "file_size": len(f.data), "info_calls": f.info_calls, "downloads": f.downloads,
                       "urls": len(f.urls), "asked_for": f.asked_for} for k, f in self.files.items()])

    async def info(self, request: web.Request) -> web.Response:
        phone_number_id = request.query.get("phone_number_id")
        refused = self._refused(request, phone_number_id)
        if refused is not None:
            return refused
        media_id = request.match_info["media_id"]
        found = self.files.get(media_id)
        if found is None:
            return _error(100, 400, f"Unsupported get request. Object with ID '{media_id}' does not exist")
        found.info_calls += 1
        found.asked_for.append(phone_number_id)
        if found.fail > 0:
            found.fail -= 1
            return _error(2, 500, "Service temporarily unavailable")
        n = next(self._urls)
        found.urls[n] = time.time()
        if phone_number_id:
            found.url_numbers[n] = phone_number_id
        if found.expired > 0:
            found.expired -= 1
            found.urls[n] = 0.0  # handed out dead
        url = f"{request.url.origin()}/__media/{media_id}/download?n={n}"
        return _json({"messaging_product": "whatsapp", "url": url, "mime_type": found.mime_type,
                      "sha256": found.sha256, "file_size": len(found.data), "id": media_id})

    async def download(self, request: web.Request) -> web.StreamResponse:
        found = self.files.get(request.match_info["media_id"])
        n = _count(request.query.get("n"))
        refused = self._refused(request, found.url_numbers.get(n) if found is not None else None)
        if refused is not None:
            return refused
        issued = found.urls.get(n) if found is not None else None
        if found is None or issued is None or time.time() - issued > URL_TTL_S:
            return web.Response(status=404, text="URL signature expired")
        found.downloads += 1
        response = web.StreamResponse(headers={"Content-Type": found.mime_type})
        response.content_length = len(found.data)
        await response.prepare(request)
        view = memoryview(found.data)
        for start in range(0, len(view), CHUNK):
            await response.write(view[start:start + CHUNK])
        await response.write_eof()
        return response


def add_routes(app: web.Application, refuse_token: Refuse | None = None) -> FakeMedia:
    """Register the media routes on fake-meta's app (before its catch-all routes, if any);
    ``refuse_token``: how a number's token is checked (``FakeMeta.refuse_token``)."""
    fake = FakeMedia(refuse_token)
    app.router.add_post("/{version}/{phone_number_id}/media", fake.upload)
    app.router.add_get("/__uploads", fake.list_uploads)
    app.router.add_post("/__uploads/fail", fake.fail_uploads)
    app.router.add_post("/__media", fake.register)
    app.router.add_get("/__media", fake.listing)
    app.router.add_get("/__media/{media_id}/download", fake.download)
    app.router.add_get("/{version:v[0-9.]+}/{media_id}", fake.info)
    return fake
