"""How the inbound agent splits a batch: lanes (connections) and waves (pipelined statements).

A conversation's messages must stay in one lane and in their order across waves; a wave
holds at most one message per conversation, so its statements can be pipelined without
changing what a message sees of the ones before it.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from wacrm.agents.inbound import lanes, waves
from wacrm.topics.records import Customer, InboundMessage, RawRef


def _msg(key: str, n: int) -> InboundMessage:
    return InboundMessage(conversation_key=key, phone_number_id="200000000000001", display_phone_number="1555",
                          customer=Customer(wa_id=key.split(":")[1]), message_id=f"wamid.{n}", timestamp=n,
                          type="text", text="hi", payload={}, raw_ref=RawRef("wa.inbound", 0, n),
                          received_at=float(n))


def _batch(keys: list[int]) -> list[InboundMessage]:
    return [_msg(f"200000000000001:49{k:08d}", n) for n, k in enumerate(keys)]


def test_waves_take_one_message_per_conversation_in_order() -> None:
    msgs = _batch([1, 2, 1, 3, 1, 2])
    assert waves(msgs, list(range(6))) == [[0, 1, 3], [2, 5], [4]]


def test_waves_of_only_the_given_indices() -> None:
    msgs = _batch([1, 2, 1, 3])
    assert waves(msgs, [1, 2, 3]) == [[1, 2, 3]]
    assert waves(msgs, []) == []


@given(st.lists(st.integers(min_value=0, max_value=8), max_size=60), st.integers(min_value=1, max_value=6))
def test_every_message_once_and_each_conversation_in_order(keys: list[int], count: int) -> None:
    msgs = _batch(keys)
    split = lanes(msgs, count)
    assert len(split) <= count
    assert sorted(n for lane in split for n in lane) == list(range(len(msgs)))
    lane_of = {}
    for i, lane in enumerate(split):
        assert lane == sorted(lane)
        for n in lane:
            assert lane_of.setdefault(msgs[n].conversation_key, i) == i  # one conversation, one lane
        by_wave = waves(msgs, lane)
        for wave in by_wave:
            keys_in_wave = [msgs[n].conversation_key for n in wave]
            assert len(keys_in_wave) == len(set(keys_in_wave))
        for key in {msgs[n].conversation_key for n in lane}:
            in_waves = [n for wave in by_wave for n in wave if msgs[n].conversation_key == key]
            assert in_waves == [n for n in lane if msgs[n].conversation_key == key]  # in order
            depths = [d for d, wave in enumerate(by_wave) for n in wave if msgs[n].conversation_key == key]
            assert depths == list(range(len(depths)))  # the k-th message in the k-th wave
