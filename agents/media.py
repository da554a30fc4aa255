"""Media agent: ``wa.media`` → the customer's file fetched from Meta and kept in the media store.

Input key: the conversation key (the ingest agent publishes one :class:`topics.records.MediaJob`
per media message it stores; the worker's sweep republishes what is due again). A batch at a
time; its downloads run side by side (at most :data:`PARALLEL`).

The ``media`` row is the authority (:mod:`storage.media`): a job only names it. Per job: claim
the row (one statement: pending and due, or a dead worker's claim past :data:`LEASE_S`; anything
else is a redelivery, a replay or a copy in hand elsewhere, and does nothing), ask the media
endpoint for the URL with the token of the number the message came to (``Numbers.token_for``), and
unless the type's limit is passed (``too_large``) or the same file is kept already, stream the
bytes into the store, which keeps them only when they hash to Meta's sha256 (else ``failed``,
nothing kept). An expired URL (404) is asked for afresh once.

Failures: a Graph API error that says retry → back to ``pending`` with the send's backoff
(``RETRY_BASE_SECONDS`` × ``RETRY_MULTIPLIER``ⁿ), ``failed`` after ``SEND_ATTEMPTS``; a permanent
one → ``failed`` with Meta's words. The store unavailable → the claim is given back and the batch
raised to the runner, which retries it in place with backoff: nothing is skipped while the store
is away, and captions, on their own topic, do not wait. Commit: after every job's outcome is recorded.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from wacrm.agents.runner import Item
from wacrm.core import metrics
from wacrm.core.settings import Settings
from wacrm.media import ChecksumMismatch, MediaStore, StoreUnavailable
from wacrm.storage import media as ledger
from wacrm.storage import numbers
from wacrm.topics.records import decode_media_job
from wacrm.whatsapp.graph import GraphError
from wacrm.whatsapp.media import MAX_BYTES, MediaClient, MediaInfo, TooLarge, UrlExpired, sha256_hex

if TYPE_CHECKING:  # the worker's resources; imported for the type only
    from wacrm.agents.context import Resources

log = logging.getLogger("wacrm.media")
PARALLEL = 4  # downloads of one batch at a time
LEASE_S = 900.0  # a claim older than this lost its worker: the sweep publishes it again


TOKEN_WAIT_S = 60.0  # a download for a number whose token was refused (or that has none) is tried again then


class MediaAgent:
    def __init__(self, settings: Settings, resources: Resources) -> None:
        self._s = settings
        self._res = resources
        self._delays = settings.retry_delays()
        self._parallel = asyncio.Semaphore(PARALLEL)

    @property
    def _store(self) -> MediaStore:
        return self._res.media_store

    @property
    def _client(self) -> MediaClient:
        return self._res.media_client

    async def handle(self, items: list[Item]) -> list[str]:
        """Every job of the batch, side by side; the first store failure is raised once all are done
        (the others' outcomes are recorded: the runner's retry finds them finished)."""
        jobs = [decode_media_job(item.value) for item in items]
        results = await asyncio.gather(*(self._guarded(job.media_id, item.request_id)
                                         for job, item in zip(jobs, items, strict=True)), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return [r for r in results if isinstance(r, str)]

    async def _guarded(self, media_id: str, request_id: str | None) -> str:
        async with self._parallel:
            return await self._one(media_id, request_id)

    async def _one(self, media_id: str, request_id: str | None) -> str:
        async with self._res.pool.acquire() as conn:
            claimed = await ledger.claim(conn, media_id, LEASE_S)
        if claimed is None:  # done, not due yet, or in another worker's hands
            metrics.MEDIA_DOWNLOADS.labels("duplicate").inc()
            return "duplicate"
        started = time.perf_counter()
        try:
            outcome = await self._fetch(claimed)
        except BaseException as exc:
            if isinstance(exc, StoreUnavailable):
                metrics.MEDIA_STORE_FAILURES.labels(self._store.name).inc()
                log.warning("media %s: the store is unavailable (%s); the download waits", media_id, exc,
                            extra={"request_id": request_id})
            try:  # untried: give the claim back (if the database is away too, the lease runs out)
                async with self._res.pool.acquire() as conn:
                    await asyncio.shield(ledger.release(conn, claimed.id))
            except Exception as release_exc:
                log.warning("media %s: could not give the claim back (%r); the sweep takes it after %.0fs",
                            media_id, release_exc, LEASE_S)
            raise
        metrics.MEDIA_DOWNLOADS.labels(outcome).inc()
        metrics.MEDIA_DOWNLOAD_DURATION.observe(time.perf_counter() - started)
        log.info("media %s of message %d: %s", media_id, claimed.message_id, outcome,
                 extra={"request_id": request_id})
        return outcome

    async def _fetch(self, claimed: ledger.Claimed) -> str:
        """Download one claimed media and record its outcome; raises only when the store (or the database) is away."""
        limit = MAX_BYTES.get(claimed.type, MAX_BYTES["document"])
        size: int | None = None
        creds: numbers.Credentials | None = None
        try:
            creds = await self._res.numbers.token_for(claimed.phone_number_id)  # the number the message came to
            token = creds.token
            info = await self._client.info(claimed.provider_media_id, token, claimed.phone_number_id)
            size = info.file_size
            if size is not None and size > limit:
                raise TooLarge(f"{size:,} bytes, above Meta's limit of {limit:,} for {claimed.type}")
            key = info.sha256 or sha256_hex(claimed.sha256)
            if key is None:
                return await self._failed(claimed, "failed", {"error": "Meta gave no sha256 for the file: it "
                                                              "cannot be checked, so it is not kept"})
            if await self._store.exists(key):
                return await self._stored(claimed, key, size or 0, info.mime_type, "deduplicated")
            size = await self._download(claimed, info, token, key, limit)
            metrics.MEDIA_BYTES.inc(size)
            return await self._stored(claimed, key, size, info.mime_type, "stored")
        except TooLarge as exc:
            return await self._failed(claimed, "too_large", {"error": str(exc), "limit": limit}, size)
        except ChecksumMismatch as exc:
            return await self._failed(claimed, "failed", {"error": str(exc), "code": "CHECKSUM_MISMATCH"})
        except numbers.NoToken as exc:
            return await self._wait_for_token(claimed, None, {"error": str(exc), "kind": "NoToken"})
        except GraphError as exc:
            if exc.token_rejected:
                return await self._wait_for_token(claimed, creds, exc.as_dict())
            if not exc.retryable and not exc.pausing:  # a token refused: the number's new token will do
                return await self._failed(claimed, "failed", exc.as_dict())
            if claimed.attempts >= self._s.send_attempts or not self._delays:
                return await self._failed(claimed, "failed", {**exc.as_dict(), "error": (
                    f"gave up after {claimed.attempts} attempts: {exc}")})
            delay = self._delays[min(claimed.attempts, len(self._delays)) - 1]
            async with self._res.pool.acquire() as conn:
                await ledger.retry_later(conn, claimed.id, delay, exc.as_dict())
            return "retry_scheduled"

    async def _wait_for_token(self, claimed: ledger.Claimed, creds: numbers.Credentials | None,
                              error: dict[str, Any]) -> str:
        """Meta refused the number's token (or it has none): the number is held as for its sends (the
        admins are told once) and the download waits for a new token, however long; it never fails for it."""
        async with self._res.pool.acquire() as conn, conn.transaction():
            if creds is not None:
                await numbers.pause_for_token(conn, claimed.phone_number_id, creds.token_version,
                                              f"{error.get('error')} (code {error.get('code')})")
            await ledger.retry_later(conn, claimed.id, TOKEN_WAIT_S, error, refund=True)
        self._res.numbers.invalidate()
        return "token_wait"

    async def _download(self, claimed: ledger.Claimed, info: MediaInfo, token: str, key: str, limit: int) -> int:
        """Stream the bytes into the store; an expired URL is asked for afresh, once."""
        for fresh in (False, True):
            if fresh:
                info = await self._client.info(claimed.provider_media_id, token, claimed.phone_number_id)
            try:
                # the store first: while it is away, no download is spent
                async with self._store.writer(key) as out, self._client.download(info.url, token, limit) as chunks:
                    async for chunk in chunks:
                        await out.write(chunk)
                    return out.hasher.size
            except UrlExpired:
                if fresh:
                    raise
                log.info("media %s: the download URL expired; asking for a fresh one", claimed.provider_media_id)
        raise AssertionError("unreachable")

    async def _stored(self, claimed: ledger.Claimed, key: str, size: int, mime_type: str | None, outcome: str) -> str:
        async with self._res.pool.acquire() as conn:
            done = await ledger.stored(conn, claimed.id, key, size, mime_type)
        return outcome if done else "raced"

    async def _failed(self, claimed: ledger.Claimed, state: str, error: dict[str, Any], size: int | None = None) -> str:
        async with self._res.pool.acquire() as conn:
            done = await ledger.failed(conn, claimed.id, state, error, size)
        log.warning("media %s: %s (%s)", claimed.provider_media_id, state, error.get("error"))
        return state if done else "raced"
