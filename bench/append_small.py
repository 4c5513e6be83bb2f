"""Append throughput of small events through the EventStore, against raw batched COPY.

What a busy server mostly writes: many runs at once, each appending its lifecycle events
and short output lines one ``append`` at a time, which the single writer gathers into few
transactions. Every event takes the whole store path (encoding, hash chain, COPY into
``events``, the inline projection update, NOTIFY, resolving the caller after commit).

Baseline: COPY (``copy_records_to_table``) of the same rows, one transaction per batch of
as many rows as there are concurrent streams (the most the writer can gather here), into a
table with the columns and indexes of ``events`` but no trigger, no projections and no
hashing. The ratio is the share of the database's own speed that the store keeps.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import asyncpg

from bench.db import RAW_COLUMNS, RAW_TABLE, Server, fresh_database, settle
from bench.measure import alternate
from bench.report import Result, Target
from bench.workload import NODE, RawRecord, process_history, raw_record
from shelltrail.domain import DomainEvent
from shelltrail.eventstore import EventStore, init_connection

TARGET = Target("ratio", 0.7)
LINE = b"compiling module 42 of 97 ... ok\n"

Plan = list[tuple[uuid.UUID, list[DomainEvent]]]


def make_plan(streams: int, events_per_stream: int) -> Plan:
    """``streams`` new process streams of ``events_per_stream`` events each."""
    chunks = [LINE] * max(events_per_stream - 3, 0)
    return [(uuid.uuid4(), process_history(chunks)) for _ in range(streams)]


async def store_run(store: EventStore, plan: Plan) -> float:
    """Every stream appends its events one call at a time, all streams at once; events/s."""

    async def appender(stream_id: uuid.UUID, history: list[DomainEvent]) -> None:
        for version, event in enumerate(history):
            await store.append(stream_id, [event], expected_version=version)

    events = sum(len(history) for _, history in plan)
    started = time.perf_counter()
    await asyncio.gather(*(appender(sid, history) for sid, history in plan))
    return events / (time.perf_counter() - started)


def raw_batches(plan: Plan) -> list[list[RawRecord]]:
    """The same events as rows, batch k holding event k of every stream (as the writer does)."""
    longest = max(len(history) for _, history in plan)
    return [
        [raw_record(sid, k + 1, history[k]) for sid, history in plan if k < len(history)]
        for k in range(longest)
    ]


async def raw_run(conn: asyncpg.Connection, batches: list[list[RawRecord]]) -> float:
    """COPY each batch in its own transaction; events/s."""
    events = sum(len(batch) for batch in batches)
    started = time.perf_counter()
    for batch in batches:
        async with conn.transaction():
            await conn.copy_records_to_table(RAW_TABLE, records=batch, columns=RAW_COLUMNS)
    return events / (time.perf_counter() - started)


async def run(
    server: Server, *, repeat: int = 5, streams: int = 1000, events_per_stream: int = 30
) -> Result:
    async with fresh_database(server, "small") as url:
        store = await EventStore.open(url, node=NODE)
        conn = await asyncpg.connect(url)
        try:
            await init_connection(conn)
            # Warm up both paths (prepared statements, type introspection, caches).
            warm = make_plan(10, 5)
            await store_run(store, warm)
            await raw_run(conn, raw_batches(warm))
            batches_before = store.writer.batches_committed
            events_before = store.writer.events_committed
            store_rates, raw_rates = await alternate(
                repeat,
                lambda: store_run(store, make_plan(streams, events_per_stream)),
                lambda: raw_run(conn, raw_batches(make_plan(streams, events_per_stream))),
                lambda: settle(conn),
            )
            writer_batches = store.writer.batches_committed - batches_before
            writer_events = store.writer.events_committed - events_before
        finally:
            await conn.close()
            await store.close()
    return Result(
        name="append-small",
        unit="events/s",
        samples=store_rates,
        baseline_name="raw COPY",
        baseline_samples=raw_rates,
        target=TARGET,
        notes=[
            f"{streams} concurrent streams x {events_per_stream} events, one event per append; "
            f"writer: {writer_events / max(writer_batches, 1):,.0f} events per transaction; "
            f"raw COPY: {streams} rows per transaction",
        ],
    )
