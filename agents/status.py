"""Status agent: ``wa.status`` → the delivery state of a message we sent.

Input key: the conversation key; one event at a time per partition. Idempotency:
``message_status_events (channel, provider_message_id, status)``; the message's state only
moves forward (sent < delivered < read/played; failed is terminal). A status for a message
not stored yet is kept and applied when the sender records the message. Commit: after the
transaction.
"""

from __future__ import annotations

from storage import repo
from topics.records import RawRef, decode_status
from wacrm import metrics


class Status:
    def __init__(self, resources: "Resources") -> None:  # noqa: F821
        self._res = resources

    async def handle(self, value: bytes, ref: RawRef, at: float) -> str:
        st = decode_status(value)
        async with self._res.pool.acquire() as conn, conn.transaction():
            outcome = await repo.apply_status(conn, st)
        metrics.STATUSES.labels(st.status if st.status in _KNOWN else "other", outcome).inc()
        if outcome == "duplicate":
            metrics.DUPLICATES.labels("status").inc()
        return outcome


_KNOWN = frozenset({"sent", "delivered", "read", "played", "failed", "deleted", "warning"})
