"""Two workers storing the first message of the same new customer at once (a replay in a second
consumer group, a rebalance): the loser's unique violation is a race to retry, not poison.

Found by the fault suite's ``replay`` scenario, which dead-lettered such a message."""

from __future__ import annotations

import asyncio

import pytest

from wacrm.agents.inbound import _store
from wacrm.core.errors import Next, Raced, classify
from wacrm.storage.db import connect
from wacrm.topics.records import Customer, InboundMessage, RawRef

PHONE_NUMBER_ID = "200000000000077"


def _msg(message_id: str, wa_id: str) -> InboundMessage:
    return InboundMessage(conversation_key=f"{PHONE_NUMBER_ID}:{wa_id}", phone_number_id=PHONE_NUMBER_ID,
                          display_phone_number="1555", customer=Customer(wa_id=wa_id), message_id=message_id,
                          timestamp=1, type="text", text="hi", payload={}, raw_ref=RawRef("wa.inbound", 0, 1),
                          received_at=1.0)


async def test_a_store_that_loses_the_race_for_a_new_contact_is_retried(database_url: str) -> None:
    first, second = await connect(database_url, timeout=10), await connect(database_url, timeout=10)
    try:
        one, two = first.transaction(), second.transaction()
        await one.start()
        await two.start()
        assert (await _store(first, [_msg("wamid.race.1", "4900000077")], [None]))[0] is not None
        losing = asyncio.ensure_future(_store(second, [_msg("wamid.race.2", "4900000077")], [None]))
        await asyncio.sleep(0.3)
        assert not losing.done()  # waits on the first transaction's new contact
        await one.commit()
        with pytest.raises(Raced) as raised:
            await losing
        assert classify(raised.value) is Next.RETRY
        await two.rollback()
        async with second.transaction():  # the retry finds the contact the winner created
            assert (await _store(second, [_msg("wamid.race.2", "4900000077")], [None]))[0] is not None
        assert await second.fetchval("SELECT count(*) FROM contacts WHERE wa_id = '4900000077'") == 1
    finally:
        await first.close()
        await second.close()
