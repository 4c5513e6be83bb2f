"""Faults: the database connections are cut while runs stream output."""

from __future__ import annotations

import asyncio
import hashlib

import asyncpg
import pytest

from shelltrail.eventstore import EventStore
from shelltrail.eventstore.audit import verify_all
from shelltrail.eventstore.replay import check
from tests.integration.runs import Runs, last, output

pytestmark = pytest.mark.faults


async def test_runs_survive_cut_database_connections(
    runs: Runs, store: EventStore, server_url: str
) -> None:
    """The writer retries through lost connections: every run's output is complete and
    byte-exact, no event is written twice, every chain verifies, replay agrees."""
    name = await store.pool.fetchval("SELECT current_database()")
    script = (
        "for i in $(seq 1 40); do head -c 20000 /dev/urandom > chunk; cat chunk; "
        "sha256sum chunk >&2; sleep 0.02; done"
    )
    ids = [await runs.start(script) for _ in range(5)]
    admin = await asyncpg.connect(server_url)
    try:
        for _ in range(6):
            await asyncio.sleep(0.15)
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = $1 AND pid <> pg_backend_pid()",
                name,
            )
    finally:
        await admin.close()
    for pid in ids:
        events = await runs.wait(pid, timeout=120)
        assert [e.version for e in events] == list(range(1, len(events) + 1))
        assert (last(events).type, last(events).data["exit_code"]) == ("Exited", 0)
        stdout = output(events)
        digests = output(events, "stderr").decode().split("\n")[:-1]
        assert len(stdout) == 40 * 20000
        for i, line in enumerate(digests):
            piece = stdout[i * 20000 : (i + 1) * 20000]
            assert line.split()[0] == hashlib.sha256(piece).hexdigest()
    async with store.pool.acquire() as conn:
        _, bad = await verify_all(conn)
        _, differences = await check(conn)
    assert bad == []
    assert differences == []
