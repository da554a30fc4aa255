"""``wacrm media prune``: media kept past ``MEDIA_RETENTION_DAYS`` leaves the store; and ``wacrm simulate``'s
media: the file handed to fake-meta, what became of its download.

Rows stored longer ago than the retention become ``expired`` (their messages show it) and every
file no stored row still uses is deleted from the store, in that order: a file is never deleted
while a message shows it. A file whose delete fails is left (and said so); running the command
again does not find it (its rows are expired): delete it by hand or let the next prune of a newer
copy take it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

from wacrm.core.settings import Settings
from wacrm.media import StoreUnavailable, open_store
from wacrm.storage import media as ledger
from wacrm.storage.db import connect


class PruneError(Exception):
    """The database or the store could not be reached; nothing or part of it was pruned (said how much)."""


async def prune(s: Settings, *, dry_run: bool, out: Callable[[str], None] = print) -> int:
    """Expire and delete; returns the number of files deleted (or that would be, with ``dry_run``)."""
    assert s.media_retention_days is not None and s.direct_url is not None
    days = s.media_retention_days
    try:
        conn = await connect(s.direct_url, timeout=s.db_timeout_s)
    except Exception as exc:
        raise PruneError(f"cannot connect to {s.direct_variable}: {type(exc).__name__}: {exc}") from None
    try:
        async with conn.transaction():
            pruned = await ledger.expire(conn, days, dry_run=dry_run)
    finally:
        await conn.close()
    verb = "would expire" if dry_run else "expired"
    out(f"{verb} {pruned.media} media stored more than {days} day(s) ago; {len(pruned.files)} file(s) "
        f"{'would be' if dry_run else 'to be'} deleted from the store")
    if dry_run:
        return len(pruned.files)
    deleted = 0
    async with open_store(s) as store:
        for key in pruned.files:
            try:
                await store.delete(key)
                deleted += 1
            except StoreUnavailable as exc:
                out(f"could not delete {key}: {exc}")
    out(f"deleted {deleted} file(s) from the {store.name} store")
    if deleted < len(pruned.files):
        raise PruneError(f"{len(pruned.files) - deleted} file(s) could not be deleted (see above)")
    return deleted


class FakeMetaRefused(Exception):
    """fake-meta did not take the simulated message's file."""


async def give_fake_meta(session: aiohttp.ClientSession, fake_meta: str, path: Path, part: dict[str, Any]) -> None:
    """Register the file's bytes with fake-meta under the media id the simulated message names."""
    data = await asyncio.to_thread(path.read_bytes)
    try:
        async with session.post(f"{fake_meta}/__media", data=data,
                                params={"id": part["id"], "mime_type": part["mime_type"]}) as resp:
            if resp.status != 200:
                raise FakeMetaRefused(f"fake-meta at {fake_meta} did not take the file: HTTP {resp.status}")
    except aiohttp.ClientError as exc:
        raise FakeMetaRefused(f"cannot reach fake-meta at {fake_meta}: {exc}") from None


async def downloaded(database_url: str, media_id: str, wait_s: float) -> str:
    """What became of a media id's download, once settled (or that it is still pending after ``wait_s``)."""
    try:
        conn = await connect(database_url, timeout=5)
    except Exception as exc:
        return f"media {media_id}: the database is not reachable ({type(exc).__name__}); see the inbox"
    try:
        deadline = time.monotonic() + wait_s
        while True:
            row = await conn.fetchrow("SELECT id, state, size, error FROM media WHERE provider_media_id = $1",
                                      media_id)
            if row is not None and row["state"] not in ("pending", "downloading"):
                break
            if time.monotonic() >= deadline:
                return f"media {media_id}: still being downloaded after {wait_s:g}s"
            await asyncio.sleep(0.3)
    finally:
        await conn.close()
    if row["state"] == "stored":
        return f"media {media_id}: stored, {row['size']:,} bytes, served at /api/v1/media/{row['id']}"
    return f"media {media_id}: {row['state'].replace('_', ' ')} ({(row['error'] or {}).get('error')})"
