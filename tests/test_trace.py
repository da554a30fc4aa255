"""One request id end to end: the webhook's X-Request-Id on the bus, the rows, the log lines and `wacrm trace`."""

from __future__ import annotations

import re
import signal
import subprocess
from pathlib import Path

import aiohttp
import asyncpg
import orjson
from conftest import APP_SECRET, Stack, eventually

from wacrm.core import procs
from wacrm.core.embedded import free_port, wait_for_port
from wacrm.core.settings import load
from wacrm.topics import DLQ, scan
from wacrm.topics.records import REQUEST_ID_MAX_CHARS
from wacrm.whatsapp import signature, simulate


def _trace(stack: Stack, request_id: str, *more: str) -> subprocess.CompletedProcess:
    return subprocess.run(procs.python_cmd("trace", request_id, *more), env=stack.env(), capture_output=True,
                          text=True, timeout=60)


def _message_id(body: bytes) -> str:
    return orjson.loads(body)["entry"][0]["changes"][0]["value"]["messages"][0]["id"]


async def test_one_request_id_from_the_webhook_to_the_read_receipt(stack: Stack, db: asyncpg.Connection) -> None:
    rid = "trace-test-0001"
    body = simulate.dumps(simulate.text_body(text="hello, do you ship to Lisbon?", wa_id="15550007001"))
    message_id = _message_id(body)
    status, _ = await stack.post(body, headers={"X-Request-Id": rid})
    assert status == 200
    (reply,) = await eventually(lambda: stack.replies_to(message_id), what="the reply")
    wamid = reply["answered"]["id"]

    async def read() -> bool:
        return bool(await db.fetchval("SELECT 1 FROM message_status_events WHERE provider_message_id = $1 "
                                      "AND status = 'read'", wamid))

    await eventually(read, what="the reply's read status")
    rows = await db.fetch("SELECT direction, provider_message_id, request_id FROM messages WHERE request_id = $1 "
                          "ORDER BY id", rid)
    assert [(r["direction"], r["provider_message_id"]) for r in rows] == \
        [("inbound", message_id), ("outbound", wamid)]
    ledger = await db.fetchrow("SELECT state, request_id, provider_message_id FROM outbound_log WHERE dedupe_key = $1",
                               f"auto:{message_id}")
    assert (ledger["state"], ledger["request_id"], ledger["provider_message_id"]) == ("sent", rid, wamid)

    done = _trace(stack, rid)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    for stage in ("received", "stored", "decided", "sent", "delivered", "read"):
        assert re.search(rf"^\S+ \S+\s+{stage}\s", out, re.M), f"no {stage} line in:\n{out}"
    assert message_id in out and wamid in out and "wa.webhook.raw:" in out
    assert "done: every reply sent" in out and "stopped" not in out
    # the stages are in time order
    times = [line[:23] for line in out.splitlines()[1:] if re.match(r"\d{4}-", line)]
    assert times == sorted(times)

    # a status webhook is a call of its own: its id is on the status event it brought
    status_rid = await db.fetchval("SELECT request_id FROM message_status_events WHERE provider_message_id = $1 "
                                   "AND status = 'read'", wamid)
    assert status_rid and status_rid != rid
    status_trace = _trace(stack, status_rid, "--no-bus")
    assert status_trace.returncode == 0, status_trace.stderr
    assert f"read of Graph message {wamid} recorded" in status_trace.stdout

    async def logged() -> str:
        text = (stack.logs / "worker.log").read_text(errors="replace")
        return text if f"sent auto:{message_id}" in text else ""

    worker_log = await eventually(logged, what="the worker's sent line")
    mine = [line for line in worker_log.splitlines() if message_id in line and "wacrm." in line]
    assert any("stored message" in line for line in mine) and any("decided conversation" in line for line in mine)
    assert mine and all(line.endswith(f"request_id={rid}") for line in mine), mine
    assert "15550007001" not in worker_log and "Lisbon" not in worker_log  # no phone numbers or texts
    serve_log = (stack.logs / "serve.log").read_text(errors="replace")
    assert re.search(rf"received webhook call: accepted .*request_id={rid}$", serve_log, re.M)


async def test_the_webhook_returns_the_request_id_and_replaces_one_it_cannot_carry(stack: Stack) -> None:
    body = simulate.dumps(simulate.text_body(text="hi", wa_id="15550007002"))
    async with aiohttp.ClientSession() as s:
        headers = {"Content-Type": "application/json", "X-Hub-Signature-256": signature.sign(APP_SECRET, body)}
        async with s.post(stack.webhook, data=body, headers={**headers, "X-Request-Id": "kept-1"}) as r:
            assert r.status == 200 and r.headers["X-Request-Id"] == "kept-1"
        for bad in ("has spaces", "x" * (REQUEST_ID_MAX_CHARS + 1)):
            async with s.post(stack.webhook, data=body, headers={**headers, "X-Request-Id": bad}) as r:
                assert r.status == 200 and re.fullmatch(r"[0-9a-f]{32}", r.headers["X-Request-Id"])
        async with s.post(stack.webhook, data=body, headers={"Content-Type": "application/json"}) as r:
            assert r.status == 401 and re.fullmatch(r"[0-9a-f]{32}", r.headers["X-Request-Id"])


async def test_a_poison_body_is_dead_lettered_with_its_request_id(stack: Stack) -> None:
    rid = "trace-poison-0001"
    status, _ = await stack.post(b'["not", "a", "webhook"]', headers={"X-Request-Id": rid})
    assert status == 200
    client = load({"KAFKA_BOOTSTRAP_SERVERS": stack.bootstrap}, "dev").kafka_client_kwargs()

    async def letters() -> list[scan.BusRecord]:
        return await scan.with_request_id(client, DLQ, rid, 10)

    (letter,) = await eventually(letters, what="the dead letter with the request id header")
    assert b"poison event" in letter.value and b"wa.webhook.raw" in letter.value
    done = _trace(stack, rid)
    assert done.returncode == 0, done.stderr
    assert "dead letter" in done.stdout and "stopped:" in done.stdout and "dead-lettered" in done.stdout

    log_text = (stack.logs / "worker.log").read_text(errors="replace")
    assert re.search(rf"dead-lettering wa\.webhook\.raw.*request_id={rid}$", log_text, re.M)


def test_an_unknown_request_id_is_exit_1_with_a_message(stack: Stack) -> None:
    done = _trace(stack, "no-such-request", "--bus-timeout", "3")
    assert done.returncode == 1 and done.stdout == ""
    assert "no request 'no-such-request'" in done.stderr and "Traceback" not in done.stderr
    bad = _trace(stack, "two words")
    assert bad.returncode == 2 and "REQUEST_ID" in bad.stderr


async def test_json_logs_are_one_object_a_line_with_the_request_id(stack: Stack, tmp_path: Path) -> None:
    port = free_port()
    log_path = tmp_path / "serve-json.log"
    env = {**stack.env(), "PORT": str(port), "LOG_FORMAT": "json"}
    proc = procs.spawn(procs.python_cmd("serve", "--only", "webhook"), log_path=log_path, env=env)
    try:
        wait_for_port(port, 30, proc)
        body = simulate.dumps(simulate.text_body(text="json please", wa_id="15550007003"))
        async with aiohttp.ClientSession() as s, s.post(
                f"http://127.0.0.1:{port}/webhooks/whatsapp", data=body,
                headers={"Content-Type": "application/json", "X-Request-Id": "json-rid-1",
                         "X-Hub-Signature-256": signature.sign(APP_SECRET, body)}) as r:
            assert r.status == 200

        async def logged() -> list[dict]:
            lines = [orjson.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
            return lines if any(x["request_id"] == "json-rid-1" for x in lines) else []

        lines = await eventually(logged, what="the call's JSON log line")
    finally:
        procs.stop(proc, signal.SIGTERM, 20)
    (call,) = [x for x in lines if x["request_id"] == "json-rid-1"]
    assert call["logger"] == "wacrm.webhook" and call["level"] == "INFO"
    assert call["message"].startswith("received webhook call: accepted") and call["time"]
