"""The runner's pure parts, without a broker: the dead-letter storm limit, the record size
limits, dead letters reduced to a reference, ingest's oversized items, and the webhook
publisher's refusal of a body the bus can never carry."""

from __future__ import annotations

import time
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wacrm.agents.dlqlimit import DlqLimit, DlqLimitConfig
from wacrm.agents.ingest import split
from wacrm.core.errors import expected
from wacrm.topics import INBOUND, RAW
from wacrm.topics.records import (
    DEAD_LETTER_PREVIEW_CHARS,
    RAW_RECORD_MAX_BYTES,
    RECORD_MAX_BYTES,
    DeadLetter,
    RawRef,
    RecordError,
    RecordTooLarge,
    bounded_dead_letter,
    check_size,
    encode_bounded,
)
from wacrm.webhook.publisher import PublishError, PublishRejected, RawPublisher
from wacrm.whatsapp import simulate
from wacrm.whatsapp.limits import TEXT_MAX_CHARS

# --- the storm limit ---------------------------------------------------------------------------

def _naive_allows(history: list[bool], config: DlqLimitConfig) -> bool:
    """The rule as the docs state it, computed from the whole history."""
    run = 0
    for dead in reversed(history):
        if not dead:
            break
        run += 1
    if run + 1 > config.consecutive:
        return False
    if len(history) < config.window:
        return True
    recent = ([*history, True])[-config.window:]
    return sum(recent) / config.window <= config.ratio


@settings(max_examples=300)
@given(consecutive=st.integers(1, 8), ratio=st.floats(0.05, 1.0), window=st.integers(1, 12),
       history=st.lists(st.booleans(), max_size=60))
def test_the_limit_follows_its_rule_at_every_step(consecutive: int, ratio: float, window: int,
                                                  history: list[bool]) -> None:
    config = DlqLimitConfig(consecutive, ratio, window)
    limit = DlqLimit(config)
    for n, dead in enumerate(history):
        assert limit.allows() == _naive_allows(history[:n], config)
        limit.record(dead)
    assert limit.allows() == _naive_allows(history, config)


@given(st.lists(st.booleans(), max_size=300))
def test_a_poison_event_now_and_then_never_trips_the_defaults(flow: list[bool]) -> None:
    """Defaults (100 in a row, half of 1,000): one dead letter in two, or 100 in a row, never trip."""
    limit = DlqLimit(DlqLimitConfig(consecutive=100, ratio=0.5, window=1000))
    for n, dead in enumerate(flow):
        dead = dead and n % 2 == 0  # at most every other event
        assert limit.allows()
        limit.record(dead)
    limit.record(False)
    for _ in range(100):
        assert limit.allows()
        limit.record(True)
    assert not limit.allows()  # the 101st in a row
    assert limit.describe().startswith("100 dead letters in a row (limit DLQ_LIMIT_CONSECUTIVE=100)")


def test_a_handled_event_resets_the_run_but_not_the_ratio() -> None:
    limit = DlqLimit(DlqLimitConfig(consecutive=3, ratio=0.5, window=4))
    for dead in (True, True, True):
        limit.record(dead)
    assert not limit.allows()
    limit.record(False)
    assert not limit.allows()  # 3 of the last 4, one more would be 3 of 4 again: above half
    limit.record(False)
    assert limit.allows()  # 2 of the last 4 with the next one


# --- record sizes --------------------------------------------------------------------------------

def test_check_size_is_the_one_rule_for_the_bus() -> None:
    assert check_size(b"x" * RECORD_MAX_BYTES) == b"x" * RECORD_MAX_BYTES
    with pytest.raises(RecordTooLarge) as err:
        check_size(b"x" * (RECORD_MAX_BYTES + 1))
    assert err.value.size == RECORD_MAX_BYTES + 1 and isinstance(err.value, RecordError)
    assert RECORD_MAX_BYTES < 1_000_000 and RAW_RECORD_MAX_BYTES < 8 * 1024 * 1024


def test_encode_bounded_refuses_what_the_bus_cannot_carry() -> None:
    with pytest.raises(RecordTooLarge):
        encode_bounded({"text": "x" * RECORD_MAX_BYTES})
    nested: Any = []
    for _ in range(300):
        nested = [nested]
    with pytest.raises(RecordError):
        encode_bounded({"deep": nested})
    assert orjson.loads(encode_bounded({"ok": 1})) == {"ok": 1}


@given(size=st.integers(0, 3_000_000), error=st.text(max_size=50))
@settings(max_examples=25, deadline=None)
def test_a_dead_letter_always_fits_and_keeps_its_reference(size: int, error: str) -> None:
    letter = DeadLetter(reason="ingest: broken item", source_topic=RAW, source_partition=2, source_offset=41,
                        error=error, value="é" * size, at=time.time(), details={"where": "entry[0]"})
    reduced, data = bounded_dead_letter(letter)
    assert len(data) <= RECORD_MAX_BYTES
    assert (reduced.source_topic, reduced.source_partition, reduced.source_offset) == (RAW, 2, 41)
    assert reduced.reason == letter.reason
    if reduced is letter:
        assert orjson.loads(data)["value"] == letter.value
    else:
        assert reduced.value == letter.value[:DEAD_LETTER_PREVIEW_CHARS]
        assert reduced.details["reduced"] is True and reduced.details["value_chars"] == size


# --- ingest: oversized items ---------------------------------------------------------------------

def _body(*messages: dict[str, Any]) -> bytes:
    body = simulate.text_body(text="ordinary", wa_id="15550040000")
    value = body["entry"][0]["changes"][0]["value"]
    value["messages"] = [value["messages"][0], *messages]
    return simulate.dumps(body)


def _message(**fields: Any) -> dict[str, Any]:
    return {"from": "15550040001", "id": simulate.new_message_id(), "timestamp": str(int(time.time())), **fields}


def test_a_text_beyond_whatsapp_limit_is_a_problem_and_the_rest_of_the_body_goes_on() -> None:
    huge = _message(type="text", text={"body": "y" * (TEXT_MAX_CHARS + 1)})
    fits = _message(type="text", text={"body": "z" * TEXT_MAX_CHARS})
    out = split(_body(huge, fits), RawRef(RAW, 0, 7), time.time())
    ids = [m.message_id for m in out.messages]
    assert fits["id"] in ids and huge["id"] not in ids and len(ids) == 2
    (problem,) = out.parsed.problems
    assert "4,096" in problem.reason and problem.where == INBOUND
    assert huge["id"] in problem.item and len(problem.item) <= DEAD_LETTER_PREVIEW_CHARS


def test_an_item_too_large_for_a_record_is_a_problem_with_a_preview() -> None:
    big = _message(type="unsupported", unsupported={"blob": "q" * (RECORD_MAX_BYTES + 10)})
    out = split(_body(big), RawRef(RAW, 1, 3), time.time())
    assert len(out.messages) == 1 and out.messages[0].message_id != big["id"]
    (problem,) = out.parsed.problems
    assert "cannot become a record" in problem.reason and len(problem.item) <= DEAD_LETTER_PREVIEW_CHARS


# --- the webhook publisher ---------------------------------------------------------------------

async def test_a_body_the_bus_cannot_carry_is_refused_without_asking_the_broker() -> None:
    publisher = RawPublisher("127.0.0.1:9", timeout=0.5)  # nothing listens: only the size check can answer
    with pytest.raises(PublishRejected) as err:
        await publisher.publish(RAW, b"x" * (RAW_RECORD_MAX_BYTES + 1))
    assert err.value.code == "too_large" and "larger than the bus accepts" in str(err.value)
    with pytest.raises(PublishError):  # an unreachable broker: retry later (503)
        await publisher.publish(RAW, b"{}")
    await publisher.stop()


def test_expected_tells_a_bug_from_a_known_failure() -> None:
    assert expected(RecordTooLarge(2, 1)) and expected(TimeoutError())
    assert not expected(KeyError("a bug"))

