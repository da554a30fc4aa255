"""Parsers of single environment values for :mod:`core.settings`.

Each takes the raw text (stripped, never empty) and returns the value, or raises ``ValueError``
saying what is wrong; :func:`core.settings.load` puts the variable's name and the value in front.
"""

from __future__ import annotations

import base64
import binascii
import os
import ssl
from collections.abc import Callable
from typing import TypeVar

DATABASE_POOLERS = ("none", "transaction")

N = TypeVar("N", int, float)


def _bounded(kind: Callable[[str], N], lo: N, hi: N) -> Callable[[str], N]:
    """A parser of ``kind`` (int, float) that accepts ``lo`` to ``hi`` inclusive."""
    def parse(raw: str) -> N:
        value = kind(raw)
        if not lo <= value <= hi:
            raise ValueError(f"must be between {lo} and {hi}")
        return value

    return parse


def int_range(lo: int, hi: int) -> Callable[[str], int]:
    return _bounded(int, lo, hi)


def float_range(lo: float, hi: float) -> Callable[[str], float]:
    return _bounded(float, lo, hi)


def url(raw: str) -> str:
    if not raw.startswith(("http://", "https://")):
        raise ValueError("must start with http:// or https://")
    return raw.rstrip("/")


def database_url(raw: str) -> str:
    if not raw.startswith(("postgres://", "postgresql://")):
        raise ValueError("must be a postgresql:// URL")
    return raw


def pooler(raw: str) -> str:
    value = raw.strip().lower()
    if value not in DATABASE_POOLERS:
        raise ValueError("must be none (DATABASE_URL reaches PostgreSQL, or a session-mode pooler) or transaction "
                         "(a transaction-mode pooler: PgBouncer pool_mode=transaction, Supabase's or Neon's pooled "
                         "URL, RDS Proxy)")
    return value


def bootstrap(raw: str) -> str:
    for server in raw.split(","):
        host, sep, port = server.strip().rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(f"{server.strip()!r} is not host:port")
    return raw


def region(raw: str) -> str:
    if len(raw) != 2 or not raw.isalpha():
        raise ValueError("must be a two-letter region code such as US or DE")
    return raw.upper()


def fernet_key(raw: str) -> str:
    # what cryptography's Fernet accepts (storage.numbers encrypts the tokens with it)
    try:
        decoded = base64.urlsafe_b64decode(raw.encode("ascii"))
    except (binascii.Error, ValueError, UnicodeEncodeError):
        decoded = b""
    if len(decoded) != 32:
        raise ValueError("must be 32 random bytes in url-safe base64 (a Fernet key; `wacrm dev` makes one, or: "
                         "python -c 'import base64, os; print(base64.urlsafe_b64encode(os.urandom(32)).decode())')")
    return raw


def api_version(raw: str) -> str:
    if not raw.startswith("v"):
        raise ValueError("must look like v25.0")
    return raw


def ambiguous_policy(raw: str) -> str:
    policy = raw.lower()
    if policy not in {"task", "resend"}:
        raise ValueError("must be task (a person checks an unsettled send) or resend (send it again once)")
    return policy


def log_format(raw: str) -> str:
    value = raw.strip().lower()
    if value not in ("text", "json"):
        raise ValueError("must be text (one readable line per event) or json (one JSON object per line)")
    return value


def choice(options: tuple[str, ...]) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.upper()
        if value not in options:
            raise ValueError(f"must be one of {', '.join(options)}")
        return value

    return parse


def cafile(raw: str) -> str:
    if not os.path.isfile(raw):
        raise ValueError("no such file (a PEM bundle of the CA certificates that signed the brokers')")
    try:
        ssl.create_default_context(cafile=raw)
    except (ssl.SSLError, OSError) as exc:
        raise ValueError(f"cannot be read as PEM CA certificates ({exc})") from None
    return raw


def origins(raw: str) -> tuple[str, ...]:
    origins = tuple(o.strip().rstrip("/") for o in raw.split(",") if o.strip())
    for o in origins:
        if not o.startswith(("http://", "https://")):
            raise ValueError(f"{o!r} is not an origin such as https://inbox.example.com")
    return origins


def log_level(raw: str) -> str:
    level = raw.upper()
    if level not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
        raise ValueError("must be one of DEBUG, INFO, WARNING, ERROR")
    return level
