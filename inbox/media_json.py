"""A message's ``media`` object in the thread (``GET conversations/{id}``): the columns it is read from
(the ``media`` row joined as ``md``) and its JSON."""

from __future__ import annotations

from typing import Any

import asyncpg

from wacrm.whatsapp.media import sha256_hex

COLUMNS = ("md.id media_row_id, md.type media_type, md.mime_type media_mime_type, md.size media_size, "
           "md.filename media_filename, md.caption media_caption, md.sha256 media_sha256, md.state media_state, "
           "md.error media_error")
#: ``downloading`` is still pending to a reader.
_SHOWN = {"downloading": "pending"}


def url(media_id: int) -> str:
    return f"/api/v1/media/{media_id}"


def of(m: asyncpg.Record) -> dict[str, Any] | None:
    """The ``media`` object of a message row (None when the message carries no media)."""
    if m["media_row_id"] is None:
        return None
    state = _SHOWN.get(m["media_state"], m["media_state"])
    error = m["media_error"] if state in ("failed", "too_large") else None
    return {"id": m["media_row_id"], "type": m["media_type"], "mime_type": m["media_mime_type"],
            "size": m["media_size"], "filename": m["media_filename"], "caption": m["media_caption"],
            "sha256": sha256_hex(m["media_sha256"]), "state": state,
            "error": error.get("error") if isinstance(error, dict) else None, "url": url(m["media_row_id"])}
