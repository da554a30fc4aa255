"""Status agent: ``wa.status`` → the delivery state of a message we sent.

Input key: the conversation key; a batch at a time (one transaction), in partition order. Idempotency:
``message_status_events (channel, provider_message_id, status)``; the message's state only
moves forward (sent < delivered < read/played; failed is terminal). A status for a message
not stored yet is kept and applied when the sender records the message. A ``failed`` status
of one of our messages leaves a task for a person; 131047 (the 24-hour window closed before
delivery) sends the configured template instead when there is one. Commit: after the
transaction and the publish of any template.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import faust

from agents.runner import Item, publish
from orchestrator.rules import Rules
from storage import replies, repo
from topics.records import SendIntent, StatusUpdate, decode_status, intent_from_dict
from wacrm import metrics

if TYPE_CHECKING:  # the worker's resources; imported for the type only
    import asyncpg
    from agents.context import Resources

REENGAGEMENT = 131047


class Status:
    def __init__(self, resources: Resources, rules: Rules, outbound: faust.TopicT) -> None:
        self._res = resources
        self._rules = rules
        self._outbound = outbound

    async def handle(self, items: list[Item]) -> list[str]:
        statuses = [decode_status(value) for value, _, _ in items]
        templates: list[SendIntent] = []
        async with self._res.pool.acquire() as conn, conn.transaction():
            outcomes = await repo.apply_statuses(conn, statuses)
            for st, outcome in zip(statuses, outcomes):
                if outcome == "applied" and st.status == "failed":
                    template = await self._failed(conn, st)
                    if template is not None:
                        templates.append(template)
        await publish(self._outbound, templates)
        for st, outcome in zip(statuses, outcomes):
            metrics.STATUSES.labels(st.status if st.status in _KNOWN else "other", outcome).inc()
            if outcome == "duplicate":
                metrics.DUPLICATES.labels("status").inc()
        return outcomes

    async def _failed(self, conn: asyncpg.Connection, st: StatusUpdate) -> SendIntent | None:
        row = await conn.fetchrow(
            """SELECT m.conversation_id, l.id ledger_id, l.intent FROM messages m
               LEFT JOIN outbound_log l ON l.id = m.outbound_log_id
               WHERE m.channel = 'whatsapp' AND m.provider_message_id = $1 AND m.direction = 'outbound'""",
            st.message_id)
        if row is None:
            return None
        codes = {e.get("code") for e in st.errors}
        template = self._rules.window_template
        if REENGAGEMENT in codes and template is not None and row["intent"] is not None:
            original = intent_from_dict(row["intent"])
            if original.kind != "template":
                intent = SendIntent(
                    dedupe_key=f"template:{original.dedupe_key}", conversation_key=original.conversation_key,
                    conversation_id=original.conversation_id, phone_number_id=original.phone_number_id,
                    to=original.to, text=original.text, automatic=original.automatic,
                    ownership_version=original.ownership_version, kind="template",
                    template={"name": template.name, "language": template.language,
                              "parameters": list(template.parameters)})
                if await replies.queue(conn, intent, published=True):
                    return intent
                return None
        await repo.create_task(conn, row["conversation_id"], "delivery_failed",
                               f"A message was not delivered (codes {sorted(c for c in codes if c)})",
                               {"provider_message_id": st.message_id, "errors": st.errors},
                               dedupe_key=f"delivery_failed:{st.message_id}")
        return None


_KNOWN = frozenset({"sent", "delivered", "read", "played", "failed", "deleted", "warning"})
