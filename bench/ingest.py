"""Output ingestion: one run printing 256 MiB of incompressible bytes, against raw COPY.

The script ``cat`` prints N random bytes (written to a file and flushed to disk beforehand,
outside the timing) as fast as the pipe takes them; its actor reads 64 KiB at a time, a MiB
once it has grown the full pipe, and appends ``OutputChunk`` events of 64 KiB
(back-pressure included).
The figure is MiB/s from start to the terminal event committed, and the stored output is
checked byte-exact (sha256) after each run.

Baseline: a batched COPY of the same number of 64 KiB random chunks into a bare table with
the columns of ``events`` (128 chunks, 8 MiB, per transaction), in turns with the subject.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import asyncpg

from bench.db import RAW_COLUMNS, RAW_TABLE, Server, fresh_database, settle
from bench.measure import alternate
from bench.report import Result, Target
from bench.runs import command
from shelltrail.actors import ProcessSupervisor, RunnerConfig, SupervisorLimits
from shelltrail.eventstore import EventStore, init_connection

TARGET = Target("ratio", 0.6)
CHUNK = 64 * 1024
MIB = 1024 * 1024
_BATCH = 128


async def one_run(
    store: EventStore, supervisor: ProcessSupervisor, blob: Path, total: int, expected: str
) -> float:
    started = time.perf_counter()
    stored = await supervisor.start_run(command('cat "$1"'), args=[str(blob)])
    process_id = stored[0].stream_id
    await supervisor.wait_finished(process_id)
    elapsed = time.perf_counter() - started
    digest = hashlib.sha256()
    length = 0
    async with store.pool.acquire() as conn, conn.transaction():
        query = (
            "SELECT payload FROM events WHERE stream_id = $1 AND type = 'OutputChunk' "
            "ORDER BY version"
        )
        async for row in conn.cursor(query, process_id, prefetch=64):
            digest.update(row["payload"])
            length += len(row["payload"])
    assert length == total, f"stored {length} bytes of {total}"
    assert digest.hexdigest() == expected, "stored output differs from what the script printed"
    return total / MIB / elapsed


def _write_blob(path: Path, total: int) -> str:
    """Random bytes for the script to print, flushed to disk outside the timing; their sha256."""
    digest = hashlib.sha256()
    with path.open("wb") as f:
        for _ in range(total // MIB):
            block = os.urandom(MIB)
            digest.update(block)
            f.write(block)
        # On disk before the timing starts: left dirty, the kernel writes it back during
        # the first run and that run's commits wait behind it.
        f.flush()
        os.fsync(f.fileno())
    return digest.hexdigest()


async def raw_copy(url: str, total: int) -> float:
    conn = await asyncpg.connect(url)
    await init_connection(conn)
    try:
        await settle(conn)
        chunks = [os.urandom(CHUNK) for _ in range(64)]
        stream_id = uuid.uuid4()
        now = datetime.now(UTC)
        rows = [
            (
                stream_id,
                "process",
                i + 1,
                "OutputChunk",
                '{"stream": "stdout"}',
                chunks[i % len(chunks)],
                now,
                bytes(32),
            )
            for i in range(total // CHUNK)
        ]
        started = time.perf_counter()
        for start in range(0, len(rows), _BATCH):
            async with conn.transaction():
                await conn.copy_records_to_table(
                    RAW_TABLE, records=rows[start : start + _BATCH], columns=RAW_COLUMNS
                )
        return total / MIB / (time.perf_counter() - started)
    finally:
        await conn.close()


async def run(server: Server, *, repeat: int, mib: int) -> Result:
    total = mib * MIB
    async with fresh_database(server, "ingest") as url:
        store = await EventStore.open(url, node="bench")
        with tempfile.TemporaryDirectory(prefix="shelltrail-bench-ingest-") as tmp:
            blob = Path(tmp) / "blob"
            expected = await asyncio.to_thread(_write_blob, blob, total)
            supervisor = ProcessSupervisor(
                store, RunnerConfig(node="bench", runs_dir=Path(tmp) / "runs"), SupervisorLimits()
            )
            await supervisor.start()
            conn = await asyncpg.connect(url)

            async def checkpoint() -> None:
                await settle(conn)

            try:
                subject, baseline = await alternate(
                    repeat,
                    lambda: one_run(store, supervisor, blob, total, expected),
                    lambda: raw_copy(url, total),
                    checkpoint,
                )
            finally:
                await conn.close()
                await supervisor.shutdown()
                await store.close()
    return Result(
        name=f"output ingestion, one run printing {mib} MiB of /dev/urandom",
        unit="MiB/s",
        samples=subject,
        baseline_name="raw batched COPY",
        baseline_samples=baseline,
        target=TARGET,
        notes=["stored output checked byte-exact (length and sha256 of what was read back)"],
    )
