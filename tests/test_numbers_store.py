"""The numbers table and its one lookup (storage/numbers.py) against a real PostgreSQL: tokens
encrypted at rest, the copy each process keeps, a refused token pausing only while it is current,
and the send limits."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import asyncpg
import pytest

from wacrm.core.settings import SettingsError, load
from wacrm.inbox import auth
from wacrm.storage import numbers
from wacrm.storage.db import create_pool
from wacrm.storage.migrate import run_migrations

KEY = numbers.new_key()


@pytest.fixture
async def pool(make_database: Callable[[], str]) -> AsyncIterator[asyncpg.Pool]:
    url = make_database()
    await run_migrations(url, 10.0, out=lambda m: None)
    p = await create_pool(url, timeout=10, min_size=0, max_size=4)
    try:
        yield p
    finally:
        await p.close()


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def add(pool: asyncpg.Pool, number: str, token: str, **settings: object) -> numbers.Number:
    async with pool.acquire() as conn, conn.transaction():
        added, _ = await numbers.add(conn, numbers.NewNumber(number, "100", token, **settings),  # type: ignore[arg-type]
                                     numbers.TokenCipher(KEY))
    return added


async def test_a_token_is_stored_encrypted_and_each_lookup_gives_its_numbers_own(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        await numbers.ensure_environment_number(conn, "1", "100", resume_refused=False)
    await add(pool, "2", "token-two", label="Porto")
    clock = Clock()
    lookup = numbers.Numbers(pool, numbers.TokenCipher(KEY), ("1", "token-one"), clock=clock)
    assert (await lookup.token_for("1")).token == "token-one"  # the environment's, never stored
    two = await lookup.token_for("2")
    assert two.token == "token-two" and "token-two" not in repr(two) and two.number.label == "Porto"
    async with pool.acquire() as conn:
        stored = await conn.fetch("SELECT token_ciphertext FROM business_numbers ORDER BY phone_number_id")
    assert stored[0][0] is None and "token-two" not in stored[1][0]
    with pytest.raises(numbers.NoToken, match="not configured"):
        await lookup.token_for("3")

    await add(pool, "2", "token-two-b")  # another process (wacrm numbers add) changes it
    assert (await lookup.token_for("2")).token == "token-two"  # the copy is a moment old …
    clock.now += numbers.CACHE_S
    renewed = await lookup.token_for("2")  # … and no older than CACHE_S
    assert renewed.token == "token-two-b" and renewed.token_version == two.token_version + 1
    assert renewed.number.label is None  # add replaces every setting

    async with pool.acquire() as conn:
        assert await numbers.disable(conn, "2") is not None
    lookup.invalidate()
    assert await lookup.known() == {"1"}
    with pytest.raises(numbers.NoToken, match="disabled"):
        await lookup.token_for("2")


async def test_a_number_added_a_moment_ago_is_known_at_once_to_a_body_that_names_it(pool: asyncpg.Pool) -> None:
    clock = Clock()
    lookup = numbers.Numbers(pool, numbers.TokenCipher(KEY), clock=clock)
    assert await lookup.known(frozenset({"5"})) == frozenset()
    await add(pool, "5", "token-five")
    clock.now += numbers.RELOAD_ON_MISS_S  # well inside CACHE_S
    assert await lookup.known(frozenset({"5"})) == {"5"}


async def test_a_refused_token_pauses_its_number_only_while_it_is_the_current_one(pool: asyncpg.Pool) -> None:
    first = await add(pool, "7", "old")
    async with pool.acquire() as conn:
        admin = (await auth.add_user(conn, "admin@example.com", "admin", "not-a-hash")).id
        await auth.add_user(conn, "agent@example.com", "agent", "not-a-hash")
        async with conn.transaction():
            assert await numbers.pause_for_token(conn, "7", first.token_version, "190") == "paused"
        async with conn.transaction():
            assert await numbers.pause_for_token(conn, "7", first.token_version, "190") == "already"
        assert (await numbers.get_number(conn, "7")).state == "token_rejected"  # type: ignore[union-attr]
        notes = await conn.fetch("SELECT user_id, kind FROM notifications")
        assert [tuple(n) for n in notes] == [(admin, "number_token_rejected")]  # once per pause, admins only
        held = await conn.fetchval("SELECT until FROM number_pauses WHERE phone_number_id = '7'")
        assert held == numbers.UNTIL_NEW_TOKEN
    second = await add(pool, "7", "new")  # a new token: active again, the hold lifted
    async with pool.acquire() as conn:
        assert second.state == "active"
        assert await conn.fetchval("SELECT until <= now() FROM number_pauses WHERE phone_number_id = '7'")
        async with conn.transaction():  # a call made with the old token, answered after the new one came
            assert await numbers.pause_for_token(conn, "7", first.token_version, "190") == "stale"
        assert (await numbers.get_number(conn, "7")).state == "active"  # type: ignore[union-attr]


async def test_a_wrong_key_is_found_by_decrypting_what_is_stored(pool: asyncpg.Pool) -> None:
    await add(pool, "8", "token-eight")
    async with pool.acquire() as conn:
        assert await numbers.check_tokens(conn, numbers.TokenCipher(KEY)) == 1
        with pytest.raises(numbers.TokenKeyError, match=r"TOKEN_ENCRYPTION_KEY: cannot decrypt .* of number 8"):
            await numbers.check_tokens(conn, numbers.TokenCipher(numbers.new_key()))
        with pytest.raises(numbers.TokenKeyError, match="TOKEN_ENCRYPTION_KEY: not set"):
            await numbers.check_tokens(conn, numbers.TokenCipher(None))
    with pytest.raises(numbers.TokenKeyError, match="TOKEN_ENCRYPTION_KEY: required"):
        numbers.TokenCipher(None).encrypt("x")


def test_the_key_is_checked_at_load_and_never_repeated() -> None:
    assert load({"TOKEN_ENCRYPTION_KEY": KEY}, "dev").token_encryption_key == KEY
    assert KEY not in repr(load({"TOKEN_ENCRYPTION_KEY": KEY}, "dev"))
    with pytest.raises(SettingsError) as err:
        load({"TOKEN_ENCRYPTION_KEY": "c2hvcnQ="}, "dev")
    assert "TOKEN_ENCRYPTION_KEY: must be 32 random bytes" in str(err.value) and "c2hvcnQ=" not in str(err.value)


def test_a_numbers_send_limit_is_its_own_and_a_coexistence_number_sends_at_most_20_a_second() -> None:
    def number(rate: float | None, coexistence: bool) -> numbers.Number:
        return numbers.Number("1", "100", None, None, rate, coexistence, "active", None, None, 1, "stored")

    assert number(None, False).send_rate(80) == 80
    assert number(40, False).send_rate(80) == 40
    assert number(None, True).send_rate(80) == numbers.COEXISTENCE_MAX_PER_S == 20
    assert number(5, True).send_rate(80) == 5
    assert "token" not in number(None, False).as_json()

