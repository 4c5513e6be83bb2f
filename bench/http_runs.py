"""Runs per second through the HTTP API, 50 in flight, against ``xargs -P50 bash -c true``.

A real ``shelltrail serve`` (subprocess, fresh database) is driven from this process with
aiohttp over loopback, as a client would: each run is ``POST /api/v1/processes`` of a
command whose script is ``true``, then ``GET /api/v1/processes/{id}/events`` as SSE until
the server closes the stream after the terminal event. A run counts from the POST to the
end of its stream; 50 such runs are in flight at any time.

Baseline: the same number of ``bash -c true`` spawned by ``xargs -P50``, measured in turns
with the subject (bench.runs.xargs_runs). Client, server, PostgreSQL and the scripts share
the machine's cores, so the ratio is what a client on the same host gets.
"""

from __future__ import annotations

import asyncio
import time
from typing import Final

import aiohttp

from bench.db import Server
from bench.http_server import (
    HttpServer,
    create_command,
    shelltrail_server,
    sse_messages,
    start_process,
)
from bench.measure import alternate
from bench.report import Result, Target
from bench.runs import xargs_runs

TARGET: Final = Target("ratio", 0.4)
IN_FLIGHT: Final = 50
SSE: Final = {"Accept": "text/event-stream"}


async def follow_to_end(
    session: aiohttp.ClientSession, served: HttpServer, process_id: str
) -> tuple[str, dict[str, object]]:
    """Follow a run's events (SSE) until the server closes the stream: its last event."""
    last = None
    async with session.get(f"{served.api}/processes/{process_id}/events", headers=SSE) as r:
        if r.status != 200:
            raise RuntimeError(f"following {process_id}: {r.status} {await r.text()}")
        async for message in sse_messages(r):
            last = message
    if last is None:
        raise RuntimeError(f"the event stream of {process_id} closed without an event")
    data: dict[str, object] = last.json()["data"]
    return last.event, data


async def http_runs(
    session: aiohttp.ClientSession, served: HttpServer, command_id: str, runs: int
) -> float:
    """Runs per second, ``IN_FLIGHT`` at a time, each from its POST to its stream's end."""
    slots = asyncio.Semaphore(IN_FLIGHT)
    failures: list[str] = []

    async def one() -> None:
        async with slots:
            process = await start_process(session, served, command_id)
            event, data = await follow_to_end(session, served, process["id"])
            if event != "Exited" or data.get("exit_code") != 0:
                failures.append(f"{process['id']}: {event} {data}")

    started = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(runs)))
    elapsed = time.perf_counter() - started
    if failures:
        raise RuntimeError(f"{len(failures)} runs of `true` did not exit 0: {failures[:3]}")
    return runs / elapsed


async def run(server: Server, *, repeat: int, runs: int = 1000) -> Result:
    async with shelltrail_server(server, "http_runs") as served, served.session() as session:
        command_id = await create_command(session, served, "true")
        await http_runs(session, served, command_id, min(runs, 200))  # warm up

        cpu = {"server": 0.0, "client": 0.0}

        async def subject() -> float:
            server_before, client_before = served.cpu_seconds(), time.process_time()
            rate = await http_runs(session, served, command_id, runs)
            cpu["server"] += served.cpu_seconds() - server_before
            cpu["client"] += time.process_time() - client_before
            return rate

        async def settle() -> None:
            await asyncio.sleep(0.5)  # let the server finish removing the last workdirs

        shelltrail, baseline = await alternate(repeat, subject, lambda: xargs_runs(runs), settle)
        warnings = served.log_lines()
    total = runs * repeat
    notes = [
        f"{runs} runs per measurement, {IN_FLIGHT} in flight; a run is POST /processes, then "
        "its SSE /events stream followed until the server closes it after Exited",
        f"CPU per run: server process {cpu['server'] / total * 1000:.2f} ms, this client "
        f"{cpu['client'] / total * 1000:.2f} ms (PostgreSQL and the scripts not counted)",
        "server: shelltrail serve subprocess, SHELLTRAIL_MAX_RUNNING=64, loopback HTTP",
    ]
    if warnings:
        notes.append(f"server logged {len(warnings)} warning lines, first: {warnings[0][:200]}")
    return Result(
        name=f"HTTP runs of `true`, {IN_FLIGHT} in flight (POST + SSE until Exited)",
        unit="runs/s",
        samples=shelltrail,
        baseline_name="xargs -P50 bash -c true",
        baseline_samples=baseline,
        target=TARGET,
        notes=notes,
    )
