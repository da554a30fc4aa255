"""Poison requests for the webhook, written as raw HTTP/1.1 bytes (so any header byte can be sent).

Each :class:`Case` is one request an attacker, a broken proxy or Meta itself could send. The
webhook must answer each with a 4xx, or take it (200) and let the pipeline dead-letter what
cannot become a record; never a 5xx, and never at the cost of the normal traffic around it.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from dataclasses import dataclass

from wacrm.whatsapp import signature, simulate

BIG_TEXT_BYTES = 1_500_000  # one text message of 1.5 MB: under the webhook's 4 MiB default limit
OVER_LIMIT_BYTES = 5 * 1024 * 1024  # over the 4 MiB default limit
NESTING = 100_000
BIG_ID = "wamid.FAULTS_poison_big"


SIGNED_OR_REJECTED = frozenset(range(400, 500)) | {200}  # a 4xx, or taken for the pipeline to dead-letter
REFUSED = frozenset({401, 403})  # an unauthenticated request is refused


@dataclass(frozen=True, slots=True)
class Case:
    name: str
    body: bytes
    headers: tuple[tuple[bytes, bytes], ...]  # besides Host, Content-Length and Connection
    allowed: frozenset[int] = SIGNED_OR_REJECTED  # the answers that are right
    message_id: str | None = None  # a message that, once taken, must be stored or dead-lettered


def _json_headers(*more: tuple[bytes, bytes]) -> tuple[tuple[bytes, bytes], ...]:
    return ((b"Content-Type", b"application/json"), *more)


def _signed(secret: str, body: bytes) -> tuple[tuple[bytes, bytes], ...]:
    return _json_headers((b"X-Hub-Signature-256", signature.sign(secret, body).encode()))


def cases(secret: str) -> list[Case]:
    """Every poison request, signed with ``secret`` where the point is what lies behind the signature."""
    normal = simulate.dumps(simulate.text_body(text="a normal message", wa_id="491700000001",
                                               message_id="wamid.FAULTS_poison_carrier"))
    big = simulate.dumps(simulate.text_body(text="x" * BIG_TEXT_BYTES, wa_id="491700000002",
                                            message_id=BIG_ID))
    nested = b'{"object":"whatsapp_business_account","entry":' + b"[" * NESTING + b"]" * NESTING + b"}"
    invalid_utf8 = normal.replace(b"a normal message", b"a \xff\xfe\xc3 message")
    truncated = normal[: len(normal) // 2]
    over = b'{"pad":"' + b"y" * OVER_LIMIT_BYTES + b'"}'
    wrong = "sha256=" + secrets.token_hex(32)
    return [
        Case("big_text_1.5MB", big, _signed(secret, big), message_id=BIG_ID),
        Case("nested_json", nested, _signed(secret, nested)),
        Case("invalid_utf8", invalid_utf8, _signed(secret, invalid_utf8)),
        Case("truncated_json", truncated, _signed(secret, truncated)),
        Case("over_limit_5MB", over, _signed(secret, over)),
        Case("wrong_signature", normal, _json_headers((b"X-Hub-Signature-256", wrong.encode())), REFUSED),
        Case("non_ascii_signature", normal,
             _json_headers((b"X-Hub-Signature-256", "sha256=é".encode() + b"0" * 63)), REFUSED),
        Case("duplicated_signature", normal,
             (*_signed(secret, normal), (b"X-Hub-Signature-256", wrong.encode())), REFUSED),
        Case("wrong_scheme", normal, _json_headers(
            (b"X-Hub-Signature-256", signature.sign(secret, normal).replace("sha256=", "sha1=").encode())), REFUSED),
        Case("missing_signature", normal, _json_headers(), REFUSED),
        Case("non_latin_header", normal, (*_signed(secret, normal), (b"X-Fuzz", bytes(range(128, 256))))),
        Case("bogus_content_encoding", normal, (*_signed(secret, normal), (b"Content-Encoding", b"gzip"))),
    ]


async def post(port: int, case: Case, path: str = "/webhooks/whatsapp", timeout: float = 60) -> int:
    """Send ``case`` to 127.0.0.1:``port``; the HTTP status, or -1 when no answer came."""
    head = [f"POST {path} HTTP/1.1".encode(), f"Host: 127.0.0.1:{port}".encode(),
            f"Content-Length: {len(case.body)}".encode(), b"Connection: close"]
    head += [k + b": " + v for k, v in case.headers]
    request = b"\r\n".join(head) + b"\r\n\r\n" + case.body
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout)
    except (TimeoutError, OSError):
        return -1
    try:
        writer.write(request)
        # the server may answer (413) and close before reading the whole body
        with contextlib.suppress(ConnectionError, OSError):
            await asyncio.wait_for(writer.drain(), timeout)
        line = await asyncio.wait_for(reader.readline(), timeout)
        parts = line.split()
        return int(parts[1]) if len(parts) >= 2 and parts[1].isdigit() else -1
    except (TimeoutError, OSError):
        return -1
    finally:
        writer.close()
