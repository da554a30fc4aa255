"""Reading a dead letter (headers first, the JSON value for older letters) and the list/redrive filter."""

from __future__ import annotations

import pytest

from wacrm.topics.dlq import Filter, letter_of, parse_id, to_redrive
from wacrm.topics.records import DeadLetter, bounded_dead_letter, dead_letter_headers, request_headers
from wacrm.topics.scan import BusRecord

LETTER = DeadLetter(reason="inbound: poison event", source_topic="wa.inbound", source_partition=2,
                    source_offset=41, error="CheckViolationError('refused')", value='{"text": "hi"}',
                    at=1_800_000_000.5)


def _record(offset: int, headers: list[tuple[str, bytes]], letter: DeadLetter = LETTER) -> BusRecord:
    _, value = bounded_dead_letter(letter)
    return BusRecord("wa.dlq", 0, offset, 1_800_000_001.0, value, "req-1", b"wa.inbound", tuple(headers))


def test_a_letter_is_read_from_its_headers() -> None:
    x = letter_of(_record(7, dead_letter_headers(LETTER, "req-1")))
    assert (x.id, x.agent, x.reason, x.origin, x.at) == ("0:7", "inbound", LETTER.reason, "wa.inbound:2@41", LETTER.at)
    assert (x.error, x.value, x.request_id) == (LETTER.error, LETTER.value, "req-1")


def test_a_letter_without_headers_is_read_from_its_value() -> None:
    x = letter_of(_record(8, request_headers("req-1") or []))
    assert (x.agent, x.origin, x.at, x.error) == ("inbound", "wa.inbound:2@41", LETTER.at, LETTER.error)


def test_an_unreadable_letter_is_still_listed() -> None:
    x = letter_of(BusRecord("wa.dlq", 1, 3, 5.0, b"\xff not json", None))
    assert (x.id, x.reason, x.origin_partition, x.at) == ("1:3", "unreadable dead letter", -1, 5.0)


def test_the_filter_and_what_a_redrive_skips() -> None:
    a = letter_of(_record(1, dead_letter_headers(LETTER, None)))
    b = letter_of(_record(2, dead_letter_headers(
        DeadLetter("sender: unexpected error", "wa.outbound", 0, 3, "boom", "{}", at=LETTER.at + 60), None)))
    assert [x.id for x in [a, b] if Filter(reason="POISON").matches(x)] == ["0:1"]
    assert [x.id for x in [a, b] if Filter(agent="sender").matches(x)] == ["0:2"]
    assert [x.id for x in [a, b] if Filter(since=LETTER.at + 1).matches(x)] == ["0:2"]
    assert [x.id for x in [a, b] if Filter(until=LETTER.at).matches(x)] == ["0:1"]
    assert [x.id for x in to_redrive([b, a], {(0, 2)})] == ["0:1"]


@pytest.mark.parametrize("text", ["7", "a:1", "1:", ":2", "1:2:3", "-1:2"])
def test_a_malformed_id_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="PARTITION:OFFSET"):
        parse_id(text)
    assert parse_id("3:17") == (3, 17)
