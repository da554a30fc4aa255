"""The typed content of a Cloud API message, one dataclass per ``type``, and its text rendition.

Pure functions, no I/O. :func:`content_of` never raises: a part with the wrong type is read
as missing, and a type not known here becomes :class:`Unknown` with the raw object kept.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


def _s(obj: Any, key: str) -> str | None:
    value = obj.get(key) if isinstance(obj, dict) else None
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return str(value)
    return value if isinstance(value, str) and value != "" else None


def _b(obj: Any, key: str) -> bool:
    return isinstance(obj, dict) and obj.get(key) is True


def _f(obj: Any, key: str) -> float | None:
    value = obj.get(key) if isinstance(obj, dict) else None
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    try:
        return float(value)
    except ValueError:
        return None


def _d(obj: Any, key: str) -> dict[str, Any]:
    value = obj.get(key) if isinstance(obj, dict) else None
    return value if isinstance(value, dict) else {}


def _l(obj: Any, key: str) -> list[Any]:
    value = obj.get(key) if isinstance(obj, dict) else None
    return value if isinstance(value, list) else []


@dataclass(frozen=True, slots=True)
class Text:
    body: str | None


@dataclass(frozen=True, slots=True)
class Media:
    """image, audio, video, document, sticker."""

    kind: str
    media_id: str | None
    mime_type: str | None
    sha256: str | None
    caption: str | None = None
    filename: str | None = None
    url: str | None = None
    voice: bool = False  # audio recorded as a voice note
    animated: bool = False  # sticker


@dataclass(frozen=True, slots=True)
class Location:
    latitude: float | None
    longitude: float | None
    name: str | None
    address: str | None
    url: str | None


@dataclass(frozen=True, slots=True)
class ContactCard:
    formatted_name: str | None
    phones: list[dict[str, Any]]
    raw: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Contacts:
    cards: list[ContactCard]


@dataclass(frozen=True, slots=True)
class InteractiveReply:
    """interactive ``button_reply``, ``list_reply`` (and ``nfm_reply`` of Flows, kept raw)."""

    reply_type: str | None
    reply_id: str | None
    title: str | None
    description: str | None
    raw: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Button:
    """Quick-reply button of a template message."""

    payload: str | None
    text: str | None


@dataclass(frozen=True, slots=True)
class Reaction:
    message_id: str | None
    emoji: str | None  # None: the customer removed their reaction

    @property
    def removed(self) -> bool:
        return self.emoji is None


@dataclass(frozen=True, slots=True)
class OrderItem:
    product_retailer_id: str | None
    quantity: float | None
    item_price: float | None
    currency: str | None


@dataclass(frozen=True, slots=True)
class Order:
    catalog_id: str | None
    text: str | None
    items: list[OrderItem]


@dataclass(frozen=True, slots=True)
class System:
    """``user_changed_number`` (``new_wa_id``), ``customer_identity_changed`` …"""

    system_type: str | None
    body: str | None
    new_wa_id: str | None
    identity: str | None


@dataclass(frozen=True, slots=True)
class Unsupported:
    """``unsupported`` / legacy ``unknown``: Meta could not deliver the content (see errors)."""

    unsupported_type: str | None


@dataclass(frozen=True, slots=True)
class Edit:
    """The sender edited an earlier message (``original_message_id``): ``message`` is its new content
    (a text, or a media item with its new caption)."""

    original_message_id: str | None
    message: Content


@dataclass(frozen=True, slots=True)
class Revoke:
    """The sender deleted an earlier message (``original_message_id``) for everyone."""

    original_message_id: str | None


@dataclass(frozen=True, slots=True)
class Unknown:
    """A type this code does not know yet: kept raw, never dropped."""

    raw: dict[str, Any]


Content = Text | Media | Location | Contacts | InteractiveReply | Button | Reaction | Order | System | Unsupported \
    | Edit | Revoke | Unknown

MEDIA_TYPES = frozenset({"image", "audio", "video", "document", "sticker"})
KNOWN_TYPES = MEDIA_TYPES | {"text", "location", "contacts", "interactive", "button", "reaction", "order", "system",
                             "unsupported", "unknown"}


def content_of(msg: dict[str, Any]) -> Content:
    kind = msg.get("type")
    part = _d(msg, kind) if isinstance(kind, str) else {}
    if kind == "text":
        return Text(_s(part, "body"))
    if kind in MEDIA_TYPES:
        return Media(kind=kind, media_id=_s(part, "id"), mime_type=_s(part, "mime_type"), sha256=_s(part, "sha256"),
                     caption=_s(part, "caption"), filename=_s(part, "filename"), url=_s(part, "url"),
                     voice=_b(part, "voice"), animated=_b(part, "animated"))
    if kind == "location":
        return Location(_f(part, "latitude"), _f(part, "longitude"), _s(part, "name"), _s(part, "address"),
                        _s(part, "url"))
    if kind == "contacts":
        cards = [ContactCard(_s(_d(c, "name"), "formatted_name"), [p for p in _l(c, "phones") if isinstance(p, dict)],
                             c) for c in _l(msg, "contacts") if isinstance(c, dict)]
        return Contacts(cards)
    if kind == "interactive":
        reply_type = _s(part, "type")
        reply = _d(part, reply_type) if reply_type else {}
        return InteractiveReply(reply_type, _s(reply, "id"), _s(reply, "title"), _s(reply, "description"), part)
    if kind == "button":
        return Button(_s(part, "payload"), _s(part, "text"))
    if kind == "reaction":
        return Reaction(_s(part, "message_id"), _s(part, "emoji"))
    if kind == "order":
        items = [OrderItem(_s(i, "product_retailer_id"), _f(i, "quantity"), _f(i, "item_price"), _s(i, "currency"))
                 for i in _l(part, "product_items") if isinstance(i, dict)]
        return Order(_s(part, "catalog_id"), _s(part, "text"), items)
    if kind == "system":
        return System(_s(part, "type"), _s(part, "body"), _s(part, "wa_id") or _s(part, "new_wa_id"),
                      _s(part, "identity"))
    if kind in ("unsupported", "unknown"):
        return Unsupported(_s(part, "type"))
    if kind == "edit":
        inner = _d(part, "message")
        return Edit(_s(part, "original_message_id"), content_of(inner) if inner else Unknown({}))
    if kind == "revoke":
        return Revoke(_s(part, "original_message_id"))
    return Unknown(msg)


def render(content: Content) -> str | None:
    """A one-line text for the inbox and the reply engines (None when there is nothing to show)."""
    match content:
        case Text(body=body):
            return body
        case Media(kind=kind, caption=caption, filename=filename, voice=voice):
            label = "voice note" if voice else kind
            detail = caption or filename
            return f"[{label}] {detail}" if detail else f"[{label}]"
        case Location(name=name, address=address, latitude=lat, longitude=lon):
            where = ", ".join(x for x in (name, address) if x) or f"{lat},{lon}"
            return f"[location] {where}"
        case Contacts(cards=cards):
            return "[contacts] " + ", ".join(c.formatted_name or "?" for c in cards)
        case InteractiveReply(title=title, reply_id=reply_id):
            return title or reply_id
        case Button(text=text, payload=payload):
            return text or payload
        case Reaction(emoji=emoji):
            return f"[reaction] {emoji}" if emoji else "[reaction removed]"
        case Order(items=items, text=text):
            return f"[order] {len(items)} item(s)" + (f": {text}" if text else "")
        case System(body=body):
            return body
        case Unsupported(unsupported_type=t):
            return f"[unsupported: {t}]" if t else "[unsupported]"
        case Edit(message=message):
            return render(message)
    return None


def as_dict(content: Content) -> dict[str, Any]:
    if isinstance(content, Edit):  # the new content typed like any message's
        return {"kind": "edit", "original_message_id": content.original_message_id,
                "message": as_dict(content.message)}
    data = dataclasses.asdict(content)
    data.pop("raw", None)  # the raw message is stored beside it
    data["kind"] = type(content).__name__.lower()
    return data


@dataclass(frozen=True, slots=True)
class Context:
    """What a message refers to: a quoted message, a forward, a catalog product."""

    message_id: str | None
    sender: str | None
    forwarded: bool
    frequently_forwarded: bool
    referred_product: dict[str, Any] | None


def context_of(msg: dict[str, Any]) -> Context | None:
    ctx = _d(msg, "context")
    if not ctx:
        return None
    return Context(_s(ctx, "id"), _s(ctx, "from"), _b(ctx, "forwarded"), _b(ctx, "frequently_forwarded"),
                   _d(ctx, "referred_product") or None)


@dataclass(frozen=True, slots=True)
class Referral:
    """A click-to-WhatsApp ad the conversation started from."""

    source_url: str | None
    source_id: str | None
    source_type: str | None
    headline: str | None
    body: str | None
    media_type: str | None
    ctwa_clid: str | None


def referral_of(msg: dict[str, Any]) -> Referral | None:
    ref = _d(msg, "referral")
    if not ref:
        return None
    return Referral(_s(ref, "source_url"), _s(ref, "source_id"), _s(ref, "source_type"), _s(ref, "headline"),
                    _s(ref, "body"), _s(ref, "media_type"), _s(ref, "ctwa_clid"))


def errors_of(obj: dict[str, Any]) -> list[dict[str, Any]]:
    return [e for e in _l(obj, "errors") if isinstance(e, dict)]
