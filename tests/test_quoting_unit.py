"""Which bot replies quote the customer's message: the first answer to a burst, not every reply."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from wacrm.orchestrator.service import NEW_EXCHANGE_AFTER, quotes
from wacrm.storage.replies import Pending, ReplyContext

T0 = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def ctx(answered_upto_at: datetime | None, *written: datetime | None) -> ReplyContext:
    pending = tuple(Pending(n, f"wamid.{n}", "text", "hi", at) for n, at in enumerate(written, 1))
    return ReplyContext(conversation_id=1, conversation_key="k", phone_number_id="p", contact_id=1, customer="c",
                        customer_name=None, opted_out=False, human_owned=False, ownership_version=0,
                        new_contact=answered_upto_at is None, pending=pending, answered_upto_at=answered_upto_at)


def test_the_first_answer_of_a_conversation_quotes() -> None:
    assert quotes(ctx(None, T0))


def test_a_reply_in_a_running_exchange_does_not_quote() -> None:
    assert not quotes(ctx(T0, T0 + timedelta(seconds=20)))
    assert not quotes(ctx(T0, T0 + NEW_EXCHANGE_AFTER - timedelta(seconds=1), T0 + NEW_EXCHANGE_AFTER * 3))


def test_a_burst_after_a_pause_quotes_again() -> None:
    assert quotes(ctx(T0, T0 + NEW_EXCHANGE_AFTER))
    assert quotes(ctx(T0, T0 + timedelta(hours=5), T0 + timedelta(hours=5, seconds=3)))


def test_without_a_timestamp_it_quotes() -> None:
    assert quotes(ctx(T0, None))
