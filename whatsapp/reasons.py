"""Why a send failed, in words a person acts on: Meta's error codes (and our own) → what happened
and what to do next. The one home of those words; :mod:`whatsapp.graph` decides what the code
means for the pipeline (retry, pause, give up), this module what it means for a person.

:func:`explain` takes an error as it is stored (a ledger row's or a task's ``error``: ``{"code",
"error", "kind", ...}``; a status webhook's ``errors`` list of ``{"code", "title", "message"}``;
or a task's details wrapping either) and returns a :class:`Reason`, or ``None`` for no error.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Reason:
    code: int | str | None
    what: str  # what happened, as a clause: "the 24-hour window had closed"
    next_step: str  # what a person does now, as a sentence

    def as_dict(self) -> dict[str, Any]:
        return {"code": self.code, "reason_text": self.what, "next_step": self.next_step}


REENGAGEMENT = 131047  # Meta: more than 24 hours since the customer last wrote

_TEMPLATE = "Send an approved template instead; free text can go again once the customer writes back."
_LATER = "Nothing to do: it is tried again by itself. If it keeps failing, send the reply again later."
_NUMBER = "Check the customer's number with them (another channel), correct the contact, then send again."
_ADMIN = "Ask an admin to check the business number in Meta's WhatsApp Manager; sends resume once it is fixed."

# Meta's Cloud API error codes (developers.facebook.com/docs/whatsapp/cloud-api/support/error-codes).
CODES: dict[int | str, tuple[str, str]] = {
    REENGAGEMENT: ("the 24-hour window had closed (the customer last wrote more than 24 hours ago)", _TEMPLATE),
    470: ("the 24-hour window had closed (the customer last wrote more than 24 hours ago)", _TEMPLATE),
    131026: ("WhatsApp could not deliver it to this number (not on WhatsApp, an old app, or the terms "
             "not accepted)", _NUMBER),
    131021: ("the recipient is the business's own number", _NUMBER),
    133010: ("this phone number is not registered on WhatsApp", _NUMBER),
    131050: ("the customer has stopped marketing messages from this business",
             "Do not send marketing templates; answer when the customer writes."),
    131049: ("Meta held it back to keep the customer's experience healthy (marketing limit per person)",
             "Do not resend now; try again in a day or more."),
    131051: ("WhatsApp does not support this kind of message", "Send it as text."),
    131052: ("the customer's media could not be downloaded", "Ask the customer to send it again."),
    131053: ("the media could not be uploaded to WhatsApp", "Check the file's type and size, then send again."),
    131008: ("a required part of the message was missing", "Check the reply (and a template's parameters), "
             "then send again."),
    131009: ("a value in the message was not accepted", "Check the reply (and a template's parameters), "
             "then send again."),
    100: ("Meta did not accept the request's parameters", "Check the reply (and a template's parameters), "
          "then send again."),
    132000: ("the template's parameters did not match the template (how many)",
             "Fill in exactly the template's parameters, then send again."),
    132001: ("no approved template has that name in that language",
             "Choose a template approved in Meta's WhatsApp Manager, in its language."),
    132005: ("the template's text with its parameters is too long", "Shorten the parameters, then send again."),
    132007: ("the template's content broke WhatsApp's policy", "Choose another approved template."),
    132012: ("a template parameter had the wrong format", "Fix the parameters, then send again."),
    132015: ("the template is paused for low quality", "Choose another approved template."),
    132016: ("the template is disabled", "Choose another approved template."),
    130429: ("Meta's sending rate limit was hit", _LATER),
    131056: ("too many messages went to this customer in a short time", _LATER),
    131000: ("something went wrong at Meta", _LATER),
    131016: ("WhatsApp was temporarily unavailable", _LATER),
    133004: ("WhatsApp was temporarily unavailable", _LATER),
    131057: ("the business account was in maintenance at Meta", _LATER),
    1: ("Meta could not handle the request just then", _LATER),
    2: ("WhatsApp was temporarily unavailable", _LATER),
    4: ("the app's request limit at Meta was hit", _LATER),
    80007: ("the business account's rate limit was hit", _LATER),
    131048: ("sending is limited: too many customers reported or blocked this number", _ADMIN),
    368: ("the business account is blocked for a while for policy violations", _ADMIN),
    131031: ("the business account is locked", _ADMIN),
    131042: ("the business account has a payment problem", _ADMIN),
    131045: ("the business number is not registered correctly", _ADMIN),
    131005: ("the access token has no permission to send", _ADMIN),
    190: ("the business number's access token expired or is invalid", _ADMIN),
    # our own, before any call to Meta
    "TEXT_TOO_LONG": ("the reply is longer than WhatsApp's 4,096 characters", "Shorten it and send again."),
    "TEMPLATE_NOT_APPROVED": ("the template is not approved at Meta (paused, disabled or rejected since)",
                              "Choose another approved template."),
    "MARKETING_OPTED_OUT": ("the customer has stopped marketing messages from this business",
                            "Send a utility template, or answer when the customer writes."),
    "ACCOUNT_RESTRICTED": ("Meta restricted business-initiated messages from this account",
                           "Wait until the restriction ends (an admin sees it in the inbox), then send again."),
    "TEMPLATE_PARAMETERS": ("the template's parameters did not fit the approved template",
                            "Fix the rules file's window_template parameters (or send the template by hand)."),
}

_KINDS: dict[str, tuple[str, str]] = {  # errors without a Meta code, by what the sender made of them
    "AmbiguousGraphError": ("no answer came from Meta: it may or may not have reached the customer",
                            "Check with the customer (or wait for a delivery tick) before sending it again."),
    "InvalidRecipient": ("the customer's number is not a valid phone number", _NUMBER),
}


def _code_of(error: dict[str, Any]) -> int | str | None:
    code = error.get("code")
    return code if isinstance(code, (int, str)) and not isinstance(code, bool) else None


def _first(error: Any) -> dict[str, Any] | None:
    """The error object that says most: a list's first, a wrapper's inner ``errors``."""
    if isinstance(error, list):
        error = next((e for e in error if isinstance(e, dict)), None)
    if not isinstance(error, dict):
        return None
    inner = error.get("errors")
    if _code_of(error) is None and isinstance(inner, list):
        found = _first(inner)
        if found is not None:
            return found
    return error


def explain(error: Any) -> Reason | None:
    """``error`` in words (see the module docstring); ``None`` when there is no error object."""
    e = _first(error)
    if e is None:
        return None
    code = _code_of(e)
    if code in CODES:
        what, step = CODES[code]
        return Reason(code, what, step)
    kind = e.get("kind")
    if isinstance(kind, str) and kind in _KINDS:
        what, step = _KINDS[kind]
        return Reason(code, what, step)
    said = next((str(e[k]) for k in ("details", "message", "title", "error") if isinstance(e.get(k), str) and e[k]),
                None)
    what = f"Meta said: {said}" if said else "the send failed for a reason Meta did not name"
    if code is not None:
        what += f" (code {code})"
    return Reason(code, what, "Check the reply and send it again; if it fails again, ask an admin to look at "
                              "the error in the server log.")


def words(error: Any) -> dict[str, Any]:
    """The fields an API object with ``error`` gains: ``reason_text`` and ``next_step`` (None without one)."""
    reason = explain(error)
    return {"reason_text": reason.what if reason else None, "next_step": reason.next_step if reason else None}
