"""The files people send from the inbox: read from a multipart body, checked, kept in the media store.

:func:`receive` streams the parts of ``POST conversations/{id}/messages`` (``file``, ``caption``,
``idempotency_key``) to a temporary file, never holding the file in memory: its type is told by its
bytes (:func:`whatsapp.filetypes.sniff`; 415 ``UNSUPPORTED_MEDIA`` when WhatsApp does not take it)
and its size is held to Meta's limit for that type (:data:`whatsapp.media.MAX_BYTES`; 413
``TOO_LARGE`` as soon as it is passed, the rest is not read). :func:`keep` then puts it in the media
store under its SHA-256 (the same bytes twice are kept once). Errors are :class:`Refused`, which the
API answers as its JSON errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import tempfile
import urllib.parse
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import IO, Any

from aiohttp import BodyPartReader, MultipartReader, web

from wacrm.media import MediaStore
from wacrm.whatsapp import filetypes
from wacrm.whatsapp.graph import CAPTIONED
from wacrm.whatsapp.media import MAX_BYTES
from wacrm.whatsapp.model import Media, render

STORE = web.AppKey("inbox_media_store", MediaStore)
MAX_CAPTION = 1024  # Meta's limit for a media caption
MAX_FIELD_BYTES = 8 * 1024  # a text part (caption, idempotency_key): more is not a caption
CHUNK = 256 * 1024
_LARGEST = max(MAX_BYTES.values())
FIELDS = ("file", "caption", "idempotency_key")


class Refused(Exception):
    """The request cannot be sent: ``status`` and ``code`` for the API's error, ``error`` in words."""

    def __init__(self, status: int, code: str, error: str) -> None:
        super().__init__(error)
        self.status, self.code, self.error = status, code, error


@dataclass
class Received:
    """A file read from the body into ``path`` (a temporary file: :meth:`discard` it), with the form's fields."""

    path: str | None = None
    kind: filetypes.FileType | None = None
    sha256: str = ""
    size: int = 0
    filename: str | None = None  # as the sender named it
    fields: dict[str, str] = field(default_factory=dict)

    def media(self, caption: str | None) -> dict[str, Any]:
        """The intent's ``media`` (:attr:`topics.records.SendIntent.media`)."""
        assert self.kind is not None
        return {"type": self.kind.kind, "mime_type": self.kind.mime_type, "sha256": self.sha256, "size": self.size,
                "filename": filetypes.file_name(self.filename, self.kind), "caption": caption}

    def line(self, caption: str | None) -> str:
        """The reply's text in the thread, as a customer's media is shown: ``[image] caption``."""
        m = self.media(caption)
        return render(Media(m["type"], None, m["mime_type"], self.sha256, caption=caption,
                            filename=m["filename"] if m["type"] == "document" else None)) or f"[{m['type']}]"

    async def discard(self) -> None:
        if self.path is not None:
            with contextlib.suppress(OSError):
                await asyncio.to_thread(os.unlink, self.path)
            self.path = None


def caption_of(received: Received) -> str | None:
    """The caption, checked: at most :data:`MAX_CAPTION` characters, none for audio and stickers."""
    caption = received.fields.get("caption", "").strip() or None
    assert received.kind is not None
    if caption is None:
        return None
    if len(caption) > MAX_CAPTION:
        raise Refused(422, "INVALID", f"caption must be at most {MAX_CAPTION} characters")
    if received.kind.kind not in CAPTIONED:
        raise Refused(422, "INVALID", f"{received.kind.kind} is sent without a caption (WhatsApp shows none): "
                                      "send the words as a message of their own")
    return caption


async def receive(request: web.Request) -> Received:
    """Read the body's parts: exactly one ``file``, and the text fields; raises :class:`Refused`
    (the temporary file is removed then), 422 for a body that is not multipart/form-data."""
    out = Received()
    try:
        await _parts(await request.multipart(), out)
    except ValueError as exc:  # aiohttp's reader: no boundary, a broken or cut body
        await out.discard()
        raise Refused(422, "INVALID", f"the body is not valid multipart/form-data ({exc})") from None
    except BaseException:
        await out.discard()
        raise
    if out.path is None:
        raise Refused(422, "INVALID", "file is required (multipart/form-data with file, caption, idempotency_key)")
    return out


async def _parts(reader: MultipartReader, out: Received) -> None:
    async for part in reader:
        if not isinstance(part, BodyPartReader) or part.name not in FIELDS:
            name = getattr(part, "name", None)
            raise Refused(422, "INVALID", f"unknown part {name!r}: send file, caption and idempotency_key")
        if any(h in part.headers for h in ("Content-Transfer-Encoding", "Content-Encoding")):
            raise Refused(422, "INVALID", f"{part.name} must be sent as it is, not encoded")
        if part.name == "file":
            if out.path is not None:
                raise Refused(422, "INVALID", "one file per message")
            await _spool(part, out)
        elif part.name in out.fields:
            raise Refused(422, "INVALID", f"{part.name} is given twice")
        else:
            raw = await part.read_chunk(MAX_FIELD_BYTES + 1)
            if len(raw) > MAX_FIELD_BYTES:
                raise Refused(422, "INVALID", f"{part.name} is too long")
            await part.release()
            text = raw.decode("utf-8", "replace")
            if "\x00" in text:
                raise Refused(422, "INVALID", f"{part.name} must not contain NUL characters")
            out.fields[part.name] = text


async def _spool(part: BodyPartReader, out: Received) -> None:
    """The file part to a temporary file, hashed as it goes; its type told by its first bytes, its size
    held to the limit for that type."""
    # percent-decoded: browsers send a quote as %22 (the HTML form encoding), some clients escape every byte
    out.filename = urllib.parse.unquote(part.filename) if part.filename else None
    fd, out.path = await asyncio.to_thread(tempfile.mkstemp, prefix="wacrm-send-")
    file: IO[bytes] = os.fdopen(fd, "wb")
    sha, head, limit = hashlib.sha256(), bytearray(), _LARGEST
    try:
        while chunk := await part.read_chunk(CHUNK):
            if out.kind is None:
                head += chunk[:filetypes.HEAD_BYTES - len(head)]
                if len(head) >= filetypes.HEAD_BYTES:
                    limit = _checked(bytes(head), out)
            out.size += len(chunk)
            if out.size > limit:
                raise _too_large(out.kind, limit)
            sha.update(chunk)
            await asyncio.to_thread(file.write, chunk)
        if out.kind is None:
            limit = _checked(bytes(head), out)
            if out.size > limit:
                raise _too_large(out.kind, limit)
    finally:
        await asyncio.to_thread(file.close)
    out.sha256 = sha.hexdigest()


def _checked(head: bytes, out: Received) -> int:
    """Tell the file's type from its head (415 when WhatsApp does not take it); its size limit."""
    found = filetypes.sniff(head, out.filename)
    if isinstance(found, filetypes.Unsupported):
        raise Refused(415, "UNSUPPORTED_MEDIA", f"WhatsApp does not take this file: it is {found.what}. "
                                                "Send an image (JPEG, PNG), audio, a video (MP4, 3GPP) or a "
                                                "document (PDF, Office, text)")
    out.kind = found
    return MAX_BYTES[found.kind]


def _too_large(kind: filetypes.FileType | None, limit: int) -> Refused:
    what = kind.kind if kind is not None else "any file"
    return Refused(413, "TOO_LARGE", f"the file is larger than WhatsApp's limit of {_size(limit)} for {what}")


def _size(n: int) -> str:
    return f"{n // (1024 * 1024)} MB" if n >= 1024 * 1024 else f"{n // 1024} KB"


async def keep(store: MediaStore, received: Received) -> None:
    """Put the received file in the store under its SHA-256, unless it is there already."""
    assert received.path is not None
    if await store.exists(received.sha256):
        return
    async with store.writer(received.sha256) as writer:
        async for chunk in _read(received.path):
            await writer.write(chunk)


async def _read(path: str) -> AsyncIterator[bytes]:
    file = await asyncio.to_thread(open, path, "rb")
    try:
        while chunk := await asyncio.to_thread(file.read, CHUNK):
            yield chunk
    finally:
        await asyncio.to_thread(file.close)
