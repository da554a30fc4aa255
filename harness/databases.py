"""Databases of their own on a PostgreSQL server, for the tests, the fault suite and the benchmark."""

from __future__ import annotations

import urllib.parse

import asyncpg

from wacrm.storage.migrate import run_migrations


def database_url(server_url: str, name: str) -> str:
    """The URL of database ``name`` on the server (and as the user) of ``server_url``."""
    return urllib.parse.urlunsplit(urllib.parse.urlsplit(server_url)._replace(path=f"/{name}"))


async def create_database(server_url: str, name: str, *, migrate: bool = True, timeout: float = 30) -> str:
    """Database ``name`` made afresh on the server of ``server_url`` (one of that name dropped first) and
    its URL; migrated to the code's schema unless ``migrate`` is false. Each step is bounded by ``timeout``."""
    conn = await asyncpg.connect(server_url, timeout=timeout)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    url = database_url(server_url, name)
    if migrate:
        await run_migrations(url, timeout, out=lambda m: None)
    return url
