"""Status reads through the HTTP API: does stored output slow them, and how many per second.

A real ``shelltrail serve`` (subprocess, fresh database) holds two finished runs: one that
printed ``output_mib`` MiB (``head -c … /dev/urandom``, 1 GiB by default, run through the
API like any other) and one that printed nothing (``true``). Two results:

(a) Latency of ``GET /api/v1/processes/{id}`` for the big run against the empty one: one
client, ``requests`` sequential reads of each per measurement, interleaved request by
request (so that the noise of a shared machine hits both alike), median latency of each.
The target is a *maximum*, big/none latency <= 1.2, and report.Target only knows
minimums, so the figures are read rates (1 / median latency): big's rate over none's rate
is none/big latency, whose target is >= 1/1.2 = 0.83. The notes give the latencies in ms
and the big/none latency ratio. bench.measure.alternate, used for (b), is not used for
(a): it measures in blocks, and a block of 300 reads lasts a third of a second, short
enough for a passing load to hit one side only (ratios of 1.3 to 1.6 came from that on
this machine, 1.0 from interleaving).

(b) Reads per second with ``clients`` concurrent clients doing ``GET
/api/v1/processes/{id}`` of the big run for ``seconds``, target >= 2,000 reads/s (absolute).
Baseline: the same clients on ``GET /healthz`` (same session, same token check, no database
read) for ``baseline_seconds``, in turns: the ceiling of the HTTP stack and this client on
this machine (a rate, so a shorter window only makes it a little noisier).
"""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Final

import aiohttp

from bench.db import Server
from bench.http_server import (
    HttpServer,
    create_command,
    get_process,
    poll_until_ended,
    shelltrail_server,
    start_process,
)
from bench.measure import alternate
from bench.report import Result, Target

MAX_LATENCY_RATIO: Final = 1.2
LATENCY_TARGET: Final = Target("ratio", 1 / MAX_LATENCY_RATIO)
READS_TARGET: Final = Target("absolute", 2000)
MIB: Final = 1024 * 1024


async def read_latencies(session: aiohttp.ClientSession, url: str, requests: int) -> list[float]:
    """Seconds taken by each of ``requests`` sequential GETs of ``url``."""
    latencies = []
    for _ in range(requests):
        started = time.perf_counter()
        async with session.get(url) as response:
            await response.read()
            if response.status != 200:
                raise RuntimeError(f"GET {url}: {response.status}")
        latencies.append(time.perf_counter() - started)
    return latencies


async def interleaved_latencies(
    session: aiohttp.ClientSession, first: str, second: str, requests: int
) -> tuple[list[float], list[float]]:
    """``requests`` sequential reads of each URL, in pairs, alternating which goes first.

    Interleaving request by request puts both in the same moments of a noisy machine:
    reading one in a block and then the other in the next block let a passing load
    (another job, PostgreSQL's checkpointer) land on one of them only.
    """
    latencies: tuple[list[float], list[float]] = ([], [])
    urls = (first, second)
    for i in range(requests):
        order = (0, 1) if i % 2 == 0 else (1, 0)
        for which in order:
            latencies[which].extend(await read_latencies(session, urls[which], 1))
    return latencies


async def concurrent_reads(
    session: aiohttp.ClientSession, url: str, clients: int, seconds: float
) -> float:
    """Reads per second of ``clients`` clients, each reading ``url`` back to back."""
    deadline = time.perf_counter() + seconds
    counts = [0] * clients

    async def client(i: int) -> None:
        while time.perf_counter() < deadline:
            async with session.get(url) as response:
                await response.read()
                if response.status != 200:
                    raise RuntimeError(f"GET {url}: {response.status}")
            counts[i] += 1

    started = time.perf_counter()
    await asyncio.gather(*(client(i) for i in range(clients)))
    return sum(counts) / (time.perf_counter() - started)


async def finished_run(
    session: aiohttp.ClientSession, served: HttpServer, script: str, *, wait_seconds: float
) -> tuple[dict[str, object], float]:
    """A run of ``script`` through the API, polled until it ends; with its duration in s."""
    command_id = await create_command(session, served, script)
    started = time.perf_counter()
    process = await start_process(session, served, command_id)
    ended = await poll_until_ended(session, served, str(process["id"]), wait_seconds=wait_seconds)
    elapsed = time.perf_counter() - started
    if ended["status"] != "succeeded":
        raise RuntimeError(f"`{script}` ended {ended['status']}: {ended}")
    return ended, elapsed


async def run(
    server: Server,
    *,
    repeat: int,
    output_mib: int = 1024,
    requests: int = 300,
    clients: int = 50,
    seconds: float = 10.0,
    baseline_seconds: float = 3.0,
) -> list[Result]:
    size = output_mib * MIB
    settings = {"SHELLTRAIL_MAX_OUTPUT_BYTES": str(max(size, 1024**3))}
    async with (
        shelltrail_server(server, "http_reads", env=settings) as served,
        served.session() as session,
    ):
        big, big_seconds = await finished_run(
            session, served, f"head -c {size} /dev/urandom", wait_seconds=120 + output_mib
        )
        if big["stdout_bytes"] != size:
            raise RuntimeError(f"the big run stored {big['stdout_bytes']} bytes, not {size}")
        none, _ = await finished_run(session, served, "true", wait_seconds=60)
        big_url = f"{served.api}/processes/{big['id']}"
        none_url = f"{served.api}/processes/{none['id']}"
        for url in (big_url, none_url):  # warm up: connections, prepared statements
            await read_latencies(session, url, 50)

        medians: dict[str, list[float]] = {"big": [], "none": []}
        for _ in range(repeat):
            big_latencies, none_latencies = await interleaved_latencies(
                session, big_url, none_url, requests
            )
            medians["big"].append(statistics.median(big_latencies))
            medians["none"].append(statistics.median(none_latencies))
        big_rates = [1 / m for m in medians["big"]]
        none_rates = [1 / m for m in medians["none"]]

        cpu = {"server": 0.0, "client": 0.0, "reads": 0.0}

        async def reads() -> float:
            server_before, client_before = served.cpu_seconds(), time.process_time()
            rate = await concurrent_reads(session, big_url, clients, seconds)
            cpu["server"] += served.cpu_seconds() - server_before
            cpu["client"] += time.process_time() - client_before
            cpu["reads"] += rate * seconds
            return rate

        async def settle() -> None:
            await asyncio.sleep(0.5)

        read_rates, health_rates = await alternate(
            repeat,
            reads,
            lambda: concurrent_reads(session, served.base + "/healthz", clients, baseline_seconds),
            settle,
        )
        final = await get_process(session, served, str(big["id"]))
        warnings = served.log_lines()

    latency_ratios = [b / n for b, n in zip(medians["big"], medians["none"], strict=True)]
    ms = ", ".join
    latency_notes = [
        f"median latency, ms: big {ms(f'{s * 1000:.2f}' for s in medians['big'])} | "
        f"none {ms(f'{s * 1000:.2f}' for s in medians['none'])}; big/none latency ratios "
        f"{ms(f'{r:.2f}' for r in latency_ratios)}, median "
        f"{statistics.median(latency_ratios):.2f}",
        f"target: big/none latency <= {MAX_LATENCY_RATIO} (a maximum); report.Target only "
        f"knows minimums, so it is checked as big's rate / none's rate = none/big latency "
        f">= 1/{MAX_LATENCY_RATIO} = {1 / MAX_LATENCY_RATIO:.2f}",
        f"rate = 1 / median latency of {requests} sequential reads of each run by one client "
        "per measurement, interleaved request by request (keep-alive connection, loopback)",
        f"big run: `head -c {size} /dev/urandom` through the API, {final['stdout_bytes']:,} "
        f"bytes stored, version {final['version']} (events), took {big_seconds:.1f} s "
        f"({output_mib / big_seconds:.0f} MiB/s from POST to Exited seen by polling)",
    ]
    total_reads = cpu["reads"] or 1
    read_notes = [
        f"{clients} concurrent clients, {seconds:g} s per measurement, GET "
        "/api/v1/processes/{id} of the big run; baseline: the same clients on GET /healthz "
        f"(no database read) for {baseline_seconds:g} s, in turns",
        f"CPU per read: server process {cpu['server'] / total_reads * 1e6:.0f} us, this client "
        f"{cpu['client'] / total_reads * 1e6:.0f} us (client and server share 2 cores)",
    ]
    if warnings:
        read_notes.append(f"server logged {len(warnings)} lines, first: {warnings[0][:200]}")
    return [
        Result(
            name=f"GET /processes/{{id}}: run with {output_mib} MiB of output vs none",
            unit="reads/s (1/median latency)",
            samples=big_rates,
            baseline_name="run with no output",
            baseline_samples=none_rates,
            target=LATENCY_TARGET,
            notes=latency_notes,
        ),
        Result(
            name=f"GET /processes/{{id}}, {clients} concurrent clients",
            unit="reads/s",
            samples=read_rates,
            baseline_name="GET /healthz, same clients",
            baseline_samples=health_rates,
            target=READS_TARGET,
            notes=read_notes,
        ),
    ]
