"""`wacrm simulate` as a user runs it against a running system: a reply found by its recipient (it is
not always quoted), and intended silence told apart from a failure."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import asyncpg
from conftest import APP_SECRET, Stack, eventually

from wacrm.whatsapp import simulate

WACRM = str(Path(sys.executable).parent / "wacrm")


async def run(stack: Stack, wa_id: str, text: str, tmp: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "WHATSAPP_APP_SECRET": APP_SECRET, "DATABASE_URL": stack.database_url}
    cmd = [WACRM, "simulate", "--text", text, "--from", wa_id, "--url", stack.webhook, "--fake-meta",
           stack.fake_meta, "--wait", "45", "--state-dir", str(tmp / "no-dev-here")]
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
