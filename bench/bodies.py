"""Realistic webhook bodies for the load generator, shaped as Meta sends them.

A seeded mix: most bodies carry one text message; a share carries a batch (Meta puts up to
1000 updates in one body: here 2–5 messages from different customers in one ``value``); a
share carries delivery statuses of replies we sent. Customers are drawn from a large pool
so that many conversations run in parallel. Every message id is unique within a run
(``wamid.BENCH_{tag}_{n}``); the tag keeps runs apart.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson

from wacrm.whatsapp import signature

WABA_ID = "100000000000001"
BUSINESS_NUMBERS = (("200000000000001", "15550001111"), ("200000000000002", "15550001112"))
_WORDS = ("hi", "hello", "price", "is this available", "can I order two", "what time do you open",
          "thanks", "do you ship to Berlin?", "I want to book a table for 4 tonight", "ok", "👍",
          "where is my order #48213", "can I change my order", "send me the catalogue please")
# No handover or opt-out words: every message of the load must get exactly one automatic reply, so that
# a missing reply is a lost message.


@dataclass(frozen=True, slots=True)
class Mix:
    """What the bodies look like: shares are of bodies, not of messages."""

    customers: int = 5000
    status_share: float = 0.10
    batch_share: float = 0.10
    batch_min: int = 2
    batch_max: int = 5


@dataclass(frozen=True, slots=True)
class Body:
    raw: bytes
    message_ids: tuple[str, ...]  # the inbound messages in it (each should get one reply)
    statuses: int


class BodyFactory:
    """Produces :class:`Body` values; deterministic for a given seed and tag."""

    def __init__(self, tag: str, mix: Mix = Mix(), seed: int = 1) -> None:
        self.tag = tag
        self.mix = mix
        self._rng = random.Random(seed)
        self._next_id = 0
        self._next_status = 0

    def _message_id(self) -> str:
        self._next_id += 1
        return f"wamid.BENCH_{self.tag}_{self._next_id:09d}"

    def _customer(self) -> tuple[str, str]:
        n = self._rng.randrange(self.mix.customers)
        return f"4917{n:08d}", f"Customer {n}"

    def _value(self, number: tuple[str, str]) -> dict[str, Any]:
        return {"messaging_product": "whatsapp",
                "metadata": {"display_phone_number": number[1], "phone_number_id": number[0]}}

    def messages_body(self, count: int, now: int) -> Body:
        number = self._rng.choice(BUSINESS_NUMBERS)
        value = self._value(number)
        contacts: dict[str, dict[str, Any]] = {}
        messages: list[dict[str, Any]] = []
        for _ in range(count):
            wa_id, name = self._customer()
            contacts[wa_id] = {"profile": {"name": name}, "wa_id": wa_id}
            messages.append({"from": wa_id, "id": self._message_id(), "timestamp": str(now), "type": "text",
                             "text": {"body": self._rng.choice(_WORDS)}})
        value["contacts"] = list(contacts.values())
        value["messages"] = messages
        raw = orjson.dumps(_envelope(value))
        return Body(raw, tuple(m["id"] for m in messages), 0)

    def statuses_body(self, now: int) -> Body:
        number = self._rng.choice(BUSINESS_NUMBERS)
        value = self._value(number)
        statuses = []
        for state in self._rng.choice((("sent",), ("delivered",), ("sent", "delivered"), ("read",))):
            self._next_status += 1
            wa_id, _ = self._customer()
            statuses.append({"id": f"wamid.FAKE_OUT_{self._next_status:08d}", "status": state,
                             "timestamp": str(now), "recipient_id": wa_id,
                             "pricing": {"billable": False, "pricing_model": "PMP",
                                         "type": "free_customer_service", "category": "service"}})
        value["statuses"] = statuses
        return Body(orjson.dumps(_envelope(value)), (), len(statuses))

    def next(self, now: int | None = None) -> Body:
        now = now if now is not None else int(time.time())
        draw = self._rng.random()
        if draw < self.mix.status_share:
            return self.statuses_body(now)
        if draw < self.mix.status_share + self.mix.batch_share:
            return self.messages_body(self._rng.randint(self.mix.batch_min, self.mix.batch_max), now)
        return self.messages_body(1, now)

    def __iter__(self) -> Iterator[Body]:
        while True:
            yield self.next()


def _envelope(value: dict[str, Any]) -> dict[str, Any]:
    return {"object": "whatsapp_business_account",
            "entry": [{"id": WABA_ID, "changes": [{"value": value, "field": "messages"}]}]}


def http_request(body: bytes, secret: str, host: str, path: str = "/webhooks/whatsapp") -> bytes:
    """The exact bytes of a signed HTTP/1.1 keep-alive POST of ``body``."""
    head = (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"X-Hub-Signature-256: {signature.sign(secret, body)}\r\nContent-Length: {len(body)}\r\n\r\n")
    return head.encode() + body
