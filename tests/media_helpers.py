"""Customer media for the tests: files registered with fake-meta, media webhooks, the served bytes."""

from __future__ import annotations

import time
import uuid
from typing import Any

import aiohttp
import asyncpg
from conftest import Stack, eventually
from multidict import CIMultiDict
from test_inbound_fidelity import META, contact, envelope

from wacrm.inbox import auth


async def register(stack: Stack, data: bytes = b"", **query: Any) -> dict[str, Any]:
    """A file fake-meta serves as Meta would (query: id, mime_type, sha256, expired, fail, size)."""
    async with aiohttp.ClientSession() as s, s.post(f"{stack.fake_meta}/__media", data=data,
                                                    params={k: str(v) for k, v in query.items()}) as r:
        assert r.status == 200, await r.text()
        return dict(await r.json())


async def fake_media(stack: Stack, media_id: str) -> dict[str, Any]:
    """What fake-meta saw of a file: its metadata calls and downloads."""
    async with aiohttp.ClientSession() as s, s.get(f"{stack.fake_meta}/__media") as r:
        return next(x for x in await r.json() if x["id"] == media_id)


def media_body(wa_id: str, kind: str, file: dict[str, Any], *, caption: str | None = None,
               filename: str | None = None, mid: str | None = None, name: str = "Cliente") -> tuple[bytes, str]:
    """A webhook with one media message for a registered file; returns the body and the message id."""
    part: dict[str, Any] = {"id": file["id"], "mime_type": file["mime_type"], "sha256": file["sha256_b64"]}
    if caption:
        part["caption"] = caption
    if filename:
        part["filename"] = filename
    mid = mid or f"wamid.M_{uuid.uuid4().hex}"
    msg = {"from": wa_id, "id": mid, "timestamp": str(int(time.time())), "type": kind, kind: part}
    return envelope({"metadata": META, "contacts": [contact(wa_id, name)], "messages": [msg]}), mid


async def media_row(db: asyncpg.Connection, media_id: str) -> asyncpg.Record | None:
    return await db.fetchrow("SELECT * FROM media WHERE provider_media_id = $1", media_id)


async def settled(db: asyncpg.Connection, media_id: str, timeout: float = 60) -> asyncpg.Record:
    """The media row once its download reached an outcome (stored, failed, too_large)."""
    async def done() -> asyncpg.Record | None:
        row = await media_row(db, media_id)
        return row if row is not None and row["state"] in ("stored", "failed", "too_large") else None

    return await eventually(done, timeout, f"media {media_id} to be downloaded or given up")


async def token(db: asyncpg.Connection, role: str = "agent") -> str:
    user = await auth.add_user(db, f"{role}-{uuid.uuid4().hex[:10]}@example.com", role,
                               await auth.hash_password_async("correct horse battery staple"))
    return await auth.issue_token(db, user.id)


async def fetch(stack: Stack, path: str, bearer: str | None,
                headers: dict[str, str] | None = None) -> tuple[int, CIMultiDict[str], bytes]:
    h = dict(headers or {})
    if bearer:
        h["Authorization"] = f"Bearer {bearer}"
    async with aiohttp.ClientSession() as s, s.get(f"{stack.base}{path}", headers=h) as r:
        return r.status, CIMultiDict(r.headers), await r.read()
