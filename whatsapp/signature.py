"""Meta's webhook signature: ``X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the raw body>``.

:func:`check` never raises, whatever the header holds (non-ASCII, wrong scheme, odd length):
it says whether the header is missing, malformed or a mismatch, so the caller can answer
401 (no usable signature) or 403 (a well-formed signature that does not match).
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import re

PREFIX = "sha256="
_WELL_FORMED = re.compile(r"sha256=([0-9a-fA-F]{64})", re.ASCII)


class Verdict(enum.Enum):
    OK = "ok"
    MISSING = "missing"  # no header
    MALFORMED = "malformed"  # not exactly one ``sha256=<64 hex digits>`` header
    MISMATCH = "mismatch"  # well formed, but not the HMAC of this body with this secret


def sign(app_secret: str, body: bytes) -> str:
    """The header value Meta would send for ``body``."""
    return PREFIX + hmac.new(app_secret.encode(), body, hashlib.sha256).hexdigest()


def digest(header: str) -> bytes | None:
    """The 32-byte digest a well-formed header carries, else None (wrong scheme, not hex, non-ASCII)."""
    match = _WELL_FORMED.fullmatch(header.strip())
    return bytes.fromhex(match.group(1)) if match else None


def received(headers: list[str]) -> bytes | Verdict:
    """The digest of exactly one well-formed header value, else what is wrong (``MISSING`` or
    ``MALFORMED``); cheap: no HMAC, so an unsigned flood costs no body reads."""
    if not headers:
        return Verdict.MISSING
    found = digest(headers[0]) if len(headers) == 1 else None
    return Verdict.MALFORMED if found is None else found


def form(headers: list[str]) -> Verdict | None:
    """What is wrong with the header values received before the body is read, or None when there
    is exactly one well-formed value."""
    found = received(headers)
    return found if isinstance(found, Verdict) else None


def matches(app_secret: bytes, body: bytes, received_digest: bytes) -> bool:
    """Constant-time: whether ``received_digest`` (from :func:`received`) is the HMAC-SHA256 of ``body``."""
    return hmac.compare_digest(hmac.new(app_secret, body, hashlib.sha256).digest(), received_digest)


def check(app_secret: str, body: bytes, headers: list[str]) -> Verdict:
    """Constant-time check of the ``X-Hub-Signature-256`` values received against the exact bytes."""
    found = received(headers)
    if isinstance(found, Verdict):
        return found
    return Verdict.OK if matches(app_secret.encode(), body, found) else Verdict.MISMATCH


def verify(app_secret: str, body: bytes, header: str) -> bool:
    """Whether ``header`` is a well-formed signature of ``body``; never raises."""
    return check(app_secret, body, [header]) is Verdict.OK
