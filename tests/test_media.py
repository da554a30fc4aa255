"""Inbound media end to end: a customer's file fetched from (fake) Meta by the worker, kept once in the
media store, shown in the thread and served to signed-in users only; every bad input on the way."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path
from typing import Any

import asyncpg
import orjson
from conftest import Stack, eventually
from inbox_client import customer_says, phone
from jsonschema import Draft202012Validator
from media_helpers import fake_media, fetch, media_body, media_row, register, settled, token
from test_openapi import _answer_schema, contract

from wacrm.core import procs
from wacrm.whatsapp.media import MAX_BYTES


def jpeg() -> bytes:
    """Bytes of a JPEG's shape, new each time (the store keeps a file once: the same bytes twice are one)."""
    return b"\xff\xd8\xff\xe0" + os.urandom(40_000) + b"\xff\xd9"


def stored_files(stack: Stack) -> list[Path]:
    return [p for p in stack.media_dir.rglob("*") if p.is_file() and ".partial" not in p.parts]


def conforms(path: str, status: int, answer: Any) -> None:
    """The answer is what inbox/openapi.json says ``GET path`` answers with ``status``."""
    errors = list(Draft202012Validator(_answer_schema(contract(), "GET", path, status)).iter_errors(answer))
    assert not errors, [e.message for e in errors[:5]]


async def thread_message(stack: Stack, bearer: str, db: asyncpg.Connection, mid: str) -> dict:
    cid = await db.fetchval("SELECT conversation_id FROM messages WHERE provider_message_id = $1", mid)
    status, _, body = await fetch(stack, f"/api/v1/conversations/{cid}", bearer)
    assert status == 200
    conforms("/conversations/{id}", 200, orjson.loads(body))
    return next(m for m in orjson.loads(body)["conversation"]["messages"] if m["provider_message_id"] == mid)


async def test_an_image_is_answered_at_once_then_kept_and_served_once_whatever_the_redeliveries(
        stack: Stack, db: asyncpg.Connection) -> None:
    data = jpeg()
    file = await register(stack, data, mime_type="image/jpeg")
    wa_id = phone()
    body, mid = media_body(wa_id, "image", file, caption="How much is this one?")
    assert (await stack.post(body))[0] == 200
    bearer = await token(db)

    # the caption is a message like any other: stored and answered without waiting for the file
    await eventually(lambda: stack.replies_to(mid), 60, "the caption's reply")
    row = await settled(db, file["id"])
    assert row["state"] == "stored" and row["sha256"] == hashlib.sha256(data).hexdigest()
    assert row["size"] == len(data)

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
    assert media == {"id": row["id"], "type": "image", "mime_type": "image/jpeg", "size": len(data),
                     "filename": None, "caption": "How much is this one?", "sha256": row["sha256"],
                     "state": "stored", "error": None, "url": f"/api/v1/media/{row['id']}"}
    status, headers, got = await fetch(stack, media["url"], bearer)
    assert status == 200 and got == data
    assert headers["Content-Type"] == "image/jpeg" and headers["ETag"] == f'"{row["sha256"]}"'
    assert headers["Cache-Control"].startswith("private")


async def test_an_expired_download_url_is_asked_for_afresh_once(stack: Stack, db: asyncpg.Connection) -> None:
    once = await register(stack, jpeg(), mime_type="image/jpeg", expired=1)
    twice = await register(stack, jpeg(), mime_type="image/jpeg", expired=2)
    for file in (once, twice):
        assert (await stack.post(media_body(phone(), "image", file)[0]))[0] == 200

    assert (await settled(db, once["id"]))["state"] == "stored"
    seen = await fake_media(stack, once["id"])
    assert seen["info_calls"] == 2 and seen["downloads"] == 1

    row = await settled(db, twice["id"])
    assert row["state"] == "failed" and "expired" in row["error"]["error"]
    seen = await fake_media(stack, twice["id"])
    assert seen["info_calls"] == 2 and seen["downloads"] == 0


async def test_a_wrong_checksum_keeps_nothing(stack: Stack, db: asyncpg.Connection) -> None:
    data = os.urandom(30_000)
    file = await register(stack, data, mime_type="application/pdf", sha256=hashlib.sha256(b"other").hexdigest())
    body, mid = media_body(phone(), "document", file, filename="offer.pdf", caption="the offer")
    assert (await stack.post(body))[0] == 200

    row = await settled(db, file["id"])
    assert row["state"] == "failed" and row["error"]["code"] == "CHECKSUM_MISMATCH"
    assert "checksum mismatch" in row["error"]["error"]
    assert not [p for p in stored_files(stack) if p.name == hashlib.sha256(data).hexdigest()]
    assert not list((stack.media_dir / ".partial").glob(f"{hashlib.sha256(b'other').hexdigest()}*"))

    bearer = await token(db)
    media = (await thread_message(stack, bearer, db, mid))["media"]
    assert media["state"] == "failed" and "checksum mismatch" in media["error"]
    status, _, body = await fetch(stack, media["url"], bearer)
    assert status == 404 and b'"state":"failed"' in body
    conforms("/media/{id}", 404, orjson.loads(body))


async def test_a_file_over_metas_limit_for_its_type_is_not_downloaded(stack: Stack, db: asyncpg.Connection) -> None:
    file = await register(stack, size=MAX_BYTES["sticker"] + 1, mime_type="image/webp")
    body, mid = media_body(phone(), "sticker", file)
    assert (await stack.post(body))[0] == 200

    row = await settled(db, file["id"])
    assert row["state"] == "too_large" and row["size"] == MAX_BYTES["sticker"] + 1
    assert (await fake_media(stack, file["id"]))["downloads"] == 0
    media = (await thread_message(stack, await token(db), db, mid))["media"]
    assert media["state"] == "too_large" and media["type"] == "sticker"


async def test_transient_failures_are_retried_with_backoff(stack: Stack, db: asyncpg.Connection) -> None:
    file = await register(stack, jpeg(), mime_type="image/jpeg", fail=2)
    assert (await stack.post(media_body(phone(), "image", file)[0]))[0] == 200

    row = await settled(db, file["id"])
    assert row["state"] == "stored" and row["attempts"] == 3
    seen = await fake_media(stack, file["id"])
    assert seen["info_calls"] == 3 and seen["downloads"] == 1


async def test_the_same_file_twice_is_kept_once(stack: Stack, db: asyncpg.Connection) -> None:
    data = os.urandom(20_000)
    first = await register(stack, data, mime_type="image/png")
    second = await register(stack, data, mime_type="image/png")
    assert (await stack.post(media_body(phone(), "image", first)[0]))[0] == 200
    assert (await settled(db, first["id"]))["state"] == "stored"
    assert (await stack.post(media_body(phone(), "image", second)[0]))[0] == 200
    assert (await settled(db, second["id"]))["state"] == "stored"

    key = hashlib.sha256(data).hexdigest()
    assert [p.name for p in stored_files(stack) if p.name == key] == [key]
    assert (await fake_media(stack, second["id"]))["downloads"] == 0  # the same bytes were kept already


async def test_media_is_served_to_signed_in_users_with_ranges_and_its_name(stack: Stack,
                                                                           db: asyncpg.Connection) -> None:
    data = os.urandom(100_000)
    file = await register(stack, data, mime_type="application/pdf")
    assert (await stack.post(media_body(phone(), "document", file, filename="Price list €.pdf")[0]))[0] == 200
    row = await settled(db, file["id"])
    url = f"/api/v1/media/{row['id']}"
    bearer = await token(db)

    status, _, body = await fetch(stack, url, None)
    assert status == 401 and b"UNAUTHENTICATED" in body
    status, _, _ = await fetch(stack, url, "not-a-token")
    assert status == 401

    status, headers, got = await fetch(stack, url, bearer)
    assert status == 200 and got == data
    assert headers["Content-Disposition"] == ("attachment; filename=\"Price list _.pdf\"; "
                                              "filename*=UTF-8''Price%20list%20%E2%82%AC.pdf")
    assert headers["Accept-Ranges"] == "bytes" and headers["Cache-Control"] == "private, max-age=86400"
    etag = headers["ETag"]

    status, headers, got = await fetch(stack, url, bearer, {"Range": "bytes=1000-1999"})
    assert status == 206 and got == data[1000:2000]
    assert headers["Content-Range"] == f"bytes 1000-1999/{len(data)}"
    status, headers, got = await fetch(stack, url, bearer, {"Range": "bytes=-500"})
    assert status == 206 and got == data[-500:]
    status, headers, got = await fetch(stack, url, bearer, {"Range": "bytes=99000-"})
    assert status == 206 and got == data[99000:]
    status, headers, _ = await fetch(stack, url, bearer, {"Range": f"bytes={len(data)}-"})
    assert status == 416 and headers["Content-Range"] == f"bytes */{len(data)}"
    status, _, got = await fetch(stack, url, bearer, {"Range": "bytes=0-9", "If-Range": '"stale"'})
    assert status == 200 and got == data  # the range was for another version: the whole file
    status, _, got = await fetch(stack, url, bearer, {"If-None-Match": etag})
    assert status == 304 and got == b""

    for bad, code in (("/api/v1/media/999999999", 404), ("/api/v1/media/abc", 422)):
        status, _, _ = await fetch(stack, bad, bearer)
        assert status == code


async def test_a_100_mb_document_streams_without_growing_the_worker(stack: Stack, db: asyncpg.Connection) -> None:
    import psutil

    worker = psutil.Process(stack.procs["worker"].pid)
    before = worker.memory_info().rss
    file = await register(stack, size=MAX_BYTES["document"], mime_type="application/pdf")
    assert (await stack.post(media_body(phone(), "document", file, filename="catalogue.pdf")[0]))[0] == 200
    peak = before

    async def done() -> bool:
        nonlocal peak
        peak = max(peak, worker.memory_info().rss)
        row = await media_row(db, file["id"])
        return row is not None and row["state"] in ("stored", "failed", "too_large")

    await eventually(done, 180, "the 100 MB document")
    row = await media_row(db, file["id"])
    assert row is not None and row["state"] == "stored" and row["size"] == MAX_BYTES["document"]
    assert (stack.media_dir / row["sha256"][:2] / row["sha256"]).stat().st_size == MAX_BYTES["document"]
    print(f"worker RSS {before / 2**20:.0f} MiB before, {peak / 2**20:.0f} MiB at the peak of the download")
    assert peak - before < 40 * 1024 * 1024, f"the worker grew by {(peak - before) / 2**20:.0f} MiB"


async def test_prune_expires_media_past_the_retention_and_deletes_files_no_message_shows(
        stack: Stack, db: asyncpg.Connection) -> None:
    old_only, shared = jpeg(), jpeg()
    files = [await register(stack, data, mime_type="image/jpeg") for data in (old_only, shared, shared)]
    rows = []
    mids = []
    for file in files:
        body, mid = media_body(phone(), "image", file)
        assert (await stack.post(body))[0] == 200
        rows.append(await settled(db, file["id"]))
        mids.append(mid)
    # the first two were stored three days ago; the third (the same bytes as the second) today
    await db.execute("UPDATE media SET stored_at = now() - interval '3 days' WHERE id = ANY($1)",
                     [rows[0]["id"], rows[1]["id"]])

    def prune(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(procs.python_cmd("media", "prune", *args), env={**stack.env(), **env},
                              capture_output=True, text=True, timeout=60)

    kept = prune()
    assert kept.returncode == 0 and "kept forever" in kept.stdout
    dry = prune("--dry-run", MEDIA_RETENTION_DAYS="2")
    assert dry.returncode == 0 and "would expire 2 media" in dry.stdout, dry.stdout + dry.stderr
    assert (stack.media_dir / rows[0]["sha256"][:2] / rows[0]["sha256"]).exists()

    done = prune(MEDIA_RETENTION_DAYS="2")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "expired 2 media" in done.stdout and "deleted 1 file(s)" in done.stdout
    states = dict(await db.fetch("SELECT id, state FROM media WHERE id = ANY($1)", [r["id"] for r in rows]))
    assert [states[r["id"]] for r in rows] == ["expired", "expired", "stored"]
    assert not (stack.media_dir / rows[0]["sha256"][:2] / rows[0]["sha256"]).exists()
    assert (stack.media_dir / rows[1]["sha256"][:2] / rows[1]["sha256"]).exists()  # today's message shows it

    bearer = await token(db)
    media = (await thread_message(stack, bearer, db, mids[0]))["media"]
    assert media["state"] == "expired"
    status, _, body = await fetch(stack, media["url"], bearer)
    assert status == 404 and b'"state":"expired"' in body
    status, _, got = await fetch(stack, f"/api/v1/media/{rows[2]['id']}", bearer)
    assert status == 200 and got == shared
