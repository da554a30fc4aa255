"""Message templates as the Cloud API knows them: what a template asks of a send, the send's
``components`` in the shape Meta expects, and the text the customer sees. Pure functions, no I/O.

- :func:`template_of`: one item of ``GET /{waba_id}/message_templates`` → :class:`Template`;
- :func:`spec_of`: what each send must fill (header, body and button parameters, by position or
  by name, with Meta's examples) from the template's components;
- :func:`problems`: what is missing or unknown in the parameters of a send (empty: it can go);
- :func:`send_components`: the ``template.components`` of the send request;
- :func:`render`: the text the customer sees, parameters filled in;
- :func:`refusal`: why a template may not be sent now (not approved, the customer stopped
  marketing, the account is restricted), or ``None``.

The parameters of a send are ``{"header", "body", "buttons"}``: ``body`` a list of texts (positional
templates) or an object by name (named ones); ``header`` the same for a text header (a single text
is accepted), or a media header's ``{"link": URL}`` / ``{"id": MEDIA_ID}`` (or the URL alone);
``buttons`` one value per button that takes one, in order (a list), or an object by button index.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

APPROVED = "APPROVED"
MARKETING = "MARKETING"
POSITIONAL, NAMED = "POSITIONAL", "NAMED"
MEDIA_HEADERS = frozenset({"IMAGE", "VIDEO", "DOCUMENT"})
#: Statuses Meta sets on a template it stops: admins hear of them at once.
STOPPED = frozenset({"PAUSED", "DISABLED", "REJECTED", "PENDING_DELETION", "ARCHIVED", "LIMIT_EXCEEDED"})
MARKETING_STOPPED = 131050  # Meta: the customer stopped marketing messages from this business
BIZ_INITIATED = "RESTRICTED_BIZ_INITIATED_MESSAGING"  # the restriction that blocks template sends

_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z0-9_]+)\s*\}\}")


@dataclass(frozen=True, slots=True)
class Template:
    """One template of a WhatsApp Business Account, as Meta lists it."""

    name: str
    language: str
    category: str
    status: str
    quality: str | None
    parameter_format: str
    components: list[dict[str, Any]]
    meta_id: str | None = None
    reason: str | None = None  # why Meta rejected or paused it, in Meta's words

    @property
    def parameters(self) -> dict[str, Any]:
        return spec_of(self.components, self.parameter_format)


def _text(obj: Any, key: str) -> str | None:
    value = obj.get(key) if isinstance(obj, dict) else None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return value if isinstance(value, str) and value else None


def template_of(item: Any) -> Template:
    """One item of Meta's template list; ``ValueError`` naming what is missing."""
    if not isinstance(item, dict):
        raise ValueError("a template is not an object")
    name, language = _text(item, "name"), _text(item, "language")
    if not name or not language:
        raise ValueError("a template has no name or language")
    components = [c for c in item.get("components") or [] if isinstance(c, dict)]
    quality = item.get("quality_score")
    fmt = (_text(item, "parameter_format") or POSITIONAL).upper()
    return Template(name=name, language=language, category=(_text(item, "category") or "UNKNOWN").upper(),
                    status=(_text(item, "status") or "UNKNOWN").upper(),
                    quality=_text(quality, "score") if isinstance(quality, dict) else _text(item, "quality_score"),
                    parameter_format=fmt if fmt in (POSITIONAL, NAMED) else POSITIONAL, components=components,
                    meta_id=_text(item, "id"), reason=_text(item, "rejected_reason"))


def _component(components: list[dict[str, Any]], kind: str) -> dict[str, Any] | None:
    return next((c for c in components if str(c.get("type", "")).upper() == kind), None)


def placeholders(text: str | None) -> list[str]:
    """The parameter names of a text in order of first appearance: ``["1", "2"]`` or ``["first_name"]``."""
    seen: list[str] = []
    for name in _PLACEHOLDER.findall(text or ""):
        if name not in seen:
            seen.append(name)
    return seen


def _examples(example: Any, text: str | None, positional_key: str, named_key: str) -> dict[str, str]:
    """Meta's example values of a text's parameters, by parameter name."""
    out: dict[str, str] = {}
    if not isinstance(example, dict):
        return out
    for item in example.get(named_key) or []:
        if isinstance(item, dict) and _text(item, "param_name") and _text(item, "example"):
            out[str(item["param_name"])] = str(item["example"])
    values = example.get(positional_key)
    if isinstance(values, list) and values and isinstance(values[0], list):
        values = values[0]  # body_text is a list of one list
    if isinstance(values, list):
        for name, value in zip(placeholders(text), values, strict=False):
            out.setdefault(name, str(value))
    return out


def _params(text: str | None, examples: dict[str, str]) -> list[dict[str, Any]]:
    return [{"name": n, "example": examples.get(n)} for n in placeholders(text)]


def spec_of(components: list[dict[str, Any]], parameter_format: str = POSITIONAL) -> dict[str, Any]:
    """What a send of a template with these components must fill:
    ``{"format": "positional"|"named", "header": None | {"kind": "text", "params": [...]} |
    {"kind": "image"|"video"|"document", "example"}, "body": [{"name", "example"}],
    "buttons": [{"index", "type", "text", "name", "example"}]}`` (only buttons that take a value)."""
    header: dict[str, Any] | None = None
    h = _component(components, "HEADER")
    if h is not None:
        fmt = str(h.get("format", "TEXT")).upper()
        if fmt in MEDIA_HEADERS:
            handles = (h.get("example") or {}).get("header_handle") if isinstance(h.get("example"), dict) else None
            header = {"kind": fmt.lower(), "example": handles[0] if isinstance(handles, list) and handles else None}
        elif fmt == "TEXT" and placeholders(_text(h, "text")):
            text = _text(h, "text")
            header = {"kind": "text", "params": _params(text, _examples(h.get("example"), text, "header_text",
                                                                           "header_text_named_params"))}
    b = _component(components, "BODY")
    body_text = _text(b, "text")
    body = _params(body_text, _examples((b or {}).get("example"), body_text, "body_text", "body_text_named_params"))
    buttons: list[dict[str, Any]] = []
    bc = _component(components, "BUTTONS")
    for index, button in enumerate((bc or {}).get("buttons") or []):
        if not isinstance(button, dict):
            continue
        kind = str(button.get("type", "")).upper()
        example = button.get("example")
        example = example[0] if isinstance(example, list) and example else example
        if kind == "URL" and placeholders(_text(button, "url")):
            buttons.append({"index": index, "type": "url", "text": _text(button, "text"),
                            "name": placeholders(_text(button, "url"))[0],
                            "example": str(example) if example is not None else None})
        elif kind == "COPY_CODE":
            buttons.append({"index": index, "type": "copy_code", "text": _text(button, "text") or "Copy code",
                            "name": "code", "example": str(example) if example is not None else None})
    return {"format": parameter_format.lower(), "header": header, "body": body, "buttons": buttons}


# --- the parameters of a send -------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Filled:
    """The parameters of a send, read against the template: values by name, and what is wrong."""

    header: dict[str, str] = field(default_factory=dict)
    header_media: dict[str, str] | None = None  # {"link": url} or {"id": media id}
    body: dict[str, str] = field(default_factory=dict)
    buttons: dict[int, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def _by_name(given: Any, names: list[str], where: str, problems: list[str]) -> dict[str, str]:
    if given is None:
        given = [] if not names or names[0].isdigit() else {}
    if isinstance(given, str):
        given = [given]
    out: dict[str, str] = {}
    if isinstance(given, list):
        for n, value in enumerate(given):
            if n >= len(names):
                problems.append(f"unknown parameter {where} {{{{{n + 1}}}}} (the template has {len(names)})")
            elif not isinstance(value, str) or not value.strip():
                problems.append(f"missing parameter {where} {{{{{names[n]}}}}}")
            else:
                out[names[n]] = value
    elif isinstance(given, dict):
        for key, value in given.items():
            if key not in names:
                problems.append(f"unknown parameter {where} {{{{{key}}}}}")
            elif isinstance(value, str) and value.strip():
                out[key] = value
    else:
        problems.append(f"{where} parameters must be a list of texts or an object of texts by name")
        return out
    problems.extend(f"missing parameter {where} {{{{{n}}}}}" for n in names
                    if n not in out and f"missing parameter {where} {{{{{n}}}}}" not in problems)
    return out


def _media(given: Any, kind: str, problems: list[str]) -> dict[str, str] | None:
    if isinstance(given, str) and given.strip():
        return {"link": given.strip()}
    if isinstance(given, dict):
        for key in ("link", "id"):
            if isinstance(given.get(key), str) and given[key].strip():
                return {key: given[key].strip()}
    problems.append(f"missing parameter header {kind} (a link or a media id)")
    return None


def fill(spec: dict[str, Any], given: Any) -> Filled:
    """Read the parameters of a send (see the module docstring) against ``spec``; a list alone is the body's."""
    problems: list[str] = []
    if isinstance(given, list) or given is None:
        given = {"body": given or []}
    if not isinstance(given, dict):
        return Filled(problems=["parameters must be an object with header, body and buttons"])
    unknown = sorted(set(given) - {"header", "body", "buttons"})
    problems.extend(f"unknown part {k!r} (parameters have header, body and buttons)" for k in unknown)
    header: dict[str, str] = {}
    media = None
    h = spec.get("header")
    if h is None:
        if given.get("header") not in (None, [], {}, ""):
            problems.append("unknown parameter header (the template's header takes none)")
    elif h["kind"] == "text":
        header = _by_name(given.get("header"), [p["name"] for p in h["params"]], "header", problems)
    else:
        media = _media(given.get("header"), h["kind"], problems)
    body = _by_name(given.get("body"), [p["name"] for p in spec.get("body") or []], "body", problems)
    buttons: dict[int, str] = {}
    wanted = spec.get("buttons") or []
    raw = given.get("buttons")
    if raw is None:
        raw = []
    if isinstance(raw, list):
        for n, value in enumerate(raw):
            if n >= len(wanted):
                problems.append(f"unknown parameter button {n + 1} (the template has {len(wanted)} that take one)")
            elif isinstance(value, str) and value.strip():
                buttons[wanted[n]["index"]] = value
    elif isinstance(raw, dict):
        indexes = {str(b["index"]): b["index"] for b in wanted}
        for key, value in raw.items():
            if str(key) not in indexes:
                problems.append(f"unknown parameter button {key}")
            elif isinstance(value, str) and value.strip():
                buttons[indexes[str(key)]] = value
    else:
        problems.append("buttons must be a list of texts or an object by button index")
    problems.extend(f"missing parameter button {b['index']} ({b['type']} {b.get('text') or ''})".rstrip()
                    for b in wanted if b["index"] not in buttons)
    return Filled(header, media, body, buttons, problems)


def problems(spec: dict[str, Any], given: Any) -> list[str]:
    """Each missing or unknown parameter of a send, in words (empty: every field is filled)."""
    return fill(spec, given).problems


def _text_param(value: str, name: str, named: bool) -> dict[str, Any]:
    param: dict[str, Any] = {"type": "text", "text": value}
    if named:
        param["parameter_name"] = name
    return param


def send_components(spec: dict[str, Any], given: Any) -> list[dict[str, Any]]:
    """``template.components`` of the send request (header, body and button parameters, positional or
    named); ``ValueError`` listing the problems when a parameter is missing or unknown."""
    f = fill(spec, given)
    if f.problems:
        raise ValueError("; ".join(f.problems))
    named = spec.get("format") == "named"
    out: list[dict[str, Any]] = []
    h = spec.get("header")
    if h is not None and h["kind"] == "text":
        out.append({"type": "header", "parameters": [_text_param(f.header[p["name"]], p["name"], named)
                                                     for p in h["params"]]})
    elif h is not None and f.header_media is not None:
        out.append({"type": "header", "parameters": [{"type": h["kind"], h["kind"]: f.header_media}]})
    if spec.get("body"):
        out.append({"type": "body", "parameters": [_text_param(f.body[p["name"]], p["name"], named)
                                                   for p in spec["body"]]})
    for b in spec.get("buttons") or []:
        value = f.buttons[b["index"]]
        param = {"type": "coupon_code", "coupon_code": value} if b["type"] == "copy_code" \
            else {"type": "text", "text": value}
        out.append({"type": "button", "sub_type": b["type"], "index": str(b["index"]), "parameters": [param]})
    return out


def _substitute(text: str, values: dict[str, str]) -> str:
    return _PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), text)


def render(template: Template, given: Any) -> str:
    """The text the customer sees: the header (a media header as ``[image]``), the body and the footer
    with the parameters filled in, and the buttons' labels."""
    f = fill(spec_of(template.components, template.parameter_format), given)
    lines: list[str] = []
    h = _component(template.components, "HEADER")
    if h is not None:
        fmt = str(h.get("format", "TEXT")).upper()
        if fmt == "TEXT" and _text(h, "text"):
            lines.append(_substitute(str(h["text"]), f.header))
        elif fmt != "TEXT":
            lines.append(f"[{fmt.lower()}]")
    b = _component(template.components, "BODY")
    if _text(b, "text"):
        lines.append(_substitute(str((b or {})["text"]), f.body))
    foot = _component(template.components, "FOOTER")
    if _text(foot, "text"):
        lines.append(str((foot or {})["text"]))
    bc = _component(template.components, "BUTTONS")
    labels = [f"[{_text(x, 'text')}]" for x in (bc or {}).get("buttons") or [] if _text(x, "text")]
    if labels:
        lines.append(" ".join(labels))
    return "\n".join(lines) or f"[template {template.name} ({template.language})]"


# --- whether it may go now ----------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Refusal:
    code: str  # TEMPLATE_NOT_APPROVED | MARKETING_OPTED_OUT | ACCOUNT_RESTRICTED
    error: str


def refusal(template: Template, *, marketing_opt_out: bool, restricted_until: datetime | None,
            now: datetime) -> Refusal | None:
    """Why ``template`` may not be sent to this contact from this account now, or ``None``."""
    if restricted_until is not None and restricted_until > now:
        return Refusal("ACCOUNT_RESTRICTED", "Meta restricted business-initiated messages from this account until "
                                             f"{restricted_until.isoformat(timespec='minutes')}: no template can be "
                                             "sent before then")
    if template.status != APPROVED:
        why = f" ({template.reason})" if template.reason else ""
        return Refusal("TEMPLATE_NOT_APPROVED", f"template {template.name} ({template.language}) is "
                                                f"{template.status} at Meta{why}: only an APPROVED template can go")
    if template.category == MARKETING and marketing_opt_out:
        return Refusal("MARKETING_OPTED_OUT", "the customer stopped marketing messages from this business: a "
                                              "MARKETING template cannot be sent to them (a UTILITY one can)")
    return None
