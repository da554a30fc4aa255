"""``wacrm media prune``: media kept past ``MEDIA_RETENTION_DAYS`` leaves the store.

Rows stored longer ago than the retention become ``expired`` (their messages show it) and every
file no stored row still uses is deleted from the store, in that order: a file is never deleted
while a message shows it. A file whose delete fails is left (and said so); running the command
again does not find it (its rows are expired): delete it by hand or let the next prune of a newer
copy take it.
"""

from __future__ import annotations

from collections.abc import Callable

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
