"""Oversized input has a defined path: the incident of a 1.5 MB text message, reproduced.

A signed body under the webhook's limit carries one text far beyond WhatsApp's 4,096
characters. It is accepted (durable on the raw topic), its item goes to ``wa.dlq`` as a
reference to the raw body, not as a 3 MB record nothing can carry, and everything posted
after it is stored and answered. Runs its own stack (a raised ``WEBHOOK_MAX_BODY_BYTES``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import asyncpg
import orjson
import pytest
from conftest import eventually, own_stack
from test_runner_faults import answered_once, dlq_letters, message_id

from wacrm.whatsapp import simulate

pytestmark = pytest.mark.skipif(bool(os.environ.get("KAFKA_BOOTSTRAP_SERVERS")),
                                reason="needs a broker of its own: the embedded one")


async def test_a_huge_text_is_dead_lettered_by_reference_and_the_rest_flows(
        make_database: Callable[[], str], tmp_path: Path) -> None:
    async with own_stack(make_database, tmp_path) as (stack, _):
        stack.stop("serve")  # again, with Meta's own body limit instead of the tests' smaller one
        stack.start("serve", env_overrides={"WEBHOOK_MAX_BODY_BYTES": str(4 * 1024 * 1024)})
        big = simulate.dumps(simulate.text_body(text="x" * 1_500_000, wa_id="15550030000"))
        big_id = message_id(big)
        assert 1_500_000 < len(big) < 4 * 1024 * 1024
        assert (await stack.post(big))[0] == 200

        bodies = [simulate.dumps(simulate.text_body(text=f"hello {n}", wa_id=f"155500301{n:02d}")) for n in range(20)]
        for body in bodies:
            assert (await stack.post(body))[0] == 200
        ids = [message_id(b) for b in bodies]

        db = await asyncpg.connect(stack.database_url)
        try:
            await eventually(lambda: answered_once(stack, db, ids), 120, "all 20 messages stored and answered")

            async def dead_lettered() -> list[dict]:
                return [d for d in await dlq_letters(stack.bootstrap) if big_id in d["value"]]

            (letter,) = await eventually(dead_lettered, 60, "the huge message in wa.dlq")
            assert letter["source_topic"] == "wa.webhook.raw" and letter["reason"] == "ingest: broken item"
            assert isinstance(letter["source_partition"], int) and isinstance(letter["source_offset"], int)
            assert "4,096" in letter["error"]
            assert len(orjson.dumps(letter)) < 10_000  # a reference, not the 1.5 MB value
            assert await db.fetchval("SELECT count(*) FROM messages WHERE provider_message_id = $1", big_id) == 0
            for mid in ids:
                assert len(await stack.replies_to(mid)) == 1
        finally:
            await db.close()
        assert stack.procs["worker"].poll() is None, "the worker must not crash"
