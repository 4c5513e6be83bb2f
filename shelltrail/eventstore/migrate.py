"""Versioned SQL migrations, applied once each, safely when several servers start at once."""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from typing import Final

import structlog

from shelltrail.eventstore.db import Connection

log = structlog.get_logger(__name__)

#: Any constant works: it only has to be the same for every shelltrail server.
_LOCK_KEY: Final = 0x5E11_7A11
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


def available_migrations() -> list[Migration]:
    """The migrations shipped in ``shelltrail/eventstore/migrations``, in order."""
    found = []
    for entry in resources.files("shelltrail.eventstore").joinpath("migrations").iterdir():
        match = _NAME.match(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    return found


async def migrate(conn: Connection) -> list[Migration]:
    """Apply every migration not yet recorded; return those applied now.

    Holds an advisory lock for the duration, so a second server starting at the same time
    waits and then finds nothing left to do.
    """
    await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_KEY)
    try:
        await conn.execute(
            """
            CREATE TABLE IF NOT EXISTS schema_migrations (
                version    integer PRIMARY KEY,
                name       text NOT NULL,
                applied_at timestamptz NOT NULL DEFAULT now()
            )
            """
        )
        done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
        applied = []
        for migration in available_migrations():
            if migration.version in done:
                continue
            async with conn.transaction():
                await conn.execute(migration.sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                    migration.version,
                    migration.name,
                )
            log.info("migration applied", version=migration.version, name=migration.name)
            applied.append(migration)
        return applied
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_KEY)


async def pending_migrations(conn: Connection) -> list[Migration]:
    """Migrations not yet applied (all of them on an empty database)."""
    exists = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
    done = set()
    if exists:
        done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
    return [m for m in available_migrations() if m.version not in done]
