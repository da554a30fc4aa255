"""Event records carried on the bus, and their JSON codecs.

Every record is a frozen dataclass; ``encode`` gives orjson bytes and ``decode_*``
validates a value read from a topic, raising :class:`RecordError` (a poison event:
dead-letter it) when it does not fit.
"""

from __future__ import annotations

import dataclasses
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import orjson

# Size limits (contract): every record we produce stays under these, checked before producing.
#: faust's producer refuses a request above ``max_request_size`` (1,000,000 bytes by default) and
#: Kafka's default ``max.message.bytes`` is about 1 MB; the margin covers the key, the headers
#: and the record batch's own framing.
RECORD_MAX_BYTES = 900_000
#: ``wa.webhook.raw`` is created with this ``max.message.bytes``: room for any body Meta sends.
RAW_TOPIC_MAX_MESSAGE_BYTES = 8 * 1024 * 1024
#: A raw body above this can never be published (the topic's limit minus the same margin).
RAW_RECORD_MAX_BYTES = RAW_TOPIC_MAX_MESSAGE_BYTES - 100_000
#: How much of a value a reduced dead letter keeps, in characters: enough to recognise it.
DEAD_LETTER_PREVIEW_CHARS = 2_000


# Request ids (contract): every webhook call has one; it rides in this header of every record the call
# causes, on every topic (wa.webhook.raw → wa.status / wa.outbound → retries → wa.dlq).
REQUEST_ID_HEADER = "wacrm-request-id"
#: A caller's ``X-Request-Id`` is kept when it is 1 to this many printable ASCII characters.
REQUEST_ID_MAX_CHARS = 128

Headers = list[tuple[str, bytes]]


def valid_request_id(value: str | None) -> str | None:
    """``value`` when it can be a request id (1..REQUEST_ID_MAX_CHARS printable ASCII, no spaces), else None."""
    if value and len(value) <= REQUEST_ID_MAX_CHARS and all("!" <= c <= "~" for c in value):
        return value
    return None


def new_request_id() -> str:
    """A fresh request id: 32 hex digits."""
    return secrets.token_hex(16)


def request_headers(request_id: str | None) -> Headers | None:
    """The record headers that carry ``request_id`` (None: no headers)."""
    return [(REQUEST_ID_HEADER, request_id.encode())] if request_id else None


def request_id_of(headers: Iterable[tuple[str, bytes]] | Mapping[str, bytes] | None) -> str | None:
    """The request id in a record's headers (a list of pairs or a mapping), if a valid one is there."""
    if not headers:
        return None
    pairs = headers.items() if isinstance(headers, Mapping) else headers
    for name, value in pairs:
        if name == REQUEST_ID_HEADER and value is not None:
            return valid_request_id(bytes(value).decode("ascii", "replace"))
    return None


class RecordError(ValueError):
    """A value on a topic is not the record it should be; retrying cannot fix it."""

    retryable = False  # read by core.errors.classify: dead-letter it


class RecordTooLarge(RecordError):
    """A record is larger than the bus accepts; it must be dead-lettered by reference."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"record of {size:,} bytes is above the bus limit of {limit:,} bytes")
        self.size = size
        self.limit = limit


def check_size(value: bytes, limit: int = RECORD_MAX_BYTES) -> bytes:
    """``value`` unchanged if the bus can carry it; :class:`RecordTooLarge` otherwise."""
    if len(value) > limit:
        raise RecordTooLarge(len(value), limit)
    return value


@dataclass(frozen=True, slots=True)
class RawRef:
    """Where a parsed event came from: the raw webhook body at topic/partition/offset."""

    topic: str
    partition: int
    offset: int


@dataclass(frozen=True, slots=True)
class Customer:
    """A customer as Meta identifies them: ``wa_id`` (phone) and/or business-scoped ``user_id``."""

    wa_id: str | None = None
    user_id: str | None = None
    profile_name: str | None = None
    username: str | None = None
    parent_user_id: str | None = None

    @property
    def key(self) -> str:
        """The customer part of the conversation key: ``wa_id`` when present, else ``user_id``."""
        return self.wa_id or self.user_id or ""


def conversation_key(phone_number_id: str, customer: Customer) -> str:
    """Contract: ``"{phone_number_id}:{customer id}"`` keys every conversation topic."""
    return f"{phone_number_id}:{customer.key}"


@dataclass(frozen=True, slots=True)
class InboundMessage:
    """One customer message (or an echo of the business's own), split out of a webhook body (topic ``wa.inbound``)."""

    conversation_key: str
    phone_number_id: str
    display_phone_number: str | None
    customer: Customer
    message_id: str
    timestamp: int  # epoch seconds, from Meta
    type: str
    text: str | None  # one-line rendition for the inbox and the reply engines
    payload: dict[str, Any]  # the message object exactly as Meta sent it
    raw_ref: RawRef
    received_at: float  # epoch seconds when the webhook accepted the body (broker timestamp)
    content: dict[str, Any] = field(default_factory=dict)  # the typed content (whatsapp.model), as a dict
    context: dict[str, Any] | None = None
    referral: dict[str, Any] | None = None
    errors: list[dict[str, Any]] = field(default_factory=list)
    echo: bool = False  # the business sent it from the WhatsApp Business app (to ``customer``): stored, never sent


@dataclass(frozen=True, slots=True)
class StatusUpdate:
    """A delivery status of a message we sent (topic ``wa.status``)."""

    conversation_key: str
    phone_number_id: str
    message_id: str
    status: str
    timestamp: int
    recipient_id: str | None
    errors: list[dict[str, Any]]
    biz_opaque_callback_data: str | None
    payload: dict[str, Any]
    raw_ref: RawRef
    recipient_user_id: str | None = None


@dataclass(frozen=True, slots=True)
class SendIntent:
    """A reply to send (topic ``wa.outbound``); ``dedupe_key`` names its row in ``outbound_log``."""

    dedupe_key: str
    conversation_key: str
    conversation_id: int
    phone_number_id: str
    to: str  # wa_id / phone, or a business-scoped user id
    text: str
    reply_to: str | None = None  # the inbound message id this answers
    quote: bool = True  # show ``reply_to`` quoted above the reply (``context.message_id``)
    ownership_version: int = 0
    customer_timestamp: float | None = None  # when the customer wrote (Meta's timestamp, 1 s resolution)
    accepted_at: float | None = None  # when our webhook accepted the customer's body (pipeline latency)
    automatic: bool = True  # False for a person's reply: ownership and opt-out checks do not apply
    kind: str = "text"  # text | template | media | notice (opt-out/in confirmation, handover notice: sent
    # although the bot is otherwise quiet in the conversation)
    template: dict[str, Any] | None = None  # {"name", "language", "parameters"} for kind=template
    # kind=media: the file in the media store to upload and send, {"type", "mime_type", "sha256", "size",
    # "filename", "caption"}; the upload's media id is kept on the ledger row (outbound_log.media_upload_id)
    media: dict[str, Any] | None = None
    attempt: int = 0  # Graph API attempts made before this delivery (the ledger row must agree)
    not_before: float | None = None  # retry topics: do not try before this epoch time
    first_attempt_at: float | None = None
    origin: dict[str, Any] | None = None  # topic/partition/offset of the first delivery (for the DLQ)
    request_id: str | None = None  # the webhook call that caused it; the ledger is the outbox, so it is kept here


@dataclass(frozen=True, slots=True)
class MediaJob:
    """A media file to download (topic ``wa.media``); ``media_id`` names its row in ``media``, the authority."""

    media_id: str  # Meta's media id
    conversation_key: str
    request_id: str | None = None


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A poison event kept for a human (topic ``wa.dlq``)."""

    reason: str
    source_topic: str
    source_partition: int
    source_offset: int
    error: str
    value: str  # the original value, decoded as UTF-8 with replacement
    attempts: int = 1
    at: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)


def encode(record: Any) -> bytes:
    """JSON bytes of a record (orjson serialises dataclasses natively, without copying)."""
    return orjson.dumps(record)


def encode_bounded(record: Any, limit: int = RECORD_MAX_BYTES) -> bytes:
    """JSON bytes of a record the bus can carry.

    Raises :class:`RecordTooLarge` when it is above ``limit``, and :class:`RecordError` when it
    cannot be encoded at all (orjson refuses more than 254 levels of nesting, non-string keys …).
    """
    try:
        data = orjson.dumps(record)
    except (TypeError, RecursionError, orjson.JSONEncodeError) as exc:
        raise RecordError(f"cannot encode the record: {exc}") from None
    return check_size(data, limit)


def bounded_dead_letter(letter: DeadLetter, limit: int = RECORD_MAX_BYTES) -> tuple[DeadLetter, bytes]:
    """The dead letter and its bytes, reduced to a reference when it is too large to produce.

    A reduced letter keeps where the event can be found (source topic, partition, offset), the
    reason, the error (shortened) and the first :data:`DEAD_LETTER_PREVIEW_CHARS` characters of
    its value; ``details`` says it was reduced and how large the value was.
    """
    data = orjson.dumps(letter, default=repr)
    if len(data) <= limit:
        return letter, data
    keep = DEAD_LETTER_PREVIEW_CHARS
    reduced = dataclasses.replace(
        letter, value=letter.value[:keep], error=letter.error[:keep],
        details={"reduced": True, "value_chars": len(letter.value), "letter_bytes": len(data),
                 "details_preview": orjson.dumps(letter.details, default=repr)[:keep].decode("utf-8", "replace")})
    return reduced, orjson.dumps(reduced, default=repr)


# Dead-letter headers (contract): where a letter came from and why, readable without decoding its value
# (the practice of Kafka Connect and Sentry's arroyo). The value stays the JSON :class:`DeadLetter`.
DLQ_HEADER_TOPIC = "wacrm-dlq-original-topic"
DLQ_HEADER_PARTITION = "wacrm-dlq-original-partition"
DLQ_HEADER_OFFSET = "wacrm-dlq-original-offset"
DLQ_HEADER_REASON = "wacrm-dlq-reason"
DLQ_HEADER_ERROR = "wacrm-dlq-error"
DLQ_HEADER_AGENT = "wacrm-dlq-agent"
DLQ_HEADER_TIME = "wacrm-dlq-time"
#: An error header keeps this many characters (the whole error is in the value).
DLQ_HEADER_ERROR_CHARS = 1_000


def agent_of(reason: str) -> str:
    """The agent named at the start of a dead letter's reason (``"inbound: poison event"`` → ``inbound``)."""
    return reason.split(":", 1)[0].strip() if ":" in reason else "unknown"


def dead_letter_headers(letter: DeadLetter, request_id: str | None) -> Headers:
    """The headers of a dead letter's record: its origin, reason, error, agent, time, and request id if any."""
    pairs = [(DLQ_HEADER_TOPIC, letter.source_topic), (DLQ_HEADER_PARTITION, str(letter.source_partition)),
             (DLQ_HEADER_OFFSET, str(letter.source_offset)), (DLQ_HEADER_REASON, letter.reason),
             (DLQ_HEADER_ERROR, letter.error[:DLQ_HEADER_ERROR_CHARS]), (DLQ_HEADER_AGENT, agent_of(letter.reason)),
             (DLQ_HEADER_TIME, repr(letter.at))]
    return [(name, value.encode("utf-8", "replace")) for name, value in pairs] + (request_headers(request_id) or [])


T = TypeVar("T")


def _build(cls: type[T], data: Any) -> T:
    if not isinstance(data, dict):
        raise RecordError(f"{cls.__name__}: expected a JSON object, got {type(data).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    try:
        return cls(**{k: v for k, v in data.items() if k in names})
    except TypeError as exc:
        raise RecordError(f"{cls.__name__}: {exc}") from None


def _loads(value: bytes | None) -> Any:
    if value is None:
        raise RecordError("empty value")
    try:
        return orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise RecordError(f"not JSON: {exc}") from None


def _require(obj: Any, name: str, kind: type | tuple[type, ...]) -> None:
    if not isinstance(getattr(obj, name), kind):
        raise RecordError(f"{type(obj).__name__}.{name}: wrong type {type(getattr(obj, name)).__name__}")


def decode_inbound(value: bytes | None) -> InboundMessage:
    data = _loads(value)
    msg = _build(InboundMessage, data)
    customer = _build(Customer, data.get("customer"))
    ref = _build(RawRef, data.get("raw_ref"))
    msg = dataclasses.replace(msg, customer=customer, raw_ref=ref)
    for name, kind in (("conversation_key", str), ("phone_number_id", str), ("message_id", str),
                       ("timestamp", int), ("type", str), ("payload", dict)):
        _require(msg, name, kind)
    if not customer.key:
        raise RecordError("InboundMessage: customer has neither wa_id nor user_id")
    return msg


def decode_status(value: bytes | None) -> StatusUpdate:
    data = _loads(value)
    st = _build(StatusUpdate, data)
    st = dataclasses.replace(st, raw_ref=_build(RawRef, data.get("raw_ref")))
    for name, kind in (("message_id", str), ("status", str), ("timestamp", int), ("errors", list)):
        _require(st, name, kind)
    return st


def decode_intent(value: bytes | None) -> SendIntent:
    return intent_from_dict(_loads(value))


def intent_from_dict(data: Any) -> SendIntent:
    intent = _build(SendIntent, data)
    for name, kind in (("dedupe_key", str), ("conversation_id", int), ("phone_number_id", str),
                       ("to", str), ("text", str)):
        _require(intent, name, kind)
    return intent


def decode_media_job(value: bytes | None) -> MediaJob:
    job = _build(MediaJob, _loads(value))
    for name, kind in (("media_id", str), ("conversation_key", str)):
        _require(job, name, kind)
    return job
