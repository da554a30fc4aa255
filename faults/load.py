"""Signed webhook load at a rate, retried as Meta retries: the fault suite's customers.

Open loop: body *i* is due at ``start + i / rate`` whatever happened to the earlier ones,
over at most ``connections`` requests in flight. A body answered 503 (the broker did not
take it in time) or not answered at all (a refused or dropped connection) is posted again
after a short backoff, as Meta retries, until the generator is told to give up; a message
counts as *posted* once, when a 200 acknowledged it. Any other answer is recorded and not
retried. Every message is its own conversation (a customer of its own), or, with
``burst > 1``, a customer writes ``burst`` messages ``burst_gap_s`` apart: a burst that must
get one reply. With ``numbers`` (``(phone_number_id, display number)`` pairs) the customers
write to those business numbers in turn; else to the default one. Texts avoid handover and
opt-out words, so each unit gets one automatic reply.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from wacrm.whatsapp import signature, simulate

TEXTS = ("hi", "hello", "price", "is this available", "can I order two", "what time do you open",
         "thanks", "do you ship to Berlin?", "I want to book a table for 4 tonight", "ok",
         "where is my order #48213", "send me the catalogue please")
RETRY_STATUSES = frozenset({503, -1})  # -1: no answer (connection refused, dropped, timed out)
HOME = ("200000000000001", "15550001111")  # the default business number (WHATSAPP_PHONE_NUMBER_ID) and its display


@dataclass
class LoadResult:
    """What the customers saw. ``units``: per conversation, the message ids acknowledged with a 200
    (each unit needs exactly one reply)."""

    units: list[tuple[str, ...]] = field(default_factory=list)
    codes: Counter[int] = field(default_factory=Counter)  # every answer, retries included
    retries: int = 0
    gave_up: int = 0  # messages never acknowledged before the generator gave up

    @property
    def posted(self) -> int:
        return sum(len(u) for u in self.units)

    @property
    def server_errors(self) -> int:
        """5xx answers other than 503 (the one Meta retries): a bug in the webhook."""
        return sum(n for code, n in self.codes.items() if code >= 500 and code != 503)


class Load:
    """Customers posting to ``url`` at ``rate`` messages/s; ``await run(seconds)`` then
    ``await finish(retry_for)``. ``tag`` keeps message ids and phone numbers of runs apart."""

    def __init__(self, url: str, secret: str, rate: float, *, tag: str, burst: int = 1, burst_gap_s: float = 0.3,
                 connections: int = 48, timeout_s: float = 15.0, seed: int = 1,
                 numbers: Sequence[tuple[str, str]] = (), media_every: int = 0,
                 fake_meta: str | None = None) -> None:
        self.url, self.secret, self.rate, self.tag = url, secret, rate, tag
        self.numbers = list(numbers)
        # every media_every-th customer sends an image with the text as its caption, its file registered
        # with fake-meta first (as Meta has the file before the webhook names it)
        self.media_every, self.fake_meta = media_every, fake_meta
        self.media_ids: list[str] = []
        self.burst, self.burst_gap_s = burst, burst_gap_s
        self.timeout_s = timeout_s
        self.result = LoadResult()
        self._rng = random.Random(seed)
        self._slots = asyncio.Semaphore(connections)
        self._tasks: set[asyncio.Task[None]] = set()
        self._give_up_at = float("inf")
        self._customers = 0
        self._session: aiohttp.ClientSession | None = None
        self._failure: BaseException | None = None  # a customer task that crashed: a generator bug

    async def run(self, seconds: float) -> None:
        """Post for ``seconds`` (``rate × seconds`` messages); returns when the last one is due,
        with retries still going on."""
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout_s),
                                              connector=aiohttp.TCPConnector(limit=0))
        conversations = max(1, round(self.rate * seconds / self.burst))
        interval = self.burst / self.rate
        start = time.monotonic()
        for i in range(conversations):
            delay = start + i * interval - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            self._spawn(self._conversation())

    async def finish(self, retry_for: float) -> LoadResult:
        """Keep retrying what is not acknowledged yet for at most ``retry_for`` seconds, then give up."""
        self._give_up_at = time.monotonic() + retry_for
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=retry_for + self.timeout_s + 5)
        await self.close()
        if self._failure is not None:
            raise RuntimeError(f"the load generator failed: {self._failure!r}") from self._failure
        return self.result

    async def close(self) -> None:
        """Stop every post still going on (idempotent)."""
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=10)
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self._failure = task.exception()

    async def _conversation(self) -> None:
        self._customers += 1
        n = self._customers  # the counter moves on while this burst sleeps
        wa_id = f"4917{self.tag_number()}{n:06d}"  # a valid German mobile number
        acked: list[str] = []
        for k in range(self.burst):
            if k:
                await asyncio.sleep(self.burst_gap_s)
            mid = f"wamid.FAULTS_{self.tag}_{n:07d}_{k}"
            number, display = self.numbers[n % len(self.numbers)] if self.numbers else HOME
            built = simulate.text_body(text=self._rng.choice(TEXTS), wa_id=wa_id, name=f"Customer {n}",
                                       message_id=mid, phone_number_id=number, display_phone_number=display)
            if self.media_every and n % self.media_every == 0:
                await self._as_image(built, f"9{self.tag_number()}{n:07d}{k}")
            body = simulate.dumps(built)
            if await self._post_until_acked(body):
                acked.append(mid)
            else:
                self.result.gave_up += 1
        if acked:
            self.result.units.append(tuple(acked))

    async def _as_image(self, body: dict[str, Any], media_id: str) -> None:
        """Make the body's text message an image captioned with the text, its file registered with fake-meta."""
        assert self._session is not None and self.fake_meta is not None
        data = b"\xff\xd8\xff\xe0" + self._rng.randbytes(8_000) + b"\xff\xd9"
        async with self._session.post(f"{self.fake_meta}/__media", data=data,
                                      params={"id": media_id, "mime_type": "image/jpeg"}) as r:
            r.raise_for_status()
            file = await r.json()
        message = body["entry"][0]["changes"][0]["value"]["messages"][0]
        caption = message.pop("text")["body"]
        message.update(type="image", image={"id": media_id, "mime_type": "image/jpeg", "sha256": file["sha256_b64"],
                                            "caption": caption})
        self.media_ids.append(media_id)

    def tag_number(self) -> str:
        """Two digits from the tag: a run's phone numbers differ from another run's."""
        return f"{sum(map(ord, self.tag)) % 100:02d}"

    async def _post_until_acked(self, body: bytes) -> bool:
        headers = {"Content-Type": "application/json", "X-Hub-Signature-256": signature.sign(self.secret, body)}
        backoff = 0.25
        while True:
            status = await self._post(body, headers)
            self.result.codes[status] += 1
            if status == 200:
                return True
            if status not in RETRY_STATUSES or time.monotonic() > self._give_up_at:
                return False
            self.result.retries += 1
            await asyncio.sleep(backoff * (0.5 + self._rng.random()))
            backoff = min(backoff * 2, 4.0)

    async def _post(self, body: bytes, headers: dict[str, str]) -> int:
        assert self._session is not None
        async with self._slots:
            try:
                async with self._session.post(self.url, data=body, headers=headers) as r:
                    await r.read()
                    return r.status
            except (TimeoutError, aiohttp.ClientError, OSError):
                return -1
