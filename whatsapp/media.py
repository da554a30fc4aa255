"""Media on the Graph API: Meta's size limits, its checksums, the two calls of a download and the upload.

A download is ``GET /{version}/{media_id}?phone_number_id=`` (the number's token) for ``url``,
``mime_type``, ``sha256`` and ``file_size``, then ``GET url`` with the same bearer token. The URL
expires after five minutes: its 404 is :class:`UrlExpired`, and the caller asks for a fresh one.
An upload is ``POST /{version}/{phone_number_id}/media`` (multipart: ``file``, ``type``,
``messaging_product``), answered with the media id a send names. Errors are the
:mod:`whatsapp.graph` tree, so :func:`core.errors.classify` reads them as it reads a send's;
neither call is ever ambiguous: a download is a plain GET, and an upload whose answer was lost
only leaves an unused file at Meta, so a broken or timed-out one is retryable.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import re
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass

import aiohttp
import aiohttp.payload
import orjson

from wacrm.whatsapp.graph import PermanentGraphError, RetryableGraphError, answer_body, classify

KB, MB = 1024, 1024 * 1024
#: Meta's limit for each inbound media type (Cloud API "supported media types"); above it nothing is fetched.
MAX_BYTES = {"image": 5 * MB, "audio": 16 * MB, "video": 16 * MB, "document": 100 * MB, "sticker": 500 * KB}
MEDIA_TYPES = frozenset(MAX_BYTES)
CHUNK_BYTES = 256 * KB  # what a download holds in memory at a time
_HEX = re.compile(r"[0-9a-fA-F]{64}")


def sha256_hex(value: str | None) -> str | None:
    """A SHA-256 as lowercase hex, from hex (the media endpoint's) or base64 (the webhook's); None if neither."""
    if not value:
        return None
    if _HEX.fullmatch(value):
        return value.lower()
    with contextlib.suppress(binascii.Error, ValueError):
        raw = base64.b64decode(value, validate=True)
        if len(raw) == 32:
            return raw.hex()
    return None


class UrlExpired(PermanentGraphError):
    """The download URL answered 404: it expired (five minutes); ask the media endpoint for a fresh one."""


class TooLarge(PermanentGraphError):
    """The bytes are more than Meta's limit for the type (or than the size the media endpoint gave)."""


@dataclass(frozen=True, slots=True)
class MediaInfo:
    """What ``GET /{version}/{media_id}`` says of a media id."""

    media_id: str
    url: str
    mime_type: str | None
    sha256: str | None  # hex
    file_size: int | None


class MediaClient:
    """The media endpoint and the download, on a session the caller owns; every call bounded."""

    def __init__(self, session: aiohttp.ClientSession, base_url: str, *, timeout: float) -> None:
        self._session = session
        self._base = base_url.rstrip("/")  # {WHATSAPP_API_BASE_URL}/{version}
        self._timeout = aiohttp.ClientTimeout(total=timeout, connect=timeout / 2)
        # a download may take long; what must not is any single read of it
        self._stream_timeout = aiohttp.ClientTimeout(total=None, connect=timeout / 2, sock_read=timeout)

    async def info(self, media_id: str, token: str, phone_number_id: str | None = None) -> MediaInfo:
        """What Meta says of ``media_id``; ``phone_number_id``: the number it came to (whose token this is)."""
        params = {"phone_number_id": phone_number_id} if phone_number_id else None
        try:
            async with self._session.get(f"{self._base}/{media_id}", headers=_bearer(token), params=params,
                                         timeout=self._timeout) as resp:
                raw, status = await resp.read(), resp.status
        except (TimeoutError, aiohttp.ClientError) as exc:  # a GET: asking again is harmless
            raise RetryableGraphError(f"media endpoint unreachable or silent: {exc!r}") from None
        body = answer_body(status, raw)
        if not isinstance(body, dict) or not isinstance(body.get("url"), str):
            raise RetryableGraphError(f"media endpoint answered {status} without a url", http_status=status)
        size = body.get("file_size")
        return MediaInfo(media_id, body["url"], body.get("mime_type") if isinstance(body.get("mime_type"), str)
                         else None, sha256_hex(body.get("sha256") if isinstance(body.get("sha256"), str) else None),
                         int(size) if isinstance(size, (int, str)) and str(size).isdigit() else None)

    @contextlib.asynccontextmanager
    async def download(self, url: str, token: str, limit: int) -> AsyncIterator[AsyncIterator[bytes]]:
        """The bytes at ``url`` in chunks of at most :data:`CHUNK_BYTES`; :class:`TooLarge` past ``limit``."""
        try:
            resp = await self._session.get(url, headers=_bearer(token), timeout=self._stream_timeout)
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise RetryableGraphError(f"the download did not start: {exc!r}") from None
        async with resp:
            if resp.status == 404:
                raise UrlExpired("the download URL answered 404 (expired)", http_status=404)
            if resp.status != 200:
                raise classify(resp.status, await _json_or_none(resp))
            if (resp.content_length or 0) > limit:
                raise TooLarge(f"{resp.content_length:,} bytes, above the limit of {limit:,}")
            yield _chunks(resp, limit)


    async def upload(self, phone_number_id: str, token: str, mime_type: str, filename: str,
                     chunks: AsyncIterable[bytes]) -> str:
        """Upload a file to the number's ``/media`` (streamed from ``chunks``); Meta's media id for a send.

        Never ambiguous: an upload whose answer was lost is only an unused file at Meta, so every
        transport failure is :class:`RetryableGraphError`."""
        form = aiohttp.FormData()
        form.add_field("messaging_product", "whatsapp")
        form.add_field("type", mime_type)
        form.add_field("file", aiohttp.payload.AsyncIterablePayload(chunks, content_type=mime_type),
                       filename=filename, content_type=mime_type)
        try:
            async with self._session.post(f"{self._base}/{phone_number_id}/media", data=form, headers=_bearer(token),
                                          timeout=self._stream_timeout) as resp:
                raw, status = await resp.read(), resp.status
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise RetryableGraphError(f"the upload broke off or got no answer: {exc!r}") from None
        body = answer_body(status, raw)
        if not isinstance(body, dict) or not isinstance(body.get("id"), str) or not body["id"]:
            raise RetryableGraphError(f"the upload answered {status} without a media id", http_status=status)
        return str(body["id"])


async def _json_or_none(resp: aiohttp.ClientResponse) -> object:
    try:
        raw = await resp.read()
        return orjson.loads(raw) if raw else None
    except (orjson.JSONDecodeError, TimeoutError, aiohttp.ClientError):
        return None


async def _chunks(resp: aiohttp.ClientResponse, limit: int) -> AsyncIterator[bytes]:
    seen = 0
    try:
        async for chunk in resp.content.iter_chunked(CHUNK_BYTES):
            seen += len(chunk)
            if seen > limit:
                raise TooLarge(f"more than {limit:,} bytes")
            yield chunk
    except (TimeoutError, aiohttp.ClientError) as exc:
        raise RetryableGraphError(f"the download broke off after {seen:,} bytes: {exc!r}") from None


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
