"""The upload before a media reply's send: once per ledger row, its media id kept on the row.

:func:`media_id_for` is called by the sender on a claimed row (``sending``) of kind ``media``. It
answers the media id recorded on the row by an earlier attempt, else streams the file from the
media store to the number's ``/media`` (with the number's token), records the id on the row and
answers it; only then does the sender send by that id. So a retry after an upload (the send failed,
a person's retry of a failed reply) sends the same upload; an upload whose answer was lost leaves
only an unused file at Meta, never a second message. While a large upload runs the row's claim is
renewed every :data:`RENEW_EVERY_S`, so the in-flight sweep (one Graph call's bound) does not take
the row for a send in doubt; a worker that dies mid-upload stops renewing, and the sweep finds it.

Errors are the caller's to route (:func:`agents.sending.route`): the upload's are
:mod:`whatsapp.graph`'s (never ambiguous), the store's :class:`media.StoreUnavailable` (retryable).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

from wacrm.storage import media as ledger
from wacrm.topics.records import SendIntent

if TYPE_CHECKING:  # the worker's resources; imported for the type only
    from wacrm.agents.context import Resources

log = logging.getLogger("wacrm.sender")
RENEW_EVERY_S = 5.0  # well inside the in-flight bound (GRAPH_TIMEOUT_SECONDS + 15 s)


async def media_id_for(res: Resources, row_id: int, intent: SendIntent, token: str) -> str:
    """The media id a claimed media reply is sent by: recorded before, or uploaded now and recorded."""
    async with res.pool.acquire() as conn:
        known = await ledger.upload_of(conn, row_id)
    if known:
        return known
    m = intent.media or {}
    renewing = asyncio.ensure_future(_renew(res, row_id))
    try:
        chunks = res.media_store.reader(str(m["sha256"]), 0, int(m["size"]) - 1)
        media_id = await res.media_client.upload(intent.phone_number_id, token, str(m["mime_type"]),
                                                 str(m.get("filename") or m["type"]), chunks)
    finally:
        renewing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await renewing
    async with res.pool.acquire() as conn:
        await ledger.record_upload(conn, row_id, media_id)
    log.info("send %s ledger row %d: uploaded %s bytes as media %s", intent.dedupe_key, row_id, m.get("size"),
             media_id, extra={"request_id": intent.request_id})
    return media_id


async def _renew(res: Resources, row_id: int) -> None:
    while True:
        await asyncio.sleep(RENEW_EVERY_S)
        try:
            async with res.pool.acquire() as conn:
                await ledger.renew_claim(conn, row_id)
        except Exception as exc:  # a missed renewal only risks the sweep's doubt; the upload goes on
            log.warning("ledger row %d: renewing the claim during its upload failed: %r", row_id, exc)
