"""The media store's two backends against the same checks: a directory, and an S3 bucket on moto's server
(a real S3 HTTP API on loopback, as aiobotocore tests itself); then the whole system on the bucket."""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import asyncpg
import pytest
from aiobotocore.session import get_session
from conftest import own_stack
from inbox_client import phone
from media_helpers import fake_media, fetch, media_body, register, settled, token

from wacrm.core import procs
from wacrm.core.embedded import free_port, wait_for_port
from wacrm.media import ChecksumMismatch, DirectoryStore, MediaStore, S3Store, StoreUnavailable
from wacrm.media.s3 import PART_BYTES

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="module")
def moto_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """moto's S3 server on a loopback port of its own."""
    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    proc = procs.spawn([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], log_path=log,
                       env=procs.env_with(**CREDENTIALS))
    try:
        wait_for_port(port, 30, proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        procs.stop(proc, timeout=10)


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)


async def make_bucket(url: str, name: str) -> None:
    async with get_session().create_client("s3", endpoint_url=url, region_name="us-east-1") as client:
        await client.create_bucket(Bucket=name)


async def open_uploads(url: str, bucket: str) -> list[dict]:
    async with get_session().create_client("s3", endpoint_url=url, region_name="us-east-1") as client:
        return list((await client.list_multipart_uploads(Bucket=bucket)).get("Uploads", []))


Opener = Callable[[], AbstractAsyncContextManager[MediaStore]]


@pytest.fixture(params=["directory", "s3"])
async def store(request: pytest.FixtureRequest, tmp_path: Path, aws: None) -> AsyncIterator[MediaStore]:
    if request.param == "directory":
        yield DirectoryStore(tmp_path / "media")
        return
    url = request.getfixturevalue("moto_url")
    bucket = f"media-{os.urandom(4).hex()}"
    await make_bucket(url, bucket)
    async with S3Store.open(bucket, endpoint_url=url, region=None, timeout=10) as s3:
        yield s3


async def put(store: MediaStore, data: bytes, key: str | None = None, piece: int = 100_000) -> str:
    key = key or hashlib.sha256(data).hexdigest()
    async with store.writer(key) as out:
        for start in range(0, len(data), piece):
            await out.write(data[start:start + piece])
    return key


async def read(store: MediaStore, key: str, start: int, end: int) -> bytes:
    return b"".join([chunk async for chunk in store.reader(key, start, end)])


async def test_a_file_is_kept_under_its_sha256_and_read_back_in_ranges(store: MediaStore) -> None:
    data = os.urandom(PART_BYTES + 300_000)  # more than one part of a multipart upload
    key = await put(store, data, piece=1_000_000)
    assert await store.exists(key)
    assert await read(store, key, 0, len(data) - 1) == data
    assert await read(store, key, 5, 104) == data[5:105]
    assert await put(store, data) == key  # the same bytes again: the same key, one file
    await store.check()
    await store.delete(key)
    assert not await store.exists(key)


async def test_bytes_that_do_not_hash_to_their_key_are_not_kept(store: MediaStore) -> None:
    data = os.urandom(50_000)
    wrong = hashlib.sha256(b"something else").hexdigest()
    with pytest.raises(ChecksumMismatch, match="checksum mismatch"):
        await put(store, data, wrong)
    assert not await store.exists(wrong)
    assert not await store.exists(hashlib.sha256(data).hexdigest())
    if isinstance(store, DirectoryStore):
        assert not [p for p in store.root.rglob("*") if p.is_file()]
    else:
        assert await open_uploads(store._client.meta.endpoint_url, store.bucket) == []


async def test_a_write_broken_off_keeps_nothing(store: MediaStore) -> None:
    data = os.urandom(PART_BYTES * 2)
    key = hashlib.sha256(data).hexdigest()
    with pytest.raises(ConnectionResetError):
        async with store.writer(key) as out:
            await out.write(data[:PART_BYTES + 10])  # a part already sent, for the bucket
            raise ConnectionResetError("the download broke off")
    assert not await store.exists(key)
    if isinstance(store, S3Store):
        assert await open_uploads(store._client.meta.endpoint_url, store.bucket) == []


async def test_a_directory_that_cannot_be_written_is_unavailable(tmp_path: Path) -> None:
    (tmp_path / "media").write_text("a file where the directory should be")  # root ignores permissions
    store = DirectoryStore(tmp_path / "media")
    with pytest.raises(StoreUnavailable, match="not writable"):
        await store.check()
    with pytest.raises(StoreUnavailable):
        await put(store, b"data")


async def test_a_bucket_that_cannot_be_reached_is_unavailable(aws: None) -> None:
    async with S3Store.open("media", endpoint_url=f"http://127.0.0.1:{free_port()}", region=None,
                            timeout=2) as store:
        with pytest.raises(StoreUnavailable):
            await store.check()
        with pytest.raises(StoreUnavailable):
            await store.exists(hashlib.sha256(b"x").hexdigest())
        with pytest.raises(StoreUnavailable):
            await put(store, b"x")


async def test_the_system_keeps_and_serves_media_in_a_bucket(make_database: Callable[[], str], tmp_path: Path,
                                                             moto_url: str, aws: None) -> None:
    bucket = f"wacrm-{os.urandom(4).hex()}"
    await make_bucket(moto_url, bucket)
    async with own_stack(make_database, tmp_path, MEDIA_S3_BUCKET=bucket, MEDIA_S3_ENDPOINT_URL=moto_url,
                         **CREDENTIALS) as (stack, _):
        data = os.urandom(70_000)
        file = await register(stack, data, mime_type="video/mp4")
        assert (await stack.post(media_body(phone(), "video", file, caption="a video")[0]))[0] == 200
        db = await asyncpg.connect(stack.database_url)
        try:
            row = await settled(db, file["id"])
            bearer = await token(db)
        finally:
            await db.close()
        assert row["state"] == "stored" and row["sha256"] == hashlib.sha256(data).hexdigest()
        assert not stack.media_dir.exists()  # nothing went to the directory
        async with S3Store.open(bucket, endpoint_url=moto_url, region=None, timeout=10) as s3:
            assert await read(s3, row["sha256"], 0, len(data) - 1) == data
        status, headers, got = await fetch(stack, f"/api/v1/media/{row['id']}", bearer, {"Range": "bytes=10-19"})
        assert status == 206 and got == data[10:20] and headers["Content-Type"] == "video/mp4"
        assert (await fake_media(stack, file["id"]))["downloads"] == 1

