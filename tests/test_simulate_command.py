"""`wacrm simulate` as a user runs it against a running system: what the customer received for the
message (a handover's reply too), intended silence told apart from a failure, an image or a document
stored as such, and a message dated more than 24 hours ago meeting a closed window."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
from conftest import APP_SECRET, Stack, eventually

from wacrm.whatsapp import simulate

WACRM = str(Path(sys.executable).parent / "wacrm")


async def run(stack: Stack, wa_id: str, text: str, tmp: Path, *more: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "WHATSAPP_APP_SECRET": APP_SECRET, "DATABASE_URL": stack.database_url}
    cmd = [WACRM, "simulate", "--text", text, "--from", wa_id, "--url", stack.webhook, "--fake-meta",
           stack.fake_meta, "--wait", "45", "--state-dir", str(tmp / "no-dev-here"), *more]
    return await asyncio.to_thread(subprocess.run, cmd, env=env, capture_output=True, text=True, timeout=90)


def message_id(body: bytes) -> str:
    """The provider message id of the one message in a webhook body made by ``simulate.text_body``."""
    return body.split(b'"messages":[{"id":"', 1)[1].split(b'"', 1)[0].decode()


async def test_simulate_prints_the_reply(stack: Stack, tmp_path: Path) -> None:
    done = await run(stack, "15550066001", "what is the price?", tmp_path)
    assert done.returncode == 0, done.stderr
    assert "reply sent to +15550066001" in done.stdout and "prices" in done.stdout


async def test_simulate_says_why_an_opted_out_customer_gets_no_reply(stack: Stack, tmp_path: Path) -> None:
    wa_id = "15550066002"
    stop = simulate.dumps(simulate.text_body(text="STOP", wa_id=wa_id))
    mid = message_id(stop)
    assert (await stack.post(stop))[0] == 200
    await eventually(lambda: stack.replies_to(mid), 60, "the opt-out confirmation")
    done = await run(stack, wa_id, "what is the price?", tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "no reply, as intended: the customer opted out" in done.stdout


async def test_simulate_says_why_a_conversation_owned_by_a_person_gets_no_reply(stack: Stack, tmp_path: Path) -> None:
    wa_id = "15550066003"
    first = simulate.dumps(simulate.text_body(text="hello", wa_id=wa_id))
    mid = message_id(first)
    assert (await stack.post(first))[0] == 200
    await eventually(lambda: stack.replies_to(mid), 60, "the bot's first answer")
    conn = await asyncpg.connect(stack.database_url)
    try:  # a person pauses the bot on this conversation, as the inbox does
        paused = await conn.execute(
            """UPDATE conversations SET bot_paused = true
               WHERE contact_id = (SELECT id FROM contacts WHERE wa_id = $1)""", wa_id)
    finally:
        await conn.close()
    assert paused == "UPDATE 1"
    done = await run(stack, wa_id, "what is the price?", tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "no reply, as intended: a person owns this conversation" in done.stdout


async def test_simulate_prints_the_reply_a_handover_sends(stack: Stack, tmp_path: Path) -> None:
    # The handover makes a person the owner in the same step that queues its reply: the reply still
    # reaches the customer, and that is what simulate reports.
    done = await run(stack, "15550066004", "can I talk to a human please?", tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "reply sent to +15550066004: 'Sure, a member of our team will reply" in done.stdout
    assert "no reply" not in done.stdout + done.stderr


async def stored(stack: Stack, stdout: str) -> asyncpg.Record:
    mid = stdout.split("message id: ", 1)[1].split()[0]
    conn = await asyncpg.connect(stack.database_url)
    try:
        return await conn.fetchrow("SELECT type, body, content::text AS content FROM messages "
                                   "WHERE provider_message_id = $1", mid)
    finally:
        await conn.close()


async def test_simulate_sends_an_image_and_a_document_with_their_caption(stack: Stack, tmp_path: Path) -> None:
    photo, invoice = tmp_path / "shoe.png", tmp_path / "invoice-7.pdf"
    photo.write_bytes(b"\x89PNG\r\n\x1a\n not really a picture")
    invoice.write_bytes(b"%PDF-1.4 an invoice")
    done = await run(stack, "15550066005", "is this in stock?", tmp_path, "--image", str(photo))
    assert done.returncode == 0, done.stdout + done.stderr
    image = await stored(stack, done.stdout)
    assert image["type"] == "image" and image["body"] == "[image] is this in stock?"
    digest = base64.b64encode(hashlib.sha256(photo.read_bytes()).digest()).decode()
    assert "image/png" in image["content"] and digest in image["content"]
    # fake-meta was given the file: the worker downloaded and kept it
    assert f"stored, {len(photo.read_bytes()):,} bytes, served at /api/v1/media/" in done.stdout, done.stdout

    done = await run(stack, "15550066005", "my invoice", tmp_path, "--document", str(invoice))
    assert done.returncode == 0, done.stdout + done.stderr
    document = await stored(stack, done.stdout)
    assert document["type"] == "document" and document["body"] == "[document] my invoice"
    assert "invoice-7.pdf" in document["content"] and "application/pdf" in document["content"]
    assert f"stored, {len(invoice.read_bytes()):,} bytes" in done.stdout, done.stdout

    refused = await run(stack, "15550066005", "x", tmp_path, "--image", str(invoice))
    assert refused.returncode == 2 and "not a JPEG or PNG" in refused.stderr and "Traceback" not in refused.stderr


async def test_simulate_at_a_time_two_days_ago_meets_a_closed_window(stack: Stack, tmp_path: Path) -> None:
    two_days_ago = (datetime.now(UTC) - timedelta(days=2)).isoformat()
    done = await run(stack, "15550066006", "what is the price?", tmp_path, "--at", two_days_ago)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "the 24-hour window is closed" in done.stdout
    assert "no reply, as intended: the 24-hour window had closed" in done.stdout
    assert "reply sent" not in done.stdout
    assert (await stored(stack, done.stdout))["type"] == "text"
    bad = await run(stack, "15550066006", "hi", tmp_path, "--at", "yesterday")
    assert bad.returncode == 2 and "--at" in bad.stderr and "ISO 8601" in bad.stderr
