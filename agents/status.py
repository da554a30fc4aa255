"""Status agent: ``wa.status`` → the delivery state of a message we sent, and settled ambiguity.

Input key: the conversation key; a batch at a time (one transaction, its statuses recorded and applied in
two statements: :func:`storage.statuses.apply_statuses`), in partition order. Idempotency:
``message_status_events (channel, provider_message_id, status)``; the message's state only
moves forward (sent < delivered < read/played; failed is terminal). A status for a message
not stored yet is kept and applied when the message is recorded.

Settling: every send names its ledger row in ``biz_opaque_callback_data`` (``ol:{id}``). A
``sent``/``delivered``/``read``/``played`` status naming a row that Meta may have taken without
our record (``sending``, ``ambiguous``, ``unconfirmed``) proves Meta took it: the row becomes
``sent`` (``settled_by = 'status'``) with the wamid, and the outbound message is stored exactly as
the sender stores it (:func:`storage.ledger_send.record_sent_many`). A ``failed`` status naming such a
row fails it with a task. A ``failed`` status of a stored message leaves a task for a person;
131047 (the window closed before delivery) takes the window path (:func:`agents.sending.window_path`:
the configured template, else the task); any other ``failed`` status of a stored message also fails its
ledger row (``sent`` -> ``failed``, :func:`storage.ledger.fail_sent`), so a person can retry it.
Commit: after the transaction and the publish of any template.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import faust

from wacrm.agents import sending
from wacrm.agents.runner import Item, publish
from wacrm.core import metrics
from wacrm.orchestrator.rules import Rules
from wacrm.storage import ledger, ledger_send, repo
from wacrm.storage import statuses as sstore
from wacrm.storage import templates as tstore
from wacrm.topics.records import SendIntent, StatusUpdate, decode_status, intent_from_dict
from wacrm.whatsapp.templates import MARKETING_STOPPED

if TYPE_CHECKING:  # the worker's resources; imported for the type only
    import asyncpg

    from wacrm.agents.context import Resources

log = logging.getLogger("wacrm.status")

_TAKEN = frozenset({"sent", "delivered", "read", "played"})


class Status:
    def __init__(self, resources: Resources, rules: Rules, outbound: faust.TopicT) -> None:
        self._res = resources
        self._rules = rules
        self._outbound = outbound

    async def handle(self, items: list[Item]) -> list[str]:
        statuses = [decode_status(item.value) for item in items]
        request_ids = [item.request_id for item in items]
        named = [sending.ledger_id(st.biz_opaque_callback_data) for st in statuses]
        templates: list[SendIntent] = []
        async with self._res.pool.acquire() as conn, conn.transaction():
            open_rows = await ledger_send.unsettled(conn, sorted({i for i in named if i is not None}))
            if open_rows:  # the conversations first, in id order, as every multi-conversation writer does
                await repo.lock_conversations(conn, ids=sorted({r.conversation_id for r in open_rows.values()}))
            outcomes = await sstore.apply_statuses(conn, statuses, request_ids)
            settled = await self._settle(conn, statuses, named, open_rows, outcomes, templates)
            for st, outcome in zip(statuses, outcomes, strict=True):
                if outcome == "applied" and st.status == "failed":
                    template = await self._failed(conn, st)
                    if template is not None:
                        templates.append(template)
        await publish(self._outbound, templates)
        for step in settled:
            metrics.AMBIGUOUS_SENDS.labels(step).inc()
        for st, outcome, request_id in zip(statuses, outcomes, request_ids, strict=True):
            log.info("status %s of message %s: %s", st.status, st.message_id, outcome,
                     extra={"request_id": request_id})
            metrics.STATUSES.labels(st.status if st.status in _KNOWN else "other", outcome).inc()
            if outcome == "duplicate":
                metrics.DUPLICATES.labels("status").inc()
        return outcomes

    async def _settle(self, conn: asyncpg.Connection, statuses: list[StatusUpdate], named: list[int | None],
                      open_rows: dict[int, ledger_send.Unsettled], outcomes: list[str],
                      templates: list[SendIntent]) -> list[str]:
        """Settle the open rows these statuses name (each once); the metric steps of those that were ambiguous."""
        taken: list[tuple[ledger_send.Accepted, ledger_send.Unsettled]] = []
        steps: list[str] = []
        for n, (st, row_id) in enumerate(zip(statuses, named, strict=True)):
            row = open_rows.pop(row_id, None) if row_id is not None else None
            if row is None:
                continue
            intent = intent_from_dict(row.intent)
            if st.status in _TAKEN:
                try:
                    body = sending.payload(self._res.graph, row.id, intent)
                except Exception:  # the stored intent cannot be rebuilt as a request; the text still is recorded
                    body = {"type": intent.kind if intent.kind != "notice" else "text"}
                taken.append((ledger_send.Accepted(row.id, row.conversation_id, intent.text, st.message_id, body,
                                            sent_at=float(st.timestamp) if st.timestamp else None), row))
                outcomes[n] = "settled"
            elif st.status == "failed":
                codes = {e.get("code") for e in st.errors}
                if MARKETING_STOPPED in codes:
                    await tstore.marketing_stopped(conn, row.conversation_id)
                error = {"error": "Meta reported the send failed", "errors": st.errors,
                         "provider_message_id": st.message_id}
                decision: sending.Decision = sending.window_path(intent, self._rules.window_template) \
                    if sending.REENGAGEMENT in codes else sending.Fail(
                        "delivery_failed", error,
                        f"A message was not delivered (codes {sorted(c for c in codes if c)})",
                        dead_letter=False)
                if isinstance(decision, sending.UseTemplate):
                    if await ledger.finish(conn, row.id, ledger.UNSETTLED, "failed", error) and \
                            await ledger.queue(conn, decision.replacement, published=True):
                        templates.append(decision.replacement)
                else:
                    assert isinstance(decision, sending.Fail)
                    await ledger.record_failed(conn, row.id, ledger.UNSETTLED, error, row.conversation_id,
                                             decision.kind, decision.title, request_id=intent.request_id)
                outcomes[n] = "settled_failed"
                if row.state != "sending":
                    steps.append("settled_failed")
        results = await ledger_send.record_sent_many(conn, [a for a, _ in taken], settled_by="status")
        for (a, row), result in zip(taken, results, strict=True):
            metrics.SEND_RECORDS.labels(result).inc()
            if result in ledger_send.RECORD_PROBLEMS:
                log.error("ledger row %d: message %s %s", a.outbound_log_id, a.wamid,
                          ledger_send.RECORD_PROBLEMS[result])
            if row.state != "sending":
                steps.append("settled_status")
        return steps

    async def _failed(self, conn: asyncpg.Connection, st: StatusUpdate) -> SendIntent | None:
        row = await conn.fetchrow(
            """SELECT m.conversation_id, l.id ledger_id, l.intent FROM messages m
               LEFT JOIN outbound_log l ON l.id = m.outbound_log_id
               WHERE m.channel = 'whatsapp' AND m.provider_message_id = $1 AND m.direction = 'outbound'""",
            st.message_id)
        if row is None:
            return None
        codes = {e.get("code") for e in st.errors}
        if MARKETING_STOPPED in codes:  # the customer stopped marketing messages: remembered on the contact
            await tstore.marketing_stopped(conn, row["conversation_id"])
        if sending.REENGAGEMENT in codes and row["intent"] is not None:
            decision = sending.window_path(intent_from_dict(row["intent"]), self._rules.window_template)
            if isinstance(decision, sending.UseTemplate):
                queued = await ledger.queue(conn, decision.replacement, published=True)
                return decision.replacement if queued else None
        if row["ledger_id"] is not None:  # a person can retry it (POST /api/v1/outbound/{id}/retry)
            await ledger.fail_sent(conn, row["ledger_id"], st.message_id,
                                 {"error": "Meta reported the send failed", "errors": st.errors,
                                  "provider_message_id": st.message_id})
        await repo.create_task(conn, row["conversation_id"], "delivery_failed",
                               f"A message was not delivered (codes {sorted(c for c in codes if c)})",
                               {"provider_message_id": st.message_id, "errors": st.errors,
                                "outbound_log_id": row["ledger_id"]},
                               dedupe_key=f"delivery_failed:{st.message_id}")
        return None


_KNOWN = frozenset({"sent", "delivered", "read", "played", "failed", "deleted", "warning"})
