"""Replaying every topic from the beginning creates no second contact, message or send.

A worker in a new consumer group reads wa.webhook.raw, wa.inbound, wa.status and wa.outbound
from offset 0 — everything the session sent so far — against the same database."""

from __future__ import annotations

import asyncio

import asyncpg
from conftest import Stack, eventually

from wacrm.core.embedded import free_port
from wacrm.topics.replay import settled_counts
from wacrm.whatsapp import simulate

COUNTS = """SELECT (SELECT count(*) FROM contacts) contacts, (SELECT count(*) FROM conversations) conversations,
                   (SELECT count(*) FROM leads) leads, (SELECT count(*) FROM messages) messages,
                   (SELECT count(*) FROM outbound_log) ledger, (SELECT count(*) FROM message_status_events) statuses,
                   (SELECT count(*) FROM outbound_log WHERE state = 'sent') sent"""


async def _counts(db: asyncpg.Connection) -> dict[str, int]:
    return dict(await db.fetchrow(COUNTS))


async def test_replay_from_the_beginning_changes_nothing(stack: Stack, db: asyncpg.Connection) -> None:
    body = simulate.dumps(simulate.text_body(text="before the replay", wa_id="15550011001"))
    mid = body.split(b'"messages":[{"id":"', 1)[1].split(b'"', 1)[0].decode()
    assert (await stack.post(body))[0] == 200
    (reply,) = await eventually(lambda: stack.replies_to(mid), what="a reply before the replay")

    async def all_statuses() -> bool:  # fake-meta posts sent, delivered and read after its answer
        return await db.fetchval("SELECT count(*) FROM message_status_events WHERE provider_message_id = $1",
                                 reply["answered"]["id"]) == 3

    await eventually(all_statuses, what="the reply's three statuses")
    # anything else still moving (another test's leftovers) settles before the counts are taken
    before, quiet = await settled_counts(db, 60, read=_counts)
    assert quiet, f"the session's pipeline did not go quiet before the replay: {before}"
    sends_before = len(await stack.sent())

    metrics_port = free_port()
    replay = Stack(stack.database_url, stack.bootstrap, stack.logs, port=stack.port, fake_port=stack.fake_port,
                   worker_metrics_port=metrics_port)
    replay.start("worker", env_overrides={"KAFKA_GROUP_ID": f"wacrm-replay-{metrics_port}"})
    try:
        await replay.wait_worker()

        async def caught_up() -> bool:  # ingest has re-read every raw body and nothing moves any more
            seen = await replay.worker_metric("wacrm_events_total", 'agent="ingest",outcome="processed"')
            await asyncio.sleep(1.5)
            return seen > 0 and seen == await replay.worker_metric(
                "wacrm_events_total", 'agent="ingest",outcome="processed"')

        await eventually(caught_up, 90, "the replaying worker to catch up")
        assert await replay.worker_metric("wacrm_duplicates_total", 'kind="message"') > 0
        assert await replay.worker_metric("wacrm_sends_total") == 0
    finally:
        replay.stop("worker")
    assert (await settled_counts(db, 30, read=_counts))[0] == before
    assert len(await stack.sent()) == sends_before
