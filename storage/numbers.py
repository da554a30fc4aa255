"""Business numbers: the ``business_numbers`` table, their access tokens encrypted at rest, and the
one lookup every Graph API call uses.

- :class:`Numbers` is what other code calls: ``await numbers.token_for(phone_number_id)`` gives the
  number's :class:`Credentials` (its token, its send rate) or raises :class:`NoToken`;
  ``await numbers.known()`` the numbers whose webhooks are taken in. The table is read at most
  every :data:`CACHE_S` seconds per process (a change elsewhere — ``wacrm numbers add``, the API —
  is seen within that), and at once after :meth:`Numbers.invalidate`.
- :class:`TokenCipher` encrypts and decrypts tokens with ``TOKEN_ENCRYPTION_KEY`` (Fernet);
  :func:`check_tokens` decrypts every stored token, so that a wrong key stops a process at start.
- The environment's number (``WHATSAPP_PHONE_NUMBER_ID``) is a row without a stored token: its
  token is ``WHATSAPP_ACCESS_TOKEN`` (:func:`ensure_environment_number`). ``wacrm numbers add`` of
  the same id stores a token, which then wins over the environment's.
- A token Meta refuses (401, code 190) pauses the number's sends until a new token arrives
  (:func:`pause_for_token`, :func:`resume`): the replies wait in the ledger, parked until
  :data:`UNTIL_NEW_TOKEN`; nothing fails, nothing is dead-lettered; admins are notified once.

Like :mod:`storage.repo`, the SQL functions run inside the caller's transaction. Nothing here
logs or returns a token.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg
from cryptography.fernet import Fernet, InvalidToken

from wacrm.storage.ledger import RETRY_WAIT

log = logging.getLogger("wacrm.numbers")

CACHE_S = 2.0  # how long a process trusts its copy of the table
RELOAD_ON_MISS_S = 0.5  # a number not in the copy makes it read again, at most this often
COEXISTENCE_MAX_PER_S = 20.0  # Meta's cap for a number also used in the WhatsApp Business app
#: A send parked until a new token arrives (or the number is enabled again) waits until this time:
#: the outbox sweep never reaches it; :func:`resume` makes it due at once.
UNTIL_NEW_TOKEN = datetime(9999, 1, 1, tzinfo=UTC)
STATES = ("active", "token_rejected", "disabled")


class TokenKeyError(Exception):
    """``TOKEN_ENCRYPTION_KEY`` is missing where a token must be stored, or is not the key the stored
    tokens were encrypted with. The message names the variable."""


def new_key() -> str:
    return Fernet.generate_key().decode()


class TokenCipher:
    """Access tokens encrypted with ``TOKEN_ENCRYPTION_KEY`` (``None``: no key, nothing can be stored)."""

    def __init__(self, key: str | None) -> None:
        self._fernet = Fernet(key.encode()) if key else None

    def encrypt(self, token: str) -> str:
        if self._fernet is None:
            raise TokenKeyError("TOKEN_ENCRYPTION_KEY: required to store an access token and not set (32 random "
                                "bytes in url-safe base64; `wacrm dev` makes one)")
        return self._fernet.encrypt(token.encode()).decode()

    def decrypt(self, ciphertext: str, phone_number_id: str) -> str:
        if self._fernet is None:
            raise TokenKeyError(f"TOKEN_ENCRYPTION_KEY: not set, but the token of number {phone_number_id} is "
                                "stored encrypted; set the key it was stored with")
        try:
            return self._fernet.decrypt(ciphertext.encode()).decode()
        except InvalidToken:
            raise TokenKeyError(f"TOKEN_ENCRYPTION_KEY: cannot decrypt the stored token of number "
                                f"{phone_number_id}: the key is not the one it was stored with") from None


@dataclass(frozen=True, slots=True)
class Number:
    """A business number as people see it: never its token."""

    phone_number_id: str
    waba_id: str | None
    label: str | None
    display_phone_number: str | None
    rate_limit_per_s: float | None
    coexistence: bool
    state: str
    state_reason: str | None
    state_at: datetime | None
    token_version: int
    token_source: str  # stored (encrypted in the table) | environment (WHATSAPP_ACCESS_TOKEN)

    def send_rate(self, default: float) -> float:
        """Sends per second for this number: its own limit (else ``default``), at most 20 when it is
        also used in the WhatsApp Business app (coexistence)."""
        rate = self.rate_limit_per_s or default
        return min(rate, COEXISTENCE_MAX_PER_S) if self.coexistence else rate

    def as_json(self) -> dict[str, Any]:
        return {"phone_number_id": self.phone_number_id, "waba_id": self.waba_id, "label": self.label,
                "display_phone_number": self.display_phone_number, "rate_limit_per_s": self.rate_limit_per_s,
                "coexistence": self.coexistence, "state": self.state, "state_reason": self.state_reason,
                "state_at": self.state_at.isoformat() if self.state_at else None, "token_source": self.token_source}


@dataclass(frozen=True, slots=True)
class Credentials:
    """What a Graph API call for one number needs: its token and the version of that token."""

    number: Number
    token: str = field(repr=False)

    @property
    def token_version(self) -> int:
        return self.number.token_version


class NoToken(Exception):
    """No usable token for the number (not configured, disabled, or a stored token that cannot be
    decrypted): its sends wait as for a refused token (``token_rejected``)."""

    token_rejected = True
    pausing = True

    def __init__(self, phone_number_id: str, why: str, token_version: int | None) -> None:
        super().__init__(f"business number {phone_number_id}: {why}")
        self.phone_number_id = phone_number_id
        self.token_version = token_version
        self.code = "NO_TOKEN"
        self.http_status = None

    def as_dict(self) -> dict[str, Any]:
        return {"error": str(self), "code": self.code, "http_status": None, "kind": type(self).__name__}


_SELECT = """SELECT phone_number_id, waba_id, label, display_phone_number, token_ciphertext, token_version,
                    rate_limit_per_s, coexistence, state, state_reason, state_at
             FROM business_numbers"""


def _number(r: asyncpg.Record) -> Number:
    return Number(r["phone_number_id"], r["waba_id"], r["label"], r["display_phone_number"], r["rate_limit_per_s"],
                  r["coexistence"], r["state"], r["state_reason"], r["state_at"], r["token_version"],
                  "environment" if r["token_ciphertext"] is None else "stored")


async def list_numbers(conn: asyncpg.Connection) -> list[Number]:
    return [_number(r) for r in await conn.fetch(_SELECT + " ORDER BY created_at, phone_number_id")]


async def get_number(conn: asyncpg.Connection, phone_number_id: str) -> Number | None:
    row = await conn.fetchrow(_SELECT + " WHERE phone_number_id = $1", phone_number_id)
    return _number(row) if row is not None else None


async def check_tokens(conn: asyncpg.Connection, cipher: TokenCipher) -> int:
    """Decrypt every stored token; the count, or :class:`TokenKeyError` for the first that fails."""
    rows = await conn.fetch("SELECT phone_number_id, token_ciphertext FROM business_numbers "
                            "WHERE token_ciphertext IS NOT NULL ORDER BY phone_number_id")
    for r in rows:
        cipher.decrypt(r["token_ciphertext"], r["phone_number_id"])
    return len(rows)


@dataclass(frozen=True, slots=True)
class NewNumber:
    """``wacrm numbers add`` / ``POST numbers``: every setting of a number, and its token."""

    phone_number_id: str
    waba_id: str
    token: str = field(repr=False)
    label: str | None = None
    rate_limit_per_s: float | None = None
    coexistence: bool = False
    display_phone_number: str | None = None


async def add(conn: asyncpg.Connection, new: NewNumber, cipher: TokenCipher) -> tuple[Number, int]:
    """Add the number, or replace an existing one's settings and token (a new token version, state
    ``active``); the replies waiting for it are resumed at once. Returns the number and how many
    replies were resumed. Call inside a transaction."""
    row = await conn.fetchrow(
        """INSERT INTO business_numbers AS b (phone_number_id, waba_id, label, display_phone_number,
                                              token_ciphertext, rate_limit_per_s, coexistence)
           VALUES ($1, $2, $3, $4, $5, $6, $7)
           ON CONFLICT (phone_number_id) DO UPDATE SET
               waba_id = EXCLUDED.waba_id, label = EXCLUDED.label,
               display_phone_number = COALESCE(EXCLUDED.display_phone_number, b.display_phone_number),
               token_ciphertext = EXCLUDED.token_ciphertext, token_version = b.token_version + 1,
               rate_limit_per_s = EXCLUDED.rate_limit_per_s, coexistence = EXCLUDED.coexistence,
               state = 'active', state_reason = NULL, state_at = now(), updated_at = now()
           RETURNING phone_number_id, waba_id, label, display_phone_number, token_ciphertext, token_version,
                     rate_limit_per_s, coexistence, state, state_reason, state_at""",
        new.phone_number_id, new.waba_id, new.label, new.display_phone_number, cipher.encrypt(new.token),
        new.rate_limit_per_s, new.coexistence)
    return _number(row), await resume(conn, new.phone_number_id)


async def disable(conn: asyncpg.Connection, phone_number_id: str) -> Number | None:
    """Stop the number: its webhooks are no longer taken in (they stay on the raw topic) and its
    replies wait until it is added again. ``None`` when there is no such number."""
    row = await conn.fetchrow(
        """UPDATE business_numbers SET state = 'disabled', state_reason = 'disabled by an operator',
               state_at = now(), updated_at = now()
           WHERE phone_number_id = $1
           RETURNING phone_number_id, waba_id, label, display_phone_number, token_ciphertext, token_version,
                     rate_limit_per_s, coexistence, state, state_reason, state_at""", phone_number_id)
    if row is None:
        return None
    await _hold(conn, phone_number_id, "the number is disabled")
    return _number(row)


async def ensure_environment_number(conn: asyncpg.Connection, phone_number_id: str, waba_id: str | None, *,
                                    resume_refused: bool) -> None:
    """The number of ``WHATSAPP_PHONE_NUMBER_ID`` exists as a row whose token is the environment's.

    A row with a stored token is left alone (``numbers add`` wins). ``resume_refused`` (the worker,
    at start): an environment number paused for its token is resumed, since a restart is how its
    token changes; if it is still refused, the first send pauses it again."""
    await conn.execute(
        """INSERT INTO business_numbers AS b (phone_number_id, waba_id) VALUES ($1, $2)
           ON CONFLICT (phone_number_id) DO UPDATE SET waba_id = COALESCE(EXCLUDED.waba_id, b.waba_id)
           WHERE b.token_ciphertext IS NULL AND EXCLUDED.waba_id IS DISTINCT FROM b.waba_id""",
        phone_number_id, waba_id)
    if resume_refused:
        resumed = await conn.fetchval(
            """UPDATE business_numbers SET state = 'active', state_reason = NULL, state_at = now(),
                   token_version = token_version + 1, updated_at = now()
               WHERE phone_number_id = $1 AND token_ciphertext IS NULL AND state = 'token_rejected' RETURNING true""",
            phone_number_id)
        if resumed:
            await resume(conn, phone_number_id)


async def _hold(conn: asyncpg.Connection, phone_number_id: str, reason: str) -> None:
    """Park the number's sends until :func:`resume` (a far-off pause the sender's checks read)."""
    await conn.execute(
        """INSERT INTO number_pauses (phone_number_id, reason, until) VALUES ($1, $2, $3)
           ON CONFLICT (phone_number_id) DO UPDATE SET reason = $2, until = $3, created_at = now()""",
        phone_number_id, reason, UNTIL_NEW_TOKEN)


async def resume(conn: asyncpg.Connection, phone_number_id: str) -> int:
    """Lift a hold of the number (token, disabled) and make its parked replies due now: the outbox
    sweep publishes them within a second. Returns how many."""
    await conn.execute("UPDATE number_pauses SET until = now() WHERE phone_number_id = $1 AND until >= $2",
                       phone_number_id, UNTIL_NEW_TOKEN)
    # every reply of the number that waits: held for the token, or parked by the sender for the pause
    # (a park looks again within sending.PARK_RECHECK, so one written just after this is not lost)
    done = await conn.execute(
        f"""UPDATE outbound_log SET next_attempt_at = now(), published_at = NULL
            WHERE state = '{RETRY_WAIT}' AND next_attempt_at > now() AND intent->>'phone_number_id' = $1""",
        phone_number_id)
    return int(done.split()[-1])


async def pause_for_token(conn: asyncpg.Connection, phone_number_id: str, token_version: int | None,
                          reason: str) -> str:
    """Meta refused the token of version ``token_version`` (or there is none): ``paused`` (the number
    is paused now and the admins are told), ``already`` (it was paused or disabled) or ``stale`` (a
    new token arrived since: try again with it). Locks the number's row, so :func:`add` and this
    are one after the other."""
    row = await conn.fetchrow("SELECT state, token_version FROM business_numbers WHERE phone_number_id = $1 "
                              "FOR UPDATE", phone_number_id)
    if row is not None and token_version is not None and row["token_version"] != token_version:
        return "stale"
    if row is not None and row["state"] != "active":
        await _hold(conn, phone_number_id, f"the number is {row['state']}")
        return "already"
    if row is None and await conn.fetchval("SELECT until >= $2 FROM number_pauses WHERE phone_number_id = $1",
                                           phone_number_id, UNTIL_NEW_TOKEN):
        return "already"
    if row is not None:
        await conn.execute("""UPDATE business_numbers SET state = 'token_rejected', state_reason = $2,
                                  state_at = now(), updated_at = now() WHERE phone_number_id = $1""",
                           phone_number_id, reason)
    await _hold(conn, phone_number_id, f"access token refused: {reason}")
    await conn.execute(
        """INSERT INTO notifications (user_id, kind, body)
           SELECT u.id, 'number_token_rejected', $1 FROM users u WHERE u.role = 'admin' AND u.disabled_at IS NULL""",
        f"Meta refused the access token of business number {phone_number_id} ({reason}). Its replies wait: "
        f"give it a new token (wacrm numbers add {phone_number_id} --waba-id …, or POST /api/v1/numbers) and "
        "they go out.")
    return "paused"


async def learn_display_number(conn: asyncpg.Connection, seen: dict[str, str]) -> None:
    """Record each number's display phone number as Meta's webhooks show it (``{id: display}``)."""
    await conn.execute(
        """UPDATE business_numbers b SET display_phone_number = x.display, updated_at = now()
           FROM unnest($1::text[], $2::text[]) AS x(id, display)
           WHERE b.phone_number_id = x.id AND b.display_phone_number IS DISTINCT FROM x.display""",
        list(seen), list(seen.values()))


@dataclass(frozen=True, slots=True)
class _Entry:
    number: Number
    token: str | None = field(repr=False)
    why: str  # why there is no token, when there is none


class Numbers:
    """The business numbers as one process sees them: the table, re-read when older than
    ``ttl`` seconds, with each stored token decrypted once per version.

    ``environment``: the environment's ``(phone_number_id, access token)``, the token of a row that
    stores none. One instance per process (the worker's :class:`agents.context.Resources` owns it).
    """

    def __init__(self, pool: asyncpg.Pool, cipher: TokenCipher, environment: tuple[str, str] | None = None, *,
                 ttl: float = CACHE_S, clock: Callable[[], float] = time.monotonic) -> None:
        self._pool, self._cipher, self._env = pool, cipher, environment
        self._ttl, self._clock = ttl, clock
        self._entries: dict[str, _Entry] = {}
        self._loaded_at: float | None = None
        self._lock = asyncio.Lock()
        self._decrypted: dict[tuple[str, int], str] = {}
        self._displays: dict[str, str] = {}

    def invalidate(self) -> None:
        """The next lookup reads the table again."""
        self._loaded_at = None

    async def _fresh(self) -> dict[str, _Entry]:
        if self._loaded_at is not None and self._clock() - self._loaded_at < self._ttl:
            return self._entries
        async with self._lock:  # one read for every caller that found the copy old
            if self._loaded_at is None or self._clock() - self._loaded_at >= self._ttl:
                started = self._clock()
                async with self._pool.acquire() as conn:
                    rows = await conn.fetch(_SELECT)
                self._entries = {r["phone_number_id"]: self._entry(r) for r in rows}
                self._loaded_at = started
        return self._entries

    def _entry(self, r: asyncpg.Record) -> _Entry:
        number = _number(r)
        if number.state == "disabled":
            return _Entry(number, None, "disabled")
        if r["token_ciphertext"] is None:
            if self._env is not None and self._env[0] == number.phone_number_id:
                return _Entry(number, self._env[1], "")
            return _Entry(number, None, "no token stored (add one: wacrm numbers add)")
        key = (number.phone_number_id, number.token_version)
        if key not in self._decrypted:
            try:
                self._decrypted[key] = self._cipher.decrypt(r["token_ciphertext"], number.phone_number_id)
            except TokenKeyError as exc:
                log.error("%s", exc)
                return _Entry(number, None, str(exc))
        return _Entry(number, self._decrypted[key], "")

    async def token_for(self, phone_number_id: str) -> Credentials:
        """The number's token for a Graph API call (send, media, templates); :class:`NoToken` when it
        has none it may use."""
        entry = (await self._fresh()).get(phone_number_id)
        if entry is None:
            raise NoToken(phone_number_id, "not configured (wacrm numbers add)", None)
        if entry.token is None:
            raise NoToken(phone_number_id, entry.why, entry.number.token_version)
        return Credentials(entry.number, entry.token)

    async def get(self, phone_number_id: str) -> Number | None:
        entry = (await self._fresh()).get(phone_number_id)
        return entry.number if entry is not None else None

    async def known(self, wanted: frozenset[str] = frozenset()) -> frozenset[str]:
        """The numbers whose webhooks are taken in: every configured one not disabled. When one of
        ``wanted`` is not among them, the table is read again first (at most every
        :data:`RELOAD_ON_MISS_S`): a number added a moment ago is taken in at once, e.g. by a replay
        right after ``wacrm numbers add``."""
        entries = await self._fresh()
        if not wanted <= entries.keys() and self._loaded_at is not None \
                and self._clock() - self._loaded_at >= RELOAD_ON_MISS_S:
            self.invalidate()
            entries = await self._fresh()
        return frozenset(pid for pid, e in entries.items() if e.number.state != "disabled")

    async def seen_display_numbers(self, seen: dict[str, str]) -> None:
        """Record display phone numbers the webhooks showed, once per change."""
        entries = await self._fresh()
        new = {pid: d for pid, d in seen.items()
               if pid in entries and d and self._displays.get(pid, entries[pid].number.display_phone_number) != d}
        if not new:
            return
        async with self._pool.acquire() as conn:
            await learn_display_number(conn, new)
        self._displays.update(new)
