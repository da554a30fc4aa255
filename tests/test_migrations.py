"""The migration runner against a real PostgreSQL: order, idempotency, edits, concurrency, and
the loud refusal of serve/worker on a schema that is behind."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Callable
from pathlib import Path

import asyncpg
import pytest

from wacrm.core import procs
from wacrm.storage.migrate import MigrationError, discover, migrate, pending


def _write(directory: Path, files: dict[str, str]) -> None:
    directory.mkdir(exist_ok=True)
    for name, sql in files.items():
        (directory / name).write_text(sql)


async def test_applies_in_order_once_and_detects_edits(make_database: Callable[[], str], tmp_path: Path) -> None:
    url = make_database()
    d = tmp_path / "m"
    _write(d, {"0002_b.sql": "ALTER TABLE t ADD COLUMN b int;", "0001_a.sql": "CREATE TABLE t (a int);"})
    conn = await asyncpg.connect(url)
    try:
        applied = await migrate(conn, discover(d))
        assert [m.name for m in applied] == ["0001_a.sql", "0002_b.sql"]
        assert await migrate(conn, discover(d)) == []  # up to date: a no-op
        rows = await conn.fetch("SELECT version, name, checksum, applied_at FROM schema_migrations ORDER BY 1")
        assert [(r["version"], r["name"]) for r in rows] == [(1, "0001_a.sql"), (2, "0002_b.sql")]
        assert all(len(r["checksum"]) == 64 and r["applied_at"] for r in rows)

        (d / "0001_a.sql").write_text("CREATE TABLE t (a bigint);")
        with pytest.raises(MigrationError, match=r"0001_a\.sql was edited after it was applied"):
            await migrate(conn, discover(d))
    finally:
        await conn.close()


async def test_a_failing_migration_rolls_back_alone(make_database: Callable[[], str], tmp_path: Path) -> None:
    url = make_database()
    d = tmp_path / "m"
    _write(d, {"0001_a.sql": "CREATE TABLE t (a int);", "0002_bad.sql": "CREATE TABLE u (x int); SELECT 1/0;"})
    conn = await asyncpg.connect(url)
    try:
        with pytest.raises(asyncpg.DivisionByZeroError):
            await migrate(conn, discover(d))
        assert [m.name for m in await pending(conn, discover(d))] == ["0002_bad.sql"]
        assert await conn.fetchval("SELECT to_regclass('u')") is None
    finally:
        await conn.close()


async def test_two_runners_starting_together_apply_each_file_once(make_database: Callable[[], str],
                                                                  tmp_path: Path) -> None:
    url = make_database()
    d = tmp_path / "m"
    # Not idempotent on purpose: a second application would fail.
    _write(d, {"0001_a.sql": "CREATE TABLE t (a int); SELECT pg_sleep(0.3);", "0002_b.sql": "CREATE TABLE u (b int);"})
    a, b = await asyncpg.connect(url), await asyncpg.connect(url)
    try:
        results = await asyncio.gather(migrate(a, discover(d)), migrate(b, discover(d)))
        assert sorted(len(r) for r in results) == [0, 2]
        assert await a.fetchval("SELECT count(*) FROM schema_migrations") == 2
    finally:
        await a.close()
        await b.close()


def test_shipped_migrations_are_well_formed() -> None:
    migrations = discover()
    assert [m.version for m in migrations] == list(range(1, len(migrations) + 1))


def test_cli_migrate_then_worker_refuses_a_schema_that_is_behind(make_database: Callable[[], str]) -> None:
    # serve does not refuse: its webhook keeps accepting and its inbox answers DB_MISMATCH (test_inbox_api)
    url = make_database()
    env = procs.env_with(DATABASE_URL=url, KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:9", WHATSAPP_APP_SECRET="s" * 16,
                         WHATSAPP_VERIFY_TOKEN="v" * 12, WHATSAPP_ACCESS_TOKEN="t" * 16)
    served = subprocess.run(procs.python_cmd("worker"), env=env, capture_output=True, text=True, timeout=60)
    assert served.returncode == 3
    assert "pending migration" in served.stderr and "Run: wacrm migrate" in served.stderr
    assert "Traceback" not in served.stderr

    first = subprocess.run(procs.python_cmd("migrate"), env=env, capture_output=True, text=True, timeout=60)
    assert first.returncode == 0 and "applied 0001_initial.sql" in first.stdout
    again = subprocess.run(procs.python_cmd("migrate"), env=env, capture_output=True, text=True, timeout=60)
    assert again.returncode == 0 and "up to date" in again.stdout


def test_cli_reports_configuration_errors_without_a_traceback() -> None:
    env = procs.env_with(DATABASE_URL="mysql://x", KAFKA_BOOTSTRAP_SERVERS=None, WHATSAPP_APP_SECRET=None)
    result = subprocess.run(procs.python_cmd("serve"), env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "DATABASE_URL: must be a postgresql:// URL" in result.stderr
    assert "KAFKA_BOOTSTRAP_SERVERS: required" in result.stderr
    assert "WHATSAPP_APP_SECRET: required" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_topics_is_idempotent(broker: str) -> None:
    env = procs.env_with(KAFKA_BOOTSTRAP_SERVERS=broker)
    for _ in range(2):
        result = subprocess.run(procs.python_cmd("topics"), env=env, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        for name in ("wa.webhook.raw", "wa.inbound", "wa.status", "wa.outbound", "wa.dlq"):
            assert name in result.stdout
        assert "PROBLEM" not in result.stdout
