"""Build realistic inbound webhook bodies, as Meta sends them (``wacrm simulate``, tests, benchmarks)."""

from __future__ import annotations

import itertools
import os
import time
from typing import Any

import orjson

_counter = itertools.count(1)


def new_message_id() -> str:
    return f"wamid.SIM_{os.getpid()}_{int(time.time() * 1000)}_{next(_counter)}"


def text_body(*, text: str, wa_id: str | None = "15550002222", name: str = "Alice Test",
              phone_number_id: str = "200000000000001", display_phone_number: str = "15550001111",
              message_id: str | None = None, timestamp: int | None = None, user_id: str | None = None,
              waba_id: str = "100000000000001") -> dict[str, Any]:
    """A ``messages`` webhook with one text message from one customer."""
    contact: dict[str, Any] = {"profile": {"name": name}}
    message: dict[str, Any] = {"id": message_id or new_message_id(),
                               "timestamp": str(timestamp or int(time.time())), "type": "text",
                               "text": {"body": text}}
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
