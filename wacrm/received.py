"""What reached the customer: the Graph API requests a stand-in for Meta (``wacrm fake-meta``'s
``GET /__sent``) took, tied to the customer messages they answer. Pure functions; the one home of
"what reached the customer as a reply", for ``wacrm simulate``, the tests, the fault suite and the
bench. A send names its ledger row (``biz_opaque_callback_data``), whose intent says which message
it answers (:func:`wacrm.storage.ledger_send.answered_messages`): the bot quotes only the first answer of an
exchange, so ``context.message_id`` is not on every reply.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from wacrm.agents.sending import ledger_id


def ledger_row(record: Mapping[str, Any]) -> int | None:
    """The ledger row a fake-meta record names, if Meta took the send (a scripted error is not a
    reply the customer sees)."""
    answered = record.get("answered")
    body = record.get("body")
    if not isinstance(answered, Mapping) or "id" not in answered or not isinstance(body, Mapping):
        return None
    return ledger_id(body.get("biz_opaque_callback_data"))


def ledger_rows(sent: Iterable[Mapping[str, Any]]) -> list[int]:
    """The ledger rows the sends Meta took name: what to ask :func:`storage.ledger_send.answered_messages`."""
    return [row for row in map(ledger_row, sent) if row is not None]


def replies(sent: Iterable[Mapping[str, Any]], answers: Mapping[int, str]) -> list[tuple[Mapping[str, Any], str]]:
    """Each send Meta took that answers a customer message, with that message's id (``answers``:
    ledger row → message id, from :func:`storage.ledger_send.answered_messages`), oldest first."""
    pairs = ((record, ledger_row(record)) for record in sent)
    return [(record, answers[row]) for record, row in pairs if row is not None and row in answers]


def what_was_sent(body: Mapping[str, Any]) -> str:
    """A Graph API send request in words: its text, its template or its media."""
    kind = body.get("type") or "text"
    found = body.get(kind)
    part: Mapping[str, Any] = found if isinstance(found, Mapping) else {}
    if kind == "text":
        return str(part.get("body", ""))
    if kind == "template":
        return f"template {part.get('name')} ({(part.get('language') or {}).get('code', '?')})"
    caption = part.get("caption") or part.get("filename")
    return f"[{kind}] {caption}" if caption else f"[{kind}]"
