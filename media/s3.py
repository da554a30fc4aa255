"""The media store in an S3-compatible bucket (``MEDIA_S3_BUCKET``), through aiobotocore.

Objects are ``{key[:2]}/{key}``. A file is sent as a multipart upload in parts of
:data:`PART_BYTES` (so a 100 MB document never sits in memory whole) and completed only once its
bytes hash to its key; an upload left early is aborted, and S3 shows nothing of it. Credentials
and the region come the usual AWS way (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
``AWS_SESSION_TOKEN``, a profile, an instance role); ``MEDIA_S3_ENDPOINT_URL`` points at another
S3-compatible service (MinIO, R2, moto).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import BotoCoreError, ClientError

from wacrm.media.store import Hasher, StoreUnavailable

PART_BYTES = 8 * 1024 * 1024  # S3 takes parts of 5 MiB and more (the last may be smaller)
READ_CHUNK = 256 * 1024
_FAILURES = (BotoCoreError, ClientError, OSError, TimeoutError)


class _PartWriter:
    def __init__(self, client: Any, bucket: str, object_key: str) -> None:
        self._client, self._bucket, self._key = client, bucket, object_key
        self.hasher = Hasher()
        self.upload_id: str | None = None
        self.parts: list[dict[str, Any]] = []
        self._buffer = bytearray()

    async def write(self, chunk: bytes) -> None:
        self.hasher.update(chunk)
        self._buffer += chunk
        if len(self._buffer) >= PART_BYTES:
            try:
                await self.flush()
            except _FAILURES as exc:
                raise StoreUnavailable(f"cannot write to the bucket {self._bucket}: {exc!r}") from exc

    async def flush(self, *, last: bool = False) -> None:
        """Send what is buffered as the next part (the last one: also when it is empty and no part was sent)."""
        if last and not self._buffer and self.parts:
            return
        if self.upload_id is None:
            started = await self._client.create_multipart_upload(Bucket=self._bucket, Key=self._key)
            self.upload_id = started["UploadId"]
        number = len(self.parts) + 1
        sent = await self._client.upload_part(Bucket=self._bucket, Key=self._key, UploadId=self.upload_id,
                                              PartNumber=number, Body=bytes(self._buffer))
        self.parts.append({"PartNumber": number, "ETag": sent["ETag"]})
        self._buffer.clear()


class S3Store:
    name = "s3"

    def __init__(self, client: Any, bucket: str) -> None:
        self._client = client
        self.bucket = bucket

    @classmethod
    @contextlib.asynccontextmanager
    async def open(cls, bucket: str, *, endpoint_url: str | None, region: str | None,
                   timeout: float) -> AsyncIterator[S3Store]:
        config = AioConfig(connect_timeout=timeout, read_timeout=timeout, retries={"max_attempts": 2})
        async with get_session().create_client("s3", endpoint_url=endpoint_url, region_name=region or "us-east-1",
                                               config=config) as client:
            yield cls(client, bucket)

    @staticmethod
    def object_key(key: str) -> str:
        return f"{key[:2]}/{key}"

    async def exists(self, key: str) -> bool:
        try:
            await self._client.head_object(Bucket=self.bucket, Key=self.object_key(key))
            return True
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise StoreUnavailable(f"cannot reach the bucket {self.bucket}: {exc}") from exc
        except _FAILURES as exc:
            raise StoreUnavailable(f"cannot reach the bucket {self.bucket}: {exc!r}") from exc

    @contextlib.asynccontextmanager
    async def writer(self, key: str) -> AsyncIterator[_PartWriter]:
        writer = _PartWriter(self._client, self.bucket, self.object_key(key))
        done = False
        try:
            yield writer
            writer.hasher.verify(key)
            try:
                await writer.flush(last=True)
                await self._client.complete_multipart_upload(
                    Bucket=self.bucket, Key=self.object_key(key), UploadId=writer.upload_id,
                    MultipartUpload={"Parts": writer.parts})
            except _FAILURES as exc:
                raise StoreUnavailable(f"cannot write to the bucket {self.bucket}: {exc!r}") from exc
            done = True
        finally:
            if not done and writer.upload_id is not None:
                with contextlib.suppress(*_FAILURES):
                    await self._client.abort_multipart_upload(Bucket=self.bucket, Key=self.object_key(key),
                                                              UploadId=writer.upload_id)

    async def reader(self, key: str, start: int, end: int) -> AsyncIterator[bytes]:
        try:
            answer = await self._client.get_object(Bucket=self.bucket, Key=self.object_key(key),
                                                   Range=f"bytes={start}-{end}")
            async with answer["Body"] as body:
                async for chunk in body.iter_chunks(READ_CHUNK):
                    yield chunk
        except _FAILURES as exc:
            raise StoreUnavailable(f"cannot read {key} from the bucket {self.bucket}: {exc!r}") from exc

    async def delete(self, key: str) -> None:
        try:
            await self._client.delete_object(Bucket=self.bucket, Key=self.object_key(key))
        except _FAILURES as exc:
            raise StoreUnavailable(f"cannot delete {key} from the bucket {self.bucket}: {exc!r}") from exc

    async def check(self) -> None:
        try:
            await self._client.head_bucket(Bucket=self.bucket)
        except _FAILURES as exc:
            raise StoreUnavailable(f"the bucket {self.bucket} is not reachable: {exc!r}") from exc
