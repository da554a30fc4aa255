"""The Graph API send call and its errors, classified by what happens next.

Exception tree (catch at the level you need)::

    GraphError                 the send did not produce a message id
    ├── RetryableGraphError    try the same request again later: Meta said so (throttling, 5xx), or the
    │                          request never left (connection refused, connect timeout, DNS)
    ├── AmbiguousGraphError    the request was written but no answer came (read timeout, dropped
    │                          connection, broken response): Meta may have taken it; never resend
    │                          blindly (the statuses naming ``biz_opaque_callback_data`` settle it)
    ├── PermanentGraphError    do not retry this intent (bad request, window closed, undeliverable)
    │   └── InvalidRecipient   the recipient cannot be normalised; raised before any request
    └── PausingGraphError      stop sending for this business number and alert (spam rate)
        └── TokenRejected      Meta refused the number's access token (401, code 190): its sends wait
                               for a new token

Each class carries flags that :func:`core.errors.classify` reads duck-typed: ``retryable``
(bool), ``ambiguous`` (True only for :class:`AmbiguousGraphError`), and ``pausing`` and
``invalid_recipient`` and ``token_rejected`` for the sender's routes.

Every call carries the access token of the number it is for (``token``): the caller looks it up
(:meth:`storage.numbers.Numbers.token_for`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
import phonenumbers


class GraphError(Exception):
    retryable = False
    ambiguous = False
    pausing = False
    invalid_recipient = False
    token_rejected = False

    def __init__(self, message: str, *, code: int | None = None, http_status: int | None = None,
                 details: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.http_status = http_status
        self.details = details

    def as_dict(self) -> dict[str, Any]:
        return {"error": str(self), "code": self.code, "http_status": self.http_status,
                "details": self.details, "kind": type(self).__name__}


class RetryableGraphError(GraphError):
    retryable = True


class AmbiguousGraphError(GraphError):
    ambiguous = True


class PermanentGraphError(GraphError):
    pass


class InvalidRecipient(PermanentGraphError):
    invalid_recipient = True


class PausingGraphError(GraphError):
    pausing = True


class TokenRejected(PausingGraphError):
    token_rejected = True


#: The media types whose message takes a caption (audio and stickers take none).
CAPTIONED = frozenset({"image", "video", "document"})

# Meta error code → what to do. Codes not listed: 5xx without a code is retryable,
# anything else permanent (an unknown 4xx must not burn retries).
RETRYABLE_CODES = frozenset({1, 2, 4, 80007, 130429, 131000, 131016, 131056, 131057, 133004})
PAUSING_CODES = frozenset({190, 131048})
TOKEN_REJECTED = 190  # Meta: the access token expired, was revoked or is invalid (HTTP 401)
REENGAGEMENT = 131047  # more than 24 hours since the customer last wrote: only a template may go


def answer_body(http_status: int, raw: bytes) -> Any:
    """The JSON body of a Graph API answer (``None`` when empty or not JSON); any status but 200 raises
    what it means (:func:`classify`)."""
    try:
        body = orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError:
        body = None
    if http_status != 200:
        raise classify(http_status, body)
    return body


def classify(http_status: int, body: Any) -> GraphError:
    """Turn an error response into the exception that says what happens next."""
    err = body.get("error") if isinstance(body, dict) else None
    if not isinstance(err, dict) or not isinstance(err.get("code"), int):
        message = f"Graph API answered HTTP {http_status} without an error code"
        cls = RetryableGraphError if http_status >= 500 or http_status == 429 else \
            TokenRejected if http_status == 401 else PermanentGraphError
        return cls(message, http_status=http_status)
    code = err["code"]
    raw_data = err.get("error_data")
    data: dict[str, Any] = raw_data if isinstance(raw_data, dict) else {}
    details = data.get("details") if isinstance(data.get("details"), str) else None
    message = str(err.get("message") or f"Graph API error {code}")
    if code == TOKEN_REJECTED:
        cls2: type[GraphError] = TokenRejected
    elif code in PAUSING_CODES:
        cls2 = PausingGraphError
    elif code in RETRYABLE_CODES:
        cls2 = RetryableGraphError
    else:
        cls2 = PermanentGraphError
    return cls2(message, code=code, http_status=http_status, details=details)


@functools.lru_cache(maxsize=65536)  # a pure function of its arguments; parsing a number is costly
def recipient_field(to: str, default_region: str | None) -> tuple[str, str]:
    """``("to", "+E164")`` for a phone number or ``("recipient", id)`` for a business-scoped user id.

    ``wa_id`` values are international digits without ``+``; national formats use
    ``default_region``. Raises :class:`InvalidRecipient`.
    """
    to = to.strip()
    if to[:1].isalpha():  # business-scoped user id, e.g. US.13491208655302741918
        return "recipient", to
    candidates: list[tuple[str, str | None]] = [(to if to.startswith("+") else "+" + to, None)]
    if default_region and not to.startswith("+"):
        candidates.append((to, default_region))  # a national format typed by a person
    number = None
    for text, region in candidates:
        try:
            parsed = phonenumbers.parse(text, region)
        except phonenumbers.NumberParseException:
            continue
        if phonenumbers.is_valid_number(parsed) or (number is None and phonenumbers.is_possible_number(parsed)):
            number = parsed
            if phonenumbers.is_valid_number(parsed):
                break
    if number is None:
        raise InvalidRecipient(f"recipient {to!r} is not a phone number")
    return "to", phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


@dataclass(frozen=True, slots=True)
class Sent:
    message_id: str
    wa_id: str | None
    message_status: str | None


class GraphClient:
    """Sends messages through ``{base}/{version}/{phone_number_id}/messages``, each with the
    access token of its number.

    Owns no session: the caller passes one in and closes it. Every call is bounded by
    ``timeout`` seconds.
    """

    def __init__(self, session: aiohttp.ClientSession, base_url: str, *,
                 timeout: float, default_region: str | None = None) -> None:
        self._session = session
        self._base = base_url.rstrip("/")
        # The connect phase (pool wait, DNS, TCP, TLS) times out first, so a total timeout means the
        # request was on the wire: ambiguous, whereas a connect timeout is safely retryable.
        self._timeout = aiohttp.ClientTimeout(total=timeout, connect=timeout / 2)
        self._region = default_region

    def text_payload(self, to: str, text: str, *, reply_to: str | None = None,
                     callback_data: str | None = None) -> dict[str, Any]:
        field, value = recipient_field(to, self._region)
        payload: dict[str, Any] = {"messaging_product": "whatsapp", "recipient_type": "individual",
                                   field: value, "type": "text", "text": {"body": text}}
        if reply_to:
            payload["context"] = {"message_id": reply_to}
        if callback_data:
            payload["biz_opaque_callback_data"] = callback_data
        return payload

    def template_payload(self, to: str, name: str, language: str, parameters: list[str] | tuple[str, ...] = (),
                         *, callback_data: str | None = None) -> dict[str, Any]:
        """A template message: the only kind allowed outside the 24-hour window."""
        field, value = recipient_field(to, self._region)
        template: dict[str, Any] = {"name": name, "language": {"code": language}}
        if parameters:
            template["components"] = [{"type": "body", "parameters": [{"type": "text", "text": p}
                                                                      for p in parameters]}]
        payload: dict[str, Any] = {"messaging_product": "whatsapp", "recipient_type": "individual", field: value,
                                   "type": "template", "template": template}
        if callback_data:
            payload["biz_opaque_callback_data"] = callback_data
        return payload

    def media_payload(self, to: str, kind: str, media_id: str | None, *, caption: str | None = None,
                      filename: str | None = None, callback_data: str | None = None) -> dict[str, Any]:
        """A file uploaded to Meta sent by its id (``kind``: image, audio, video, document, sticker): a
        caption for an image, a video or a document, a document's file name; audio and stickers take no
        caption (Meta refuses one). ``media_id`` None: the shape of the message without the id."""
        media: dict[str, Any] = {} if media_id is None else {"id": media_id}
        if caption and kind in CAPTIONED:
            media["caption"] = caption
        if filename and kind == "document":
            media["filename"] = filename
        field, value = recipient_field(to, self._region)
        payload: dict[str, Any] = {"messaging_product": "whatsapp", "recipient_type": "individual", field: value,
                                   "type": kind, kind: media}
        if callback_data:
            payload["biz_opaque_callback_data"] = callback_data
        return payload

    async def send(self, phone_number_id: str, payload: dict[str, Any], token: str) -> Sent:
        """Send ``payload`` from the number, authorised by its access ``token``."""
        url = f"{self._base}/{phone_number_id}/messages"
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        try:
            async with self._session.post(url, data=orjson.dumps(payload), headers=headers,
                                          timeout=self._timeout) as resp:
                raw = await resp.read()
                status = resp.status
        except (aiohttp.ConnectionTimeoutError, aiohttp.ClientConnectorError, aiohttp.InvalidURL) as exc:
            # before the request was written: Meta cannot have it
            raise RetryableGraphError(f"Graph API unreachable: {exc!r}") from None
        except (TimeoutError, aiohttp.ClientError) as exc:
            # the connection was up (the connect timeout is shorter than the total): the request went out
            raise AmbiguousGraphError(f"Graph API did not answer within {self._timeout.total}s or dropped the "
                                      f"connection after the request was written: {exc!r}") from None
        body = answer_body(status, raw)
        messages = body.get("messages") if isinstance(body, dict) else None
        if not isinstance(messages, list) or not messages or not isinstance(messages[0], dict) \
                or not isinstance(messages[0].get("id"), str):
            # Meta accepted something: sending again could duplicate it; its statuses settle it.
            raise AmbiguousGraphError("Graph API answered 200 without a message id", http_status=status)
        raw_contacts = body.get("contacts") if isinstance(body, dict) else None
        contacts: list[Any] = raw_contacts if isinstance(raw_contacts, list) else []
        wa_id = contacts[0].get("wa_id") if contacts and isinstance(contacts[0], dict) else None
        return Sent(messages[0]["id"], wa_id, messages[0].get("message_status"))
