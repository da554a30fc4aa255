"""``GET /api/v1/media/{id}``: a customer's file, for signed-in users only (the API's guard).

Answers the stored bytes with their Content-Type, a ``Content-Disposition`` naming the file (a
document is a download, the rest inline), a strong ETag (the content's SHA-256: the file under an id
never changes), ``Cache-Control: private``, and one byte range with 206 (audio and video seek);
``If-None-Match`` with the ETag is 304, a range past the end 416. 404 until the file is stored.
What the customer sent is never run as a page of this origin: ``nosniff`` and a sandboxing CSP.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import AsyncIterator

from aiohttp import web

from wacrm.inbox.files import STORE
from wacrm.inbox.keys import POOL
from wacrm.inbox.protocol import ApiError, not_found, path_id
from wacrm.media import StoreUnavailable
from wacrm.storage import media as ledger

__all__ = ["STORE", "byte_range", "disposition", "serve"]
CACHE = "private, max-age=86400"
_RANGE = re.compile(r"bytes=(\d*)-(\d*)")


def byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The (start, end) inclusive that a ``Range`` header asks of ``size`` bytes; None for the whole file
    (no header, or one this server does not answer: several ranges, another unit). Raises
    :class:`web.HTTPRequestRangeNotSatisfiable` for a range wholly past the end."""
    m = _RANGE.fullmatch((header or "").strip())
    if m is None or (not m.group(1) and not m.group(2)):
        return None
    if not m.group(1):  # the last N bytes
        n = int(m.group(2))
        if n == 0:
            raise _unsatisfiable(size)
        return max(0, size - n), size - 1
    start = int(m.group(1))
    end = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
    if start >= size or end < start:
        raise _unsatisfiable(size)
    return start, end


def _unsatisfiable(size: int) -> web.HTTPRequestRangeNotSatisfiable:
    return web.HTTPRequestRangeNotSatisfiable(headers={"Content-Range": f"bytes */{size}"})


def disposition(kind: str, filename: str | None) -> str:
    """``attachment`` for a document (a named download), ``inline`` for the rest, with the file's name."""
    how = "attachment" if kind == "document" else "inline"
    if not filename:
        return how
    plain = "".join(c if 32 <= ord(c) < 127 and c not in '"\\' else "_" for c in filename)
    return f"{how}; filename=\"{plain}\"; filename*=UTF-8''{urllib.parse.quote(filename, safe='')}"


async def serve(request: web.Request) -> web.StreamResponse:
    media_id = path_id(request)
    async with request.app[POOL].acquire() as conn:
        row = await ledger.for_serving(conn, media_id)
    if row is None:
        raise not_found("media")
    if row.state not in ("stored",) or row.sha256 is None or row.size is None:
        raise ApiError(404, "NOT_FOUND", f"the file is not here: it is {row.state.replace('_', ' ')}",
                       state="pending" if row.state == "downloading" else row.state)
    etag = f'"{row.sha256}"'
    headers = {"ETag": etag, "Cache-Control": CACHE, "Accept-Ranges": "bytes",
               "Content-Type": row.mime_type or "application/octet-stream",
               "Content-Disposition": disposition(row.type, row.filename),
               "X-Content-Type-Options": "nosniff", "Content-Security-Policy": "sandbox"}
    if etag in request.headers.get("If-None-Match", ""):
        return web.Response(status=304, headers={k: headers[k] for k in ("ETag", "Cache-Control")})
    if_range = request.headers.get("If-Range")
    try:
        wanted = byte_range(request.headers.get("Range"), row.size) if if_range in (None, etag) else None
    except web.HTTPRequestRangeNotSatisfiable as exc:
        return web.Response(status=416, headers={**exc.headers, "ETag": etag, "Cache-Control": CACHE})
    start, end = wanted or (0, row.size - 1)
    if wanted is not None:
        headers["Content-Range"] = f"bytes {start}-{end}/{row.size}"
    response = web.StreamResponse(status=206 if wanted is not None else 200, headers=headers)
    response.content_length = end - start + 1 if row.size else 0
    store = request.app[STORE]
    chunks: AsyncIterator[bytes] | None = None
    if request.method != "HEAD" and row.size:
        chunks = store.reader(row.sha256, start, end)
        try:
            first = await anext(chunks)
        except StoreUnavailable:
            raise ApiError(503, "UNAVAILABLE", "the media store is unavailable; try again") from None
        except StopAsyncIteration:
            raise ApiError(503, "UNAVAILABLE", "the file is missing from the media store") from None
    await response.prepare(request)
    if chunks is not None:
        await response.write(first)
        async for chunk in chunks:
            await response.write(chunk)
    await response.write_eof()
    return response
