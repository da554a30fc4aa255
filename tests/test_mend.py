"""A person mends a failed reply, and the thread tells the truth (issue #18, parts 3 and 4), on the
session's system (real PostgreSQL, broker, worker and inbox; fake-meta for Meta).

The end-to-end test writes the HTTP exchanges it makes to the file named by ``MEND_E2E_TRANSCRIPT``
when that is set (and prints them: ``pytest -s`` shows them).
"""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson
from conftest import Stack, eventually
from inbox_client import Api, customer_says, make_user, phone, sign_in
from test_inbound_fidelity import META, contact, envelope, stored, text_msg
from test_replies import ledger, script, sends_to

from wacrm.core import procs
from wacrm.storage import replies
from wacrm.topics import DLQ, scan


def _valid_phone() -> str:
    """A phone number phonenumbers holds valid (a Portuguese mobile), new each time."""
    return "35191" + "".join(random.choices("0123456789", k=7))


class Transcript:
    """The HTTP exchanges of a test, as a person reads them: request line and body, status and answer."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def note(self, text: str) -> None:
        self.lines += ["", f"# {text}"]

    async def call(self, api: Api, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        status, answer = await api.call(method, path, body)
        self.lines.append(f"> {method} /api/v1/{path}" + (f"  {orjson.dumps(body).decode()}" if body is not None
                                                          else ""))
        self.lines.append(f"< {status} {orjson.dumps(answer, option=orjson.OPT_INDENT_2).decode()}")
        return status, answer

    def save(self) -> None:
        text = "\n".join(self.lines).lstrip() + "\n"
        print(text)
        path = os.environ.get("MEND_E2E_TRANSCRIPT")
        if path:
            with open(path, "w") as f:
                f.write(text)


async def _failed_row(db: asyncpg.Connection, key: str) -> asyncpg.Record:
    async def failed() -> asyncpg.Record | None:
        row = await ledger(db, key)
        return row if row is not None and row["state"] == "failed" else None

    return await eventually(failed, 60, f"the ledger row {key} failed")


async def test_a_person_fixes_the_phone_of_a_failed_reply_and_retries_it_once(
        stack: Stack, db: asyncpg.Connection, agent: Api) -> None:
    t = Transcript()
    wrong, right = phone(), _valid_phone()
    name = f"Ines {uuid.uuid4().hex[:6]}"
    # Meta refuses the number: not on WhatsApp (131026), for good
    await script(stack, [{"to": f"+{wrong}", "code": 131026, "http_status": 400}])
    mid = await customer_says(stack, wrong, "Hello, is the shop open today?", name)
    row = await _failed_row(db, f"auto:{mid}")
    cid = row["conversation_id"]
    contact_id = await db.fetchval("SELECT contact_id FROM conversations WHERE id = $1", cid)

    t.note(f"The bot's reply to {name} (+{wrong}) failed for good: Meta answered 131026. The thread shows it.")
    status, body = await t.call(agent, "GET", f"conversations/{cid}")
    assert status == 200
    (failed,) = [m for m in body["conversation"]["messages"] if m["outbound_id"] == row["id"]]
    assert failed["status"] == "failed" and failed["direction"] == "outbound" and failed["retryable"]
    assert failed["error"]["code"] == 131026 and "undeliverable" in failed["error"]["message"].lower()
    assert failed["id"] is None and failed["sent_at"] is None  # Meta never took it: no message, never sent
    assert failed["body"] == row["intent"]["text"]
    assert not [o for o in body["conversation"]["outbound"] if o["id"] == row["id"]]  # shown once

    t.note("The task for the person links to the contact to fix.")
    status, body = await t.call(agent, "GET", "tasks?state=open")
    (task,) = [x for x in body["tasks"] if x["conversation_id"] == cid and x["kind"] == "invalid_recipient"]
    assert task["contact_id"] == contact_id and task["outbound_id"] == row["id"]

    t.note("A phone that is not one is refused, naming the field.")
    for bad in ({"phone": "not a phone"}, {"phone": "+1555"}, {"name": ""}, {"email": "x@example.com"}, {}):
        status, err = await t.call(agent, "PATCH", f"contacts/{contact_id}", bad)
        assert (status, err["code"]) == (422, "INVALID"), bad
    assert "phone" in (await agent.call("PATCH", f"contacts/{contact_id}", {"phone": "12"}))[1]["error"]
    assert (await agent.call("PATCH", "contacts/999999999", {"name": "Nobody"}))[0] == 404

    t.note("The person fixes the phone (typed with spaces) ...")
    typed = f"+{right[:3]} {right[3:5]} {right[5:8]} {right[8:]}"
    status, body = await t.call(agent, "PATCH", f"contacts/{contact_id}", {"name": name, "phone": typed})
    assert status == 200
    assert body["contact"] == {"id": contact_id, "name": name, "phone": f"+{right}", "wa_id": right, "user_id": None}
    assert await db.fetchval("SELECT previous_wa_ids FROM contacts WHERE id = $1", contact_id) == [wrong]

    t.note("... and retries the reply: the same ledger row, queued again, now the person's send.")
    status, body = await t.call(agent, "POST", f"outbound/{row['id']}/retry", {})
    assert status == 202 and body["outbound"] == {"id": row["id"], "state": "queued", "conversation_id": cid}
    t.note("A second retry is refused: the reply is not failed any more.")
    status, err = await t.call(agent, "POST", f"outbound/{row['id']}/retry", {})
    assert (status, err["code"]) == (409, "NOT_RETRYABLE")

    async def went_out() -> list[dict[str, Any]]:
        return [x for x in await sends_to(stack, right) if "id" in (x.get("answered") or {})]

    (sent,) = await eventually(went_out, 60, "the retried reply at fake-meta, to the corrected number")
    assert sent["body"]["text"]["body"] == row["intent"]["text"]
    assert sent["body"]["biz_opaque_callback_data"] == f"ol:{row['id']}"  # under its own ledger row

    async def recorded() -> asyncpg.Record | None:
        r = await ledger(db, f"auto:{mid}")
        return r if r is not None and r["state"] == "sent" else None

    done = await eventually(recorded, 30, "the ledger row sent")
    assert done["provider_message_id"] == sent["answered"]["id"] and done["retries"] == 1
    assert done["retried_by"] == agent.user_id and done["author_user_id"] == agent.user_id  # type: ignore[attr-defined]
    assert not done["automatic"] and done["attempts"] == 1
    assert await db.fetchval("SELECT status FROM tasks WHERE id = $1", task["id"]) == "done"

    t.note("The thread: the reply sent, with when the Graph API accepted it; nothing failed any more.")

    async def thread_sent() -> dict[str, Any] | None:
        messages = (await agent.get(f"conversations/{cid}"))["conversation"]["messages"]
        mine = [m for m in messages if m["outbound_id"] == row["id"]]
        return mine[0] if len(mine) == 1 and mine[0]["status"] != "failed" and mine[0]["id"] else None

    await eventually(thread_sent, 30, "the thread to show the reply sent")
    status, body = await t.call(agent, "GET", f"conversations/{cid}")
    (message,) = [m for m in body["conversation"]["messages"] if m["outbound_id"] == row["id"]]
    assert message["provider_message_id"] == sent["answered"]["id"] and not message["retryable"]
    assert datetime.fromisoformat(message["sent_at"]).timestamp() >= sent["received_at"]
    status, err = await t.call(agent, "POST", f"outbound/{row['id']}/retry", {})
    assert (status, err["code"]) == (409, "NOT_RETRYABLE")
    assert len(await went_out()) == 1  # exactly one send to the corrected number
    status, err = await agent.call("POST", "outbound/999999999/retry", {})
    assert (status, err["code"]) == (404, "NOT_FOUND")
    t.lines += ["", "# fake-meta's record of sends to the corrected number:",
                orjson.dumps([{"to": x["body"]["to"], "text": x["body"]["text"]["body"],
                               "biz_opaque_callback_data": x["body"]["biz_opaque_callback_data"],
                               "answered": x["answered"]} for x in await sends_to(stack, right)],
                             option=orjson.OPT_INDENT_2).decode()]
    t.save()


async def test_a_reply_meta_reports_failed_can_be_retried(stack: Stack, db: asyncpg.Connection, agent: Api) -> None:
    wa_id = phone()
    mid = await customer_says(stack, wa_id, "hi there")

    async def sent() -> asyncpg.Record | None:
        r = await ledger(db, f"auto:{mid}")
        return r if r is not None and r["state"] == "sent" else None

    row = await eventually(sent, 60, "the bot's reply sent")
    await eventually(lambda: db.fetchval("SELECT id FROM messages WHERE provider_message_id = $1",
                                         row["provider_message_id"]), what="its message stored")
    failed = envelope({"metadata": META, "statuses": [{
        "id": row["provider_message_id"], "status": "failed", "timestamp": str(int(time.time())),
        "recipient_id": wa_id, "errors": [{"code": 131026, "title": "Message undeliverable"}]}]})
    assert (await stack.post(failed))[0] == 200
    await _failed_row(db, f"auto:{mid}")  # Meta's own failed status fails the ledger row
    messages = (await agent.get(f"conversations/{row['conversation_id']}"))["conversation"]["messages"]
    (shown,) = [m for m in messages if m["outbound_id"] == row["id"]]
    assert shown["status"] == "failed" and shown["retryable"] and shown["error"]["code"] == 131026
    assert shown["id"] is not None  # Meta took it: a stored message
    await agent.post(f"outbound/{row['id']}/retry", {}, expect=202)

    async def two_sends() -> list[dict[str, Any]]:
        out = [x for x in await sends_to(stack, wa_id) if "id" in (x.get("answered") or {})]
        return out if len(out) == 2 else []

    first, second = await eventually(two_sends, 60, "the reply sent again")
    assert first["body"]["biz_opaque_callback_data"] == second["body"]["biz_opaque_callback_data"]
    assert first["answered"]["id"] != second["answered"]["id"]


async def test_the_bot_pause_silences_the_bot_until_it_is_resumed(stack: Stack, db: asyncpg.Connection,
                                                                  agent: Api) -> None:
    wa_id = phone()
    first = await customer_says(stack, wa_id, "hi")
    await eventually(lambda: stack.replies_to(first), 60, "the bot's first reply")
    cid = (await stored(db, first))["conversation_id"]
    status, err = await agent.call("POST", f"conversations/{cid}/bot", {"paused": "yes"})
    assert (status, err["code"]) == (422, "INVALID")
    body = await agent.post(f"conversations/{cid}/bot", {"paused": True})
    assert body["conversation"]["bot_paused"] is True
    assert (await agent.get(f"conversations/{cid}"))["conversation"]["bot_paused"] is True

    quiet = await customer_says(stack, wa_id, "what are your prices?")
    why = await eventually(lambda: _silence(db, quiet), 60, "the bot's decision on the paused conversation")
    assert why[0] and "person owns" in why[1]
    assert await stack.replies_to(quiet) == []

    await agent.post(f"conversations/{cid}/bot", {"paused": False})
    assert (await agent.get(f"conversations/{cid}"))["conversation"]["bot_paused"] is False
    again = await customer_says(stack, wa_id, "and the prices?")
    await eventually(lambda: stack.replies_to(again), 60, "the bot answering again")


async def _silence(db: asyncpg.Connection, message_id: str) -> tuple[bool, str] | None:
    return await replies.silence_reason(db, message_id)


async def test_the_thread_shows_meta_s_time_for_customers_and_the_acceptance_for_ours(
        stack: Stack, db: asyncpg.Connection, agent: Api) -> None:
    wa_id = phone()
    written = int(time.time()) - 90  # the customer wrote a minute and a half before Meta delivered it
    msg = text_msg(wa_id, "sent from the train", written)
    assert (await stack.post(envelope({"metadata": META, "contacts": [contact(wa_id, "Tom")],
                                       "messages": [msg]})))[0] == 200
    (reply,) = await eventually(lambda: stack.replies_to(msg["id"]), 60, "the bot's reply")
    cid = (await stored(db, msg["id"]))["conversation_id"]

    async def both() -> list[dict[str, Any]]:
        messages = (await agent.get(f"conversations/{cid}"))["conversation"]["messages"]
        return messages if len(messages) == 2 else []

    inbound, outbound = await eventually(both, 30, "both messages in the thread")
    assert datetime.fromisoformat(inbound["sent_at"]) == datetime.fromtimestamp(written, UTC)
    assert datetime.fromisoformat(inbound["created_at"]).timestamp() > written + 60  # not when we stored it
    assert outbound["provider_message_id"] == reply["answered"]["id"]
    assert datetime.fromisoformat(outbound["sent_at"]).timestamp() >= reply["received_at"]


async def test_a_template_reply_is_stored_as_the_customer_sees_it(stack: Stack, db: asyncpg.Connection,
                                                                  agent: Api) -> None:
    wa_id = phone()
    first = await customer_says(stack, wa_id, "hola")
    cid = (await stored(db, first))["conversation_id"]
    await agent.post(f"conversations/{cid}/assign")
    template = {"name": "payment_received", "language": "en", "parameters": {"body": ["Ana", "$10.00"]}}
    await agent.post(f"conversations/{cid}/messages", {"template": template, "idempotency_key": str(uuid.uuid4())},
                     expect=202)

    async def shown() -> list[dict[str, Any]]:
        messages = (await agent.get(f"conversations/{cid}"))["conversation"]["messages"]
        return [m for m in messages if m["type"] == "template" and m["id"]]

    (message,) = await eventually(shown, 60, "the template in the thread")
    assert message["body"] == "Thank you Ana, we received your payment of $10.00."  # fake-meta's catalogue


def _wacrm(stack: Stack, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(procs.python_cmd(*args), env=stack.env(), capture_output=True, text=True, timeout=120)


async def test_dlq_redrive_of_a_sender_letter_queues_its_failed_row_and_sends_it_once(
        stack: Stack, db: asyncpg.Connection) -> None:
    since = datetime.now(UTC).isoformat()
    wa_id = phone()
    await script(stack, [{"to": f"+{wa_id}", "code": 131026, "http_status": 400}])  # once: Meta then takes it
    mid = await customer_says(stack, wa_id, "anyone there?")
    key = f"auto:{mid}"
    row = await _failed_row(db, key)

    async def letter() -> list[scan.BusRecord]:
        return [r for r in await scan.every({"bootstrap_servers": stack.bootstrap}, DLQ, 10)
                if key.encode() in r.value]

    (rec,) = await eventually(letter, 60, "the sender's dead letter")
    letter_id = f"{rec.partition}:{rec.offset}"
    assert len(await sends_to(stack, wa_id)) == 1

    dry = _wacrm(stack, "dlq", "redrive", "--agent", "sender", "--since", since, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert f"{letter_id} " in dry.stdout and "would redrive" in dry.stdout
    assert (await ledger(db, key))["state"] == "failed"

    done = _wacrm(stack, "dlq", "redrive", "--agent", "sender", "--since", since)
    assert done.returncode == 0, done.stderr
    (line,) = [x for x in done.stdout.splitlines() if x.startswith(f"{letter_id} ")]
    assert line.endswith("redriven")

    async def resent() -> asyncpg.Record | None:
        r = await ledger(db, key)
        return r if r is not None and r["state"] == "sent" else None

    after = await eventually(resent, 60, "the re-queued row sent")
    assert after["id"] == row["id"] and after["retries"] == 1 and after["retried_by"] is None
    assert after["automatic"]  # an operator's redrive: the bot's reply, under the bot's fencing still
    accepted = [x for x in await sends_to(stack, wa_id) if "id" in (x.get("answered") or {})]
    assert len(accepted) == 1 and accepted[0]["body"]["biz_opaque_callback_data"] == f"ol:{row['id']}"
    assert await db.fetchval("SELECT count(*) FROM dlq_redrives WHERE dlq_partition = $1 AND dlq_offset = $2",
                             rec.partition, rec.offset) == 1

    again = _wacrm(stack, "dlq", "redrive", "--agent", "sender", "--since", since)
    assert again.returncode == 0, again.stderr
    assert f"{letter_id} " not in again.stdout
    assert len(await sends_to(stack, wa_id)) == 2  # the refused send and the one redriven: nothing more


async def test_two_retries_at_once_queue_the_reply_once(stack: Stack, db: asyncpg.Connection, agent: Api) -> None:
    wa_id = phone()
    await script(stack, [{"to": f"+{wa_id}", "code": 131026, "http_status": 400}])
    mid = await customer_says(stack, wa_id, "hello?")
    row = await _failed_row(db, f"auto:{mid}")
    other = await sign_in(stack.base, (await make_user(db, "admin")).email)
    answers = await asyncio.gather(*(api.call("POST", f"outbound/{row['id']}/retry", {}) for api in (agent, other)))
    assert sorted(status for status, _ in answers) == [202, 409]
    assert [body["code"] for status, body in answers if status == 409] == ["NOT_RETRYABLE"]
    assert (await ledger(db, f"auto:{mid}"))["retries"] == 1

    async def accepted() -> list[dict[str, Any]]:
        return [x for x in await sends_to(stack, wa_id) if "id" in (x.get("answered") or {})]

    await eventually(accepted, 60, "the retried reply sent")
    await eventually(lambda: _row_sent(db, f"auto:{mid}"), 30, "the ledger row sent")
    assert len(await accepted()) == 1


async def _row_sent(db: asyncpg.Connection, key: str) -> bool:
    r = await ledger(db, key)
    return r is not None and r["state"] == "sent"
