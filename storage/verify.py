"""``wacrm verify-schema``: the live database against what the code expects.

What is expected is not a second, hand-kept list: every migration file is applied, in order, to a
scratch schema inside a transaction that is rolled back, and the catalogue of that schema is read
back. The live schema's catalogue is read the same way, and the two are compared item by item:
tables and their storage parameters (fillfactor), columns with their types and nullability, indexes,
constraints (primary, unique, check, foreign keys), SQL functions and triggers. Nothing is left behind by the check.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass

import asyncpg

from wacrm.core.schema import FIX_COMMAND
from wacrm.storage.migrate import Migration, discover, status


@dataclass(frozen=True, slots=True, order=True)
class Item:
    """One thing the code expects of the schema: ``kind`` (table, storage, column, index, constraint,
    function, trigger), its ``name`` and what it must be (``shape``: a type, a definition)."""

    kind: str
    name: str
    shape: str = ""


@dataclass(frozen=True, slots=True)
class Check:
    item: Item
    ok: bool
    problem: str = ""  # what is wrong: missing, or the live shape
    fix: str = ""

    def line(self) -> str:
        what = f"{self.item.kind} {self.item.name}" + (f" ({self.item.shape})" if self.item.shape else "")
        if self.ok:
            return f"✓ {what}"
        return f"✗ {what}: {self.problem} — {self.fix}"


# Each catalogue query takes the schema's name and returns (kind, name, shape) rows. Schema names are
# stripped from definitions, so the scratch schema's items compare equal to the live ones.
_CATALOGUE = {
    "table": """SELECT 'table', c.relname, '' FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                WHERE n.nspname = $1 AND c.relkind IN ('r', 'p')""",
    "storage": """SELECT 'storage', c.relname, array_to_string(c.reloptions, ', ')
                  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                  WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') AND c.reloptions IS NOT NULL""",
    "column": """SELECT 'column', c.relname || '.' || a.attname,
                        format_type(a.atttypid, a.atttypmod) || CASE WHEN a.attnotnull THEN ' not null' ELSE '' END
                 FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
                 WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') AND a.attnum > 0 AND NOT a.attisdropped""",
    "index": """SELECT 'index', i.indexname, i.indexdef FROM pg_indexes i WHERE i.schemaname = $1""",
    "constraint": """SELECT 'constraint', c.relname || '.' || k.conname, pg_get_constraintdef(k.oid)
                     FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid
                     JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1""",
    "function": """SELECT 'function', p.proname || '(' || pg_get_function_identity_arguments(p.oid) || ')',
                          pg_get_function_result(p.oid)
                   FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
                   WHERE n.nspname = $1 AND p.prokind = 'f'
                     AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = p.oid AND d.deptype = 'e')""",
    "trigger": """SELECT 'trigger', c.relname || '.' || t.tgname, pg_get_triggerdef(t.oid)
                  FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace
                  WHERE n.nspname = $1 AND NOT t.tgisinternal""",
}


async def catalogue(conn: asyncpg.Connection, schema: str) -> set[Item]:
    items: set[Item] = set()
    strip = re.compile(rf"\b{re.escape(schema)}\.")
    for sql in _CATALOGUE.values():
        for kind, name, shape in await conn.fetch(sql, schema):
            items.add(Item(kind, name, strip.sub("", shape or "")))
    return items


async def expected(conn: asyncpg.Connection, migrations: list[Migration] | None = None) -> set[Item]:
    """The catalogue the migrations build, read from a scratch schema that is rolled back."""
    migrations = discover() if migrations is None else migrations
    scratch = f"wacrm_verify_{secrets.token_hex(4)}"
    tx = conn.transaction()
    await tx.start()
    try:
        await conn.execute(f'CREATE SCHEMA "{scratch}"')
        # Extensions (pg_trgm) live in the live schema; their operator classes are found through it.
        live = await conn.fetchval("SELECT current_schema()")
        await conn.execute(f'SET LOCAL search_path TO "{scratch}", "{live}"')
        for m in migrations:
            await conn.execute(m.sql)
        return await catalogue(conn, scratch)
    finally:
        await tx.rollback()


def compare(want: Iterable[Item], have: Iterable[Item], defined_in: dict[str, str] | None = None,
            pending: frozenset[str] = frozenset(), named_in: dict[str, set[str]] | None = None) -> list[Check]:
    """Each wanted item against the live ones (pure). ``defined_in``: item name -> the migration
    file that creates it, for the fix; ``pending``: the migration files not applied yet; ``named_in``:
    item name -> every migration file naming it (a pending one may be what changes it)."""
    live = {(i.kind, i.name): i for i in have}
    where = defined_in or {}
    checks = []
    for item in sorted(want):
        found = live.get((item.kind, item.name))
        if found is not None and found.shape == item.shape:
            checks.append(Check(item, True))
            continue
        problem = "missing" if found is None else f"is {found.shape or 'different'}"
        identifier = re.match(r"[a-z0-9_]*", item.name.split(".")[-1])
        word = identifier.group(0) if identifier else ""
        migration = where.get(word)
        named = (named_in or {}).get(word) or set()
        if not named and migration is None and "." in item.name:
            # a name PostgreSQL made up (outbound_log_retried_by_fkey, …_not_null): the table's migrations
            named = (named_in or {}).get(item.name.split(".", 1)[0]) or set()
        changed_by = sorted((named | ({migration} if migration else set())) & pending)
        if changed_by:  # not drift: the database is behind, and migrating is the only right fix
            checks.append(Check(item, False, problem, f"run: {FIX_COMMAND} ({changed_by[-1]} is pending)"))
            continue
        checks.append(Check(item, False, problem, fix_for(item, found, migration)))
    return checks


def fix_for(item: Item, found: Item | None, migration: str | None) -> str:
    """What to run: the statement that restores the item where one statement does, else the migration.
    ``found``: the live item of that name, ``None`` when it is missing."""
    missing = found is None
    source = f" (it is defined in migrations/{migration})" if migration else ""
    if item.kind == "column" and found is not None:
        table, column = item.name.split(".", 1)
        want_type, have_type = item.shape.removesuffix(" not null"), found.shape.removesuffix(" not null")
        if want_type == have_type:
            nullness = "SET NOT NULL" if item.shape.endswith(" not null") else "DROP NOT NULL"
            return f"run: ALTER TABLE {table} ALTER COLUMN {column} {nullness}"
        return f"run: ALTER TABLE {table} ALTER COLUMN {column} TYPE {want_type}{source}"
    if item.kind == "index" and missing:
        return f"run: {item.shape}"
    if item.kind == "column" and missing:
        table, column = item.name.split(".", 1)
        kind = item.shape.removesuffix(" not null")
        null = " (then backfill it and SET NOT NULL)" if item.shape.endswith(" not null") else ""
        return f"run: ALTER TABLE {table} ADD COLUMN {column} {kind}{null}{source}"
    if item.kind == "table" and missing:
        return f"run `{FIX_COMMAND}` if a migration is pending, else restore the table{source}"
    if item.kind == "storage":
        return f"run: ALTER TABLE {item.name} SET ({item.shape})"
    return f"restore it as the migration wrote it{source}; `{FIX_COMMAND}` if a migration is pending"


def mentions(migrations: list[Migration]) -> dict[str, list[str]]:
    """The migration files naming each identifier, in order (the first defines it; a fix points there)."""
    out: dict[str, list[str]] = {}
    for m in migrations:
        for word in set(re.findall(r"[a-z_][a-z0-9_]+", m.sql.lower())):
            out.setdefault(word, []).append(m.name)
    return out


async def verify(conn: asyncpg.Connection, migrations: list[Migration] | None = None) -> list[Check]:
    migrations = discover() if migrations is None else migrations
    want = await expected(conn, migrations)
    have = await catalogue(conn, await conn.fetchval("SELECT current_schema()"))
    pending = frozenset(r.name for r in await status(conn, migrations) if r.state == "pending")
    named = mentions(migrations)
    return compare(want, have, {w: names[0] for w, names in named.items()}, pending,
                   {w: set(names) for w, names in named.items()})
