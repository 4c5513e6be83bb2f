"""Shared fixtures: one real PostgreSQL per test session, one fresh database per test.

The server is the embedded one (as `make run` uses) unless SHELLTRAIL_TEST_DATABASE_URL names
another; each test gets its own database cloned from a migrated template, so tests never
see each other's events (the events table refuses DELETE and TRUNCATE by design).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from bench.db import admin_execute
from shelltrail.bootstrap import migrate_database, with_database
from shelltrail.eventstore import EventStore
from shelltrail.eventstore.embedded import EmbeddedPostgres
from shelltrail.logs import configure_logging

TEST_NODE = "test-node"


@pytest.fixture(scope="session")
def server_url() -> Iterator[str]:
    """An admin URL of the PostgreSQL server the tests use."""
    configured = os.environ.get("SHELLTRAIL_TEST_DATABASE_URL")
    if configured:
        yield configured
        return
    # Not under pytest's basetemp: another pytest session on the machine prunes old
    # basetemp directories, and would delete a running server's data under it.
    data_dir = Path(tempfile.mkdtemp(prefix="shelltrail-test-pg-"))
    embedded = EmbeddedPostgres(data_dir)
    try:
        yield embedded.start()
    finally:
        embedded.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def template_db(server_url: str) -> Iterator[str]:
    """A migrated database that each test's database is cloned from."""
    name = f"shelltrail_template_{os.getpid()}"
    asyncio.run(admin_execute(server_url, f'DROP DATABASE IF EXISTS "{name}"'))
    asyncio.run(admin_execute(server_url, f'CREATE DATABASE "{name}"'))
    asyncio.run(migrate_database(with_database(server_url, name)))
    yield name
    asyncio.run(admin_execute(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
async def database_url(server_url: str, template_db: str) -> AsyncIterator[str]:
    """URL of a fresh, migrated database of this test's own."""
    name = f"shelltrail_test_{uuid.uuid4().hex[:12]}"
    await admin_execute(server_url, f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"')
    try:
        yield with_database(server_url, name)
    finally:
        await admin_execute(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[EventStore]:
    s = await EventStore.open(database_url, node=TEST_NODE)
    try:
        yield s
    finally:
        await s.close()


@pytest.fixture
def empty_database_url(server_url: str) -> Iterator[str]:
    """URL of a database with no tables at all (migrations not applied)."""
    name = f"shelltrail_empty_{uuid.uuid4().hex[:12]}"
    asyncio.run(admin_execute(server_url, f'CREATE DATABASE "{name}"'))
    try:
        yield with_database(server_url, name)
    finally:
        asyncio.run(admin_execute(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session", autouse=True)
def _quiet_logs() -> None:
    """Warnings and errors only: pytest shows them with a failing test."""
    configure_logging(fmt="console", level="WARNING")


@pytest.fixture
def database_url_sync(server_url: str, template_db: str) -> Iterator[str]:
    """Like ``database_url``, for tests that run no event loop of their own."""
    name = f"shelltrail_test_{uuid.uuid4().hex[:12]}"
    asyncio.run(admin_execute(server_url, f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"'))
    try:
        yield with_database(server_url, name)
    finally:
        asyncio.run(admin_execute(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
