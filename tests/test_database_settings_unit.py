"""Unit tests of the database settings: ``DIRECT_URL`` (default ``DATABASE_URL``), ``DATABASE_POOLER``,
and the rule that a transaction pooler needs a ``DIRECT_URL`` wherever the database is used."""

from __future__ import annotations

import pytest

from wacrm.core.settings import SettingsError, load

POOLER = "postgresql://app@pooler.example.com:6543/wacrm"
DIRECT = "postgresql://app@db.example.com:5432/wacrm"
NEEDS_DB = frozenset({"DATABASE_URL"})


def test_without_a_pooler_direct_url_is_database_url_and_the_statement_cache_stays() -> None:
    s = load({"DATABASE_URL": DIRECT}, "tool", needs=NEEDS_DB)
    assert (s.direct_url, s.database_pooler, s.database_pooled, s.direct_variable) == \
        (DIRECT, "none", False, "DATABASE_URL")


def test_a_transaction_pooler_with_a_direct_url() -> None:
    s = load({"DATABASE_URL": POOLER, "DATABASE_POOLER": "Transaction", "DIRECT_URL": DIRECT}, "tool",
             needs=NEEDS_DB)
    assert (s.database_url, s.direct_url, s.database_pooled, s.direct_variable) == \
        (POOLER, DIRECT, True, "DIRECT_URL")


def test_a_transaction_pooler_without_direct_url_is_refused_where_the_database_is_used() -> None:
    env = {"DATABASE_URL": POOLER, "DATABASE_POOLER": "transaction"}
    with pytest.raises(SettingsError) as info:
        load(env, "tool", needs=NEEDS_DB)
    (problem,) = info.value.problems
    assert problem.startswith("DIRECT_URL: required with DATABASE_POOLER=transaction") and "LISTEN" in problem
    webhook = load({**env, "KAFKA_BOOTSTRAP_SERVERS": "kafka:9092"}, "tool",
                   needs=frozenset({"KAFKA_BOOTSTRAP_SERVERS"}))
    assert webhook.database_pooled  # a process that uses no database (serve --only webhook) does not mind


def test_unknown_pooler_modes_and_bad_direct_urls_are_named() -> None:
    with pytest.raises(SettingsError) as info:
        load({"DATABASE_URL": POOLER, "DATABASE_POOLER": "session", "DIRECT_URL": "mysql://x"}, "dev")
    assert [p.split(":", 1)[0] for p in info.value.problems] == ["DIRECT_URL", "DATABASE_POOLER"]
    assert "transaction" in info.value.problems[1]
