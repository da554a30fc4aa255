"""The webhooks about the business rather than a conversation: template status, quality and
category changes, a customer's marketing preference, and account events. Pure functions, no I/O.

:func:`parse` reads every ``entry`` × ``change`` whose ``field`` is one of :data:`FIELDS` (the
messages parser, :mod:`whatsapp.webhook`, leaves them aside); a change it cannot read becomes a
``problems`` line, never an exception. ``entry.id`` is the WhatsApp Business Account (WABA).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

TEMPLATE_STATUS = "message_template_status_update"
TEMPLATE_QUALITY = "message_template_quality_update"
TEMPLATE_CATEGORY = "template_category_update"
USER_PREFERENCES = "user_preferences"
ACCOUNT_UPDATE = "account_update"
FIELDS = frozenset({TEMPLATE_STATUS, TEMPLATE_QUALITY, TEMPLATE_CATEGORY, USER_PREFERENCES, ACCOUNT_UPDATE})


@dataclass(frozen=True, slots=True)
class TemplateChange:
    """A template's status, quality or category as Meta changed it (``None``: unchanged)."""

    waba_id: str
    at: int  # entry.time, epoch seconds
    name: str
    language: str
    meta_id: str | None
    status: str | None = None
    quality: str | None = None
    category: str | None = None
    reason: str | None = None  # Meta's words: rejection info, the reason of a pause or disablement


@dataclass(frozen=True, slots=True)
class Preference:
    """``user_preferences``: a customer stopped (``stop``) or resumed (``resume``) marketing messages."""

    phone_number_id: str
    wa_id: str
    category: str
    value: str
    at: int
    detail: str | None


@dataclass(frozen=True, slots=True)
class AccountEvent:
    """``account_update``: ``event`` (ACCOUNT_RESTRICTION, ACCOUNT_VIOLATION, DISABLED_UPDATE …) and its value."""

    waba_id: str
    at: int
    event: str
    value: dict[str, Any]

    def restrictions(self) -> list[tuple[str, int | None]]:
        """(restriction_type, expiration epoch seconds or None) of an ACCOUNT_RESTRICTION."""
        out: list[tuple[str, int | None]] = []
        for r in self.value.get("restriction_info") or []:
            if isinstance(r, dict) and isinstance(r.get("restriction_type"), str):
                exp = r.get("expiration")
                out.append((r["restriction_type"], int(exp) if isinstance(exp, (int, str)) and str(exp).isdigit()
                            else None))
        return out

    def words(self) -> str:
        """What Meta said, for an admin: the event and every detail Meta gave, in Meta's words."""
        details: list[str] = []
        for key, value in self.value.items():
            if key == "event":
                continue
            if isinstance(value, dict):
                details += [f"{k}: {v}" for k, v in value.items() if isinstance(v, (str, int))]
            elif isinstance(value, list):
                for item in value:
                    if isinstance(item, dict):
                        details.append(", ".join(f"{k}: {v}" for k, v in item.items() if isinstance(v, (str, int))))
            elif isinstance(value, (str, int)):
                details.append(f"{key}: {value}")
        label = self.event.replace("_", " ").lower()
        return f"Meta: account {label}" + (f" ({'; '.join(details)})" if details else "")


@dataclass(slots=True)
class Updates:
    templates: list[TemplateChange] = field(default_factory=list)
    preferences: list[Preference] = field(default_factory=list)
    accounts: list[AccountEvent] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.templates or self.preferences or self.accounts)


def _s(obj: Any, key: str) -> str | None:
    value = obj.get(key) if isinstance(obj, dict) else None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return value if isinstance(value, str) and value else None


def _epoch(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return int(value) if isinstance(value, str) and value.isdigit() else None


def _reason(value: dict[str, Any]) -> str | None:
    parts: list[str] = []
    info = value.get("rejection_info")
    if isinstance(info, dict):
        parts += [str(info[k]) for k in ("reason", "recommendation") if _s(info, k)]
    for key in ("disable_info", "other_info"):
        sub = value.get(key)
        if isinstance(sub, dict):
            parts += [f"{k}: {v}" for k, v in sub.items() if isinstance(v, (str, int))]
    reason = _s(value, "reason")
    if reason and reason != "NONE" and not parts:
        parts.append(reason)
    return " ".join(parts) or None


def _template(f: str, waba_id: str, at: int, v: dict[str, Any]) -> TemplateChange:
    name, language = _s(v, "message_template_name"), _s(v, "message_template_language")
    if not name or not language:
        raise ValueError("no message_template_name or message_template_language")
    change = TemplateChange(waba_id, at, name, language, _s(v, "message_template_id"))
    if f == TEMPLATE_STATUS:
        status = _s(v, "event")
        if not status:
            raise ValueError("a template status update without event")
        category = _s(v, "message_template_category")
        return TemplateChange(waba_id, at, name, language, change.meta_id, status=status.upper(),
                              category=category.upper() if category else None, reason=_reason(v))
    if f == TEMPLATE_QUALITY:
        quality = _s(v, "new_quality_score")
        if not quality:
            raise ValueError("a template quality update without new_quality_score")
        return TemplateChange(waba_id, at, name, language, change.meta_id, quality=quality.upper())
    category = _s(v, "new_category")
    if not category:
        raise ValueError("a template category update without new_category")
    return TemplateChange(waba_id, at, name, language, change.meta_id, category=category.upper())


def _preferences(v: dict[str, Any], at: int, out: Updates) -> None:
    metadata = v.get("metadata")
    pnid = _s(metadata, "phone_number_id")
    if not pnid:
        raise ValueError("user_preferences without metadata.phone_number_id")
    for item in v.get("user_preferences") or []:
        wa_id, value = _s(item, "wa_id"), _s(item, "value")
        if not wa_id or not value:
            out.problems.append("a user preference without wa_id or value")
            continue
        out.preferences.append(Preference(pnid, wa_id, _s(item, "category") or "marketing_messages", value.lower(),
                                          _epoch(item.get("timestamp")) or at, _s(item, "detail")))


def parse(data: dict[str, Any]) -> Updates:
    """Every business update of a decoded webhook body (see the module docstring)."""
    out = Updates()
    if data.get("object") != "whatsapp_business_account" or not isinstance(data.get("entry"), list):
        return out
    for ei, entry in enumerate(data["entry"]):
        if not isinstance(entry, dict) or not isinstance(entry.get("changes"), list):
            continue
        waba_id = _s(entry, "id") or ""
        at = _epoch(entry.get("time")) or 0
        for ci, change in enumerate(entry["changes"]):
            f = change.get("field") if isinstance(change, dict) else None
            if f not in FIELDS:
                continue
            v = change.get("value")
            try:
                if not isinstance(v, dict):
                    raise ValueError("value is not an object")
                if f == USER_PREFERENCES:
                    _preferences(v, at, out)
                elif f == ACCOUNT_UPDATE:
                    event = _s(v, "event")
                    if not event or not waba_id:
                        raise ValueError("an account update without event or entry.id")
                    out.accounts.append(AccountEvent(waba_id, at, event.upper(), v))
                else:
                    if not waba_id:
                        raise ValueError("a template update without entry.id (the WABA)")
                    out.templates.append(_template(f, waba_id, at, v))
            except ValueError as exc:
                out.problems.append(f"entry[{ei}].changes[{ci}] ({f}): {exc}")
    return out
