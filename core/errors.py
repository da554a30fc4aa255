"""What happens next when handling an event fails: one tree, one :func:`classify`.

Every failure maps to one of four next steps (:class:`Next`)::

    RETRY        retry the same event in place, with backoff, for as long as the fault lasts;
                 never skip it (database or broker down, failover, timeouts, races, deadlocks)
    DEAD_LETTER  the event can never succeed: dead-letter it with the reason and go on
                 (malformed records, constraint violations, records too large, bugs)
    AMBIGUOUS    an effect outside our walls may or may not have happened (a Graph API call
                 that timed out after the request went out): never repeat it blindly
    STALE        the event no longer applies (a person took over, a newer attempt exists):
                 drop it with a reason

Our own exceptions carry their next step (``Transient``, ``Poison``, ``Ambiguous``,
``Stale``). Other errors are classified by what they say about themselves, not by a
list of types: aiokafka's ``retriable`` flag (also inside faust's ``ProducerSendError``,
which wraps it), PostgreSQL's SQLSTATE class for asyncpg errors, and an error's own
``retryable``/``ambiguous`` flags, duck-typed so that this module imports no other layer
(:mod:`whatsapp.graph`'s errors, the media store's, ``topics.records.RecordError``).
The agents and the webhook's publisher route their failures through :func:`classify`.
"""

from __future__ import annotations

import asyncio
import enum

from aiokafka.errors import KafkaError, KafkaTimeoutError

from wacrm.core.schema import SCHEMA_BEHIND_SQLSTATES


class Next(enum.Enum):
    RETRY = "retry"
    DEAD_LETTER = "dead_letter"
    AMBIGUOUS = "ambiguous"
    STALE = "stale"


class Transient(Exception):
    """Worth another try in place; what failed will likely work later."""


class Raced(Transient):
    """Another worker did the same thing meanwhile; a retry sees what it did."""


class Poison(Exception):
    """This event cannot be processed, now or later."""


class Ambiguous(Exception):
    """An outside effect may or may not have happened; repeating it could do it twice."""


class Stale(Exception):
    """The event no longer applies; drop it with this reason."""


# SQLSTATE classes and codes that mean "the database is unavailable or busy for now".
_RETRY_SQLSTATE_CLASSES = ("08", "53", "57P", "58")  # connection, resources, shutdown/crash, system error
_RETRY_SQLSTATES = frozenset({
    "25006",  # read_only_sql_transaction: a failover left us on a replica for a moment
    "40001",  # serialization_failure
    "40P01",  # deadlock_detected
    "55P03",  # lock_not_available
    "57014",  # query_canceled (statement timeout)
    # the schema is behind the code: `wacrm migrate` fixes it; dead-lettering would drain every event meanwhile
    *SCHEMA_BEHIND_SQLSTATES,
})
UNIQUE_VIOLATION = "23505"  # dead-lettered by default; a caller that knows it raced says so (Raced)
_RETRY_CONNECTION_ERRORS = (OSError, ConnectionError, asyncio.TimeoutError, TimeoutError, KafkaTimeoutError)


def sqlstate(exc: BaseException) -> str | None:
    state = getattr(exc, "sqlstate", None)
    return state if isinstance(state, str) else None


def classify(exc: BaseException) -> Next:
    """The next step after ``exc``; anything not known to be temporary is dead-lettered."""
    known = _known(exc)
    return Next.DEAD_LETTER if known is None else known


def expected(exc: BaseException) -> bool:
    """Whether ``exc`` says what it is (ours, a library's retriable flag, an SQLSTATE, a Graph API
    error); ``False`` means a bug: dead-lettered by default, and worth a traceback in the log."""
    return _known(exc) is not None


def _known(exc: BaseException) -> Next | None:
    if isinstance(exc, Transient):
        return Next.RETRY
    if isinstance(exc, Poison):
        return Next.DEAD_LETTER
    if isinstance(exc, Ambiguous):
        return Next.AMBIGUOUS
    if isinstance(exc, Stale):
        return Next.STALE
    next_of_graph = _graph(exc)
    if next_of_graph is not None:
        return next_of_graph
    state = sqlstate(exc)
    if state is not None:
        if state in _RETRY_SQLSTATES or state.startswith(_RETRY_SQLSTATE_CLASSES):
            return Next.RETRY
        return Next.DEAD_LETTER
    if isinstance(exc, _RETRY_CONNECTION_ERRORS):
        return Next.RETRY
    if isinstance(exc, KafkaError):
        return Next.RETRY if exc.retriable else Next.DEAD_LETTER
    cause = exc.__cause__
    if cause is not None and cause is not exc:  # faust's ProducerSendError and other wrappers
        return _known(cause)
    if _is_asyncpg_connection_gone(exc):
        return Next.RETRY
    return None


def _graph(exc: BaseException) -> Next | None:
    """Graph API errors say it themselves (:mod:`whatsapp.graph`); duck-typed to keep the layers apart."""
    if getattr(exc, "ambiguous", False) is True:
        return Next.AMBIGUOUS
    retryable = getattr(exc, "retryable", None)
    if isinstance(retryable, bool):
        return Next.RETRY if retryable else Next.DEAD_LETTER
    return None


def _is_asyncpg_connection_gone(exc: BaseException) -> bool:
    # asyncpg raises a bare InterfaceError when a connection closed under an operation
    # (a database restart); other InterfaceErrors are bugs. When the server dies mid-operation
    # a pooled connection can also be left in the middle of its protocol ("cannot switch to
    # state N; another operation is in progress", an InternalClientError; seen in the fault
    # suite's postgres_stop and postgres_crash): the retry runs on another connection.
    name, text = type(exc).__name__, str(exc).lower()
    if name in {"ConnectionDoesNotExistError", "InterfaceError"}:
        return "closed" in text
    return name == "InternalClientError" and "another operation" in text

