"""Split a WhatsApp Cloud API webhook body into one item per message, status and error.

Pure functions, no I/O. :func:`parse` iterates every ``entry`` × ``change`` × item
(Meta batches up to 1000 updates in a body); a broken item becomes a :class:`Problem`
while the other items of the body are still returned. Only a body that is not a JSON
object at all raises :class:`BodyError`. What the business sends from the WhatsApp Business app
(field ``smb_message_echoes``) comes out as messages too, marked ``echo``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from wacrm.whatsapp import model

#: The change field of what the business sends from the WhatsApp Business app on a coexistence number.
ECHOES_FIELD = "smb_message_echoes"


class BodyError(ValueError):
    """The body is not a webhook envelope at all (not JSON, or not an object)."""


@dataclass(frozen=True, slots=True)
class Sender:
    wa_id: str | None
    user_id: str | None
    profile_name: str | None = None
    username: str | None = None
    parent_user_id: str | None = None


@dataclass(frozen=True, slots=True)
class Message:
    phone_number_id: str
    display_phone_number: str | None
    sender: Sender
    id: str
    timestamp: int
    type: str
    text: str | None  # a one-line rendition for the inbox (model.render)
    content: model.Content
    context: model.Context | None
    referral: model.Referral | None
    errors: list[dict[str, Any]]
    payload: dict[str, Any]  # the message object exactly as Meta sent it
    echo: bool = False  # sent by the business from the WhatsApp Business app (smb_message_echoes); sender = customer


@dataclass(frozen=True, slots=True)
class Status:
    phone_number_id: str
    id: str
    status: str
    timestamp: int
    recipient: Sender
    errors: list[dict[str, Any]]
    biz_opaque_callback_data: str | None
    conversation: dict[str, Any] | None
    pricing: dict[str, Any] | None
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Problem:
    """An item that could not be understood, with where it was and why."""

    reason: str
    where: str
    item: Any


@dataclass(slots=True)
class Parsed:
    messages: list[Message] = field(default_factory=list)
    statuses: list[Status] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)  # value.errors (account level)
    problems: list[Problem] = field(default_factory=list)
    ignored_fields: list[str] = field(default_factory=list)


def _opt_str(obj: dict[str, Any], key: str) -> str | None:
    value = obj.get(key)
    if value is None or value == "":
        return None
    if isinstance(value, (str, int)) and not isinstance(value, bool):
        return str(value)
    raise ValueError(f"{key} must be a string")


def _timestamp(obj: dict[str, Any]) -> int:
    raw = obj.get("timestamp")
    if isinstance(raw, bool) or not isinstance(raw, (str, int)):
        raise ValueError("timestamp missing or not a string of epoch seconds")
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"timestamp {raw!r} is not epoch seconds") from None


def _senders(value: dict[str, Any]) -> list[Sender]:
    contacts = value.get("contacts")
    out: list[Sender] = []
    if not isinstance(contacts, list):
        return out
    for c in contacts:
        if not isinstance(c, dict):
            continue
        raw_profile = c.get("profile")
        profile: dict[str, Any] = raw_profile if isinstance(raw_profile, dict) else {}
        try:
            out.append(Sender(
                wa_id=_opt_str(c, "wa_id"),
                user_id=_opt_str(c, "user_id"),
                profile_name=_opt_str(profile, "name"),
                username=_opt_str(profile, "username"),
                parent_user_id=_opt_str(c, "parent_user_id"),
            ))
        except ValueError:
            continue
    return out


def _sender_for(msg: dict[str, Any], contacts: list[Sender]) -> Sender:
    wa_id = _opt_str(msg, "from")
    user_id = _opt_str(msg, "from_user_id")
    for c in contacts:
        if (wa_id and c.wa_id == wa_id) or (user_id and c.user_id == user_id):
            return Sender(wa_id or c.wa_id, user_id or c.user_id, c.profile_name, c.username, c.parent_user_id)
    if len(contacts) == 1 and not (wa_id or user_id):
        return contacts[0]
    if not (wa_id or user_id):
        raise ValueError("message has no sender: no from, from_user_id or contact")
    return Sender(wa_id, user_id)


def _message(meta: tuple[str, str | None], msg: Any, contacts: list[Sender]) -> Message:
    if not isinstance(msg, dict):
        raise ValueError("message is not an object")
    msg_id = _opt_str(msg, "id")
    if not msg_id:
        raise ValueError("message has no id")
    kind = msg.get("type")
    if not isinstance(kind, str) or not kind:
        raise ValueError("message has no type")
    content = model.content_of(msg)
    return Message(
        phone_number_id=meta[0], display_phone_number=meta[1], sender=_sender_for(msg, contacts),
        id=msg_id, timestamp=_timestamp(msg), type=kind, text=model.render(content), content=content,
        context=model.context_of(msg), referral=model.referral_of(msg), errors=model.errors_of(msg), payload=msg,
    )


def _echo(meta: tuple[str, str | None], msg: Any, contacts: list[Sender]) -> Message:
    """A ``message_echoes`` item: what the business sent from the WhatsApp Business app, to ``to``
    (``to_user_id``). Its ``sender`` is that customer, as for their own messages."""
    if not isinstance(msg, dict):
        raise ValueError("message echo is not an object")
    to, frm = _opt_str(msg, "to"), _opt_str(msg, "from")
    if to is not None and frm is not None and meta[1] is not None and to == meta[1]:
        to = frm  # written the other way round (the customer in "from"): the customer is the one who is not us
    customer = {"from": to, "from_user_id": _opt_str(msg, "to_user_id")}
    return dataclasses.replace(_message(meta, {**msg, **customer}, contacts), payload=msg, echo=True)


def _status(meta: tuple[str, str | None], st: Any, contacts: list[Sender]) -> Status:
    if not isinstance(st, dict):
        raise ValueError("status is not an object")
    st_id = _opt_str(st, "id")
    state = st.get("status")
    if not st_id or not isinstance(state, str):
        raise ValueError("status has no id or status")
    wa_id = _opt_str(st, "recipient_id")
    user_id = _opt_str(st, "recipient_user_id")
    if not (wa_id or user_id) and len(contacts) == 1:
        wa_id, user_id = contacts[0].wa_id, contacts[0].user_id
    conversation, pricing = st.get("conversation"), st.get("pricing")
    return Status(
        phone_number_id=meta[0], id=st_id, status=state, timestamp=_timestamp(st),
        recipient=Sender(wa_id, user_id), errors=model.errors_of(st),
        biz_opaque_callback_data=_opt_str(st, "biz_opaque_callback_data"),
        conversation=conversation if isinstance(conversation, dict) else None,
        pricing=pricing if isinstance(pricing, dict) else None, payload=st,
    )


def loads(body: bytes) -> dict[str, Any]:
    """Decode a body; raise :class:`BodyError` unless it is a JSON object."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BodyError(f"not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BodyError(f"expected a JSON object, got {type(data).__name__}")
    return data


def parse(data: dict[str, Any]) -> Parsed:
    """Every item of a decoded body; never raises for a broken item (it becomes a Problem)."""
    out = Parsed()
    if data.get("object") != "whatsapp_business_account":
        out.ignored_fields.append(f"object:{data.get('object')!s:.40}")
        return out
    entries = data.get("entry")
    if not isinstance(entries, list):
        out.problems.append(Problem("entry is not a list", "entry", entries))
        return out
    for ei, entry in enumerate(entries):
        changes = entry.get("changes") if isinstance(entry, dict) else None
        if not isinstance(changes, list):
            out.problems.append(Problem("entry has no changes list", f"entry[{ei}]", entry))
            continue
        for ci, change in enumerate(changes):
            where = f"entry[{ei}].changes[{ci}]"
            if not isinstance(change, dict):
                out.problems.append(Problem("change is not an object", where, change))
                continue
            if change.get("field") not in ("messages", ECHOES_FIELD):
                out.ignored_fields.append(f"field:{change.get('field')!s:.40}")
                continue
            _parse_value(change.get("value"), where, out)
    # Within a body, a conversation's events are handled in the order the customer made them.
    out.messages.sort(key=lambda m: m.timestamp)
    out.statuses.sort(key=lambda s: s.timestamp)
    return out


def _parse_value(value: Any, where: str, out: Parsed) -> None:
    if not isinstance(value, dict):
        out.problems.append(Problem("value is not an object", where, value))
        return
    metadata = value.get("metadata")
    pnid = metadata.get("phone_number_id") if isinstance(metadata, dict) else None
    if not isinstance(pnid, (str, int)) or isinstance(pnid, bool) or not str(pnid):
        out.problems.append(Problem("value has no metadata.phone_number_id", where, value))
        return
    display = metadata.get("display_phone_number") if isinstance(metadata, dict) else None
    meta = (str(pnid), display if isinstance(display, str) else None)
    contacts = _senders(value)
    sinks: tuple[tuple[str, Callable[..., Any], list[Any]], ...] = (
        ("messages", _message, out.messages), ("statuses", _status, out.statuses),
        ("message_echoes", _echo, out.messages))
    for key, build, sink in sinks:
        items = value.get(key)
        if items is None:
            continue
        if not isinstance(items, list):
            out.problems.append(Problem(f"{key} is not a list", where, items))
            continue
        for i, item in enumerate(items):
            try:
                sink.append(build(meta, item, contacts))
            except ValueError as exc:
                out.problems.append(Problem(str(exc), f"{where}.value.{key}[{i}]", item))
    errors = value.get("errors")
    if isinstance(errors, list):
        out.errors.extend(e for e in errors if isinstance(e, dict))


def routing_key(data: dict[str, Any]) -> str | None:
    """The conversation key of a body's first message or status, without a full parse.

    The webhook keys the raw topic by it, so successive bodies of one conversation are
    ingested in order by one consumer. ``None`` when the body has no such item.
    """
    try:
        value = data["entry"][0]["changes"][0]["value"]
        pnid = value["metadata"]["phone_number_id"]
        items = value.get("messages") or value.get("statuses")
        if not items and value.get("message_echoes"):
            return _echo_key(str(pnid), value["message_echoes"][0], value.get("metadata", {}))
        first = items[0]
        customer = (first.get("from") or first.get("from_user_id") or first.get("recipient_id")
                    or first.get("recipient_user_id"))
    except (KeyError, IndexError, TypeError, AttributeError):
        return None
    if not isinstance(customer, str) or not isinstance(pnid, (str, int)):
        return None
    return f"{pnid}:{customer}"


def _echo_key(pnid: str, first: dict[str, Any], metadata: dict[str, Any]) -> str | None:
    """:func:`routing_key` of an echo body: the customer it went to, as :func:`_echo` reads it."""
    try:
        echo = _echo((pnid, metadata.get("display_phone_number")), first, [])
    except (ValueError, AttributeError, TypeError):
        return None
    customer = echo.sender.wa_id or echo.sender.user_id
    return f"{pnid}:{customer}" if customer else None
