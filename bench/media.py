"""The media measure of ``make bench`` (``python -m bench --only media``; the phase: :mod:`bench.phases.media`).

Two measures on a running pipeline (serve, worker, fake-meta as the Graph API and its media
endpoint, the directory store): media downloads per second (images registered with fake-meta,
their webhooks posted at once, timed from the first post until every one is stored), and the
worker's resident memory (RSS, sampled every 50 ms) while one 100 MB document downloads: the bytes
stream to the store in chunks, so the worker must not grow by the file's size.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import asyncpg
import psutil

from wacrm.whatsapp import signature, simulate
from wacrm.whatsapp.media import MAX_BYTES

IMAGE_BYTES = 200 * 1024
RSS_EVERY_S = 0.05


def media_body(kind: str, file: dict[str, Any], n: int, tag: str, **extra: str) -> bytes:
    """A signed-ready webhook body: customer ``n``'s message of ``kind`` for a file fake-meta holds."""
    body = simulate.text_body(text="x", wa_id=f"4916{n:09d}", name=f"Media {n}",
                              message_id=f"wamid.BENCH_{tag}_{n:07d}")
    message = body["entry"][0]["changes"][0]["value"]["messages"][0]
    message.pop("text")
    message.update(type=kind, **{kind: {"id": file["id"], "mime_type": file["mime_type"],
                                        "sha256": file["sha256_b64"], **extra}})
    return simulate.dumps(body)


async def _register(session: aiohttp.ClientSession, fake_meta: str, size: int, mime: str) -> dict[str, Any]:
    async with session.post(f"{fake_meta}/__media", params={"size": str(size), "mime_type": mime}) as r:
        r.raise_for_status()
        return dict(await r.json())


async def _post(session: aiohttp.ClientSession, webhook: str, secret: str, body: bytes) -> None:
    headers = {"Content-Type": "application/json", "X-Hub-Signature-256": signature.sign(secret, body)}
    for _ in range(20):  # as Meta retries a 503
        async with session.post(webhook, data=body, headers=headers) as r:
            if r.status == 200:
                return
        await asyncio.sleep(0.5)
    raise RuntimeError(f"the webhook did not take a media message: {r.status}")


async def _stored(db: asyncpg.Connection, ids: list[str]) -> tuple[int, int]:
    row = await db.fetchrow("SELECT count(*) FILTER (WHERE state = 'stored'), "
                            "count(*) FILTER (WHERE state IN ('failed', 'too_large')) "
                            "FROM media WHERE provider_media_id = ANY($1)", ids)
    return row[0], row[1]


async def measure(db_url: str, webhook: str, fake_meta: str, secret: str, worker_pid: int, *, images: int,
                  timeout_s: float) -> dict[str, Any]:
    """Downloads/s of ``images`` images of :data:`IMAGE_BYTES`, then the worker's RSS during a 100 MB document."""
    db = await asyncpg.connect(db_url)
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
            files = await asyncio.gather(*(_register(session, fake_meta, IMAGE_BYTES, "image/jpeg")
                                           for _ in range(images)))
            ids = [f["id"] for f in files]
            started = time.monotonic()
            await asyncio.gather(*(_post(session, webhook, secret, media_body("image", f, n, "img"))
                                   for n, f in enumerate(files)))
            stored = failed = 0
            while time.monotonic() - started < timeout_s:
                stored, failed = await _stored(db, ids)
                if stored + failed >= images:
                    break
                await asyncio.sleep(0.05)
            took = time.monotonic() - started

            worker = psutil.Process(worker_pid)
            size = MAX_BYTES["document"]
            doc = await _register(session, fake_meta, size, "application/pdf")
            baseline = worker.memory_info().rss
            peak = baseline
            doc_started = time.monotonic()
            await _post(session, webhook, secret, media_body("document", doc, 0, "doc", filename="catalogue.pdf"))
            doc_stored = 0
            while time.monotonic() - doc_started < timeout_s:
                peak = max(peak, worker.memory_info().rss)
                doc_stored, doc_failed = await _stored(db, [doc["id"]])
                if doc_stored + doc_failed:
                    break
                await asyncio.sleep(RSS_EVERY_S)
            doc_took = time.monotonic() - doc_started
    finally:
        await db.close()
    return {"images": images, "image_bytes": IMAGE_BYTES, "stored": stored, "failed": failed, "seconds": took,
            "downloads_per_s": stored / max(took, 1e-9),
            "document_bytes": size, "document_stored": bool(doc_stored), "document_seconds": doc_took,
            "worker_rss_before": baseline, "worker_rss_peak": peak,
            "worker_rss_growth": peak - baseline}


def section(m: dict[str, Any]) -> list[str]:
    """The report's lines for the media phase."""
    mib = 2 ** 20
    return ["## Media downloads", "",
            f"{m['images']} images of {m['image_bytes'] // 1024} KB, their webhooks posted at once: "
            f"{m['stored']} stored ({m['failed']} failed) in {m['seconds']:.1f} s, "
            f"**{m['downloads_per_s']:.0f} downloads/s** (metadata call, bearer-checked download, sha256 "
            "check, the directory store; fake-meta on the same cores).", "",
            f"One {m['document_bytes'] // mib} MB document: {'stored' if m['document_stored'] else 'NOT stored'} "
            f"in {m['document_seconds']:.1f} s; the worker's RSS {m['worker_rss_before'] / mib:.0f} MiB before, "
            f"**{m['worker_rss_peak'] / mib:.0f} MiB at its peak** (+{m['worker_rss_growth'] / mib:.1f} MiB, "
            f"sampled every {RSS_EVERY_S * 1000:.0f} ms): the file streams to the store in chunks.", ""]
