"""The gauges on-call alerts read from the worker's /metrics: consumer lag per topic and partition,
paused numbers, sends left unsettled, conversations waiting for the bot, the event loop's heartbeat;
and the worker's /livez."""

from __future__ import annotations

import re

import aiohttp
import asyncpg
from conftest import Stack, eventually

from wacrm.core.liveness import STALE_AFTER_S
from wacrm.storage import replies
from wacrm.topics import INBOUND, RAW
from wacrm.topics.lag import lag_of, per_topic
from wacrm.whatsapp import simulate


async def _lag_lines(stack: Stack) -> dict[tuple[str, str], tuple[str, float]]:
    async with aiohttp.ClientSession() as s, s.get(stack.worker_metrics) as r:
        text = await r.text()
    found = {}
    for m in re.finditer(r'^wacrm_consumer_lag\{partition="(\d+)",reliable="(\w+)",topic="([^"]+)"\} (\S+)$',
                         text, re.M):
        found[(m.group(3), m.group(1))] = (m.group(2), float(m.group(4)))
    return found


async def test_lag_per_topic_and_partition_from_fetched_high_water_marks(stack: Stack) -> None:
    lines = await eventually(lambda: _lag_lines(stack), 60, "lag gauges")
    assert {t for t, _ in lines} >= {RAW, INBOUND}
    assert all(reliable == "true" for reliable, _ in lines.values())  # high-water marks, on this broker too
    body = simulate.dumps(simulate.text_body(text="lag", wa_id="15550077001"))
    assert (await stack.post(body))[0] == 200

    async def drained() -> bool:
        now = await _lag_lines(stack)
        return bool(now) and all(v == 0 for _, v in now.values())

    await eventually(drained, 60, "the lag to come back to 0 once the message is handled")


async def test_paused_numbers_and_unsettled_sends(stack: Stack, db: asyncpg.Connection) -> None:
    await db.execute("INSERT INTO number_pauses (phone_number_id, reason, until) VALUES "
                     "('199999999999001', 'test', now() + interval '1 hour')")
    try:
        await eventually(lambda: _at_least(stack, "wacrm_paused_numbers", 1), 30, "the paused number")
    finally:
        await db.execute("DELETE FROM number_pauses WHERE phone_number_id = '199999999999001'")
    await eventually(lambda: _at_most(stack, "wacrm_paused_numbers", 0), 30, "no paused number")

    # A send left ambiguous ten minutes ago (its status never came): counted, and its age shown.
    conversation = await db.fetchval("SELECT id FROM conversations ORDER BY id LIMIT 1")
    if conversation is None:
        body = simulate.dumps(simulate.text_body(text="hello", wa_id="15550077002"))
        assert (await stack.post(body))[0] == 200
        conversation = await eventually(lambda: db.fetchval("SELECT id FROM conversations LIMIT 1"), 30, "a row")
    row = await db.fetchval(
        "INSERT INTO outbound_log (dedupe_key, conversation_id, state, intent, ambiguous_since) VALUES "
        "('test:health-ambiguous', $1, 'unconfirmed', '{}'::jsonb, now() - interval '10 minutes') RETURNING id",
        conversation)
    try:
        await eventually(lambda: _at_least(stack, "wacrm_ambiguous_unsettled", 1, 'measure="count"'), 30,
                         "the unsettled send")
        assert await stack.worker_metric("wacrm_ambiguous_unsettled", 'measure="oldest_seconds"') >= 600
    finally:
        await db.execute("DELETE FROM outbound_log WHERE id = $1", row)


async def test_the_worker_loop_beats_and_its_livez_answers(stack: Stack) -> None:
    beat = "wacrm_worker_heartbeat_timestamp_seconds"
    first = await eventually(lambda: stack.worker_metric(beat), 60, "the first heartbeat")
    await eventually(lambda: _at_least(stack, beat, first + 1), 30, "the heartbeat to advance")
    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{stack.worker_metrics_port}/livez") as r:
        assert r.status == 200
        body = await r.json()
    assert body["ok"] is True and 0 <= body["heartbeat_age_seconds"] < STALE_AFTER_S


async def test_conversations_waiting_for_the_bot_count_until_a_person_owns_them(
        stack: Stack, db: asyncpg.Connection) -> None:
    """A reply parked behind a paused number waits; an answered conversation does not; nor does one a
    person took over. (RepliesStopped pages on this gauge.)"""
    waiting, stored = "wacrm_conversations_awaiting_reply", "wacrm_messages_stored_total"
    paused_number = "200000000000077"  # a number of its own: the other tests' replies go out
    before = await stack.worker_metric(waiting)
    stored_before = await stack.worker_metric(stored, 'expects_reply="true"')
    await db.execute("INSERT INTO business_numbers (phone_number_id, label) VALUES ($1, 'paused in a test') "
                     "ON CONFLICT DO NOTHING", paused_number)  # a configured number: its webhooks are taken in
    await db.execute("INSERT INTO number_pauses (phone_number_id, reason, until) VALUES "
                     "($1, 'test', now() + interval '1 hour')", paused_number)
    try:
        answered, parked = simulate.new_message_id(), simulate.new_message_id()
        for body in (simulate.text_body(text="what is the price?", wa_id="15550077101", message_id=answered),
                     simulate.text_body(text="what is the price?", wa_id="15550077102", message_id=parked,
                                        phone_number_id=paused_number)):
            assert (await stack.post(simulate.dumps(body)))[0] == 200
        await eventually(lambda: stack.replies_to(answered), 60, "the reply on the number that is not paused")
        await eventually(lambda: _exactly(stack, waiting, before + 1), 60,
                         "the parked reply's conversation (only) to count as waiting")
        assert await stack.worker_metric(stored, 'expects_reply="true"') >= stored_before + 2

        conversation = await db.fetchval("SELECT conversation_id FROM messages WHERE provider_message_id = $1",
                                         parked)
        async with db.transaction():
            await replies.hand_over(db, conversation, "test: a person takes it", {})
        await eventually(lambda: _exactly(stack, waiting, before), 30, "a person's conversation to stop counting")
    finally:
        await db.execute("DELETE FROM number_pauses WHERE phone_number_id = $1", paused_number)


async def _exactly(stack: Stack, name: str, n: float) -> bool:
    return await stack.worker_metric(name) == n


async def _at_least(stack: Stack, name: str, n: float, labels: str = "") -> bool:
    return await stack.worker_metric(name, labels) >= n


async def _at_most(stack: Stack, name: str, n: float) -> bool:
    return await stack.worker_metric(name) <= n


class _TP:
    def __init__(self, topic: str, partition: int) -> None:
        self.topic, self.partition = topic, partition

    def __hash__(self) -> int:
        return hash((self.topic, self.partition))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _TP) and (self.topic, self.partition) == (other.topic, other.partition)


def test_an_end_from_list_offsets_is_marked_unreliable() -> None:
    a, b = _TP("t", 0), _TP("t", 1)
    lags = lag_of({a: 5, b: 7}, {a: 9, b: None}, {b: 8})
    assert [(p.partition, p.lag, p.reliable) for p in lags] == [(0, 4, True), (1, 1, False)]
    assert per_topic(lags) == {"t": 5}
    assert lag_of({a: 9}, {a: 3}, {})[0].lag == 0  # never negative
