"""While the broker is down the webhook answers 503 and stores nothing; Meta's retry after it is
back goes through exactly once. Runs its own stack on its own embedded broker."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import asyncpg
import orjson
import pytest
from conftest import Stack, eventually, own_stack

from wacrm.core.embedded import EmbeddedBroker
from wacrm.core.settings import load
from wacrm.topics.admin import create_topics
from wacrm.whatsapp import simulate

pytestmark = pytest.mark.skipif(bool(os.environ.get("KAFKA_BOOTSTRAP_SERVERS")),
                                reason="needs a broker this test can stop: the embedded one")


async def test_503_while_the_broker_is_down_then_delivered_once(make_database: Callable[[], str],
                                                                tmp_path: Path) -> None:
    async with own_stack(make_database, tmp_path) as (stack, broker):
        db = await asyncpg.connect(stack.database_url)
        try:
            await _outage(stack, broker, db)
        finally:
            await db.close()


async def _outage(stack: Stack, broker: EmbeddedBroker, db: asyncpg.Connection) -> None:
    settings = load({"KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap}, "dev")
    body = simulate.dumps(simulate.text_body(text="during the outage", wa_id="15550009999"))
    message_id = orjson.loads(body)["entry"][0]["changes"][0]["value"]["messages"][0]["id"]

    broker.stop()
    status, err = await stack.post(body)
    assert status == 503 and err["error"] == "broker_unavailable"
    # Whether the refused body was stored after all shows at the end: the message is there once,
    # from Meta's retry, and answered once.

    # The broker comes back empty (memory only): whoever supervises it stops the worker, then
    # re-creates the topics and starts the worker again, as `wacrm dev` does.
    stack.stop("worker")
    broker.start()
    await create_topics(settings, out=lambda m: None)
    stack.start("worker")
    await stack.wait_worker()

    async def retry_accepted() -> bool:  # Meta retries until it gets a 200
        return (await stack.post(body))[0] == 200

    await eventually(retry_accepted, what="the webhook to accept the retry")
    replies = await eventually(lambda: stack.replies_to(message_id), what="the reply after recovery")
    # A later message of the same customer takes the same partition, agents and sender: once it is
    # answered, a second copy of the first message (or a second reply to it) would have shown.
    marker = simulate.dumps(simulate.text_body(text="and after the outage", wa_id="15550009999"))
    marker_id = orjson.loads(marker)["entry"][0]["changes"][0]["value"]["messages"][0]["id"]
    assert (await stack.post(marker))[0] == 200
    await eventually(lambda: stack.replies_to(marker_id), what="the reply to a later message")
    assert len(await stack.replies_to(message_id)) == 1 == len(replies)
    assert await db.fetchval("SELECT count(*) FROM messages WHERE direction = 'inbound'") == 2
    assert await db.fetchval("SELECT count(*) FROM messages WHERE provider_message_id = $1", message_id) == 1
