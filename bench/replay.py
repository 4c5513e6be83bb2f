"""Replay: rebuild every projection from a log of (by default) 1,000,000 events.

``shelltrail replay`` must stay quick enough to run on a real log: this times
``shelltrail.eventstore.replay.rebuild`` (lock the log, fold every event in position order,
replace the projection tables) on a connection set up like the server's
(``init_connection``). The log is 10,000 process streams of 100 events each (``Queued``,
``Started``, 97 small ``OutputChunk`` on stdout and stderr in turn, ``Exited``), appended
through the store itself so every row is correctly hashed, with 100 events per append.

Target: 200,000 events/s. For scale, the baseline reads the same rows with the same query
and cursor without folding them: the share of replay time that is the fold's own.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Final

import asyncpg

from bench.db import Server, fresh_database, settle
from bench.measure import alternate
from bench.report import Result, Target
from bench.workload import NODE, process_history
from shelltrail.eventstore import EventStore, init_connection
from shelltrail.eventstore.replay import rebuild

TARGET = Target("absolute", 200_000)
EVENTS_PER_STREAM: Final = 100
#: The query and prefetch that ``replay.fold_log`` uses, for the read-only baseline.
READ_QUERY: Final = (
    "SELECT stream_id, stream_type, version, type, data, recorded_at FROM events ORDER BY position"
)
PREFETCH: Final = 10_000
_APPENDS_IN_FLIGHT: Final = 200
_OUTPUT: Final = b"a line of output, 32 bytes long\n"


async def populate(url: str, events: int) -> tuple[int, float]:
    """Append ``events`` (rounded down to whole streams) through the store; (count, events/s)."""
    streams = max(events // EVENTS_PER_STREAM, 1)
    history = process_history([_OUTPUT] * (EVENTS_PER_STREAM - 3), alternate_streams=True)
    store = await EventStore.open(url, node=NODE)
    try:
        started = time.perf_counter()
        for first in range(0, streams, _APPENDS_IN_FLIGHT):
            wave = min(_APPENDS_IN_FLIGHT, streams - first)
            await asyncio.gather(
                *(store.append(uuid.uuid4(), history, expected_version=0) for _ in range(wave))
            )
        elapsed = time.perf_counter() - started
    finally:
        await store.close()
    count = streams * len(history)
    return count, count / elapsed


async def replay_run(conn: asyncpg.Connection, expected: int) -> float:
    started = time.perf_counter()
    count = await rebuild(conn)
    elapsed = time.perf_counter() - started
    if count != expected:
        raise RuntimeError(f"replay folded {count} events, the log holds {expected}")
    return count / elapsed


async def read_run(conn: asyncpg.Connection, expected: int) -> float:
    started = time.perf_counter()
    count = 0
    async with conn.transaction():
        async for _row in conn.cursor(READ_QUERY, prefetch=PREFETCH):
            count += 1
    elapsed = time.perf_counter() - started
    if count != expected:
        raise RuntimeError(f"read {count} events, the log holds {expected}")
    return count / elapsed


async def run(server: Server, *, repeat: int = 3, events: int = 1_000_000) -> Result:
    async with fresh_database(server, "replay") as url:
        count, append_rate = await populate(url, events)
        conn = await asyncpg.connect(url)
        try:
            await init_connection(conn)
            # Settle the freshly written table (hint bits, statistics) as autovacuum would.
            await conn.execute("VACUUM (ANALYZE) events")
            replay_rates, read_rates = await alternate(
                repeat,
                lambda: replay_run(conn, count),
                lambda: read_run(conn, count),
                lambda: settle(conn),
            )
            processes = await conn.fetchval("SELECT count(*) FROM processes")
        finally:
            await conn.close()
    return Result(
        name="replay",
        unit="events/s",
        samples=replay_rates,
        baseline_name="read only",
        baseline_samples=read_rates,
        target=TARGET,
        notes=[
            f"{count:,} events in {processes:,} process streams; populated through the store "
            f"at {append_rate:,.0f} events/s ({EVENTS_PER_STREAM} events per append)",
        ],
    )
