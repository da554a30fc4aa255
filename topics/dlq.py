"""``wacrm dlq``: read the dead letters of ``wa.dlq`` and send them back to the topic they came from.

A letter's id is ``PARTITION:OFFSET`` of its record in ``wa.dlq``. Its origin, reason, error, agent
and time are in its headers (:func:`topics.records.dead_letter_headers`); letters written before
those headers existed are read from their JSON value. A redrive produces the original record (its
exact bytes, key and headers, read back from the origin topic; the letter's copy of the value when
the original is gone) and records the letter's id in ``dlq_redrives`` in the same transaction, so
each letter is redriven at most once.

A sender's letter names a ledger row (its send intent's dedupe key), and the ledger, not the event,
decides what is sent: the row is ``failed``, so the event alone would be skipped. Its redrive queues
the row again instead (``requeue``, :func:`storage.ledger.redrive_ledger_row`, in the same transaction)
and the outbox sweep sends it; a row that is not ``failed`` any more is skipped, the letter not marked.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer

from wacrm.topics import DLQ, scan
from wacrm.topics.records import (
    DLQ_HEADER_AGENT,
    DLQ_HEADER_ERROR,
    DLQ_HEADER_OFFSET,
    DLQ_HEADER_PARTITION,
    DLQ_HEADER_REASON,
    DLQ_HEADER_TIME,
    DLQ_HEADER_TOPIC,
    agent_of,
)

# --- pure ---------------------------------------------------------------------------------------


def parse_id(text: str) -> tuple[int, int]:
    """``"0:17"`` → ``(0, 17)``; raises ValueError for anything else."""
    partition, sep, offset = text.partition(":")
    if not sep or not partition.isdigit() or not offset.isdigit():
        raise ValueError(f"a dead letter id is PARTITION:OFFSET of {DLQ} (e.g. 0:17), not {text!r}")
    return int(partition), int(offset)


@dataclass(frozen=True, slots=True)
class Letter:
    """One dead letter as ``wacrm dlq`` shows it."""

    partition: int
    offset: int
    at: float  # when it was dead-lettered, epoch seconds
    agent: str
    reason: str
    error: str
    origin_topic: str
    origin_partition: int
    origin_offset: int
    request_id: str | None
    value: str  # the original value as the letter kept it (UTF-8, possibly reduced)
    details: dict[str, Any]

    @property
    def id(self) -> str:
        return f"{self.partition}:{self.offset}"

    @property
    def origin(self) -> str:
        return f"{self.origin_topic}:{self.origin_partition}@{self.origin_offset}"

    @property
    def reduced(self) -> bool:
        return bool(self.details.get("reduced"))


def letter_of(rec: scan.BusRecord) -> Letter:
    """The letter a ``wa.dlq`` record holds: the headers first, the JSON value for what they lack."""
    headers = {name: value.decode("utf-8", "replace") for name, value in rec.headers}
    try:
        body = orjson.loads(rec.value)
        if not isinstance(body, dict):
            body = {}
    except orjson.JSONDecodeError:
        body = {}
    reason = headers.get(DLQ_HEADER_REASON) or str(body.get("reason") or "unreadable dead letter")

    def number(header: str, field: str) -> int:
        try:
            return int(headers.get(header) or body.get(field) or -1)
        except (TypeError, ValueError):
            return -1

    try:
        at = float(headers.get(DLQ_HEADER_TIME) or body.get("at") or rec.timestamp)
    except ValueError:
        at = rec.timestamp
    details = body.get("details")
    return Letter(rec.partition, rec.offset, at, headers.get(DLQ_HEADER_AGENT) or agent_of(reason), reason,
                  str(body.get("error") or headers.get(DLQ_HEADER_ERROR) or ""),
                  headers.get(DLQ_HEADER_TOPIC) or str(body.get("source_topic") or "?"),
                  number(DLQ_HEADER_PARTITION, "source_partition"), number(DLQ_HEADER_OFFSET, "source_offset"),
                  rec.request_id, str(body.get("value") or ""), details if isinstance(details, dict) else {})


@dataclass(frozen=True, slots=True)
class Filter:
    reason: str | None = None  # part of the reason, any case
    agent: str | None = None
    since: float | None = None  # epoch seconds, inclusive
    until: float | None = None

    def matches(self, letter: Letter) -> bool:
        return ((self.reason is None or self.reason.lower() in letter.reason.lower())
                and (self.agent is None or self.agent == letter.agent)
                and (self.since is None or letter.at >= self.since)
                and (self.until is None or letter.at <= self.until))


def ledger_key(letter: Letter) -> str | None:
    """The dedupe key of the ledger row a sender's letter is about; ``None`` for other agents' letters."""
    if letter.agent != "sender":
        return None
    key = letter.details.get("dedupe_key")
    if isinstance(key, str) and key:
        return key
    try:
        value = orjson.loads(letter.value)
    except orjson.JSONDecodeError:
        return None
    key = value.get("dedupe_key") if isinstance(value, dict) else None
    return key if isinstance(key, str) and key else None


# (connection, dedupe key) -> None when the ledger row is queued again, else why not
Requeue = Callable[[Any, str], Awaitable[str | None]]


def to_redrive(letters: Iterable[Letter], already: set[tuple[int, int]]) -> list[Letter]:
    """The letters not redriven before, oldest first."""
    return sorted((x for x in letters if (x.partition, x.offset) not in already), key=lambda x: (x.at, x.id))


# --- I/O ----------------------------------------------------------------------------------------

async def letters(client: dict[str, Any], which: Filter, timeout: float) -> list[Letter]:
    """Every letter of ``wa.dlq`` that ``which`` selects, oldest first."""
    found = [letter_of(rec) for rec in await scan.every(client, DLQ, timeout)]
    return sorted((x for x in found if which.matches(x)), key=lambda x: (x.at, x.id))


async def letter(client: dict[str, Any], letter_id: str, timeout: float) -> Letter | None:
    partition, offset = parse_id(letter_id)
    rec = await scan.at(client, DLQ, partition, offset, timeout)
    return None if rec is None else letter_of(rec)


async def redriven(conn: Any) -> set[tuple[int, int]]:
    return {(r["dlq_partition"], r["dlq_offset"]) for r in await conn.fetch(
        "SELECT dlq_partition, dlq_offset FROM dlq_redrives")}


@dataclass(frozen=True, slots=True)
class Redrive:
    letter: Letter
    outcome: str  # redriven | would redrive | skipped: why


async def redrive(client: dict[str, Any], conn: Any, which: Filter, dry_run: bool, timeout: float,
                  out: Callable[[Redrive], None] = lambda r: None, requeue: Requeue | None = None) -> list[Redrive]:
    """Send the selected letters not redriven before back to their origin topic (a dry run only says which);
    with ``requeue``, a sender's letter queues its ledger row again instead (see the module docstring)."""
    pending = to_redrive(await letters(client, which, timeout), await redriven(conn))
    done: list[Redrive] = []
    producer = None if dry_run else AIOKafkaProducer(**client)
    if producer is not None:
        await producer.start()
    try:
        for x in pending:
            key = ledger_key(x) if requeue is not None else None
            original = await scan.at(client, x.origin_topic, x.origin_partition, x.origin_offset, timeout) \
                if x.origin_partition >= 0 and key is None else None
            if key is not None and producer is None:
                result = Redrive(x, "would redrive")
            elif key is not None:
                assert requeue is not None
                result = await _requeue_one(conn, x, key, requeue)
            elif original is None and x.reduced:
                result = Redrive(x, "skipped: the original is gone and the letter kept only its start")
            elif producer is None:
                result = Redrive(x, "would redrive")
            else:
                result = await _redrive_one(conn, producer, x, original)
            out(result)
            done.append(result)
    finally:
        if producer is not None:
            await producer.stop()
    return done


async def _claim(conn: Any, x: Letter) -> bool:
    """Mark the letter redriven (in the caller's transaction); False when it was already."""
    return bool(await conn.fetchval(
        "INSERT INTO dlq_redrives (dlq_partition, dlq_offset, target_topic, reason) VALUES ($1, $2, $3, $4) "
        "ON CONFLICT DO NOTHING RETURNING true", x.partition, x.offset, x.origin_topic, x.reason))


async def _redrive_one(conn: Any, producer: AIOKafkaProducer, x: Letter, original: scan.BusRecord | None) -> Redrive:
    async with conn.transaction():
        if not await _claim(conn, x):
            return Redrive(x, "skipped: redriven meanwhile")
        if original is not None:
            await producer.send_and_wait(x.origin_topic, original.value, key=original.key,
                                         partition=original.partition, headers=list(original.headers))
        else:
            await producer.send_and_wait(x.origin_topic, x.value.encode(), partition=max(0, x.origin_partition))
    return Redrive(x, "redriven")


class _NotRequeued(Exception):
    """Rolls back the letter's mark: its ledger row was not queued again."""


async def _requeue_one(conn: Any, x: Letter, key: str, requeue: Requeue) -> Redrive:
    try:
        async with conn.transaction():
            if not await _claim(conn, x):
                return Redrive(x, "skipped: redriven meanwhile")
            why = await requeue(conn, key)
            if why is not None:
                raise _NotRequeued(why)
    except _NotRequeued as exc:
        return Redrive(x, f"skipped: {exc}")
    return Redrive(x, "redriven")
