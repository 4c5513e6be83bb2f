"""Append throughput of 64 KiB output chunks through the EventStore, against raw batched COPY.

A script printing as fast as it can: its actor thread turns each 64 KiB read from the pipe
into an ``OutputChunk`` and hands it to ``append_from_thread`` without waiting for the
commit (it blocks only when the writer is behind: the back-pressure), and the writer
stores batches of up to 8 MiB. Several such streams run at once, one thread each.

Baseline: COPY of the same bytes, as the same rows, into a table with the columns and
indexes of ``events`` (no trigger, no projections, no hashing), 128 chunks (8 MiB, the
writer's batch limit) per transaction. The chunks are random bytes (``os.urandom``), so
TOAST compression gains nothing on either side.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import time
import uuid

import asyncpg

from bench.db import RAW_COLUMNS, RAW_TABLE, Server, fresh_database, settle
from bench.measure import alternate
from bench.report import Result, Target
from bench.workload import NODE, RawRecord, chunk, exited, queued, raw_record, started
from shelltrail.eventstore import EventStore, StoredEvent, WriterLimits, init_connection

TARGET = Target("ratio", 0.7)
CHUNK = 64 * 1024
MIB = 1024 * 1024
#: Distinct random chunks, reused in turn: each row is stored (and compressed) on its own.
_POOL_SIZE = 256


def actor(store: EventStore, stream_id: uuid.UUID, chunks: list[bytes]) -> None:
    """What a process actor's reader does with a fast script's output; runs in a thread."""
    store.append_from_thread(stream_id, [queued(), started()], expected_version=0).result()
    futures: list[concurrent.futures.Future[list[StoredEvent]]] = []
    offset = 0
    version = 2
    for data in chunks:
        event = chunk(offset, data)
        futures.append(store.append_from_thread(stream_id, [event], expected_version=version))
        offset += len(data)
        version += 1
    futures.append(store.append_from_thread(stream_id, [exited()], expected_version=version))
    for future in futures:
        future.result()


async def store_run(store: EventStore, per_stream: list[list[bytes]]) -> float:
    """One thread per stream, all at once; MiB/s of chunk bytes."""
    nbytes = sum(len(c) for chunks in per_stream for c in chunks)
    started_at = time.perf_counter()
    await asyncio.gather(
        *(asyncio.to_thread(actor, store, uuid.uuid4(), chunks) for chunks in per_stream)
    )
    return nbytes / MIB / (time.perf_counter() - started_at)


def raw_batches(per_stream: list[list[bytes]], batch_bytes: int) -> list[list[RawRecord]]:
    """The chunks as rows, streams interleaved, ``batch_bytes`` of chunks per batch."""
    rows: list[RawRecord] = []
    sids = [uuid.uuid4() for _ in per_stream]
    offsets = [0] * len(per_stream)
    for i in range(max(len(chunks) for chunks in per_stream)):
        for s, chunks in enumerate(per_stream):
            if i < len(chunks):
                rows.append(raw_record(sids[s], i + 3, chunk(offsets[s], chunks[i])))
                offsets[s] += len(chunks[i])
    per_batch = max(batch_bytes // CHUNK, 1)
    return [rows[i : i + per_batch] for i in range(0, len(rows), per_batch)]


async def raw_run(conn: asyncpg.Connection, batches: list[list[RawRecord]]) -> float:
    """COPY each batch in its own transaction; MiB/s of chunk bytes."""
    nbytes = sum(len(row[5]) for batch in batches for row in batch)
    started_at = time.perf_counter()
    for batch in batches:
        async with conn.transaction():
            await conn.copy_records_to_table(RAW_TABLE, records=batch, columns=RAW_COLUMNS)
    return nbytes / MIB / (time.perf_counter() - started_at)


def split(pool: list[bytes], total_mib: int, streams: int) -> list[list[bytes]]:
    """``total_mib`` of chunks from ``pool``, shared out between ``streams``."""
    count = total_mib * MIB // CHUNK // streams
    return [[pool[(s * count + i) % len(pool)] for i in range(count)] for s in range(streams)]


async def run(server: Server, *, repeat: int = 5, total_mib: int = 256, streams: int = 2) -> Result:
    pool = [os.urandom(CHUNK) for _ in range(_POOL_SIZE)]
    per_stream = split(pool, total_mib, streams)
    batch_bytes = WriterLimits().max_batch_bytes
    async with fresh_database(server, "chunks") as url:
        store = await EventStore.open(url, node=NODE)
        conn = await asyncpg.connect(url)
        try:
            await init_connection(conn)
            warm = split(pool, 16, streams)
            await store_run(store, warm)
            await raw_run(conn, raw_batches(warm, batch_bytes))
            batches_before = store.writer.batches_committed
            events_before = store.writer.events_committed
            store_rates, raw_rates = await alternate(
                repeat,
                lambda: store_run(store, per_stream),
                lambda: raw_run(conn, raw_batches(per_stream, batch_bytes)),
                lambda: settle(conn),
            )
            writer_batches = store.writer.batches_committed - batches_before
            writer_events = store.writer.events_committed - events_before
        finally:
            await conn.close()
            await store.close()
    return Result(
        name="append-chunks",
        unit="MiB/s",
        samples=store_rates,
        baseline_name="raw COPY",
        baseline_samples=raw_rates,
        target=TARGET,
        notes=[
            f"{total_mib} MiB of 64 KiB random chunks per run, {streams} streams, one thread "
            f"each; writer: {writer_events / max(writer_batches, 1):,.1f} events per "
            f"transaction; raw COPY: {batch_bytes // CHUNK} chunks per transaction",
        ],
    )
