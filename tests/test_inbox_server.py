"""``wacrm serve`` with the inbox in processes of their own: DB_MISMATCH on a database with a
migration held back (the webhook still accepting), the LLM intelligence with its timeout and
fallback, open event streams closed on shutdown, and logs without secrets or customer data."""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import orjson
import pytest
from conftest import APP_SECRET, Stack, eventually
from fake_llm import FakeLlm
from inbox_client import PASSWORD, Api, customer_says, make_user, phone, sign_in
from test_inbound_fidelity import META, contact, envelope, text_msg

from wacrm.core import procs
from wacrm.core.embedded import free_port, wait_for_port
from wacrm.core.settings import load
from wacrm.storage.db import connect
from wacrm.storage.migrate import discover, migrate
from wacrm.topics.admin import create_topics


def _serve(tmp: Path, database_url: str, *args: str, **env: str) -> tuple[str, object, Path]:
    port = free_port()
    log = tmp / f"serve-{port}.log"
    proc = procs.spawn(procs.python_cmd("serve", *args), log_path=log,
                       env=procs.env_with(DATABASE_URL=database_url, PORT=str(port), HOST="127.0.0.1",
                                          PYTHONUNBUFFERED="1", LOG_LEVEL="INFO", **env))
    wait_for_port(port, 60, proc)
    return f"http://127.0.0.1:{port}", proc, log


async def test_a_schema_behind_the_code_answers_db_mismatch_and_the_webhook_keeps_accepting(
        make_database: Callable[[], str], broker: str, tmp_path: Path) -> None:
    url = make_database()
    conn = await connect(url, timeout=10)
    try:
        await migrate(conn, discover()[:-1])  # the newest migration held back
    finally:
        await conn.close()
    await create_topics(load({"KAFKA_BOOTSTRAP_SERVERS": broker}, "dev"), out=lambda m: None)
    base, proc, log = _serve(tmp_path, url, KAFKA_BOOTSTRAP_SERVERS=broker, WHATSAPP_APP_SECRET=APP_SECRET,
                             WHATSAPP_VERIFY_TOKEN="v" * 12)
    try:
        api = Api(base)
        for method, path in [("GET", "conversations"), ("POST", "auth/login"), ("GET", "events"),
                             ("GET", "tasks"), ("POST", "conversations/1/messages")]:
            status, body = await api.call(method, path, {"email": "a@example.com", "password": "x"})
            assert (status, body["ok"], body["code"]) == (500, False, "DB_MISMATCH"), (method, path, body)
            assert "wacrm migrate" in body["error"] and discover()[-1].name in body["error"]
        # The webhook does not need the new schema: it keeps accepting.
        stack = Stack(url, broker, tmp_path)
        stack.port = int(base.rsplit(":", 1)[1])
        wa = phone()
        msg = text_msg(wa, "hello", int(time.time()))
        status, _ = await stack.post(envelope({"metadata": META, "contacts": [contact(wa, "X")],
                                               "messages": [msg]}))
        assert status == 200
        # Logged once a minute, not once a request.
        assert log.read_text().count("every inbox request answers 500 DB_MISMATCH") == 1

        conn = await connect(url, timeout=10)
        try:
            await migrate(conn)
        finally:
            await conn.close()

        async def healed() -> bool:
            status, _ = await api.call("GET", "conversations")
            return status == 401

        await eventually(healed, 60, "the inbox to notice the migration")
        conn = await connect(url, timeout=10)
        try:
            await conn.execute("ALTER TABLE leads DROP COLUMN score")
        finally:
            await conn.close()

        async def drift() -> dict | None:
            status, body = await api.call("GET", "conversations")
            return body if status == 500 else None

        body = await eventually(drift, 60, "the missing column to be noticed")
        assert body["code"] == "DB_MISMATCH" and "leads.score" in body["error"]
    finally:
        procs.stop(proc, signal.SIGTERM, 20)


@pytest.fixture
async def fake_llm() -> AsyncIterator[FakeLlm]:
    llm = FakeLlm()
    await llm.start()
    try:
        yield llm
    finally:
        await llm.stop()


async def test_only_inbox_llm_intelligence_with_fallback_and_streams_closed_on_shutdown(
        stack: Stack, fake_llm: FakeLlm, tmp_path: Path) -> None:
    base, proc, log = _serve(tmp_path, stack.database_url, "--only", "inbox", LLM_API_BASE_URL=fake_llm.base_url,
                             LLM_MODEL="fake-model", INTELLIGENCE_TIMEOUT_SECONDS="1")
    try:
        # Only the inbox: no webhook here; ready once its database is.
        async with aiohttp.ClientSession() as s:
            async with s.post(f"{base}/webhooks/whatsapp", data=b"{}") as r:
                assert r.status in (404, 405)
            async with s.get(f"{base}/readyz") as r:
                assert r.status == 200 and (await r.json())["status"] == "ready"
        db = await connect(stack.database_url, timeout=10)
        try:
            user = await make_user(db, "agent")
            wa_id = phone()
            text = f"secret text {uuid.uuid4().hex[:6]}: what is the price"
            await customer_says(stack, wa_id, text)  # through the session system's webhook and worker
            cid = await eventually(lambda: db.fetchval(
                "SELECT c.id FROM conversations c JOIN contacts k ON k.id = c.contact_id WHERE k.wa_id = $1", wa_id))
        finally:
            await db.close()
        api = await sign_in(base, user.email)

        answer = {"summary": "Asks for prices.", "intent": "pricing", "lead_stage": "interested", "lead_score": 40,
                  "sentiment": "neutral"}
        fake_llm.script({"reply": orjson.dumps(answer).decode()}, {"delay": 3, "reply": "{}"},
                        {"reply": "not json at all"})
        intel = (await api.post(f"conversations/{cid}/intelligence/refresh"))["intelligence"]
        assert intel["engine"] == "llm" and intel["summary"] == "Asks for prices." and intel["lead_score"] == 40
        request = fake_llm.requests[-1]["body"]
        assert request["response_format"]["type"] == "json_schema" and request["model"] == "fake-model"
        assert text in str(request["messages"])
        slow = (await api.post(f"conversations/{cid}/intelligence/refresh"))["intelligence"]
        assert slow["engine"] == "rules_fallback" and slow["intent"] == "pricing"
        bad = (await api.post(f"conversations/{cid}/intelligence/refresh"))["intelligence"]
        assert bad["engine"] == "rules_fallback"

        # An open stream does not hold the server past its shutdown bound.
        async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as s, \
                s.get(f"{base}/api/v1/events", headers={"Cookie": api.cookie or ""}) as r:
            assert r.status == 200
            await asyncio.wait_for(r.content.readline(), 30)  # the "ready" event began
            started = time.monotonic()
            proc.send_signal(signal.SIGTERM)  # type: ignore[attr-defined]
            # the server ends the stream (other events may come before its end: the system is live)
            await asyncio.wait_for(r.content.read(), 30)
        await eventually(lambda: asyncio.sleep(0, proc.poll() is not None), 30,  # type: ignore[attr-defined]
                         "serve to exit")
        assert time.monotonic() - started < 15 and proc.returncode == 0  # type: ignore[attr-defined]

        logged = log.read_text()
        for secret in (wa_id, text, api.csrf or "", (api.cookie or "=").split("=", 1)[1], PASSWORD):
            assert secret not in logged
    finally:
        procs.stop(proc, signal.SIGTERM, 20)  # type: ignore[arg-type]

