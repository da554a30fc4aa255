"""People and how they prove who they are: users, passwords, sessions, API tokens, sign-in limits.

Contracts:

- Passwords are argon2id hashes (argon2-cffi's defaults); hashing and verifying are CPU-bound
  and run off the event loop (:func:`verify_password`, :func:`hash_password_async`).
- A session is a random id given to the browser once, in a cookie; the database keeps only its
  sha256 (:func:`digest`), so a read of the ``sessions`` table cannot sign anyone in. A session
  ends at its absolute expiry, after ``idle`` seconds without a request, or when revoked. Each
  sign-in creates a new session (rotation): an id planted before sign-in is never promoted.
- An API token (``wacrm_…``) is shown once; the database keeps its sha256 and a short prefix
  for listings. A revoked token stops working at once.
- Sign-in is refused (before the password is even checked) once an account or an address has
  too many recent failures (:data:`FAILURE_WINDOW_S`).

Functions taking a connection run inside the caller's transaction.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
from dataclasses import dataclass

import asyncpg
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

ROLES = ("admin", "agent")
TOKEN_PREFIX = "wacrm_"
FAILURE_WINDOW_S = 15 * 60
TOUCH_EVERY_S = 60  # a session's last_seen_at and a token's last_used_at are written at most this often

_hasher = PasswordHasher()  # argon2id


@dataclass(frozen=True, slots=True)
class User:
    id: int
    email: str
    name: str
    role: str

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


@dataclass(frozen=True, slots=True)
class Session:
    user: User
    csrf_token: str


def digest(secret: str) -> str:
    """The stored form of a session id or a token: its sha256, hex."""
    return hashlib.sha256(secret.encode()).hexdigest()


def normalize_email(email: str) -> str:
    return email.strip().lower()


def generate_password() -> str:
    return secrets.token_urlsafe(12)


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def _verify(hashed: str | None, password: str) -> bool:
    if not hashed:
        _hasher.hash(password)  # as slow as a real check: no timing hint that the account has no password
        return False
    try:
        return _hasher.verify(hashed, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


async def hash_password_async(password: str) -> str:
    return await asyncio.get_running_loop().run_in_executor(None, hash_password, password)


async def verify_password(hashed: str | None, password: str) -> bool:
    """Whether ``password`` matches ``hashed`` (always as slow as a real check), off the event loop."""
    return await asyncio.get_running_loop().run_in_executor(None, _verify, hashed, password)


def _user(row: asyncpg.Record) -> User:
    return User(row["id"], row["email"], row["name"], row["role"])


# --- users ------------------------------------------------------------------------------------

async def add_user(conn: asyncpg.Connection, email: str, role: str, password_hash: str,
                   name: str | None = None) -> User:
    """A new user; raises ``asyncpg.UniqueViolationError`` when the email exists."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")
    email = normalize_email(email)
    row = await conn.fetchrow(
        """INSERT INTO users (email, name, role, password_hash) VALUES ($1, $2, $3, $4)
           RETURNING id, email, name, role""", email, name or email.split("@")[0], role, password_hash)
    return _user(row)


async def find_user(conn: asyncpg.Connection, email: str) -> tuple[User, str | None] | None:
    """An enabled user by email, with the password hash."""
    row = await conn.fetchrow("SELECT id, email, name, role, password_hash FROM users "
                              "WHERE email = $1 AND disabled_at IS NULL", normalize_email(email))
    return None if row is None else (_user(row), row["password_hash"])


async def list_users(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    return await conn.fetch(
        """SELECT u.id, u.email, u.name, u.role, u.created_at, u.disabled_at,
                  (SELECT count(*) FROM api_tokens t WHERE t.user_id = u.id AND t.revoked_at IS NULL) tokens
           FROM users u ORDER BY u.id""")


async def user_by_id(conn: asyncpg.Connection, user_id: int) -> User | None:
    row = await conn.fetchrow("SELECT id, email, name, role FROM users WHERE id = $1 AND disabled_at IS NULL",
                              user_id)
    return None if row is None else _user(row)


# --- API tokens -------------------------------------------------------------------------------

async def issue_token(conn: asyncpg.Connection, user_id: int) -> str:
    """A new API token for the user; the only time it is seen in clear."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    await conn.execute("INSERT INTO api_tokens (user_id, token_hash, prefix) VALUES ($1, $2, $3)",
                       user_id, digest(token), token[:len(TOKEN_PREFIX) + 6])
    return token


async def revoke_tokens(conn: asyncpg.Connection, user_id: int) -> int:
    """Revoke every token of the user; how many were live."""
    return int((await conn.execute(
        "UPDATE api_tokens SET revoked_at = now() WHERE user_id = $1 AND revoked_at IS NULL", user_id)).split()[-1])


async def user_for_token(conn: asyncpg.Connection, token: str) -> User | None:
    """The user of a live token; its ``last_used_at`` is written at most every TOUCH_EVERY_S, as a
    session's is (a write and a commit on every request of a busy script cost more than the read)."""
    row = await conn.fetchrow(
        """SELECT t.id token_id, t.last_used_at IS NULL OR t.last_used_at < now() - make_interval(secs => $2)
                  AS stale, u.id, u.email, u.name, u.role
           FROM api_tokens t JOIN users u ON u.id = t.user_id
           WHERE t.token_hash = $1 AND t.revoked_at IS NULL AND u.disabled_at IS NULL""",
        digest(token), float(TOUCH_EVERY_S))
    if row is None:
        return None
    if row["stale"]:
        await conn.execute("UPDATE api_tokens SET last_used_at = now() WHERE id = $1", row["token_id"])
    return _user(row)


# --- sessions ---------------------------------------------------------------------------------

async def start_session(conn: asyncpg.Connection, user_id: int, max_s: float) -> tuple[str, str]:
    """A new session: (the id for the cookie, the CSRF token)."""
    session_id, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    await conn.execute(
        """INSERT INTO sessions (id_hash, user_id, csrf_token, expires_at)
           VALUES ($1, $2, $3, now() + make_interval(secs => $4))""", digest(session_id), user_id, csrf, max_s)
    return session_id, csrf


async def session_for(conn: asyncpg.Connection, session_id: str, idle_s: float) -> Session | None:
    """The live session with this id (and it counts as used now), or None."""
    row = await conn.fetchrow(
        """SELECT s.csrf_token, s.last_seen_at < now() - make_interval(secs => $3) AS stale,
                  u.id, u.email, u.name, u.role
           FROM sessions s JOIN users u ON u.id = s.user_id
           WHERE s.id_hash = $1 AND s.revoked_at IS NULL AND s.expires_at > now()
             AND s.last_seen_at > now() - make_interval(secs => $2) AND u.disabled_at IS NULL""",
        digest(session_id), idle_s, float(TOUCH_EVERY_S))
    if row is None:
        return None
    if row["stale"]:
        await conn.execute("UPDATE sessions SET last_seen_at = now() WHERE id_hash = $1", digest(session_id))
    return Session(_user(row), row["csrf_token"])


async def end_session(conn: asyncpg.Connection, session_id: str) -> None:
    await conn.execute("UPDATE sessions SET revoked_at = now() WHERE id_hash = $1 AND revoked_at IS NULL",
                       digest(session_id))


# --- sign-in limits ---------------------------------------------------------------------------

async def recent_failures(conn: asyncpg.Connection, email: str, address: str) -> tuple[int, int]:
    """Failed sign-ins in the window: (for this account, from this address)."""
    row = await conn.fetchrow(
        """SELECT count(*) FILTER (WHERE email = $1) by_email, count(*) FILTER (WHERE address = $2) by_address
           FROM login_failures WHERE at > now() - make_interval(secs => $3) AND (email = $1 OR address = $2)""",
        normalize_email(email), address, float(FAILURE_WINDOW_S))
    return int(row["by_email"]), int(row["by_address"])


async def record_failure(conn: asyncpg.Connection, email: str, address: str) -> None:
    await conn.execute("INSERT INTO login_failures (email, address) VALUES ($1, $2)", normalize_email(email), address)


async def clear_failures(conn: asyncpg.Connection, email: str) -> None:
    """A successful sign-in forgives the account's failures (not the address's)."""
    await conn.execute("DELETE FROM login_failures WHERE email = $1", normalize_email(email))
