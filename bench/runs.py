"""Runs per second of the script ``true``, 50 in flight, against ``xargs -P50 bash -c true``.

A run counts from ``ProcessSupervisor.start_run`` (its Queued event committed) to its
terminal event committed: actor started, script spawned under ``setpriv --pdeathsig`` in its
own session, Started and Exited appended, leftovers swept, working directory removed.

Baseline: the same number of ``bash -c true`` spawned by ``xargs -P50`` on the same machine,
measured in turns with the subject.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path

from bench.db import Server, fresh_database
from bench.measure import alternate
from bench.report import Result, Target
from shelltrail.actors import ProcessSupervisor, RunnerConfig, SupervisorLimits
from shelltrail.domain import CommandVersion
from shelltrail.eventstore import EventStore

TARGET = Target("ratio", 0.5)
IN_FLIGHT = 50


def command(script: str) -> CommandVersion:
    return CommandVersion(
        command_id=uuid.uuid4(),
        version=1,
        name="bench",
        script=script,
        description=None,
        timeout_seconds=None,
        env={},
        max_output_bytes=None,
        output_limit_policy="truncate",
        created_at=datetime.now(UTC),
    )


async def shelltrail_runs(supervisor: ProcessSupervisor, runs: int) -> float:
    """Runs per second, ``IN_FLIGHT`` at a time, each until its terminal event is stored."""
    true = command("true")
    slots = asyncio.Semaphore(IN_FLIGHT)

    async def one() -> None:
        async with slots:
            stored = await supervisor.start_run(true)
            await supervisor.wait_finished(stored[0].stream_id)

    started = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(runs)))
    return runs / (time.perf_counter() - started)


async def xargs_runs(runs: int) -> float:
    started = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        "xargs",
        f"-P{IN_FLIGHT}",
        "-n1",
        "bash",
        "-c",
        "true",
        stdin=asyncio.subprocess.PIPE,
    )
    await proc.communicate("\n".join(str(i) for i in range(runs)).encode())
    assert proc.returncode == 0
    return runs / (time.perf_counter() - started)


@asynccontextmanager
async def bench_supervisor(
    server: Server, name: str, limits: SupervisorLimits
) -> AsyncIterator[tuple[EventStore, ProcessSupervisor]]:
    """A started supervisor on a fresh database and a temporary runs directory.

    Shut down on leaving (runs still alive get a 1 s grace), then the store is closed.
    """
    async with fresh_database(server, name) as url:
        store = await EventStore.open(url, node="bench")
        try:
            with tempfile.TemporaryDirectory(prefix=f"shelltrail-bench-{name}-") as tmp:
                supervisor = ProcessSupervisor(
                    store, RunnerConfig(node="bench", runs_dir=Path(tmp)), limits
                )
                await supervisor.start()
                try:
                    yield store, supervisor
                finally:
                    await supervisor.shutdown(grace_seconds=1)
        finally:
            await store.close()


async def run(server: Server, *, repeat: int, runs: int) -> Result:
    limits = SupervisorLimits(max_running=IN_FLIGHT, max_queued=runs)
    async with bench_supervisor(server, "runs", limits) as (_, supervisor):
        await shelltrail_runs(supervisor, min(runs, 200))  # warm up

        async def nothing() -> None:
            return None

        subject, baseline = await alternate(
            repeat,
            lambda: shelltrail_runs(supervisor, runs),
            lambda: xargs_runs(runs),
            nothing,
        )
    return Result(
        name=f"runs of `true`, {IN_FLIGHT} in flight",
        unit="runs/s",
        samples=subject,
        baseline_name="xargs -P50 bash -c true",
        baseline_samples=baseline,
        target=TARGET,
        notes=[f"{runs} runs per measurement; start to terminal event committed"],
    )
