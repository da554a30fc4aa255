"""`wacrm dlq` with real poison events: a trigger makes storing some messages fail (a cause we can fix),
the events are dead-lettered with their origin in the headers, listed and shown; once the trigger is
dropped, `dlq redrive` hands them back and each is handled exactly once; a second redrive does nothing."""

from __future__ import annotations

import subprocess

import asyncpg
import orjson
from conftest import Stack, eventually

from wacrm.core import procs
from wacrm.topics import DLQ, RAW, scan
from wacrm.topics.records import DLQ_HEADER_AGENT, DLQ_HEADER_TOPIC
from wacrm.whatsapp import simulate

MARK = "refused-by-dlq-test"


def _wacrm(stack: Stack, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(procs.python_cmd(*args), env=stack.env(), capture_output=True, text=True, timeout=120)


def _message_id(body: bytes) -> str:
    return orjson.loads(body)["entry"][0]["changes"][0]["value"]["messages"][0]["id"]


async def test_poison_events_are_listed_shown_and_redriven_once_the_cause_is_fixed(
        stack: Stack, db: asyncpg.Connection) -> None:
    await db.execute(f"""
        CREATE FUNCTION dlq_test_refuse() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF NEW.body LIKE '%{MARK}%' THEN
                RAISE EXCEPTION 'refused by the test' USING ERRCODE = 'check_violation';
            END IF;
            RETURN NEW;
        END $$;
        CREATE TRIGGER dlq_test_refuse BEFORE INSERT ON messages FOR EACH ROW EXECUTE FUNCTION dlq_test_refuse();""")
    try:
        bodies = [simulate.dumps(simulate.text_body(text=f"{MARK} {i}", wa_id=f"1555009100{i}")) for i in range(2)]
        ids = [_message_id(b) for b in bodies]
        for i, body in enumerate(bodies):
            assert (await stack.post(body, headers={"X-Request-Id": f"dlq-test-{i}"}))[0] == 200

        async def letters() -> list[scan.BusRecord]:
            found = [r for r in await scan.every({"bootstrap_servers": stack.bootstrap}, DLQ, 10)
                     if any(m in r.value.decode("utf-8", "replace") for m in ids)]
            return found if len(found) == 2 else []

        found = await eventually(letters, 60, "both events in wa.dlq")
    finally:
        await db.execute("DROP TRIGGER dlq_test_refuse ON messages; DROP FUNCTION dlq_test_refuse()")

    for rec in found:
        headers = dict(rec.headers)
        assert headers[DLQ_HEADER_TOPIC] == RAW.encode() and headers[DLQ_HEADER_AGENT] == b"ingest"
    letter_ids = sorted(f"{r.partition}:{r.offset}" for r in found)

    listed = _wacrm(stack, "dlq", "list", "--agent", "ingest")
    assert listed.returncode == 0, listed.stderr
    for lid in letter_ids:
        (row,) = [line for line in listed.stdout.splitlines() if line.startswith(lid + " ")]
        assert "ingest" in row and f"{RAW}:" in row

    shown = _wacrm(stack, "dlq", "show", letter_ids[0])
    assert shown.returncode == 0, shown.stderr
    assert "refused by the test" in shown.stdout and "request id: dlq-test-" in shown.stdout
    assert any(m in shown.stdout for m in ids)

    assert await db.fetchval("SELECT count(*) FROM messages WHERE provider_message_id = ANY($1)", ids) == 0
    dry = _wacrm(stack, "dlq", "redrive", "--reason", "poison", "--agent", "ingest", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert all(f"{lid} " in dry.stdout for lid in letter_ids) and "would redrive" in dry.stdout
    assert await db.fetchval("SELECT count(*) FROM dlq_redrives WHERE dlq_partition || ':' || dlq_offset = ANY($1)",
                             letter_ids) == 0  # the dry run marked none of them

    done = _wacrm(stack, "dlq", "redrive", "--agent", "ingest")
    assert done.returncode == 0, done.stderr
    assert all(f"{lid} " in done.stdout for lid in letter_ids)
    for mid in ids:
        await eventually(lambda mid=mid: stack.replies_to(mid), 60, f"a reply to {mid} after the redrive")

    again = _wacrm(stack, "dlq", "redrive", "--agent", "ingest")
    assert again.returncode == 0, again.stderr
    # none of these letters twice (a letter another test left on the shared broker may be redriven here)
    assert not any(f"{lid} " in again.stdout for lid in letter_ids), again.stdout
    assert await db.fetchval("SELECT count(*) FROM messages WHERE provider_message_id = ANY($1)", ids) == 2
    for mid in ids:
        assert len(await stack.replies_to(mid)) == 1


def test_a_malformed_id_is_a_clear_error(stack: Stack) -> None:
    done = _wacrm(stack, "dlq", "show", "seventeen")
    assert done.returncode == 2 and "PARTITION:OFFSET" in done.stderr and "Traceback" not in done.stderr
