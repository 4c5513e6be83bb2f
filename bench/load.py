"""Load scenarios: many clients mixing every kind of request, and work beside a flood.

Both drive a real ``shelltrail serve`` (bench.http_server) with clients in this process.
A client repeats actions picked at random by weight (:class:`Mix`), each one what a user
does:

- start: ``POST /api/v1/processes`` of a short run (``SHORT_SCRIPT``: 20 lines on stdout,
  one on stderr, then ``sleep 0.2``), then follow its ``…/events`` as SSE until the server
  closes the stream, as ``shelltrail run`` does. It must end with ``Exited``, exit code 0.
- status: ``GET /api/v1/processes/{id}`` of a short run picked at random.
- output: ``GET …/output`` of one; the bytes must be a prefix of the run's stdout.
- follow: ``…/events`` as SSE of one (history, then live if it still runs) to the end.

An error is any response that is not the one expected (status, body or stream), and any
exception (connection error, timeout); each is counted by route. Latencies are per route;
for SSE the time to the first event, and "run" is from the POST to the terminal event.

load-mixed: ``clients`` (100) clients, no pause between actions, for ``seconds`` (60):
start 25 %, status 35 %, output 25 %, follow 15 %. Before it, a warm-up of the same mix
(5 s) fills the connection pools and starts the server's helper threads, and the server's
open descriptors and threads are taken once it is quiet (no script alive, no pipe, no
client connection; the same for 6 s, longer than an idle actor thread waits for its next
run, so none is counted). Results: requests without error (target: all
of them); server RSS in the last 10 s over the first 10 s (sampled every 0.5 s; target at
most 1.10); and, once every run has ended and the clients have closed their connections,
open descriptors and threads against those before (target: not above; the database
connections are left out, since the pools grow and shrink within their bounds).

load-flood: a run prints 1 GiB (``head -c 1073741824 /dev/urandom``) while 50 runners start
short runs (start and follow, 1 s pause between them) and 50 readers read them (status and
output, half each, 0.25 s pause). The same 100 clients on the idle server for as long as the
flood lasted are the baseline, in turns with it (the order swapped every round). Results:
p50 and p99 of the reads and of the runs' start-to-end time, each at most 3x the idle one.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import random
import time
from dataclasses import dataclass, field
from typing import Final, Literal

import aiohttp
import asyncpg

from bench.ceiling import AtMost, CeilingResult
from bench.db import Server, settle
from bench.http_follow import percentile
from bench.http_server import (
    TERMINAL_EVENTS,
    HttpServer,
    create_command,
    poll_until_ended,
    shelltrail_server,
    sse_messages,
    start_process,
)
from bench.procfs import (
    MIB,
    OTHER_SOCKET,
    RssSampler,
    Snapshot,
    back_to,
    quiet_snapshot,
    url_port,
)
from bench.report import Result, Target

SHORT_LINES: Final = 20
SHORT_SCRIPT: Final = (
    f'for i in $(seq {SHORT_LINES}); do echo "line $i of a short run"; done; '
    'echo "one line on stderr" >&2; sleep 0.2'
)
SHORT_STDOUT: Final = b"".join(
    f"line {i} of a short run\n".encode() for i in range(1, SHORT_LINES + 1)
)

START: Final = "POST /processes"
STATUS: Final = "GET /processes/{id}"
OUTPUT: Final = "GET /processes/{id}/output"
FOLLOW: Final = "GET /processes/{id}/events (SSE, first event)"
RUN: Final = "run: POST to terminal event"
ROUTES: Final = (START, STATUS, OUTPUT, FOLLOW, RUN)

SSE: Final = {"Accept": "text/event-stream"}
_REQUEST_TIMEOUT: Final = aiohttp.ClientTimeout(total=60)
_STREAM_TIMEOUT: Final = aiohttp.ClientTimeout(total=180)
_STATUSES: Final = frozenset({"queued", "running", "succeeded", "failed", "killed", "lost"})

Action = Literal["start", "status", "output", "follow"]


@dataclass(frozen=True, slots=True)
class Mix:
    """How often a client picks each action (weights), and its pause after each one."""

    start: float = 0.0
    status: float = 0.0
    output: float = 0.0
    follow: float = 0.0
    pause: float = 0.0

    def pick(self, rng: random.Random) -> Action:
        actions: list[Action] = ["start", "status", "output", "follow"]
        weights = [self.start, self.status, self.output, self.follow]
        return rng.choices(actions, weights)[0]


MIXED: Final = Mix(start=0.25, status=0.35, output=0.25, follow=0.15)
#: Paced so that the work alone does not saturate this 2-core machine (with 0.1 s pauses
#: it did: reads took 140 ms at the median without any flood), leaving room to see what a
#: flood takes from it: about 35 runs/s and 175 reads/s.
RUNNERS: Final = Mix(start=1.0, pause=1.0)
READERS: Final = Mix(status=0.5, output=0.5, pause=0.25)


@dataclass(slots=True)
class Tally:
    """What the clients did: latencies by route, errors, the runs they started."""

    latencies: dict[str, list[float]] = field(default_factory=lambda: collections.defaultdict(list))
    #: "route: what went wrong" -> how many times.
    errors: collections.Counter[str] = field(default_factory=collections.Counter)
    #: Responses with a 5xx status (also counted in ``errors``).
    server_errors: int = 0
    #: HTTP requests sent (answered or not).
    requests: int = 0
    #: Short runs started by the clients, in order.
    started: list[str] = field(default_factory=list)
    #: Short runs the readers pick from (those started, and any seeded before).
    known: list[str] = field(default_factory=list)

    def record(self, route: str, seconds: float) -> None:
        self.latencies[route].append(seconds)

    def fail(self, route: str, what: str, status: int | None = None) -> None:
        self.errors[f"{route}: {what}"] += 1
        if status is not None and status >= 500:
            self.server_errors += 1

    @property
    def error_count(self) -> int:
        """Requests that failed, and runs that did not end as they should."""
        return sum(self.errors.values())

    @property
    def request_errors(self) -> int:
        return sum(n for what, n in self.errors.items() if not what.startswith(RUN))

    def percentile_ms(self, routes: tuple[str, ...], fraction: float) -> float:
        values = [s for route in routes for s in self.latencies.get(route, [])]
        if not values:
            raise RuntimeError(f"no latency recorded for {', '.join(routes)}")
        return percentile(values, fraction) * 1000

    def summary(self) -> list[str]:
        lines = []
        for route in ROUTES:
            values = self.latencies.get(route)
            if values:
                lines.append(
                    f"{route}: {len(values):,}, p50 {percentile(values, 0.5) * 1000:.1f} ms, "
                    f"p99 {percentile(values, 0.99) * 1000:.1f} ms"
                )
        return lines


async def _follow(
    session: aiohttp.ClientSession, served: HttpServer, process_id: str, tally: Tally
) -> tuple[str, dict[str, object]] | None:
    """Follow a run's events to the end: its last event's type and data (None: failed)."""
    started = time.perf_counter()
    first_event = 0.0
    url = f"{served.api}/processes/{process_id}/events"
    tally.requests += 1
    async with session.get(url, headers=SSE, timeout=_STREAM_TIMEOUT) as response:
        if response.status != 200:
            tally.fail(FOLLOW, f"status {response.status}", response.status)
            return None
        last = None
        async for message in sse_messages(response):
            if last is None:
                first_event = time.perf_counter() - started
            last = message
    if last is None:
        tally.fail(FOLLOW, "stream closed without an event")
        return None
    if last.event not in TERMINAL_EVENTS:
        tally.fail(FOLLOW, f"stream closed after {last.event}, not a terminal event")
        return None
    data: dict[str, object] = last.json()["data"]
    tally.record(FOLLOW, first_event)
    return last.event, data


async def start_and_follow(
    session: aiohttp.ClientSession, served: HttpServer, command_id: str, tally: Tally
) -> None:
    started = time.perf_counter()
    body = {"command_id": command_id}
    tally.requests += 1
    async with session.post(
        f"{served.api}/processes", json=body, timeout=_REQUEST_TIMEOUT
    ) as response:
        if response.status != 201:
            tally.fail(START, f"status {response.status}", response.status)
            return
        process_id = str((await response.json())["id"])
    tally.record(START, time.perf_counter() - started)
    tally.started.append(process_id)
    tally.known.append(process_id)
    end = await _follow(session, served, process_id, tally)
    if end is None:
        return
    event, data = end
    if event != "Exited" or data.get("exit_code") != 0:
        tally.fail(RUN, f"ended with {event} {data.get('exit_code')}")
        return
    tally.record(RUN, time.perf_counter() - started)


async def read_status(
    session: aiohttp.ClientSession, served: HttpServer, process_id: str, tally: Tally
) -> None:
    started = time.perf_counter()
    url = f"{served.api}/processes/{process_id}"
    tally.requests += 1
    async with session.get(url, timeout=_REQUEST_TIMEOUT) as response:
        if response.status != 200:
            tally.fail(STATUS, f"status {response.status}", response.status)
            return
        process = await response.json()
    if process.get("id") != process_id or process.get("status") not in _STATUSES:
        tally.fail(STATUS, "not the process asked for")
        return
    tally.record(STATUS, time.perf_counter() - started)


async def read_output(
    session: aiohttp.ClientSession, served: HttpServer, process_id: str, tally: Tally
) -> None:
    started = time.perf_counter()
    url = f"{served.api}/processes/{process_id}/output"
    tally.requests += 1
    async with session.get(url, timeout=_REQUEST_TIMEOUT) as response:
        if response.status != 200:
            tally.fail(OUTPUT, f"status {response.status}", response.status)
            return
        data = await response.read()
    if not SHORT_STDOUT.startswith(data):
        tally.fail(OUTPUT, "bytes that the run did not print")
        return
    tally.record(OUTPUT, time.perf_counter() - started)


async def follow_known(
    session: aiohttp.ClientSession, served: HttpServer, process_id: str, tally: Tally
) -> None:
    await _follow(session, served, process_id, tally)


async def client(
    session: aiohttp.ClientSession,
    served: HttpServer,
    command_id: str,
    tally: Tally,
    *,
    mix: Mix,
    rng: random.Random,
    stop: asyncio.Event,
) -> None:
    """Do what ``mix`` says until ``stop`` is set (the action under way is finished)."""
    while not stop.is_set():
        action = mix.pick(rng)
        route = {"start": START, "status": STATUS, "output": OUTPUT, "follow": FOLLOW}[action]
        try:
            if action == "start":
                await start_and_follow(session, served, command_id, tally)
            else:
                process_id = rng.choice(tally.known)
                reader = {"status": read_status, "output": read_output, "follow": follow_known}
                await reader[action](session, served, process_id, tally)
        except (aiohttp.ClientError, TimeoutError, ValueError, KeyError) as exc:
            tally.fail(route, type(exc).__name__)
        if mix.pause:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), mix.pause)


async def run_load(
    session: aiohttp.ClientSession,
    served: HttpServer,
    command_id: str,
    tally: Tally,
    groups: list[tuple[int, Mix]],
    *,
    seconds: float | None = None,
    stop: asyncio.Event | None = None,
    seed: int = 0,
) -> float:
    """Clients (``count`` per ``Mix`` in ``groups``) until ``seconds`` pass or ``stop`` is set.

    Returns the seconds from the start until every client has finished its last action.
    """
    if not tally.known:
        raise ValueError("seed the tally with a run for the readers first (seed_runs)")
    stop = stop or asyncio.Event()
    started = time.perf_counter()
    timer = asyncio.get_running_loop().call_later(seconds, stop.set) if seconds else None
    rng = random.Random(seed)
    clients = [
        client(
            session, served, command_id, tally, mix=mix, rng=random.Random(rng.random()), stop=stop
        )
        for count, mix in groups
        for _ in range(count)
    ]
    try:
        await asyncio.gather(*clients)
    finally:
        if timer is not None:
            timer.cancel()
    return time.perf_counter() - started


async def seed_runs(
    session: aiohttp.ClientSession, served: HttpServer, command_id: str, tally: Tally, runs: int
) -> None:
    """Start ``runs`` short runs and follow them to the end, so the readers have some."""
    await asyncio.gather(
        *(start_and_follow(session, served, command_id, tally) for _ in range(runs))
    )
    if tally.error_count:
        raise RuntimeError(f"seeding short runs failed: {dict(tally.errors)}")


async def unfinished_runs(
    session: aiohttp.ClientSession, served: HttpServer, process_ids: list[str]
) -> list[str]:
    """Those of ``process_ids`` that did not succeed, with their status (all processes listed)."""
    statuses: dict[str, str] = {}
    cursor: str | None = None
    while True:
        params = {"limit": "500", **({"cursor": cursor} if cursor else {})}
        async with session.get(f"{served.api}/processes", params=params) as response:
            if response.status != 200:
                raise RuntimeError(f"listing processes: {response.status}")
            page = await response.json()
        statuses.update((p["id"], p["status"]) for p in page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    return [
        f"{pid}: {statuses.get(pid, 'not listed')}"
        for pid in process_ids
        if statuses.get(pid) != "succeeded"
    ]


# --- load-mixed ---------------------------------------------------------------------------

GROWTH_TARGET: Final = AtMost("ratio", 1.10)
NO_LEAK_TARGET: Final = AtMost("ratio", 1.0)
NO_ERROR_TARGET: Final = Target("ratio", 1.0)


async def warm_up(
    served: HttpServer,
    warm: Tally,
    *,
    clients: int,
    seconds: float,
    seeds: int,
    deadline_seconds: float = 60.0,
) -> tuple[str, Snapshot]:
    """Create the short command, seed ``seeds`` runs and load the server for ``seconds``
    (filling its pools, starting its helper threads); then the quiet server's snapshot.

    Returns the command's id and the snapshot that later counts are compared with.
    """
    async with served.session() as session:
        command_id = await create_command(session, served, SHORT_SCRIPT)
        await seed_runs(session, served, command_id, warm, seeds)
        await run_load(session, served, command_id, warm, [(clients, MIXED)], seconds=seconds)
    snapshot = await quiet_snapshot(
        served.pid, http_port=url_port(served.base), deadline_seconds=deadline_seconds
    )
    return command_id, snapshot


async def mixed(
    server: Server,
    *,
    clients: int = 100,
    seconds: float = 60.0,
    warm_up_seconds: float = 5.0,
    window: float = 10.0,
) -> list[Result]:
    warm = Tally()
    tally = Tally()
    async with shelltrail_server(server, "load_mixed") as served:
        port = url_port(served.base)
        command_id, before = await warm_up(
            served, warm, clients=clients, seconds=warm_up_seconds, seeds=10
        )
        tally.known = list(warm.known)
        server_cpu, client_cpu = served.cpu_seconds(), time.process_time()
        async with served.session() as session, RssSampler(served.pid, 0.5) as sampler:
            elapsed = await run_load(
                session, served, command_id, tally, [(clients, MIXED)], seconds=seconds, seed=1
            )
        server_cpu = served.cpu_seconds() - server_cpu
        client_cpu = time.process_time() - client_cpu
        async with served.session() as session:
            unfinished = await unfinished_runs(session, served, warm.started + tally.started)
        after, returned = await back_to(served.pid, before, http_port=port)
        warnings = served.log_lines()

    first = sampler.mean_between(0, window)
    last = sampler.mean_between(seconds - window, seconds)
    errors = warm.error_count + tally.error_count
    request_errors = warm.request_errors + tally.request_errors
    requests = warm.requests + tally.requests
    runs = len(warm.started) + len(tally.started)
    error_notes = [
        f"{clients} clients for {seconds:g} s (after a {warm_up_seconds:g} s warm-up, counted "
        f"here too), no pause; mix: start+follow {MIXED.start:.0%}, status {MIXED.status:.0%}, "
        f"output {MIXED.output:.0%}, follow {MIXED.follow:.0%}",
        f"errors: {errors}: {request_errors} requests ({tally.server_errors + warm.server_errors}"
        f" with status 5xx), {errors - request_errors} runs not ending Exited 0"
        + (f": {dict((warm.errors + tally.errors).most_common(5))}" if errors else ""),
        f"{runs:,} short runs started; every one ended succeeded: "
        + ("yes" if not unfinished else f"NO, {len(unfinished)} did not: {unfinished[:3]}"),
        f"{tally.requests / elapsed:,.0f} requests/s and {len(tally.started) / elapsed:.0f} "
        f"runs/s during the {seconds:g} s; CPU: server {server_cpu:.0f} s, this client "
        f"{client_cpu:.0f} s (2 cores shared)",
        *tally.summary(),
    ]
    if warnings:
        error_notes.append(f"server logged {len(warnings)} lines, first: {warnings[0][:200]}")
    leak_notes = [
        f"before the load (after warm-up, quiet): {before.describe()}",
        f"after every run ended and the clients closed their connections: {after.describe()}"
        + ("" if returned else " (still not back after 60 s)"),
        f"'{OTHER_SOCKET}' (database connections, the loop's socket pair) left out of the "
        "comparison: the pools grow and shrink within their bounds",
    ]
    return [
        Result(
            name=f"load-mixed: requests without error, {clients} clients for {seconds:g} s",
            unit="requests",
            samples=[requests - request_errors],
            baseline_name="requests made",
            baseline_samples=[requests],
            target=NO_ERROR_TARGET,
            notes=error_notes,
        ),
        CeilingResult(
            name=f"load-mixed: server RSS, last {window:g} s vs first {window:g} s (mean)",
            unit="MiB",
            samples=[last],
            baseline_name=f"first {window:g} s",
            baseline_samples=[first],
            target=GROWTH_TARGET,
            notes=[
                f"VmRSS every 0.5 s: min {min(m for _, m in sampler.samples):.1f}, max "
                f"{sampler.peak:.1f} MiB; mean of each {window:g} s: "
                + ", ".join(
                    f"{sampler.mean_between(t, t + window):.1f}"
                    for t in range(0, int(seconds - window) + 1, int(window))
                ),
                f"runs started by then: {runs:,} in all (warm-up included); the writer "
                "caches unfinished streams only, and the SSE message cache holds up to "
                "4,096 messages",
            ],
        ),
        CeilingResult(
            name="load-mixed: server open descriptors after the load (database's left out)",
            unit="fds",
            samples=[after.fds_without_database],
            baseline_name="before",
            baseline_samples=[before.fds_without_database],
            target=NO_LEAK_TARGET,
            notes=leak_notes,
        ),
        CeilingResult(
            name="load-mixed: server threads after the load",
            unit="threads",
            samples=[after.threads],
            baseline_name="before",
            baseline_samples=[before.threads],
            target=NO_LEAK_TARGET,
        ),
    ]


# --- load-flood ---------------------------------------------------------------------------

FLOOD_TARGET: Final = AtMost("ratio", 3.0)
READS: Final = (STATUS, OUTPUT)


@dataclass(frozen=True, slots=True)
class Phase:
    """One measurement of the runners and readers: on a flooded server or an idle one."""

    tally: Tally
    seconds: float
    flood_mib_s: float | None = None
    peak_rss_mib: float = 0.0


@dataclass(frozen=True, slots=True)
class _FloodBench:
    """A server with the short command, the flood command and seeded short runs."""

    session: aiohttp.ClientSession
    served: HttpServer
    command_id: str
    flood_id: str
    known: list[str]
    groups: list[tuple[int, Mix]]
    size: int

    async def with_flood(self, seed: int) -> Phase:
        """The runners and readers while the flood runs, from its POST to its end."""
        tally = Tally(known=list(self.known))
        stop = asyncio.Event()
        session, served = self.session, self.served
        async with RssSampler(served.pid, 0.1) as sampler:
            started = time.perf_counter()
            process = await start_process(session, served, self.flood_id)
            load = asyncio.ensure_future(
                run_load(session, served, self.command_id, tally, self.groups, stop=stop, seed=seed)
            )
            try:
                ended = await poll_until_ended(
                    session,
                    served,
                    str(process["id"]),
                    wait_seconds=120 + self.size / MIB,
                    interval=0.2,
                )
                seconds = time.perf_counter() - started
            finally:
                stop.set()
                await load
        if ended["status"] != "succeeded" or ended["stdout_bytes"] != self.size:
            raise RuntimeError(f"the flood ended {ended['status']}: {ended}")
        return Phase(tally, seconds, self.size / MIB / seconds, sampler.peak)

    async def without_flood(self, seconds: float, seed: int) -> Phase:
        tally = Tally(known=list(self.known))
        command_id, groups = self.command_id, self.groups
        await run_load(
            self.session, self.served, command_id, tally, groups, seconds=seconds, seed=seed
        )
        return Phase(tally, seconds)


async def _checkpoint(server: Server) -> None:
    """CHECKPOINT (the flood's gigabyte is not flushed in the next turn), then a pause."""
    conn = await asyncpg.connect(server.admin_url)
    try:
        await settle(conn)
    finally:
        await conn.close()
    await asyncio.sleep(1.0)


async def flood(
    server: Server,
    *,
    repeat: int,
    mib: int = 1024,
    runners: int = 50,
    readers: int = 50,
) -> list[Result]:
    size = mib * MIB
    groups = [(runners, RUNNERS), (readers, READERS)]
    flooded: list[Phase] = []
    idle: list[Phase] = []
    settings = {"SHELLTRAIL_MAX_OUTPUT_BYTES": str(size)}
    async with (
        shelltrail_server(server, "load_flood", env=settings) as served,
        served.session() as session,
    ):
        command_id = await create_command(session, served, SHORT_SCRIPT)
        flood_id = await create_command(session, served, f"head -c {size} /dev/urandom")
        seeded = Tally()
        await seed_runs(session, served, command_id, seeded, 20)
        await run_load(session, served, command_id, Tally(known=seeded.known), groups, seconds=3)
        bench = _FloodBench(session, served, command_id, flood_id, seeded.known, groups, size)
        for i in range(repeat):
            await _checkpoint(server)
            if i % 2 == 0:  # flood first; the idle turn lasts as long as it did
                flooded.append(await bench.with_flood(seed=2 * i))
                await _checkpoint(server)
                idle.append(await bench.without_flood(flooded[-1].seconds, seed=2 * i + 1))
            else:  # idle first, as long as the last flood lasted
                idle.append(await bench.without_flood(flooded[-1].seconds, seed=2 * i + 1))
                await _checkpoint(server)
                flooded.append(await bench.with_flood(seed=2 * i))
        warnings = served.log_lines()

    notes = _flood_notes(flooded, idle, size=size, runners=runners, readers=readers)
    if warnings:
        notes.append(f"server logged {len(warnings)} lines, first: {warnings[0][:200]}")

    def ms(phases: list[Phase], routes: tuple[str, ...], fraction: float) -> list[float]:
        return [p.tally.percentile_ms(routes, fraction) for p in phases]

    results: list[Result] = []
    for label, routes in (("reads (status, output)", READS), ("short runs, start to end", (RUN,))):
        for name, fraction in (("p50", 0.5), ("p99", 0.99)):
            results.append(
                CeilingResult(
                    name=f"load-flood: {label} {name} beside a {mib} MiB flood",
                    unit="ms",
                    samples=ms(flooded, routes, fraction),
                    baseline_name="idle server",
                    baseline_samples=ms(idle, routes, fraction),
                    target=FLOOD_TARGET,
                    notes=notes if not results else [],
                )
            )
    return results


def _flood_notes(
    flooded: list[Phase], idle: list[Phase], *, size: int, runners: int, readers: int
) -> list[str]:
    def listed(values: list[float], fmt: str) -> str:
        return ", ".join(format(v, fmt) for v in values)

    def reads(p: Phase) -> int:
        return sum(len(p.tally.latencies[r]) for r in READS)

    errors = sum((p.tally.errors for p in flooded + idle), collections.Counter[str]())
    return [
        f"flood: `head -c {size} /dev/urandom`, "
        f"{listed([p.flood_mib_s or 0 for p in flooded], '.0f')} MiB/s under the load, "
        f"{listed([p.seconds for p in flooded], '.1f')} s; server peak RSS "
        f"{listed([p.peak_rss_mib for p in flooded], '.0f')} MiB",
        f"beside it: {runners} runners (start a short run, follow it to Exited, pause "
        f"{RUNNERS.pause:g} s) and {readers} readers (status or output of a short run, pause "
        f"{READERS.pause:g} s); baseline: the same on the idle server for as long",
        "runs per measurement, flooded | idle: "
        f"{listed([len(p.tally.started) for p in flooded], 'd')} | "
        f"{listed([len(p.tally.started) for p in idle], 'd')}; reads: "
        f"{listed([reads(p) for p in flooded], 'd')} | {listed([reads(p) for p in idle], 'd')}",
        f"errors: {errors.total()}" + (f": {dict(errors.most_common(5))}" if errors else ""),
        "last flooded measurement: " + "; ".join(flooded[-1].tally.summary()),
        "last idle measurement: " + "; ".join(idle[-1].tally.summary()),
    ]
