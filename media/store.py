"""What every media store does, and its errors.

Keys are the content's SHA-256 in hex, so the same file is kept once however often it comes.
A file is written through a :meth:`MediaStore.writer`: it becomes visible under its key only when
the bytes written hash to that key (otherwise :class:`ChecksumMismatch`, and nothing is kept), and
a writer left early (an error, a cancellation) keeps nothing. Every failure of the store itself
(a directory not writable, a full disk, a bucket unreachable) is :class:`StoreUnavailable`: a
transient fault to retry, never the file's fault.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import AsyncIterator
from typing import Protocol


class StoreUnavailable(Exception):
    """The store cannot read or write now (permissions, disk, network); retry later."""

    retryable = True  # read by core.errors.classify: retry in place, never dead-letter


class ChecksumMismatch(Exception):
    """The bytes do not hash to the key they were meant for; nothing was kept."""

    retryable = False

    def __init__(self, expected: str, actual: str) -> None:
        super().__init__(f"checksum mismatch: Meta said sha256 {expected}, the bytes hash to {actual}")
        self.expected, self.actual = expected, actual


class Hasher:
    """The running SHA-256 and size of what a writer was given."""

    def __init__(self) -> None:
        self._sha = hashlib.sha256()
        self.size = 0

    def update(self, chunk: bytes) -> None:
        self._sha.update(chunk)
        self.size += len(chunk)

    def verify(self, key: str) -> None:
        actual = self._sha.hexdigest()
        if actual != key:
            raise ChecksumMismatch(key, actual)


class Writer(Protocol):
    hasher: Hasher  # what was written so far: its size, and its hash once done

    async def write(self, chunk: bytes) -> None: ...


class MediaStore(Protocol):
    """A content-addressed store; ``key`` is always a lowercase hex SHA-256."""

    name: str  # "directory" or "s3", for logs and metrics

    async def exists(self, key: str) -> bool: ...

    def writer(self, key: str) -> contextlib.AbstractAsyncContextManager[Writer]:
        """Write the file ``key`` in chunks; kept on a clean exit when the bytes hash to ``key``."""
        ...

    def reader(self, key: str, start: int, end: int) -> AsyncIterator[bytes]:
        """Bytes ``start`` to ``end`` inclusive of the file ``key``, in chunks."""
        ...

    async def delete(self, key: str) -> None: ...

    async def check(self) -> None:
        """Raise :class:`StoreUnavailable` when the store cannot be written now."""
        ...
