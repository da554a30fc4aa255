"""Replies with an LLM, a window template and number pauses, and the crash between a Graph API call
and its record — on a stack of its own (its own broker, rules file and fake LLM)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import asyncpg
import pytest
from conftest import ACCESS_TOKEN, Stack, eventually, own_stack
from fake_llm import FakeLlm
from test_inbound_fidelity import META, contact, envelope, stored, text_msg
from test_replies import _phone, ledger, say, script, sends_to

from wacrm.core import procs
from wacrm.orchestrator.llm import LlmClient
from wacrm.orchestrator.rules import load_rules
from wacrm.orchestrator.service import Orchestrator
from wacrm.storage import replies
from wacrm.storage.db import connect, create_pool
from wacrm.storage.ledger import queue_manual_reply
from wacrm.storage.migrate import run_migrations
from wacrm.storage.numbers import new_key

pytestmark = pytest.mark.skipif(bool(os.environ.get("KAFKA_BOOTSTRAP_SERVERS")),
                                reason="needs a broker of its own: the embedded one")


@pytest.fixture(scope="module")
async def llm() -> AsyncIterator[FakeLlm]:
    fake = FakeLlm(api_key="test-llm-key")
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture(scope="module")
async def llm_stack(make_database: Callable[[], str], llm: FakeLlm,
                    tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    tmp = tmp_path_factory.mktemp("llm-stack")
    rules = json.loads((Path(__file__).parents[1] / "orchestrator" / "default_rules.json").read_text())
    rules["window_template"] = {"name": "follow_up", "language": "en_US", "parameters": ["friend"]}
    # A timeout long enough for a slow model during a burst (several seconds), short enough for the fallback test.
    rules["llm"].update(timeout_seconds=4, system_prompt="You are the test shop's assistant.")
    (tmp / "rules.json").write_text(json.dumps(rules))
    async with own_stack(make_database, tmp, RULES_FILE=str(tmp / "rules.json"), LLM_API_BASE_URL=llm.base_url,
                         LLM_API_KEY="test-llm-key", LLM_MODEL="test-model", PAUSE_SECONDS="3",
                         TOKEN_ENCRYPTION_KEY=new_key()) as (stack, _):
        yield stack


@pytest.fixture
async def ldb(llm_stack: Stack) -> AsyncIterator[asyncpg.Connection]:
    conn = await connect(llm_stack.database_url, timeout=10)
    yield conn
    await conn.close()


async def test_the_model_answers_with_the_conversation_as_context(llm_stack: Stack, llm: FakeLlm,
                                                                  ldb: asyncpg.Connection) -> None:
    wa_id = _phone()
    llm.script({"reply": "Our blue one is in stock!"})
    (mid,) = await say(llm_stack, wa_id, "is the blue one in stock?")
    (reply,) = await eventually(lambda: llm_stack.replies_to(mid), what="the model's reply")
    assert reply["body"]["text"]["body"] == "Our blue one is in stock!"
    body = llm.requests[-1]["body"]
    assert llm.requests[-1]["authorization"] == "Bearer test-llm-key" and body["model"] == "test-model"
    assert body["messages"][0] == {"role": "system", "content": "You are the test shop's assistant."}
    assert body["messages"][-1] == {"role": "user", "content": "is the blue one in stock?"}
    assert await llm_stack.worker_metric("wacrm_replies_total", 'engine="llm",rule="llm"') >= 1


async def test_the_model_hands_over_through_its_tool(llm_stack: Stack, llm: FakeLlm, ldb: asyncpg.Connection) -> None:
    wa_id = _phone()
    llm.script({"handover": "refund request"})
    (mid,) = await say(llm_stack, wa_id, "I want my money back for order 42")
    row = await stored(ldb, mid)

    async def handed_over() -> bool:
        return bool(await ldb.fetchval("SELECT needs_human FROM conversations WHERE id = $1", row["conversation_id"]))

    await eventually(handed_over, what="the handover")
    task = await ldb.fetchrow("SELECT * FROM tasks WHERE conversation_id = $1 AND kind = 'handover'",
                              row["conversation_id"])
    assert "refund request" in task["title"]


async def test_model_errors_and_timeouts_fall_back_to_the_rules(llm_stack: Stack, llm: FakeLlm,
                                                                ldb: asyncpg.Connection) -> None:
    before = await llm_stack.worker_metric("wacrm_llm_fallbacks_total")
    for step in ({"status": 500}, {"delay": 5, "reply": "too late"}):  # the model's timeout is 4 s
        llm.script(step)
        (mid,) = await say(llm_stack, _phone(), "what is the price?")
        (reply,) = await eventually(lambda mid=mid: llm_stack.replies_to(mid), what="the rules' answer")
        assert "prices" in reply["body"]["text"]["body"]
    assert await llm_stack.worker_metric("wacrm_llm_fallbacks_total") >= before + 2


async def test_a_person_taking_over_while_the_model_thinks_stops_the_reply(llm_stack: Stack, llm: FakeLlm,
                                                                          ldb: asyncpg.Connection) -> None:
    wa_id = _phone()
    (first,) = await say(llm_stack, wa_id, "hello")
    await eventually(lambda: llm_stack.replies_to(first), what="a first reply")
    conv_id = (await stored(ldb, first))["conversation_id"]
    asked = len(llm.requests)
    llm.script({"delay": 2.5, "reply": "I would have talked over the human"})  # the takeover lands meanwhile
    (mid,) = await say(llm_stack, wa_id, "can you check my order?")

    async def thinking() -> bool:
        return len(llm.requests) > asked

    await eventually(thinking, what="the model to be asked")
    async with ldb.transaction():
        await replies.assign(ldb, conv_id, None)  # a person takes it (ownership version moves on)

    async def decided() -> bool:  # the model's answer came back and the orchestrator dealt with it
        return await ldb.fetchval("SELECT reply_upto_message_id >= $2 AND reply_due_at IS NULL FROM conversations "
                                  "WHERE id = $1", conv_id, (await stored(ldb, mid))["id"])

    await eventually(decided, what="the orchestrator to settle the model's late answer")
    assert await ledger(ldb, f"auto:{mid}") is None  # nothing queued, so nothing can be sent
    assert await llm_stack.replies_to(mid) == []


async def test_outside_the_window_the_template_is_sent(llm_stack: Stack, ldb: asyncpg.Connection) -> None:
    wa_id = _phone()
    (first,) = await say(llm_stack, wa_id, "hi")
    await eventually(lambda: llm_stack.replies_to(first), what="a first reply")
    conv_id = (await stored(ldb, first))["conversation_id"]
    await ldb.execute("UPDATE conversations SET last_inbound_at = now() - interval '30 hours' WHERE id = $1", conv_id)
    async with ldb.transaction():
        await queue_manual_reply(ldb, conv_id, "Still interested?", "late-" + wa_id)

    async def template_sent() -> list:
        return [x for x in await sends_to(llm_stack, wa_id) if x["body"]["type"] == "template"]

    (sent,) = await eventually(template_sent, what="the template")
    assert sent["body"]["template"]["name"] == "follow_up"
    assert sent["body"]["template"]["components"][0]["parameters"] == [{"type": "text", "text": "friend"}]

    async def stored_template() -> asyncpg.Record | None:
        return await ldb.fetchrow("SELECT * FROM messages WHERE provider_message_id = $1", sent["answered"]["id"])

    message = await eventually(stored_template, what="the template in the conversation")
    # what the customer got: the catalogue's text (fake-meta's follow_up, synced by the inbox at start)
    assert message["body"] == ("Hi friend, we have not heard from you in a while. Reply to this message and we "
                               "will pick up where we left off.\nReply STOP to opt out")
    assert await ldb.fetchval("SELECT count(*) FROM messages WHERE conversation_id = $1 AND body = $2",
                              conv_id, "Still interested?") == 0  # the free text never went, so it is not there


async def test_a_late_131047_failure_sends_the_template(llm_stack: Stack, ldb: asyncpg.Connection) -> None:
    wa_id = _phone()
    (first,) = await say(llm_stack, wa_id, "hi there")
    (reply,) = await eventually(lambda: llm_stack.replies_to(first), what="a first reply")
    wamid = reply["answered"]["id"]
    await eventually(lambda: ldb.fetchval("SELECT id FROM messages WHERE provider_message_id = $1", wamid),
                     what="the reply's row")
    failed = envelope({"metadata": META, "statuses": [{
        "id": wamid, "status": "failed", "timestamp": str(int(time.time())), "recipient_id": wa_id,
        "errors": [{"code": 131047, "title": "Re-engagement message", "message": "Re-engagement message"}]}]})
    assert (await llm_stack.post(failed))[0] == 200

    async def template_sent() -> list:
        return [x for x in await sends_to(llm_stack, wa_id) if x["body"]["type"] == "template"]

    await eventually(template_sent, what="the template after the failed status")


async def test_an_expired_token_holds_the_number_until_it_has_a_token_again(llm_stack: Stack,
                                                                            ldb: asyncpg.Connection) -> None:
    wa_id, number = _phone(), META["phone_number_id"]
    await script(llm_stack, [{"to": f"+{wa_id}", "code": 190, "http_status": 401}])
    (mid,) = await say(llm_stack, wa_id, "hello")

    async def held() -> bool:
        return await ldb.fetchval("SELECT state FROM business_numbers WHERE phone_number_id = $1",
                                  number) == "token_rejected"

    await eventually(held, what="the number held for its refused token")
    assert (await ledger(ldb, f"auto:{mid}"))["state"] == "retry_wait"  # kept, not failed
    given = await asyncio.to_thread(subprocess.run, procs.python_cmd("numbers", "add", number, "--waba-id",
                                                                      "100000000000001"),
                                    input=ACCESS_TOKEN, capture_output=True, text=True, env=llm_stack.env())
    assert given.returncode == 0, given.stderr

    async def sent() -> bool:
        row = await ledger(ldb, f"auto:{mid}")
        return bool(row and row["state"] == "sent")

    await eventually(sent, 30, "the reply once the number has a token again")
    row = await ledger(ldb, f"auto:{mid}")
    assert row["attempts"] == 1  # a pause does not use up the retry budget
    assert len(await sends_to(llm_stack, wa_id)) == 2


async def test_a_worker_killed_mid_send_sends_no_second_one_and_the_status_settles_it(
        llm_stack: Stack, ldb: asyncpg.Connection) -> None:
    wa_id = _phone()
    await script(llm_stack, [{"to": f"+{wa_id}", "delay_ms": 8000}])
    (mid,) = await say(llm_stack, wa_id, "crash test")
    await eventually(lambda: sends_to(llm_stack, wa_id), what="the Graph API call to start")
    llm_stack.procs["worker"].kill()  # between the call and its record
    llm_stack.procs["worker"].wait()
    llm_stack.start("worker")
    await llm_stack.wait_worker(90)

    async def settled() -> asyncpg.Record | None:  # Meta took it: fake-meta's statuses name the row
        row = await ledger(ldb, f"auto:{mid}")
        return row if row and row["state"] == "sent" else None

    row = await eventually(settled, 90, "the send settled by its status")
    assert row["settled_by"] == "status"
    assert len(await sends_to(llm_stack, wa_id)) == 1  # the row is finished: nothing can send it again


def _asked_about(llm: FakeLlm, text: str) -> list[dict]:
    """The model requests whose conversation includes ``text``."""
    return [r for r in llm.requests if any(m.get("content") == text for m in (r["body"] or {}).get("messages", []))]


async def test_more_due_conversations_than_pool_connections_are_all_answered(llm_stack: Stack, llm: FakeLlm,
                                                                             ldb: asyncpg.Connection) -> None:
    count = 20  # the worker's pool holds 12 connections (2 × BATCH_LANES + 4); a lease takes up to 20
    phones = [_phone() for _ in range(count)]
    msgs = [text_msg(p, f"pool {p}", int(time.time())) for p in phones]
    llm.script(*[{"delay": 2, "reply": "pool answer"}] * count)
    body = envelope({"metadata": META, "contacts": [contact(p, "Pool") for p in phones], "messages": msgs})
    assert (await llm_stack.post(body))[0] == 200  # one body: all due at about the same time

    async def all_answered() -> bool:
        return all([await llm_stack.replies_to(m["id"]) for m in msgs])

    await eventually(all_answered, 120, "every conversation to be answered")
    for m in msgs:
        (reply,) = await llm_stack.replies_to(m["id"])
        assert reply["body"]["text"]["body"] == "pool answer"
    assert llm.pending == 0


async def test_no_connection_is_held_while_the_model_answers(make_database: Callable[[], str], llm: FakeLlm) -> None:
    """Six conversations answered at once through a pool of two connections: every model call is
    under way before the first returns, which cannot happen if each call held a connection."""
    url = make_database()  # a database of its own: no worker answers these conversations
    await run_migrations(url, 10.0, out=lambda m: None)
    pool = await create_pool(url, timeout=10, min_size=1, max_size=2)
    delay, count = 3.0, 6
    try:
        conversations = []
        async with pool.acquire() as conn:
            for n in range(count):
                wa_id = _phone()
                contact_id = await conn.fetchval(
                    "INSERT INTO contacts (phone_number_id, wa_id) VALUES ('1', $1) RETURNING id", wa_id)
                conv = await conn.fetchval("INSERT INTO conversations (conversation_key, phone_number_id, contact_id) "
                                           "VALUES ($1, '1', $2) RETURNING id", f"1:{wa_id}", contact_id)
                await conn.execute("INSERT INTO messages (provider_message_id, conversation_id, contact_id, direction, "
                                   "type, body, status) VALUES ($1, $2, $3, 'inbound', 'text', $4, 'received')",
                                   f"wamid.pool{n}{wa_id}", conv, contact_id, f"pool question {wa_id}")
                conversations.append(conv)
        asked = len(llm.requests)
        llm.script(*[{"delay": delay, "reply": "held no connection"}] * count)
        rules = load_rules(None)
        async with aiohttp.ClientSession() as session:
            orchestrator = Orchestrator(rules, LlmClient(session, llm.base_url, "test-llm-key", "test-model",
                                                         timeout=delay + 30, max_reply_chars=200))
            answers = await asyncio.wait_for(
                asyncio.gather(*(orchestrator.answer(pool, c) for c in conversations)), 120)
        assert [[i.text for i in a] for a in answers] == [["held no connection"]] * count
        started = [r["received_at"] for r in llm.requests[asked:]]
        assert len(started) == count
        assert max(started) < min(started) + delay  # all asked before the first answer came back
    finally:
        await pool.close()


async def test_a_burst_during_a_slow_model_call_is_answered_once(llm_stack: Stack, llm: FakeLlm,
                                                                 ldb: asyncpg.Connection) -> None:
    """Two workers: while one waits on the model, the other's reply timer must not take the same
    conversation again because new messages arrived (one worker's timer waits for its own calls)."""
    alone = await llm_stack.worker_metric("wacrm_worker_assigned_partitions")

    async def assigned(check: Callable[[float], bool]) -> bool:
        return check(await llm_stack.worker_metric("wacrm_worker_assigned_partitions"))

    llm_stack.start("worker2")
    try:
        await eventually(lambda: assigned(lambda n: 0 < n < alone), 90, "a second worker to share the partitions")
        await _burst_during_a_slow_model_call(llm_stack, llm, ldb)
    finally:
        llm_stack.stop("worker2")
        await eventually(lambda: assigned(lambda n: n == alone), 90, "the first worker to hold every partition again")


async def _burst_during_a_slow_model_call(llm_stack: Stack, llm: FakeLlm, ldb: asyncpg.Connection) -> None:
    wa_id = _phone()
    first_texts = [f"hola {wa_id}", f"precio {wa_id}?"]
    later_texts = [f"y el envío {wa_id}?", f"¿y el color {wa_id}?"]
    delay = 4.0
    llm.script({"delay": delay - 0.5, "reply": "First answer"}, {"reply": "Second answer"})
    before = await say(llm_stack, wa_id, *first_texts)
    async def thinking() -> bool:
        return bool(_asked_about(llm, first_texts[-1]))

    await eventually(thinking, what="the model to be asked")
    during = await say(llm_stack, wa_id, *later_texts)  # while the model is still answering the first two
    conv_id = (await stored(ldb, during[-1]))["conversation_id"]
    last_id = (await stored(ldb, during[-1]))["id"]

    async def settled() -> bool:  # every message answered, no lease in flight, every queued reply sent
        done = await ldb.fetchval("SELECT reply_upto_message_id >= $2 AND reply_due_at IS NULL FROM conversations "
                                  "WHERE id = $1", conv_id, last_id)
        unsent = await ldb.fetchval("SELECT count(*) FROM outbound_log WHERE conversation_id = $1 "
                                    "AND state <> 'sent'", conv_id)
        return bool(done) and unsent == 0

    await eventually(settled, 90, "the burst and the messages during the model call to be answered")
    sent = await sends_to(llm_stack, wa_id)
    # The first answer quotes what it answers; the second, in the same running exchange, does not.
    assert [(x["body"].get("context", {}).get("message_id"), x["body"]["text"]["body"]) for x in sent] == [
        (before[-1], "First answer"), (None, "Second answer")]
    assert await ldb.fetchval("SELECT count(*) FROM outbound_log WHERE conversation_id = $1", conv_id) == 2
    asked = _asked_about(llm, first_texts[0])
    assert len(asked) == 2  # never a second model call for the same messages while the first one runs
    assert asked[1]["received_at"] >= asked[0]["received_at"] + delay - 0.5  # after the first call returned
    contents = [{m["content"] for m in r["body"]["messages"]} for r in asked]
    assert not set(later_texts) & contents[0] and set(later_texts) <= contents[1]
