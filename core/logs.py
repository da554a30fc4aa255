"""Logging for every wacrm process: the request id on each line, text or JSON, repeats summarised.

- :data:`REQUEST_ID` is the request id of the webhook call the code is working for (a
  contextvar: each asyncio task has its own). :func:`request_scope` sets it for a block;
  :class:`RequestIdFilter` copies it onto every record as ``record.request_id`` (``-`` when
  there is none), unless the call passed its own (``extra={"request_id": ...}``).
- ``LOG_FORMAT=text`` (default): ``time level logger: message request_id=…``;
  ``LOG_FORMAT=json``: one JSON object a line with ``time``, ``level``, ``logger``,
  ``message``, ``request_id`` and any ``extra`` fields (``exc_info`` as ``exception``).
- :class:`RepeatSummary` lets the first of identical lines through, then, while they keep
  coming, one line per interval: ``… (repeated N times in the last 60 s)``. A broker outage
  otherwise writes thousands of identical lines from aiokafka.

Contract for callers: never log phone numbers, message text or tokens; log ids (wamid,
conversation id, ledger row, request id) instead.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime as dt
import io
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import orjson

REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("wacrm_request_id", default=None)
NO_REQUEST = "-"
FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s request_id=%(request_id)s"
REPEAT_INTERVAL_S = 60.0

# The attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime",
                                                                                  "request_id"}


@contextlib.contextmanager
def request_scope(request_id: str | None) -> Iterator[None]:
    """Within the block, log lines (and whatever reads :data:`REQUEST_ID`) carry ``request_id``."""
    token = REQUEST_ID.set(request_id)
    try:
        yield
    finally:
        REQUEST_ID.reset(token)


class RequestIdFilter(logging.Filter):
    """Adds ``request_id`` to every record: the one passed in ``extra``, else the current scope's."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            record.request_id = REQUEST_ID.get() or NO_REQUEST
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message, request_id, extras."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname, "logger": record.name, "message": record.getMessage(),
            "request_id": getattr(record, "request_id", None) or NO_REQUEST,
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(out, default=repr).decode()


class RepeatSummary(logging.Filter):
    """Summarise identical lines (same logger, level and message): the first goes through; later ones
    are counted and, once ``interval_s`` has passed since the last line written for them, one line
    says how many there were. A line that stops repeating leaves no summary until it comes again
    (nothing runs in the background)."""

    def __init__(self, interval_s: float = REPEAT_INTERVAL_S, clock: Callable[[], float] = time.monotonic,
                 max_tracked: int = 1000) -> None:
        super().__init__()
        self._interval = interval_s
        self._clock = clock
        self._max = max_tracked
        # (logger, level, message) -> (when its last line was written, repeats swallowed since)
        self._seen: dict[tuple[str, int, str], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, record.levelno, record.getMessage())
        now = self._clock()
        seen = self._seen.get(key)
        if seen is None or (now - seen[0] >= self._interval and seen[1] == 0):
            if seen is None and len(self._seen) >= self._max:
                self._forget(now)
            self._seen[key] = (now, 0)
            return True
        written, swallowed = seen
        swallowed += 1
        if now - written < self._interval:
            self._seen[key] = (written, swallowed)
            return False
        record.msg = f"{key[2]} (repeated {swallowed} times in the last {self._interval:g} s)"
        record.args = None
        record.repeated = swallowed
        self._seen[key] = (now, 0)
        return True

    def _forget(self, now: float) -> None:
        """Keep the table bounded: drop lines not written for an interval, else the oldest half."""
        stale = [k for k, (t, _) in self._seen.items() if now - t >= self._interval]
        for k in stale or sorted(self._seen, key=lambda k: self._seen[k][0])[: len(self._seen) // 2]:
            del self._seen[k]


def formatter(fmt: str) -> logging.Formatter:
    """The formatter of ``LOG_FORMAT`` (``text`` or ``json``)."""
    if fmt == "json":
        return JsonFormatter()
    return logging.Formatter(TEXT_FORMAT)


FLUSH_EVERY_S = 0.2


class BatchedHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A stderr handler for the long-running processes (``serve``, ``worker``): lines are written to a
    buffer and flushed every :data:`FLUSH_EVERY_S`, at once for a WARNING or worse, and at exit.

    One write to the log a line (stderr is line-buffered) was a system call per webhook call and
    several per message: at thousands a second, a measurable share of the CPU. What a SIGKILL loses
    is at most the last fraction of a second of INFO lines; warnings and errors are never held.
    """

    def __init__(self) -> None:
        raw = io.FileIO(os.dup(sys.stderr.fileno()), "w")
        super().__init__(io.TextIOWrapper(io.BufferedWriter(raw, 1 << 16), encoding="utf-8",
                                          errors="backslashreplace"))
        self._interval = FLUSH_EVERY_S  # read when built: a test sets a longer one
        threading.Thread(target=self._flush_every, name="wacrm-log-flush", daemon=True).start()

    def emit(self, record: logging.LogRecord) -> None:
        super().emit(record)
        if record.levelno >= logging.WARNING:
            self.flush_now()

    def flush(self) -> None:
        """Called by ``emit`` after every line: the buffer is flushed by the timer instead."""

    def flush_now(self) -> None:
        # closed at exit meanwhile, or a full disk: nothing to do about it here
        with self.lock or contextlib.nullcontext(), contextlib.suppress(ValueError, OSError):
            self.stream.flush()

    def close(self) -> None:
        self.flush_now()
        super().close()

    def _flush_every(self) -> None:
        while True:
            time.sleep(self._interval)
            self.flush_now()


def configure(level: str | int, fmt: str = "text", *, repeat_interval_s: float = REPEAT_INTERVAL_S,
              batched: bool = False) -> None:
    """Set up the root logger: one stderr handler with the request id filter, repeat summary and
    the format of ``LOG_FORMAT``. Replaces whatever handlers were there (faust/mode installs its own).
    ``batched``: the long-running processes' :class:`BatchedHandler` instead of a line at a time."""
    handler: logging.Handler = BatchedHandler() if batched and _has_fileno(sys.stderr) else logging.StreamHandler()
    handler.addFilter(RequestIdFilter())
    handler.addFilter(RepeatSummary(repeat_interval_s))
    handler.setFormatter(formatter(fmt))
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # No format of ours shows the thread or the process: a record need not look them up (a webhook call logs one).
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False


def _has_fileno(stream: Any) -> bool:
    try:
        stream.fileno()
        return True
    except (AttributeError, ValueError, io.UnsupportedOperation):  # pytest's capture, a StringIO
        return False
