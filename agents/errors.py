"""What happens next when handling an event fails.

    Transient  retry the same event in place, with backoff; never skip it
    Poison     the event can never succeed: dead-letter it with the reason and go on
"""

from __future__ import annotations

import asyncio

import asyncpg
from aiokafka.errors import KafkaError

from topics.records import RecordError


class Poison(Exception):
    """This event cannot be processed, now or later."""


class Raced(Exception):
    """Another worker did the same thing meanwhile; a retry sees what it did."""


# Database and broker outages, timeouts and races between workers: worth another try.
TRANSIENT: tuple[type[BaseException], ...] = (
    OSError,
    asyncio.TimeoutError,
    ConnectionError,
    KafkaError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    asyncpg.SerializationError,
    asyncpg.DeadlockDetectedError,
    asyncpg.UniqueViolationError,  # a concurrent insert by another worker; the retry finds its row
    asyncpg.exceptions.AdminShutdownError,
    Raced,
)

POISON: tuple[type[BaseException], ...] = (Poison, RecordError)
