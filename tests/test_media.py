"""Inbound media end to end: a customer's file fetched from (fake) Meta by the worker, kept once in the
media store, shown in the thread and served to signed-in users only; every bad input on the way."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import asyncpg
from conftest import Stack, eventually
from inbox_client import customer_says, phone
from media_helpers import fake_media, fetch, media_body, media_row, register, settled, token

from wacrm.whatsapp.media import MAX_BYTES

JPEG = b"\xff\xd8\xff\xe0" + os.urandom(40_000) + b"\xff\xd9"


def stored_files(stack: Stack) -> list[Path]:
    return [p for p in stack.media_dir.rglob("*") if p.is_file() and ".partial" not in p.parts]


async def thread_message(stack: Stack, bearer: str, db: asyncpg.Connection, mid: str) -> dict:
    cid = await db.fetchval("SELECT conversation_id FROM messages WHERE provider_message_id = $1", mid)
    status, _, body = await fetch(stack, f"/api/v1/conversations/{cid}", bearer)
    assert status == 200
    import orjson
    return next(m for m in orjson.loads(body)["conversation"]["messages"] if m["provider_message_id"] == mid)


async def test_an_image_is_answered_at_once_then_kept_and_served_once_whatever_the_redeliveries(
        stack: Stack, db: asyncpg.Connection) -> None:
    file = await register(stack, JPEG, mime_type="image/jpeg")
    wa_id = phone()
    body, mid = media_body(wa_id, "image", file, caption="How much is this one?")
    assert (await stack.post(body))[0] == 200
    bearer = await token(db)

    # the caption is a message like any other: stored and answered without waiting for the file
    await eventually(lambda: stack.replies_to(mid), 60, "the caption's reply")
    row = await settled(db, file["id"])
    assert row["state"] == "stored" and row["sha256"] == hashlib.sha256(JPEG).hexdigest()
    assert row["size"] == len(JPEG)

    for _ in range(3):  # Meta redelivers the same webhook
        assert (await stack.post(body))[0] == 200
    await customer_says(stack, wa_id, "hello again")  # behind the redeliveries in the same partition
    await eventually(lambda: db.fetchval("SELECT count(*) FROM messages m JOIN contacts k ON k.id = m.contact_id "
                                         "WHERE k.wa_id = $1", wa_id), 30, "the next message")
    seen = await fake_media(stack, file["id"])
    assert seen["downloads"] == 1 and seen["info_calls"] == 1
    assert await db.fetchval("SELECT count(*) FROM media WHERE provider_media_id = $1", file["id"]) == 1

    message = await thread_message(stack, bearer, db, mid)
    media = message["media"]
    assert media == {"id": row["id"], "type": "image", "mime_type": "image/jpeg", "size": len(JPEG),
                     "filename": None, "caption": "How much is this one?", "sha256": row["sha256"],
                     "state": "stored", "error": None, "url": f"/api/v1/media/{row['id']}"}
    status, headers, data = await fetch(stack, media["url"], bearer)
    assert status == 200 and data == JPEG
    assert headers["Content-Type"] == "image/jpeg" and headers["ETag"] == f'"{row["sha256"]}"'
    assert headers["Cache-Control"].startswith("private")
