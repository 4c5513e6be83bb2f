"""Server memory under output floods and many idle runs, and the time to stop them all.

Both benchmarks drive a real ``shelltrail serve`` (bench.http_server) and read its memory
from ``/proc`` (bench.procfs): the server process alone, threads included, scripts not.

rss-flood: one run prints ``mib`` MiB (1 GiB by default) as fast as it can: ``head -c …
/dev/urandom``. Random bytes, because PostgreSQL cannot compress them: the database is the
slowest stage (this machine makes urandom at about 300 MiB/s and stores about 150 MiB/s),
so the writer falls behind and back-pressure has to hold the server's memory. The figure
is the server's peak resident set during the run: ``VmHWM``, reset just before the run
starts (``/proc/<pid>/clear_refs``), which also covers every ``VmRSS`` sample taken every
20 ms. Target: at most 200 MiB. Baseline, for context: the idle RSS just before (after a
warm-up run of 16 MiB through the same path). Each measurement uses a fresh server.

sleepers: ``runs`` (1,000) concurrent runs of ``sleep 600`` on a server with
``SHELLTRAIL_MAX_RUNNING`` above that. Two results:

- memory per run: (median RSS with every run running - idle RSS) / runs, the idle RSS taken
  after a warm-up of 20 runs started and stopped through the same routes, once the server
  is quiet again. Target: at most 100 KiB per run.
- stopping them all: ``POST /api/v1/processes/{id}/stop`` (TERM, the defaults) for every
  run, ``stop_concurrency`` requests in flight, which is how a client stops many runs;
  timed from the first request sent until the server's ``/metrics`` count every run as
  killed (its projection row is updated in the transaction that stores the Killed event,
  so that is when every terminal event is stored; polled every 10 ms). Target: at most 2 s.

The baseline of both is a bare Python process (``RAW_SLEEPERS``) in which one thread per
run owns a ``bash -c 'sleep 600; exit'`` child in its own session, selecting on its stdout,
stderr and pidfd as an actor does: its RSS per run, and the time from its first
``killpg(TERM)`` until every thread has reaped its child. Measured in turns with the server,
each on a fresh server.
"""

from __future__ import annotations

import asyncio
import re
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final

import aiohttp

from bench.ceiling import AtMost, CeilingResult
from bench.db import Server
from bench.http_server import (
    HttpServer,
    create_command,
    poll_until_ended,
    shelltrail_server,
    start_process,
)
from bench.measure import alternate
from bench.procfs import (
    HTTP_SOCKET,
    MIB,
    RssSampler,
    back_to,
    peak_rss_mib,
    quiet_snapshot,
    reset_peak_rss,
    rss_mib,
    snapshot,
    url_port,
)
from bench.report import Result
from bench.runs import bench_supervisor, command
from shelltrail.actors import SupervisorLimits

FLOOD_TARGET: Final = AtMost("absolute", 200.0)
PER_RUN_TARGET: Final = AtMost("absolute", 100.0)
STOP_TARGET: Final = AtMost("absolute", 2.0)
_WARM_UP_RUNS: Final = 20

#: The baseline of ``sleepers``: ``python -c RAW_SLEEPERS <runs>``. It prints ``idle``,
#: waits for a line on stdin, starts the runs and prints ``running``, waits for another
#: line, then stops them all and prints the seconds that took.
RAW_SLEEPERS: Final = """
import os, selectors, signal, subprocess, sys, threading, time

def own(proc):
    pidfd = os.pidfd_open(proc.pid)
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        selector.register(proc.stderr, selectors.EVENT_READ)
        selector.register(pidfd, selectors.EVENT_READ)
        while True:
            for key, _ in selector.select():
                if key.fd == pidfd:
                    proc.wait()
                    os.close(pidfd)
                    proc.stdout.close()
                    proc.stderr.close()
                    return
                if not os.read(key.fd, 65536):
                    selector.unregister(key.fd)

runs = int(sys.argv[1])
print("idle", flush=True)
sys.stdin.readline()
procs, threads = [], []
for _ in range(runs):
    proc = subprocess.Popen(
        ["bash", "-c", "sleep 600; exit"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    thread = threading.Thread(target=own, args=(proc,))
    thread.start()
    procs.append(proc)
    threads.append(thread)
print("running", flush=True)
sys.stdin.readline()
started = time.perf_counter()
for proc in procs:
    os.killpg(proc.pid, signal.SIGTERM)
for thread in threads:
    thread.join()
print(time.perf_counter() - started, flush=True)
"""


async def median_rss(pid: int, *, seconds: float = 1.0, samples: int = 10) -> float:
    """Median of ``samples`` VmRSS readings spread over ``seconds``, in MiB."""
    readings = []
    for _ in range(samples):
        readings.append(rss_mib(pid))
        await asyncio.sleep(seconds / samples)
    return statistics.median(readings)


# --- rss-flood ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Flood:
    idle_mib: float
    peak_mib: float
    sampled_peak_mib: float
    after_mib: float
    seconds: float
    stored_bytes: int


async def flood_once(server: Server, size: int) -> Flood:
    settings = {"SHELLTRAIL_MAX_OUTPUT_BYTES": str(size)}
    async with (
        shelltrail_server(server, "rss_flood", env=settings) as served,
        served.session() as session,
    ):
        warm_up = await create_command(session, served, f"head -c {16 * MIB} /dev/urandom")
        flood = await create_command(session, served, f"head -c {size} /dev/urandom")
        process = await start_process(session, served, warm_up)
        await poll_until_ended(session, served, str(process["id"]), wait_seconds=120)
        await asyncio.sleep(1.0)  # let the last workdir go and the writer go idle
        idle = await median_rss(served.pid)
        reset_peak_rss(served.pid)
        async with RssSampler(served.pid, interval=0.02) as sampler:
            started = time.perf_counter()
            process = await start_process(session, served, flood)
            ended = await poll_until_ended(
                session, served, str(process["id"]), wait_seconds=120 + size / MIB, interval=0.2
            )
            seconds = time.perf_counter() - started
        peak = peak_rss_mib(served.pid)
        after = await median_rss(served.pid)
    if ended["status"] != "succeeded" or ended["stdout_bytes"] != size:
        raise RuntimeError(f"the flood ended {ended['status']} with {ended['stdout_bytes']} bytes")
    return Flood(idle, peak, sampler.peak, after, seconds, int(ended["stdout_bytes"]))


async def rss_flood(server: Server, *, repeat: int, mib: int = 1024) -> Result:
    size = mib * MIB
    floods = [await flood_once(server, size) for _ in range(repeat)]

    def mibs(values: list[float]) -> str:
        return ", ".join(f"{v:.1f}" for v in values)

    notes = [
        f"the run: `head -c {size} /dev/urandom` (incompressible, so the database is the "
        "slowest stage and back-pressure must hold memory); a fresh server per measurement",
        f"peak = VmHWM of the server process, reset when the run starts; largest VmRSS "
        f"sampled every 20 ms: {mibs([f.sampled_peak_mib for f in floods])} MiB",
        f"idle before (after a 16 MiB warm-up run): {mibs([f.idle_mib for f in floods])} MiB; "
        f"after the flood: {mibs([f.after_mib for f in floods])} MiB",
        f"flood: {', '.join(f'{mib / f.seconds:.0f}' for f in floods)} MiB/s from POST to the "
        f"terminal status seen by polling; {floods[0].stored_bytes:,} bytes stored each time",
    ]
    return CeilingResult(
        name=f"rss-flood: peak server RSS while one run prints {mib} MiB",
        unit="MiB",
        samples=[f.peak_mib for f in floods],
        baseline_name="idle RSS before",
        baseline_samples=[f.idle_mib for f in floods],
        target=FLOOD_TARGET,
        notes=notes,
    )


# --- sleepers -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Sleepers:
    idle_mib: float
    running_mib: float
    after_mib: float
    start_seconds: float
    stop_requests_seconds: float
    stop_seconds: float
    idle_state: str
    running_state: str
    after_state: str


@dataclass(frozen=True, slots=True)
class RawSleepers:
    idle_mib: float
    running_mib: float
    stop_seconds: float


_COUNT = re.compile(r'^shelltrail_processes\{status="(\w+)"\} ([0-9.e+]+)$', re.MULTILINE)


async def status_counts(session: aiohttp.ClientSession, served: HttpServer) -> dict[str, int]:
    """Processes by status, from the projection table (``GET /metrics``)."""
    async with session.get(served.base + "/metrics") as response:
        if response.status != 200:
            raise RuntimeError(f"GET /metrics: {response.status}")
        text = await response.text()
    return {status: int(float(n)) for status, n in _COUNT.findall(text)}


async def wait_counts(
    session: aiohttp.ClientSession,
    served: HttpServer,
    done: Callable[[dict[str, int]], bool],
    *,
    wait_seconds: float,
    interval: float,
) -> dict[str, int]:
    deadline = time.monotonic() + wait_seconds
    while True:
        counts = await status_counts(session, served)
        if done(counts):
            return counts
        if time.monotonic() > deadline:
            raise RuntimeError(f"processes by status after {wait_seconds:g} s: {counts}")
        await asyncio.sleep(interval)


async def in_flight(calls: list[Callable[[], Awaitable[None]]], concurrency: int) -> None:
    """Run every call, ``concurrency`` at a time."""
    slots = asyncio.Semaphore(concurrency)

    async def one(call: Callable[[], Awaitable[None]]) -> None:
        async with slots:
            await call()

    await asyncio.gather(*(one(call) for call in calls))


async def start_runs(
    session: aiohttp.ClientSession, served: HttpServer, command_id: str, runs: int
) -> list[str]:
    ids: list[str] = []

    async def start() -> None:
        ids.append(str((await start_process(session, served, command_id))["id"]))

    await in_flight([start] * runs, 50)
    return ids


async def stop_runs(
    session: aiohttp.ClientSession, served: HttpServer, ids: list[str], concurrency: int
) -> None:
    failures: list[str] = []

    def stopper(process_id: str) -> Callable[[], Awaitable[None]]:
        async def stop() -> None:
            url = f"{served.api}/processes/{process_id}/stop"
            async with session.post(url, json={}) as response:
                if response.status != 202:
                    failures.append(f"{process_id}: {response.status} {await response.text()}")

        return stop

    await in_flight([stopper(i) for i in ids], concurrency)
    if failures:
        raise RuntimeError(f"{len(failures)} stop requests failed: {failures[:3]}")


async def _connections_closed(pid: int, port: int, deadline_seconds: float = 30.0) -> None:
    """Wait until the server has closed every client connection (only its listener left)."""
    deadline = time.monotonic() + deadline_seconds
    while snapshot(pid, http_port=port).fds.get(HTTP_SOCKET, 0) > 1:
        if time.monotonic() > deadline:
            raise RuntimeError("the server still holds client connections")
        await asyncio.sleep(0.05)


async def sleepers_once(server: Server, runs: int, stop_concurrency: int) -> Sleepers:
    """One measurement on a fresh server.

    The client's connections are closed before each memory reading (idle, all running,
    after), so that the readings hold the same HTTP state: none.
    """
    settings = {"SHELLTRAIL_MAX_RUNNING": str(runs + _WARM_UP_RUNS)}
    wait = 60 + runs / 10
    async with shelltrail_server(server, "sleepers", env=settings) as served:
        port = url_port(served.base)
        async with served.session() as session:
            command_id = await create_command(session, served, "sleep 600")
            # Warm up every route and pool the measurement uses.
            warm = await start_runs(session, served, command_id, _WARM_UP_RUNS)
            await wait_counts(
                session,
                served,
                lambda c: c.get("running", 0) == _WARM_UP_RUNS,
                wait_seconds=wait,
                interval=0.1,
            )
            await stop_runs(session, served, warm, stop_concurrency)
            await wait_counts(
                session,
                served,
                lambda c: c.get("killed", 0) == _WARM_UP_RUNS,
                wait_seconds=wait,
                interval=0.1,
            )
        idle_state = await quiet_snapshot(served.pid, http_port=port)
        idle = await median_rss(served.pid)

        async with served.session() as session:
            started = time.perf_counter()
            ids = await start_runs(session, served, command_id, runs)
            await wait_counts(
                session,
                served,
                lambda c: c.get("running", 0) == runs,
                wait_seconds=wait,
                interval=0.1,
            )
            start_seconds = time.perf_counter() - started
        await _connections_closed(served.pid, port)
        await asyncio.sleep(1.0)
        running = await median_rss(served.pid)
        running_state = snapshot(served.pid, http_port=port)

        async with served.session() as session:
            started = time.perf_counter()
            await stop_runs(session, served, ids, stop_concurrency)
            requests_seconds = time.perf_counter() - started
            # Polled once every request is answered, not during the requests: no run is
            # killed before the server has its stop request, and each poll is a request
            # and a database query of its own (about 1.3 ms), which polling every 10 ms
            # from the start added to the load being measured.
            await wait_counts(
                session,
                served,
                lambda c: c.get("killed", 0) == runs + _WARM_UP_RUNS and c.get("running", 0) == 0,
                wait_seconds=wait,
                interval=0.01,
            )
            stop_seconds = time.perf_counter() - started
        after_state, _ = await back_to(served.pid, idle_state, http_port=port)
        after = await median_rss(served.pid)
    return Sleepers(
        idle,
        running,
        after,
        start_seconds,
        requests_seconds,
        stop_seconds,
        idle_state.describe(),
        running_state.describe(),
        after_state.describe(),
    )


async def raw_sleepers(runs: int) -> RawSleepers:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        RAW_SLEEPERS,
        str(runs),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdin is not None
    assert proc.stdout is not None
    try:

        async def expect(word: str) -> str:
            assert proc.stdout is not None
            line = (await asyncio.wait_for(proc.stdout.readline(), 120)).decode().strip()
            if not line or (word and line != word):
                raise RuntimeError(f"the raw sleepers said {line!r}, not {word!r}")
            return line

        await expect("idle")
        await asyncio.sleep(0.5)
        idle = await median_rss(proc.pid)
        proc.stdin.write(b"start\n")
        await expect("running")
        await asyncio.sleep(1.0)
        running = await median_rss(proc.pid)
        proc.stdin.write(b"stop\n")
        seconds = float(await expect(""))
        await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return RawSleepers(idle, running, seconds)


async def supervisor_stop_once(server: Server, runs: int) -> float:
    """Seconds for ``ProcessSupervisor.stop_run`` to end ``runs`` sleeping runs, in process.

    The same 1,000 sleepers as above without the HTTP layer: the actors' own share of a
    mass stop (signal, reap, the sweep, ``Killed`` stored), as the ``runs`` benchmark
    measures starts. Timed from the first ``stop_run`` until every run's last event is
    committed (``wait_finished``).
    """
    limits = SupervisorLimits(max_running=runs, max_queued=runs)
    async with bench_supervisor(server, "stop", limits) as (store, supervisor):
        sleep = command("sleep 600")
        ids = [(await supervisor.start_run(sleep))[0].stream_id for _ in range(runs)]
        deadline = time.monotonic() + 120
        while (
            await store.pool.fetchval("SELECT count(*) FROM processes WHERE status = 'running'")
            < runs
        ):
            if time.monotonic() > deadline:
                raise RuntimeError("the sleepers did not all start in 120 s")
            await asyncio.sleep(0.05)
        started = time.perf_counter()
        for process_id in ids:
            await supervisor.stop_run(process_id, grace_seconds=10)
        await asyncio.gather(*(supervisor.wait_finished(p) for p in ids))
        seconds = time.perf_counter() - started
        killed = await store.pool.fetchval("SELECT count(*) FROM processes WHERE status = 'killed'")
        if killed != runs:
            raise RuntimeError(f"{killed} of {runs} runs ended killed")
        return seconds


async def sleepers(
    server: Server, *, repeat: int, runs: int = 1000, stop_concurrency: int = 100
) -> list[Result]:
    subject: list[Sleepers] = []
    baseline: list[RawSleepers] = []
    in_process: list[float] = []

    async def subject_run() -> float:
        subject.append(await sleepers_once(server, runs, stop_concurrency))
        in_process.append(await supervisor_stop_once(server, runs))
        return 0.0

    async def baseline_run() -> float:
        baseline.append(await raw_sleepers(runs))
        return 0.0

    async def settle() -> None:
        await asyncio.sleep(1.0)

    await alternate(repeat, subject_run, baseline_run, settle)

    def kib_per_run(idle: float, running: float) -> float:
        return (running - idle) * 1024 / runs

    def listed(values: list[float], fmt: str = ".1f") -> str:
        return ", ".join(format(v, fmt) for v in values)

    memory_notes = [
        f"{runs} runs of `sleep 600` at once (SHELLTRAIL_MAX_RUNNING={runs + _WARM_UP_RUNS}); "
        "a fresh server per measurement, warmed up by starting and stopping "
        f"{_WARM_UP_RUNS} runs",
        f"server RSS, MiB: idle {listed([s.idle_mib for s in subject])} | all running "
        f"{listed([s.running_mib for s in subject])} | after all stopped "
        f"{listed([s.after_mib for s in subject])}",
        f"raw RSS, MiB: idle {listed([b.idle_mib for b in baseline])} | all running "
        f"{listed([b.running_mib for b in baseline])}",
        f"starting them: {listed([s.start_seconds for s in subject])} s (POSTs, 50 in flight, "
        "until /metrics counts all running)",
        f"server idle: {subject[-1].idle_state}; all running: {subject[-1].running_state}; "
        f"after all stopped: {subject[-1].after_state}",
    ]
    stop_notes = [
        f"POST /processes/{{id}}/stop (TERM, grace 10 s) for each run, {stop_concurrency} in "
        "flight, timed until /metrics counts every run killed (polled every 10 ms once every "
        "request is answered)",
        "every stop request answered (202) after "
        f"{listed([s.stop_requests_seconds for s in subject], '.2f')} s",
        "baseline: one killpg(TERM) per run from one thread, until every owning thread has "
        "reaped its child",
    ]
    return [
        CeilingResult(
            name=f"sleepers: server memory per run, {runs} runs of `sleep 600`",
            unit="KiB/run",
            samples=[kib_per_run(s.idle_mib, s.running_mib) for s in subject],
            baseline_name="raw Python thread per run",
            baseline_samples=[kib_per_run(b.idle_mib, b.running_mib) for b in baseline],
            target=PER_RUN_TARGET,
            notes=memory_notes,
        ),
        CeilingResult(
            name=f"sleepers: stop {runs} runs through the API, until every Killed is stored",
            unit="s",
            samples=[s.stop_seconds for s in subject],
            baseline_name="killpg + reap in a raw process",
            baseline_samples=[b.stop_seconds for b in baseline],
            target=STOP_TARGET,
            notes=stop_notes,
        ),
        CeilingResult(
            name=f"sleepers: stop {runs} runs through the supervisor, until every Killed is stored",
            unit="s",
            samples=in_process,
            baseline_name="killpg + reap in a raw process",
            baseline_samples=[b.stop_seconds for b in baseline],
            target=STOP_TARGET,
            notes=[
                "ProcessSupervisor.stop_run (TERM, grace 10 s) for each run in the benchmark's "
                "own process, until wait_finished for all: the actors without the HTTP layer",
            ],
        ),
    ]
