"""core.logs: the request id on every line, JSON lines, repeated lines summarised (with a fake clock)."""

from __future__ import annotations

import asyncio
import io
import logging
from pathlib import Path

import orjson
from conftest import eventually, run_sync

from wacrm.core.logs import JsonFormatter, RepeatSummary, RequestIdFilter, request_scope
from wacrm.topics.records import REQUEST_ID_MAX_CHARS, new_request_id, request_id_of, valid_request_id


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _logger(name: str, *filters: logging.Filter, formatter: logging.Formatter | None = None) -> tuple[
        logging.Logger, io.StringIO]:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    for f in filters:
        handler.addFilter(f)
    handler.setFormatter(formatter or logging.Formatter("%(message)s request_id=%(request_id)s"))
    log = logging.getLogger(name)
    log.handlers[:] = [handler]
    log.propagate = False
    log.setLevel(logging.DEBUG)
    return log, out


def test_repeated_lines_are_summarised_once_per_interval() -> None:
    clock = Clock()
    log, out = _logger("test.repeats", RequestIdFilter(), RepeatSummary(60, clock))
    for _ in range(1600):  # an outage's worth of identical lines within a minute
        log.warning("Unable connect to node with id %d", 1)
        clock.now += 0.03
    assert out.getvalue().splitlines() == ["Unable connect to node with id 1 request_id=-"]
    clock.now += 60
    log.warning("Unable connect to node with id %d", 1)
    lines = out.getvalue().splitlines()
    assert lines[1] == "Unable connect to node with id 1 (repeated 1600 times in the last 60 s) request_id=-"
    clock.now += 1
    log.warning("Unable connect to node with id %d", 1)  # counted again, not written
    log.warning("Unable connect to node with id %d", 2)  # another line is its own
    assert out.getvalue().splitlines()[2:] == ["Unable connect to node with id 2 request_id=-"]


def test_a_line_that_stopped_repeating_is_written_again_later() -> None:
    clock = Clock()
    log, out = _logger("test.repeats2", RequestIdFilter(), RepeatSummary(60, clock))
    log.info("the same")
    clock.now += 61
    log.info("the same")
    assert out.getvalue().splitlines() == ["the same request_id=-", "the same request_id=-"]


def test_the_request_id_comes_from_the_scope_or_the_call() -> None:
    log, out = _logger("test.rid", RequestIdFilter())
    with request_scope("abc-1"):
        log.info("inside")
    log.info("outside")
    log.info("given", extra={"request_id": "given-2"})
    log.info("none given", extra={"request_id": None})
    assert out.getvalue().splitlines() == ["inside request_id=abc-1", "outside request_id=-",
                                           "given request_id=given-2", "none given request_id=-"]


def test_json_lines_parse_and_carry_the_request_id_and_extras() -> None:
    log, out = _logger("test.json", RequestIdFilter(), formatter=JsonFormatter())
    with request_scope("rid-9"):
        log.info("stored message %s conversation %d", "wamid.X", 12, extra={"conversation_id": 12})
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("failed")
    first, second = (orjson.loads(line) for line in out.getvalue().splitlines())
    assert first["message"] == "stored message wamid.X conversation 12"
    assert (first["level"], first["logger"], first["request_id"], first["conversation_id"]) == \
        ("INFO", "test.json", "rid-9", 12)
    assert first["time"].endswith("+00:00")
    assert second["level"] == "ERROR" and "ValueError: boom" in second["exception"]


def test_request_ids_are_bounded_and_printable() -> None:
    assert valid_request_id("req-123_ABC.x") == "req-123_ABC.x"
    for bad in ("", "a b", "x" * (REQUEST_ID_MAX_CHARS + 1), "tab\there", "ünicode", "new\nline", None):
        assert valid_request_id(bad) is None
    fresh = new_request_id()
    assert valid_request_id(fresh) == fresh and fresh != new_request_id()
    assert request_id_of([("other", b"x"), ("wacrm-request-id", b"r-1")]) == "r-1"
    assert request_id_of({"wacrm-request-id": b"r-2"}) == "r-2"
    assert request_id_of(None) is None and request_id_of([("wacrm-request-id", b"bad id")]) is None


def test_a_batch_has_a_request_id_only_when_one_call_caused_all_of_it() -> None:
    from wacrm.agents.runner import Item, shared_request_id
    from wacrm.topics.records import RawRef

    def item(n: int, rid: str | None) -> Item:
        return Item(b"{}", RawRef("wa.inbound", 0, n), 0.0, rid)

    assert shared_request_id([item(1, "a")]) == "a"
    assert shared_request_id([item(1, "a"), item(2, "a")]) == "a"
    assert shared_request_id([item(1, "a"), item(2, "b")]) is None
    assert shared_request_id([item(1, "a"), item(2, None)]) is None


def test_the_services_write_their_log_in_batches_warnings_at_once_and_everything_by_exit(tmp_path: Path) -> None:
    import subprocess
    import sys

    script = """
import logging, sys, time
from wacrm.core import logs
logs.FLUSH_EVERY_S = 2.0  # long enough that the parent reads the log before the first flush
logs.configure("INFO", batched=True)
log = logging.getLogger("wacrm.test")
log.info("first info")
print("after info", file=sys.stdout, flush=True); sys.stdin.readline()
log.warning("a warning")
print("after warning", file=sys.stdout, flush=True); sys.stdin.readline()
log.info("last info, written at exit")
"""
    err = tmp_path / "stderr.log"
    with err.open("w") as f:
        proc = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=f, text=True)
        assert proc.stdout is not None and proc.stdin is not None
        assert proc.stdout.readline() == "after info\n"
        assert "first info" not in err.read_text()  # held in the buffer …
        run_sync(eventually(lambda: asyncio.sleep(0, "first info" in err.read_text()), 15, "the timer's flush"))
        assert "first info" in err.read_text()  # … until the timer flushes it
        proc.stdin.write("\n")
        proc.stdin.flush()
        assert proc.stdout.readline() == "after warning\n"
        assert "a warning" in err.read_text()  # a warning is never held
        proc.stdin.write("\n")
        proc.stdin.close()
        assert proc.wait(10) == 0
    assert "last info, written at exit" in err.read_text()
