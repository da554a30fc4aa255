"""`wacrm verify-schema` and `wacrm migrate --status` against databases drifted on purpose."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import asyncpg

from wacrm.storage.db import connect
from wacrm.storage.migrate import discover, migrate, status
from wacrm.storage.verify import Item, compare

WACRM = str(Path(sys.executable).parent / "wacrm")


def wacrm(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([WACRM, *args], env={**os.environ, "DATABASE_URL": url}, capture_output=True, text=True,
                          timeout=120)


async def migrated(make_database: Callable[[], str], upto: int | None = None) -> str:
    url = make_database()
    conn = await connect(url, timeout=10)
    try:
        await migrate(conn, discover()[:upto])
    finally:
        await conn.close()
    return url


async def test_a_current_database_passes_and_nothing_is_left_behind(make_database: Callable[[], str]) -> None:
    url = await migrated(make_database)
    done = wacrm(url, "verify-schema")
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert "✓ table conversations" in lines and "✓ column contacts.wa_id (text)" in lines
    assert any(line.startswith("✓ index conversations_inbox_recent") for line in lines)
    assert any(line.startswith("✓ function wacrm_store_inbound(") for line in lines)
    assert any(line.startswith("✓ constraint conversations.conversations_contact_id_fkey") for line in lines)
    conn = await asyncpg.connect(url)
    try:  # the scratch schema was rolled back
        assert await conn.fetchval("SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'wacrm_verify_%'") == 0
    finally:
        await conn.close()


async def test_a_drifted_database_is_reported_item_by_item_with_the_fix(make_database: Callable[[], str]) -> None:
    url = await migrated(make_database)
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("ALTER TABLE contacts DROP COLUMN username")
        await conn.execute("DROP INDEX conversations_inbox_recent")
        await conn.execute("DROP FUNCTION wacrm_merge_contacts(bigint, bigint)")
        await conn.execute("ALTER TABLE tasks ALTER COLUMN title DROP NOT NULL")
    finally:
        await conn.close()
    done = wacrm(url, "verify-schema", "--quiet")
    assert done.returncode == 1
    gaps = [line for line in done.stdout.splitlines() if line.startswith("✗")]
    # PostgreSQL 18 also lists NOT NULL as a constraint (tasks_title_not_null); older servers do not.
    not_null = [g for g in gaps if g.startswith("✗ constraint tasks.tasks_title_not_null")]
    gaps = [g for g in gaps if g not in not_null]
    assert len(gaps) == 4, done.stdout
    column, changed, function, index = gaps
    assert column.startswith("✗ column contacts.username (text): missing — run: ALTER TABLE contacts ADD COLUMN "
                             "username text")
    assert "0001_initial.sql" in column
    assert function.startswith("✗ function wacrm_merge_contacts(") and "0005_store_inbound_function.sql" in function
    assert index.startswith("✗ index conversations_inbox_recent") and "run: CREATE INDEX conversations_inbox_recent" \
        in index
    assert changed == "✗ column tasks.title (text not null): is text — run: ALTER TABLE tasks ALTER COLUMN title " \
        "SET NOT NULL"
    assert done.stdout.splitlines()[-1].endswith(f"{4 + len(not_null)} gap(s)")


async def test_a_database_behind_the_code_is_told_to_migrate(make_database: Callable[[], str]) -> None:
    url = await migrated(make_database, upto=-1)
    last = discover()[-1].name
    done = wacrm(url, "verify-schema", "--quiet")
    assert done.returncode == 1
    gaps = [line for line in done.stdout.splitlines() if line.startswith("✗")]
    assert gaps and all(g.endswith(f"— run: wacrm migrate ({last} is pending)") for g in gaps), done.stdout
    assert wacrm(url, "migrate").returncode == 0
    assert wacrm(url, "verify-schema", "--quiet").returncode == 0


async def test_migrate_status_lists_applied_pending_and_edited(make_database: Callable[[], str],
                                                                tmp_path: Path) -> None:
    url = await migrated(make_database, upto=-2)
    done = wacrm(url, "migrate", "--status")
    assert done.returncode == 1
    names = [m.name for m in discover()]
    lines = done.stdout.splitlines()
    assert lines[0].startswith(f"✓ {names[0]}") and " applied " in lines[0]
    assert lines[len(names) - 1].startswith(f"· {names[-1]}") and " pending " in lines[len(names) - 1]
    assert f"{len(names) - 2} applied, 2 pending" in done.stdout and "run: wacrm migrate" in done.stdout

    # A migration's file edited after it was applied (a copy of the migrations, one file changed).
    copy = tmp_path / "migrations"
    shutil.copytree(Path(discover.__code__.co_filename).parents[1] / "migrations", copy)
    first = copy / names[0]
    first.write_text(first.read_text() + "\n-- edited after it was applied\n")
    conn = await connect(url, timeout=10)
    try:
        rows = await status(conn, discover(copy))
    finally:
        await conn.close()
    assert [r.state for r in rows[:2]] == ["edited", "applied"] and rows[-1].state == "pending"
    assert "restore it and put the change in a new migration" in rows[0].line()

    # An applied migration this code does not know (its file is gone from the copy).
    (copy / names[1]).unlink()
    conn = await connect(url, timeout=10)
    try:
        rows = await status(conn, discover(copy))
    finally:
        await conn.close()
    unknown = [r for r in rows if r.name == names[1]]
    assert [r.state for r in unknown] == ["unknown"] and unknown[0].line().startswith(f"✗ {names[1]}")


def test_compare_is_by_kind_name_and_shape() -> None:
    want = [Item("table", "t"), Item("column", "t.a", "bigint not null"), Item("index", "t_a", "CREATE INDEX …")]
    have = [Item("table", "t"), Item("column", "t.a", "bigint"), Item("index", "other", "CREATE INDEX …")]
    checks = compare(want, have, {"t_a": "0002_x.sql"})
    assert [(c.item.name, c.ok, c.problem) for c in checks] == [
        ("t.a", False, "is bigint"), ("t_a", False, "missing"), ("t", True, "")]
    pending = compare(want, have, {"t_a": "0002_x.sql"}, frozenset({"0002_x.sql"}))
    assert [c.fix for c in pending if not c.ok][-1] == "run: wacrm migrate (0002_x.sql is pending)"


def test_a_table_whose_storage_parameters_drifted_is_told_how_to_set_them() -> None:
    want = [Item("storage", "messages", "fillfactor=80"), Item("storage", "notes", "fillfactor=70")]
    have = [Item("storage", "notes", "fillfactor=50")]
    assert [(c.item.name, c.problem, c.fix) for c in compare(want, have)] == [
        ("messages", "missing", "run: ALTER TABLE messages SET (fillfactor=80)"),
        ("notes", "is fillfactor=50", "run: ALTER TABLE notes SET (fillfactor=70)")]
