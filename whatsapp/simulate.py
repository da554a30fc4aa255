"""Build realistic inbound webhook bodies, as Meta sends them (``wacrm simulate``, tests, benchmarks)."""

from __future__ import annotations

import base64
import hashlib
import itertools
import os
import secrets
import time
from typing import Any, Literal

import orjson

_counter = itertools.count(1)

MediaKind = Literal["image", "document"]


def new_message_id() -> str:
    return f"wamid.SIM_{os.getpid()}_{int(time.time() * 1000)}_{next(_counter)}"


def new_media_id() -> str:
    """A media id of Meta's shape (digits)."""
    return "3" + "".join(secrets.choice("0123456789") for _ in range(14))


def media_part(kind: MediaKind, data: bytes, mime_type: str, *, caption: str | None = None,
               filename: str | None = None, media_id: str | None = None) -> dict[str, Any]:
    """The ``image`` or ``document`` object of an inbound message for the file ``data``: an ``id``
    for the media, its ``mime_type``, its ``sha256`` (base64 of the digest, as Meta sends it), the
    caption, and a document's ``filename``."""
    part: dict[str, Any] = {"mime_type": mime_type, "sha256": base64.b64encode(hashlib.sha256(data).digest()).decode(),
                            "id": media_id or new_media_id()}
    if caption:
        part["caption"] = caption
    if kind == "document" and filename:
        part["filename"] = filename
    return part


def text_body(*, text: str, wa_id: str | None = "15550002222", name: str = "Alice Test",
              phone_number_id: str = "200000000000001", display_phone_number: str = "15550001111",
              message_id: str | None = None, timestamp: int | None = None, user_id: str | None = None,
              waba_id: str = "100000000000001") -> dict[str, Any]:
    """A ``messages`` webhook with one text message from one customer."""
    return message_body("text", {"body": text}, wa_id=wa_id, name=name, phone_number_id=phone_number_id,
                        display_phone_number=display_phone_number, message_id=message_id, timestamp=timestamp,
                        user_id=user_id, waba_id=waba_id)


def message_body(kind: str, part: dict[str, Any], *, wa_id: str | None = "15550002222", name: str = "Alice Test",
                 phone_number_id: str = "200000000000001", display_phone_number: str = "15550001111",
                 message_id: str | None = None, timestamp: int | None = None, user_id: str | None = None,
                 waba_id: str = "100000000000001") -> dict[str, Any]:
    """A ``messages`` webhook with one message of type ``kind`` (its object ``part``) from one customer."""
    contact: dict[str, Any] = {"profile": {"name": name}}
    message: dict[str, Any] = {"id": message_id or new_message_id(),
                               "timestamp": str(timestamp or int(time.time())), "type": kind, kind: part}
    if wa_id:
        contact["wa_id"] = wa_id
        message["from"] = wa_id
    if user_id:
        contact["user_id"] = user_id
        message["from_user_id"] = user_id
    return {
        "object": "whatsapp_business_account",
        "entry": [{"id": waba_id, "changes": [{"field": "messages", "value": {
            "messaging_product": "whatsapp",
            "metadata": {"display_phone_number": display_phone_number, "phone_number_id": phone_number_id},
            "contacts": [contact],
            "messages": [message],
        }}]}],
    }


def dumps(body: dict[str, Any]) -> bytes:
    return orjson.dumps(body)
