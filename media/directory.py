"""The media store in a directory (``MEDIA_DIR``): ``{root}/{key[:2]}/{key}``.

A file is written to ``{root}/.partial/`` first and renamed into place once its bytes hash to its
key (a rename within one file system is atomic: a reader never sees half a file). Disk I/O runs
in a worker thread, so the event loop never waits on the disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import IO

from wacrm.media.store import Hasher, StoreUnavailable

READ_CHUNK = 256 * 1024


class _FileWriter:
    def __init__(self, file: IO[bytes]) -> None:
        self._file = file
        self.hasher = Hasher()

    async def write(self, chunk: bytes) -> None:
        self.hasher.update(chunk)
        try:
            await asyncio.to_thread(self._file.write, chunk)
        except OSError as exc:
            raise StoreUnavailable(f"cannot write to the media directory: {exc}") from exc


class DirectoryStore:
    name = "directory"

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def path(self, key: str) -> Path:
        return self.root / key[:2] / key

    async def exists(self, key: str) -> bool:
        return await asyncio.to_thread(self.path(key).is_file)

    @contextlib.asynccontextmanager
    async def writer(self, key: str) -> AsyncIterator[_FileWriter]:
        partial = self.root / ".partial" / f"{key}.{secrets.token_hex(4)}"
        try:
            await asyncio.to_thread(partial.parent.mkdir, parents=True, exist_ok=True)
            file = await asyncio.to_thread(open, partial, "xb")
        except OSError as exc:
            raise StoreUnavailable(f"cannot write to the media directory {self.root}: {exc}") from exc
        try:
            writer = _FileWriter(file)
            yield writer
            writer.hasher.verify(key)
            try:
                await asyncio.to_thread(_close_and_place, file, partial, self.path(key))
            except OSError as exc:
                raise StoreUnavailable(f"cannot keep the file in the media directory {self.root}: {exc}") from exc
        finally:
            with contextlib.suppress(OSError):
                await asyncio.to_thread(file.close)
            with contextlib.suppress(OSError):
                await asyncio.to_thread(partial.unlink, missing_ok=True)

    async def reader(self, key: str, start: int, end: int) -> AsyncIterator[bytes]:
        try:
            file = await asyncio.to_thread(open, self.path(key), "rb")
        except OSError as exc:
            raise StoreUnavailable(f"cannot read {key} from the media directory: {exc}") from exc
        try:
            await asyncio.to_thread(file.seek, start)
            left = end - start + 1
            while left > 0:
                chunk = await asyncio.to_thread(file.read, min(READ_CHUNK, left))
                if not chunk:
                    return
                left -= len(chunk)
                yield chunk
        finally:
            await asyncio.to_thread(file.close)

    async def delete(self, key: str) -> None:
        try:
            await asyncio.to_thread(self.path(key).unlink, missing_ok=True)
        except OSError as exc:
            raise StoreUnavailable(f"cannot delete {key} from the media directory: {exc}") from exc

    async def check(self) -> None:
        probe = self.root / ".partial" / f"probe.{secrets.token_hex(4)}"
        try:
            await asyncio.to_thread(_probe, probe)
        except OSError as exc:
            raise StoreUnavailable(f"the media directory {self.root} is not writable: {exc}") from exc


def _close_and_place(file: IO[bytes], partial: Path, final: Path) -> None:
    file.flush()
    os.fsync(file.fileno())
    file.close()
    final.parent.mkdir(parents=True, exist_ok=True)
    os.replace(partial, final)


def _probe(probe: Path) -> None:
    probe.parent.mkdir(parents=True, exist_ok=True)
    probe.write_bytes(b"")
    probe.unlink()
