"""classify: the next step after a failure, from aiokafka's retriable flag and PostgreSQL's SQLSTATE."""

from __future__ import annotations

import asyncpg
import pytest
from aiokafka.errors import (
    KafkaConnectionError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    NotLeaderForPartitionError,
    TopicAuthorizationFailedError,
)
from faust.exceptions import ProducerSendError

from wacrm.core.errors import Ambiguous, Next, Poison, Raced, Stale, classify
from wacrm.topics.records import RecordError


def _wrapped(inner: BaseException) -> ProducerSendError:
    try:
        raise ProducerSendError(f"Error while sending: {inner!r}") from inner
    except ProducerSendError as exc:
        return exc


@pytest.mark.parametrize("exc, expected", [
    (Raced("x"), Next.RETRY),
    (Poison("x"), Next.DEAD_LETTER),
    (RecordError("x"), Next.DEAD_LETTER),
    (Ambiguous("x"), Next.AMBIGUOUS),
    (Stale("x"), Next.STALE),
    (KafkaConnectionError(), Next.RETRY),
    (NotLeaderForPartitionError(), Next.RETRY),
    (KafkaTimeoutError(), Next.RETRY),  # aiokafka marks it not retriable; a paused broker raises it
    (MessageSizeTooLargeError(), Next.DEAD_LETTER),
    (TopicAuthorizationFailedError(), Next.DEAD_LETTER),
    (_wrapped(MessageSizeTooLargeError()), Next.DEAD_LETTER),
    (_wrapped(KafkaConnectionError()), Next.RETRY),
    (asyncpg.exceptions.AdminShutdownError("x"), Next.RETRY),  # 57P01
    (asyncpg.exceptions.CrashShutdownError("x"), Next.RETRY),  # 57P02
    (asyncpg.exceptions.ReadOnlySQLTransactionError("x"), Next.RETRY),  # 25006: a failover
    (asyncpg.exceptions.QueryCanceledError("x"), Next.RETRY),  # 57014
    (asyncpg.exceptions.DiskFullError("x"), Next.RETRY),  # 53100
    (asyncpg.exceptions.TooManyConnectionsError("x"), Next.RETRY),  # 53300
    (asyncpg.exceptions.SerializationError("x"), Next.RETRY),
    (asyncpg.exceptions.DeadlockDetectedError("x"), Next.RETRY),
    (asyncpg.exceptions.ConnectionDoesNotExistError("x"), Next.RETRY),  # 08003
    (asyncpg.exceptions.UndefinedColumnError("x"), Next.RETRY),  # schema behind code: migrate fixes it
    (asyncpg.exceptions.UniqueViolationError("x"), Next.DEAD_LETTER),  # permanent: must not stall forever
    (asyncpg.exceptions.CheckViolationError("x"), Next.DEAD_LETTER),
    (asyncpg.exceptions.InvalidTextRepresentationError("x"), Next.DEAD_LETTER),
    (asyncpg.InterfaceError("connection is closed"), Next.RETRY),
    (asyncpg.InterfaceError("cannot perform operation: another operation is in progress"), Next.DEAD_LETTER),
    (asyncpg.InternalClientError("cannot switch to state 15; another operation (2) is in progress"), Next.RETRY),
    (ConnectionResetError(), Next.RETRY),
    (TimeoutError(), Next.RETRY),
    (KeyError("bug"), Next.DEAD_LETTER),
    (ZeroDivisionError(), Next.DEAD_LETTER),
])
def test_classify_says_what_happens_next(exc: BaseException, expected: Next) -> None:
    assert classify(exc) is expected
