"""The send ledger's SQL against the real database: guarded state changes, the record of a sent
message (never dropped silently), the claim behind an earlier reply, and the settle timer's steps."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from wacrm.storage import ledger, ledger_send, replies, repo, statuses
from wacrm.storage.db import connect
from wacrm.storage.migrate import run_migrations
from wacrm.topics.records import RawRef, SendIntent, StatusUpdate


@pytest.fixture(scope="module")
async def fresh_url(make_database: Callable[[], str]) -> str:
    """A database of its own: no running worker's settle timer moves these rows meanwhile."""
    url = make_database()
    await run_migrations(url, 10.0, out=lambda m: None)
    return url


@pytest.fixture
async def db(fresh_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await connect(fresh_url, timeout=10)
    try:
        yield conn
    finally:
        await conn.close()


async def _conversation(db: asyncpg.Connection) -> int:
    wa_id = "1557" + str(uuid.uuid4().int)[:7]
    contact = await db.fetchval("INSERT INTO contacts (phone_number_id, wa_id) VALUES ('200', $1) RETURNING id", wa_id)
    return await db.fetchval(
        "INSERT INTO conversations (conversation_key, phone_number_id, contact_id, last_inbound_at) "
        "VALUES ($1, '200', $2, now()) RETURNING id", f"200:{wa_id}", contact)


async def _row(db: asyncpg.Connection, conv: int, text: str = "hi") -> tuple[int, SendIntent]:
    intent = SendIntent(dedupe_key=f"test:{uuid.uuid4().hex}", conversation_key="200:x", conversation_id=conv,
                        phone_number_id="200", to="15550001111", text=text, automatic=False, accepted_at=time.time())
    assert await ledger.queue(db, intent, published=True)
    return await db.fetchval("SELECT id FROM outbound_log WHERE dedupe_key = $1", intent.dedupe_key), intent


def _accepted(row_id: int, conv: int, wamid: str) -> ledger_send.Accepted:
    return ledger_send.Accepted(row_id, conv, "hi", wamid, {"type": "text", "text": {"body": "hi"}})


async def test_a_sent_row_is_never_moved_back(db: asyncpg.Connection) -> None:
    conv = await _conversation(db)
    row_id, _ = await _row(db, conv)
    assert isinstance(await ledger.claim(db, row_id, 0, []), ledger.Claimed)
    wamid = f"wamid.{uuid.uuid4().hex}"
    assert await ledger_send.record_sent_many(db, [_accepted(row_id, conv, wamid)], settled_by="answer") == ["recorded"]
    until = datetime.now(UTC) + timedelta(seconds=5)
    assert not await ledger.finish(db, row_id, ledger.UNSETTLED + ledger.WAITING, "failed", {"error": "x"})
    assert not await ledger.mark_ambiguous(db, row_id, {"error": "x"})
    assert await ledger.wait(db, row_id, ("sending",), until, {}, refund=False, on_topic=False) is None
    assert await ledger.claim(db, row_id, 1, []) == "sent"
    row = await db.fetchrow("SELECT * FROM outbound_log WHERE id = $1", row_id)
    assert row["state"] == "sent" and row["provider_message_id"] == wamid and row["settled_by"] is None
    # the same record again (a replay) changes nothing and says so
    assert await ledger_send.record_sent_many(db, [_accepted(row_id, conv, wamid)], settled_by="status") == ["already"]


async def test_a_message_id_of_another_row_is_a_conflict_kept_in_a_task(db: asyncpg.Connection) -> None:
    conv = await _conversation(db)
    (a, _), (b, _) = await _row(db, conv), await _row(db, conv)
    wamid = f"wamid.{uuid.uuid4().hex}"
    for row_id in (a, b):
        await db.execute("UPDATE outbound_log SET state = 'sending' WHERE id = $1", row_id)
    assert await ledger_send.record_sent_many(db, [_accepted(a, conv, wamid)], settled_by="answer") == ["recorded"]
    (outcome,) = await ledger_send.record_sent_many(db, [_accepted(b, conv, wamid)], settled_by="answer")
    assert outcome == "conflict"
    task = await db.fetchrow("SELECT * FROM tasks WHERE conversation_id = $1 AND kind = 'send_unrecorded'", conv)
    assert task["details"]["outbound_log_id"] == b and task["details"]["provider_message_id"] == wamid


async def test_a_row_settled_by_a_status_then_answered_with_another_message_keeps_both(db: asyncpg.Connection) -> None:
    conv = await _conversation(db)
    row_id, _ = await _row(db, conv)
    await db.execute("UPDATE outbound_log SET state = 'ambiguous', ambiguous_since = now() WHERE id = $1", row_id)
    first, second = f"wamid.{uuid.uuid4().hex}", f"wamid.{uuid.uuid4().hex}"
    assert await ledger_send.record_sent_many(db, [_accepted(row_id, conv, first)], settled_by="status") == ["recorded"]
    assert await ledger_send.record_sent_many(db, [_accepted(row_id, conv, second)],
                                              settled_by="answer") == ["second_copy"]
    assert {r["provider_message_id"] for r in await db.fetch(
        "SELECT provider_message_id FROM messages WHERE outbound_log_id = $1", row_id)} == {first, second}
    row = await db.fetchrow("SELECT * FROM outbound_log WHERE id = $1", row_id)
    assert (row["state"], row["settled_by"], row["provider_message_id"]) == ("sent", "status", first)


async def test_a_later_reply_is_not_claimed_while_an_earlier_one_waits(db: asyncpg.Connection) -> None:
    conv = await _conversation(db)
    (one, _), (two, _) = await _row(db, conv), await _row(db, conv)
    until = datetime.now(UTC) + timedelta(seconds=30)
    assert await ledger.wait(db, one, ledger.WAITING, until, {}, refund=False, on_topic=True, attempts=0) == 0
    behind = await ledger.claim(db, two, 0, [])
    assert isinstance(behind, ledger.Earlier) and (behind.id, behind.state, behind.next_attempt_at) == \
        (one, "retry_wait", until)
    assert isinstance(await ledger.claim(db, two, 0, [one]), ledger.Claimed)  # one counts as done (accepted in a batch)


async def test_the_settle_timer_makes_stuck_sends_ambiguous_then_tasks_or_resends(db: asyncpg.Connection) -> None:
    conv = await _conversation(db)
    (stuck, _), (resent, _) = await _row(db, conv), await _row(db, conv)
    await db.execute("UPDATE outbound_log SET state = 'sending', claimed_at = now() - interval '1 hour' "
                     "WHERE id = ANY($1::bigint[])", [stuck, resent])
    assert set(await ledger_send.in_flight_too_long(db, 60, 1000)) >= {stuck, resent}
    await db.execute("UPDATE outbound_log SET finished_at = now() - interval '1 hour' WHERE id = ANY($1::bigint[])",
                     [stuck, resent])
    await db.execute("UPDATE outbound_log SET settled_by = NULL WHERE id = $1", resent)
    overdue = dict(await ledger_send.settle_overdue(db, 60, True, 1000))
    assert overdue[stuck] == overdue[resent] == "resend"
    rows = {r["id"]: r for r in await db.fetch("SELECT * FROM outbound_log WHERE id = ANY($1::bigint[])",
                                                [stuck, resent])}
    assert rows[stuck]["state"] == "queued" and rows[stuck]["ambiguous_since"] is not None
    # resent and ambiguous again: a person checks (never resent twice)
    await db.execute("UPDATE outbound_log SET state = 'ambiguous', finished_at = now() - interval '1 hour' "
                     "WHERE id = $1", stuck)
    assert dict(await ledger_send.settle_overdue(db, 60, True, 1000))[stuck] == "task"
    row = await db.fetchrow("SELECT * FROM outbound_log WHERE id = $1", stuck)
    assert (row["state"], row["settled_by"]) == ("unconfirmed", "task")
    assert await db.fetchval("SELECT count(*) FROM tasks WHERE dedupe_key = $1", f"outbound:{stuck}:ambiguous") == 1
    # a late status still settles it, and closes the person's task
    wamid = f"wamid.{uuid.uuid4().hex}"
    assert await ledger_send.record_sent_many(db, [_accepted(stuck, conv, wamid)], settled_by="status") == ["recorded"]
    assert await db.fetchval("SELECT status FROM tasks WHERE dedupe_key = $1", f"outbound:{stuck}:ambiguous") == "done"


async def _tasks_with_notifications(db: asyncpg.Connection, dedupe_key: str) -> list[tuple[str, str, str, dict]]:
    rows = await db.fetch("""SELECT t.kind, t.title, n.body, t.details
                             FROM tasks t JOIN notifications n ON n.task_id = t.id
                             WHERE t.dedupe_key = $1""", dedupe_key)
    return [(r["kind"], r["title"], r["body"], r["details"]) for r in rows]


async def test_a_task_and_its_notification_are_recorded_once_whichever_path_makes_it(db: asyncpg.Connection) -> None:
    conv = await _conversation(db)
    key = f"handover:{uuid.uuid4().hex}"
    for _ in range(2):  # a redelivered event makes the same task again
        await repo.create_task(db, conv, "handover", "Customer needs a person: asked", {"reason": "asked"},
                               dedupe_key=key, request_id="req-1")
    assert await _tasks_with_notifications(db, key) == [
        ("handover", "Customer needs a person: asked", "Customer needs a person: asked", {"reason": "asked"})]

    wamid = f"wamid.{uuid.uuid4().hex}"
    promise = replies.FollowUp(conv, wamid, {"text": "when do you open?"}, "req-2")
    await replies.promise_follow_ups(db, [promise, promise])  # twice in one wave, then again
    await replies.promise_follow_ups(db, [promise])
    title = replies.FOLLOW_UP_TITLE
    assert await _tasks_with_notifications(db, f"follow_up:{wamid}") == [
        ("follow_up", title, title, {"text": "when do you open?"})]
    assert await db.fetchval("SELECT inbox_status FROM conversations WHERE id = $1", conv) == "pending"


def _status(wamid: str, status: str, errors: list[dict[str, object]] | None = None) -> StatusUpdate:
    return StatusUpdate(conversation_key="200:x", phone_number_id="200", message_id=wamid, status=status,
                        timestamp=int(time.time()), recipient_id="15550001111", errors=errors or [],
                        biz_opaque_callback_data=None, payload={"status": status}, raw_ref=RawRef("wa.status", 0, 0))


async def test_a_batch_of_statuses_has_the_outcomes_of_applying_them_one_after_the_other(
        db: asyncpg.Connection) -> None:
    conv = await _conversation(db)
    wamids = []
    for _ in range(3):
        row_id, _ = await _row(db, conv)
        await db.execute("UPDATE outbound_log SET state = 'sending' WHERE id = $1", row_id)
        wamids.append(f"wamid.{uuid.uuid4().hex}")
        assert await ledger_send.record_sent_many(db, [_accepted(row_id, conv, wamids[-1])], settled_by="answer") == [
            "recorded"]
    a, b, c = wamids
    unknown = f"wamid.{uuid.uuid4().hex}"
    failed = [{"code": 131026, "title": "Message undeliverable"}]
    events_before = await db.fetchval("SELECT count(*) FROM inbox_events WHERE kind = 'status' "
                                      "AND conversation_id = $1", conv)
    async with db.transaction():
        outcomes = await statuses.apply_statuses(db, [
            _status(a, "sent"), _status(a, "delivered"), _status(b, "read"), _status(b, "delivered"),
            _status(a, "sent"), _status(unknown, "sent"), _status(c, "failed", failed), _status(c, "read"),
            _status(a, "read")], [f"r{n}" for n in range(9)])
    assert outcomes == ["applied", "applied", "applied", "stale", "duplicate", "pending", "applied", "stale",
                        "applied"]
    rows = {r["provider_message_id"]: r for r in await db.fetch(
        "SELECT provider_message_id, status, error FROM messages WHERE provider_message_id = ANY($1)", wamids)}
    assert [rows[w]["status"] for w in wamids] == ["read", "read", "failed"]
    assert rows[c]["error"] == failed
    # each message moved once, so the page hears of each once
    assert await db.fetchval("SELECT count(*) FROM inbox_events WHERE kind = 'status' AND conversation_id = $1",
                             conv) == events_before + 3
    # every status is kept once (with its request id), the unknown message's too, for when it is stored
    kept = await db.fetch("SELECT provider_message_id, status, request_id FROM message_status_events "
                          "WHERE provider_message_id = ANY($1) ORDER BY id", [*wamids, unknown])
    assert [(r["provider_message_id"], r["status"], r["request_id"]) for r in kept] == [
        (a, "sent", "r0"), (a, "delivered", "r1"), (b, "read", "r2"), (b, "delivered", "r3"), (unknown, "sent", "r5"),
        (c, "failed", "r6"), (c, "read", "r7"), (a, "read", "r8")]
    # the same batch again: all seen before
    assert set(await statuses.apply_statuses(db, [_status(a, "read"), _status(unknown, "sent")])) == {"duplicate"}
