"""Several business numbers, each with its own access token, end to end: real processes, the real
database and broker, and fake-meta checking each number's token over HTTP as Meta does.

The stack's own number (``WHATSAPP_PHONE_NUMBER_ID``, token ``WHATSAPP_ACCESS_TOKEN``) needs no
command; the others are added with ``wacrm numbers add`` or ``POST /api/v1/numbers``."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson
import pytest
from conftest import ACCESS_TOKEN, Stack, eventually, own_stack
from inbox_client import Api, make_user, phone, sign_in
from test_openapi import _conforms, contract

from wacrm.core import procs
from wacrm.core.embedded import free_port
from wacrm.storage.db import connect
from wacrm.storage.numbers import new_key
from wacrm.whatsapp import simulate

pytestmark = pytest.mark.integration

HOME = "200000000000001"  # the stack's own number (the dev default of WHATSAPP_PHONE_NUMBER_ID)
PORTO, PORTO_DISPLAY = "200000000000002", "15550002222"
WABA = "100000000000001"
KEY = new_key()


def token() -> str:
    return f"EAAG{uuid.uuid4().hex}{uuid.uuid4().hex}"


@pytest.fixture(scope="module")
async def numbers_stack(make_database: Callable[[], str],
                        tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    async with own_stack(make_database, tmp_path_factory.mktemp("numbers"), TOKEN_ENCRYPTION_KEY=KEY) as (stack, _):
        await meta_tokens(stack, {HOME: ACCESS_TOKEN})  # from now on fake-meta refuses a wrong bearer for it
        yield stack


async def meta_tokens(stack: Stack, tokens: dict[str, str | None]) -> None:
    """Tell fake-meta which token each number now has (Meta's side of a revocation)."""
    async with aiohttp.ClientSession() as s:
        for number, value in tokens.items():
            async with s.post(f"{stack.fake_meta}/__tokens",
                              json={"phone_number_id": number, "token": value}) as r:
                assert r.status == 200, await r.text()


async def wacrm(stack: Stack, *args: str, stdin: str = "", **env: str) -> subprocess.CompletedProcess[str]:
    """A ``wacrm`` command run as an operator runs it, with the stack's environment (and ``env``)."""
    return await asyncio.to_thread(subprocess.run, procs.python_cmd(*args), input=stdin, capture_output=True,
                                   text=True, timeout=120, env={**stack.env(), **env})


async def customer_writes(stack: Stack, number: str, display: str = "15550001111", text: str = "hello",
                          name: str = "Cliente") -> str:
    """A customer (named ``name``) of ``number`` writes; the message id."""
    mid = simulate.new_message_id()
    status, _ = await stack.post(simulate.dumps(simulate.text_body(
        text=text, wa_id=phone(), name=name, phone_number_id=number, display_phone_number=display,
        message_id=mid)))
    assert status == 200
    return mid


async def replies(stack: Stack, message_id: str) -> list[dict[str, Any]]:
    """The sends Meta took that answer ``message_id``."""
    return await stack.replies_to(message_id)


async def admin_api(stack: Stack) -> Api:
    conn = await connect(stack.database_url, timeout=10)
    try:
        admin = await make_user(conn, "admin")
    finally:
        await conn.close()
    return await sign_in(stack.base, admin.email)


async def ledger_states(stack: Stack, message_ids: list[str]) -> list[str]:
    conn = await asyncpg.connect(stack.database_url)
    try:
        return [r[0] for r in await conn.fetch(
            "SELECT state FROM outbound_log WHERE dedupe_key = ANY($1) ORDER BY id",
            [f"auto:{m}" for m in message_ids])]
    finally:
        await conn.close()


def logs_text(stack: Stack) -> str:
    return "".join(p.read_text(errors="replace") for p in Path(stack.logs).glob("*.log"))


async def test_two_numbers_each_reply_with_their_own_token_and_the_inbox_tells_them_apart(
        numbers_stack: Stack) -> None:
    stack = numbers_stack
    porto_token = token()
    await meta_tokens(stack, {PORTO: porto_token})
    added = await wacrm(stack, "numbers", "add", PORTO, "--waba-id", WABA, "--label", "Porto shop",
                        "--rate-limit", "40", stdin=porto_token + "\n")
    assert added.returncode == 0, added.stderr
    assert f"added {PORTO}" in added.stdout and porto_token not in added.stdout + added.stderr

    home_msg = await customer_writes(stack, HOME)
    porto_msg = await customer_writes(stack, PORTO, PORTO_DISPLAY)
    (home_reply,) = await eventually(lambda: replies(stack, home_msg), 60, "the reply from the home number")
    (porto_reply,) = await eventually(lambda: replies(stack, porto_msg), 60, "the reply from the Porto number")
    assert (home_reply["phone_number_id"], home_reply["authorization"]) == (HOME, f"Bearer {ACCESS_TOKEN}")
    assert (porto_reply["phone_number_id"], porto_reply["authorization"]) == (PORTO, f"Bearer {porto_token}")

    admin = await admin_api(stack)
    everything = (await admin.get("conversations?status=all"))["conversations"]
    assert {c["number"]["phone_number_id"] for c in everything} == {HOME, PORTO}
    only_porto = (await admin.get(f"conversations?status=all&number={PORTO}"))["conversations"]
    assert [c["number"] for c in only_porto] == [
        {"phone_number_id": PORTO, "label": "Porto shop", "display_phone_number": PORTO_DISPLAY}]
    status, bad = await admin.call("GET", "conversations?number=not%20a%20number")
    assert (status, bad["code"]) == (422, "INVALID")

    doc = contract()
    listed = await _conforms(doc, admin, "GET", "/numbers")
    by_id = {n["phone_number_id"]: n for n in listed["numbers"]}
    assert by_id[HOME]["token_source"] == "environment" and by_id[HOME]["state"] == "active"
    assert by_id[PORTO] | {"state_at": None} == {
        "phone_number_id": PORTO, "waba_id": WABA, "label": "Porto shop", "display_phone_number": PORTO_DISPLAY,
        "rate_limit_per_s": 40.0, "coexistence": False, "state": "active", "state_reason": None, "state_at": None,
        "token_source": "stored"}
    await _conforms(doc, admin, "GET", "/conversations", f"conversations?number={PORTO}")
    await _conforms(doc, admin, "POST", "/numbers", "numbers", {"phone_number_id": PORTO})  # 422: no token
    conn = await connect(stack.database_url, timeout=10)
    try:
        agent = await sign_in(stack.base, (await make_user(conn, "agent")).email)
        stored = await conn.fetchval("SELECT token_ciphertext FROM business_numbers WHERE phone_number_id = $1", PORTO)
    finally:
        await conn.close()
    assert stored and porto_token not in stored  # encrypted at rest
    await _conforms(doc, agent, "GET", "/numbers")  # 403: admins only
    await _conforms(doc, agent, "POST", "/numbers", "numbers",
                    {"phone_number_id": PORTO, "waba_id": WABA, "access_token": token()})  # 403

    table = await wacrm(stack, "numbers", "list")
    assert table.returncode == 0, table.stderr
    assert "Porto shop" in table.stdout and PORTO_DISPLAY in table.stdout and "environment" in table.stdout
    answers = orjson.dumps([everything, only_porto, listed]).decode() + table.stdout
    assert porto_token not in answers and ACCESS_TOKEN not in answers
    assert porto_token not in logs_text(stack)

    async with aiohttp.ClientSession(headers={"Cookie": admin.cookie or ""}) as s, s.get(stack.base + "/") as r:
        page = await r.text()
    assert 'name="number"' in page and "Porto shop" in page  # the page's number filter


async def test_a_refused_token_holds_that_numbers_replies_until_a_new_token_and_the_other_number_goes_on(
        numbers_stack: Stack) -> None:
    stack = numbers_stack
    old, new = token(), token()
    await meta_tokens(stack, {PORTO: old})
    assert (await wacrm(stack, "numbers", "add", PORTO, "--waba-id", WABA, "--label", "Porto shop",
                        stdin=old)).returncode == 0
    admin = await admin_api(stack)
    dead_letters = await stack.worker_metric("wacrm_dlq_entries_total")

    await meta_tokens(stack, {PORTO: new})  # Meta revoked the old token
    held = [await customer_writes(stack, PORTO, PORTO_DISPLAY) for _ in range(3)]

    async def refused() -> bool:
        numbers = {n["phone_number_id"]: n for n in (await admin.get("numbers"))["numbers"]}
        return numbers[PORTO]["state"] == "token_rejected"

    await eventually(refused, 60, "the Porto number paused for its refused token")
    home = await customer_writes(stack, HOME)
    await eventually(lambda: replies(stack, home), 60, "the home number's reply, while Porto waits")
    await eventually(lambda: ledger_states(stack, held), 60, "the held replies in the ledger")

    async def all_waiting() -> bool:
        return await ledger_states(stack, held) == ["retry_wait"] * 3

    await eventually(all_waiting, 60, "every Porto reply waiting (kept, not failed)")
    notes = (await admin.get("notifications"))["notifications"]
    assert [n for n in notes if n["kind"] == "number_token_rejected" and PORTO in n["body"]]
    for mid in held:
        assert await replies(stack, mid) == []

    added = await admin.post("numbers", {"phone_number_id": PORTO, "waba_id": WABA, "label": "Porto shop",
                                         "access_token": new}, expect=201)
    assert added["number"]["state"] == "active" and added["resumed"] == 3 and new not in orjson.dumps(added).decode()
    for mid in held:
        (reply,) = await eventually(lambda mid=mid: replies(stack, mid), 60, "a held reply sent with the new token")
        assert reply["authorization"] == f"Bearer {new}"

    async def settled() -> bool:
        return await ledger_states(stack, held) == ["sent"] * 3

    await eventually(settled, 30, "every held reply sent")
    for mid in held:
        assert len(await replies(stack, mid)) == 1  # once each
    assert await stack.worker_metric("wacrm_dlq_entries_total") == dead_letters
    assert old not in logs_text(stack) and new not in logs_text(stack)


async def test_a_body_for_an_unknown_number_is_skipped_and_replay_after_numbers_add_brings_it_in(
        numbers_stack: Stack) -> None:
    stack = numbers_stack
    lisbon = "200000000000003"
    before = await stack.worker_metric("wacrm_webhook_unknown_number_total", 'kind="message"')
    first = await customer_writes(stack, lisbon, "15550003333")
    second = await customer_writes(stack, lisbon, "15550003333")

    async def skipped() -> bool:
        return await stack.worker_metric("wacrm_webhook_unknown_number_total", 'kind="message"') >= before + 2

    await eventually(skipped, 60, "both bodies counted as for an unknown number")
    conn = await connect(stack.database_url, timeout=10)
    try:
        assert await conn.fetchval("SELECT count(*) FROM conversations WHERE phone_number_id = $1", lisbon) == 0
        assert await conn.fetchval("SELECT count(*) FROM messages WHERE provider_message_id = ANY($1)",
                                   [first, second]) == 0
    finally:
        await conn.close()
    warnings = [line for line in (stack.logs / "worker.log").read_text().splitlines()
                if "not configured" in line and lisbon in line]
    assert len(warnings) == 1, warnings  # one warning per number, not per body

    lisbon_token = token()
    await meta_tokens(stack, {lisbon: lisbon_token})
    assert (await wacrm(stack, "numbers", "add", lisbon, "--waba-id", WABA, stdin=lisbon_token)).returncode == 0
    replayed = await wacrm(stack, "replay", "--topic", "wa.webhook.raw", "--from-offset", "0", "--settle", "20")
    assert replayed.returncode == 0, replayed.stderr
    for mid in (first, second):
        (reply,) = await eventually(lambda mid=mid: replies(stack, mid), 60, "the replayed message answered")
        assert (reply["phone_number_id"], reply["authorization"]) == (lisbon, f"Bearer {lisbon_token}")


async def test_a_wrong_token_encryption_key_stops_each_process_at_start_naming_it(numbers_stack: Stack) -> None:
    stack = numbers_stack
    wrong = {"TOKEN_ENCRYPTION_KEY": new_key(), "WORKER_METRICS_PORT": "0", "PORT": str(free_port())}
    for command in (("worker",), ("serve", "--only", "inbox"), ("numbers", "add", "200000000000009",
                                                                 "--waba-id", WABA)):
        out = await wacrm(stack, *command, stdin=token(), **wrong)
        assert out.returncode == 2, (command, out.returncode, out.stderr[-2000:])
        assert "TOKEN_ENCRYPTION_KEY" in out.stderr and "Traceback" not in out.stderr, out.stderr[-2000:]
    unset = await wacrm(stack, "numbers", "add", "200000000000009", "--waba-id", WABA, stdin=token(),
                  TOKEN_ENCRYPTION_KEY="")
    assert unset.returncode == 2 and "TOKEN_ENCRYPTION_KEY" in unset.stderr
    malformed = await wacrm(stack, "numbers", "list", TOKEN_ENCRYPTION_KEY="not-a-key")
    assert malformed.returncode == 2 and "TOKEN_ENCRYPTION_KEY" in malformed.stderr
    assert "not-a-key" not in malformed.stderr  # a secret is never repeated back


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
