"""Where the benchmarks write: a fresh, migrated database of their own.

``SHELLTRAIL_BENCH_DATABASE_URL`` (or ``--database-url``) names an admin URL of the server
to use; without it the embedded PostgreSQL is started in a temporary directory, as
``make run`` would start it. Each benchmark gets its own database, created and migrated
here and dropped afterwards: the events table refuses DELETE and TRUNCATE, so a fresh
database is the only way to start from an empty log.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

import asyncpg

from shelltrail.bootstrap import migrate_database, with_database
from shelltrail.eventstore.embedded import EmbeddedPostgres
from shelltrail.eventstore.writer import INSERT_COLUMNS

URL_VARIABLE: Final = "SHELLTRAIL_BENCH_DATABASE_URL"

#: The baseline table: the columns, defaults, identity, constraints and indexes of
#: ``events``, but none of its triggers and no projections beside it.
RAW_TABLE: Final = "raw_events"
RAW_COLUMNS: Final = INSERT_COLUMNS


@dataclass(frozen=True, slots=True)
class Server:
    """An admin URL and what the results need to say about the server behind it."""

    admin_url: str
    label: str
    version: str


@asynccontextmanager
async def bench_server(url: str | None = None) -> AsyncIterator[Server]:
    """The server to benchmark: ``url``, else the environment's, else the embedded one."""
    url = url or os.environ.get(URL_VARIABLE)
    if url:
        parts = urlsplit(url)
        where = f"server at {parts.hostname or 'local socket'}:{parts.port or 5432}"
        yield Server(url, where, await _server_version(url))
        return
    with tempfile.TemporaryDirectory(prefix="shelltrail-bench-") as tmp:
        embedded = EmbeddedPostgres(Path(tmp))
        admin_url = await asyncio.to_thread(embedded.start)
        try:
            yield Server(admin_url, "embedded", await _server_version(admin_url))
        finally:
            await asyncio.to_thread(embedded.stop)


@asynccontextmanager
async def fresh_database(server: Server, purpose: str) -> AsyncIterator[str]:
    """URL of a new, migrated database (with the raw baseline table); dropped afterwards."""
    name = f"bench_{purpose}_{uuid.uuid4().hex[:8]}"
    await admin_execute(server.admin_url, f'CREATE DATABASE "{name}"')
    url = with_database(server.admin_url, name)
    try:
        await migrate_database(url)
        await admin_execute(
            url,
            f"CREATE TABLE {RAW_TABLE} (LIKE events INCLUDING DEFAULTS INCLUDING IDENTITY "
            "INCLUDING CONSTRAINTS INCLUDING INDEXES)",
        )
        yield url
    finally:
        await admin_execute(server.admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def settle(conn: asyncpg.Connection) -> None:
    """Write out the dirty buffers, so that every timed run starts from the same state.

    Without it, the run after a big one pays for flushing its predecessor's writes. Needs
    the right to CHECKPOINT (a superuser, or pg_checkpoint); skipped without it.
    """
    with contextlib.suppress(asyncpg.InsufficientPrivilegeError):
        await conn.execute("CHECKPOINT")


async def admin_execute(url: str, sql: str) -> None:
    """Run one statement (CREATE or DROP DATABASE) on its own connection to ``url``."""
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def _server_version(url: str) -> str:
    conn = await asyncpg.connect(url)
    try:
        return str(await conn.fetchval("SHOW server_version"))
    finally:
        await conn.close()
