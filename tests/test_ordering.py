"""Two worker processes share the partitions; each conversation's messages are still stored in
the order the customer wrote them. Runs its own stack on its own embedded broker."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path

import asyncpg
import pytest
from conftest import Stack, eventually, own_stack
from test_inbound_fidelity import META, contact, envelope, text_msg

pytestmark = pytest.mark.skipif(bool(os.environ.get("KAFKA_BOOTSTRAP_SERVERS")),
                                reason="needs a broker of its own: the embedded one")

CONVERSATIONS, MESSAGES = 8, 10


async def test_two_workers_store_each_conversation_in_order(make_database: Callable[[], str], tmp_path: Path) -> None:
    async with own_stack(make_database, tmp_path) as (stack, _):
        db = await asyncpg.connect(stack.database_url)
        try:
            await _two_workers(stack, db)
        finally:
            await db.close()


async def _two_workers(stack: Stack, db: asyncpg.Connection) -> None:
    total = await stack.worker_metric("wacrm_worker_assigned_partitions")
    stack.start("worker2")

    async def shared() -> bool:  # the first worker gave up part of its partitions to the second
        return 0 < await stack.worker_metric("wacrm_worker_assigned_partitions") < total

    await eventually(shared, 90, "the two workers to share the partitions")

    async def customer(n: int) -> list[str]:
        wa_id = f"1555002{n:04d}"
        ids = []
        for i in range(MESSAGES):  # one body per message, each sent after the previous was accepted
            msg = text_msg(wa_id, f"message {i}", 1767225600 + i)
            status, _ = await stack.post(envelope({"metadata": META, "contacts": [contact(wa_id, f"C{n}")],
                                                   "messages": [msg]}))
            assert status == 200
            ids.append(msg["id"])
        return ids

    sent = await asyncio.gather(*(customer(n) for n in range(CONVERSATIONS)))

    async def all_stored() -> bool:
        return await db.fetchval("SELECT count(*) FROM messages WHERE direction = 'inbound'") == \
            CONVERSATIONS * MESSAGES

    await eventually(all_stored, 90, "every message to be stored")
    for ids in sent:
        stored = await db.fetch("SELECT provider_message_id FROM messages WHERE provider_message_id = ANY($1) "
                                "ORDER BY id", ids)
        assert [r["provider_message_id"] for r in stored] == ids
    assert stack.procs["worker2"].poll() is None
