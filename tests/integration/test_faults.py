"""Fault scenarios (issue 6): the database cut, restarted or out of disk; the server killed or
stopped, all while runs stream output.

Each scenario checks what a user would: no run left open, no output lost or changed, no event
twice, every hash chain intact, and projections equal to the log (`shelltrail replay --check`).
Scenarios that stop PostgreSQL or fill its disk use a PostgreSQL of their own
(tests/integration/faults.py); the others use the suite's database.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import hashlib
import os
import signal
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest

from shelltrail.actors.tree import OrphanReaper, find_marked, kill_marked
from shelltrail.domain import CommandCreated, OutputChunk, Queued, Started
from shelltrail.eventstore import EventStore, WriterLimits
from shelltrail.eventstore.audit import verify_all
from shelltrail.eventstore.queries import get_process
from shelltrail.eventstore.replay import check
from shelltrail.eventstore.writer import APPEND_TIMEOUT, StoreUnavailable
from tests.integration.faults import (
    OwnPostgres,
    Reply,
    Server,
    cli,
    create_database,
    event_types,
    fill,
    own_postgres,
    query,
    serving,
    stored_output,
    tmpfs,
    versions,
    wait_until,
)
from tests.integration.runs import Runs, last, output

pytestmark = pytest.mark.faults

MiB = 1024 * 1024
#: The writer's default bound on bytes waiting from actors (WriterLimits.max_pending_bytes).
#: Runs that printed more than this beyond what is stored are blocked: back-pressure.
PENDING_BOUND = WriterLimits().max_pending_bytes
CHUNK = 65536
#: Prints 64 KiB random chunks as fast as it can until "$1/stop" exists; the sha256 of each on
#: stderr; the number printed so far in "$1/<its process id>" (outside the pipe, so the test
#: sees when the script blocks on a full pipe); "done N" on stderr at the end.
STREAMING = f"""
i=0
while [ ! -e "$1/stop" ]; do
  head -c {CHUNK} /dev/urandom > chunk
  cat chunk
  sha256sum chunk >&2
  i=$((i+1))
  echo $i > "$1/$SHELLTRAIL_PROCESS_ID"
done
echo "done $i" >&2
"""


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


# --- helpers ---------------------------------------------------------------------------------


def printed(gate: Path, process_ids: list[str]) -> dict[str, int]:
    """How many chunks each STREAMING run has printed (-1: not known yet)."""
    counts = {}
    for pid in process_ids:
        try:
            counts[pid] = int((gate / pid).read_text())
        except (OSError, ValueError):  # not written yet, or caught mid-write
            counts[pid] = -1
    return counts


def wait_paused(
    gate: Path, process_ids: list[str], *, still: float = 1.0, timeout: float = 60
) -> dict[str, int]:
    """Wait until no STREAMING run has printed a chunk for ``still`` seconds."""
    last_seen, since = printed(gate, process_ids), time.monotonic()
    deadline = since + timeout
    while True:
        time.sleep(0.05)
        now = printed(gate, process_ids)
        if now != last_seen:
            last_seen, since = now, time.monotonic()
        elif time.monotonic() - since >= still:
            return now
        assert time.monotonic() < deadline, "the runs kept printing"


def check_streaming_output(url: str, process_id: str) -> int:
    """A STREAMING run's stored output is complete and byte-exact; returns its chunk count."""
    stdout = stored_output(url, process_id)
    lines = stored_output(url, process_id, "stderr").decode().splitlines()
    assert lines, "no stderr at all"
    assert lines[-1].startswith("done "), lines[-1]
    count = int(lines[-1].split()[1])
    digests = lines[:-1]
    assert len(digests) == count
    assert len(stdout) == count * CHUNK
    for i, line in enumerate(digests):
        piece = stdout[i * CHUNK : (i + 1) * CHUNK]
        assert line.split()[0] == hashlib.sha256(piece).hexdigest(), f"chunk {i} differs"
    return count


def check_log_is_sound(url: str, expected_streams: int) -> None:
    """Versions 1..n in every stream, every hash chain verifies, replay agrees."""
    found = versions(url)
    assert len(found) == expected_streams
    for stream, numbers in found.items():
        assert numbers == list(range(1, len(numbers) + 1)), f"stream {stream}: {numbers[:20]}"
    audit = cli(url, "audit", "verify")
    assert audit.returncode == 0, audit.stdout + audit.stderr
    replay = cli(url, "replay", "--check")
    assert replay.returncode == 0, replay.stdout + replay.stderr


def assert_problem(reply: Reply, status: int) -> None:
    assert reply.status == status, reply
    assert reply.headers["Content-Type"].startswith("application/problem+json"), reply
    assert reply.json()["status"] == status


@pytest.fixture
def own_pg() -> Iterator[OwnPostgres]:
    """A PostgreSQL of this test's own, which it may stop, restart or starve of disk."""
    with own_postgres() as pg:
        yield pg


# --- 1. PostgreSQL restarts ------------------------------------------------------------------


def test_runs_survive_a_database_restart(own_pg: OwnPostgres, tmp_path: Path) -> None:
    """PostgreSQL stops (fast shutdown) and starts again under 10 runs printing as fast as they
    can: /readyz answers 503 meanwhile, the writer retries with back-off, the runs block on
    their full pipes (back-pressure) and go on afterwards; then every run's output is
    complete and byte-exact, no event is stored twice, every chain verifies, replay agrees."""
    url = asyncio.run(create_database(own_pg.admin_url, "shelltrail"))
    gate = tmp_path / "gate"
    gate.mkdir()
    with serving(url, tmp_path / "server") as server:
        command = server.create_command(STREAMING)
        ids = [server.start_run(command, str(gate)) for _ in range(10)]
        wait_until(
            lambda: min(printed(gate, ids).values()) > 0, timeout=60, what="every run to print"
        )
        committed = sum(server.process(p)["stdout_bytes"] for p in ids)

        own_pg.stop("fast")
        wait_until(lambda: server.readyz() == 503, timeout=30, what="/readyz to answer 503")
        # What the runs printed beyond what was stored reaches the writer's bound, and there
        # they stop: each actor blocks in its append, its pipe fills, its script blocks.
        wait_until(
            lambda: sum(printed(gate, ids).values()) * CHUNK - committed >= PENDING_BOUND - 2 * MiB,
            timeout=60,
            what="the writer's bound to be reached",
        )
        paused = wait_paused(gate, ids)
        assert server.readyz() == 503

        (gate / "stop").touch()  # they end at their next chunk, once they can write it
        own_pg.start()
        wait_until(lambda: server.readyz() == 200, timeout=30, what="/readyz to answer 200")
        states = server.wait_ended(ids)
        assert [(s["status"], s["exit_code"]) for s in states] == [("succeeded", 0)] * 10
        assert server.terminate() == 0

    retries = [e for e in server.log_lines() if e.get("event") == "append failed, retrying"]
    delays = {e["retry_in"] for e in retries}
    assert {0.05, 0.1, 0.2, 0.4} <= delays, f"no back-off: {sorted(delays)}"
    for pid in ids:
        assert check_streaming_output(url, pid) >= paused[pid]
    check_log_is_sound(url, expected_streams=11)  # the command and its 10 runs


# --- 2. the server is killed -----------------------------------------------------------------

#: Leaves two sleepers behind (one in its own session), then prints numbered lines.
TICKING = """
sleep 1000 & setsid sleep 1000 &
pad=$(printf '%0500d' 0)
i=0
while :; do i=$((i+1)); printf '%08d %s\\n' $i "$pad"; sleep 0.1; done
"""


def ticks(count: int) -> bytes:
    pad = "0" * 500
    return "".join(f"{i:08d} {pad}\n" for i in range(1, count + 1)).encode()


def assert_ticks(stdout: bytes) -> None:
    """``stdout`` is exactly the lines TICKING printed first, byte for byte."""
    assert ticks(len(stdout) // 510 + 1).startswith(stdout)


def rows(url: str) -> dict[tuple[uuid.UUID, int], bytes]:
    return {
        (r["stream_id"], r["version"]): r["hash"]
        for r in query(url, "SELECT stream_id, version, hash FROM events")
    }


def _marked(process_ids: list[str], *, at_least: int) -> dict[int, str] | None:
    found = find_marked(set(process_ids))
    return found if len(found) >= at_least else None


def test_a_killed_server_loses_no_committed_event(database_url_sync: str, tmp_path: Path) -> None:
    """SIGKILL the server under 20 streaming runs, then start it again: every run is closed
    `lost`, nothing they started survives, every event committed before the crash is still
    there unchanged, the output is byte-exact, `audit verify` and `replay --check` pass."""
    url = database_url_sync
    data_dir = tmp_path / "server"
    ids: list[str] = []
    try:
        first = Server(url, data_dir)
        try:
            first.start()
            command = first.create_command(TICKING)
            ids = [first.start_run(command) for _ in range(20)]

            def streaming() -> bool:
                return all(first.process(p)["stdout_bytes"] > 1000 for p in ids)

            wait_until(streaming, timeout=60, what="every run to print", interval=0.1)
            # Each run's bash and its two sleepers at least.
            wait_until(lambda: _marked(ids, at_least=60), timeout=30, what="the runs' processes")
            before = rows(url)
            first.kill()  # SIGKILL: no clean-up at all
        finally:
            first.close()
        at_crash = rows(url)  # nothing writes now: exactly what was committed
        assert all(at_crash.get(key) == digest for key, digest in before.items())
        # The main processes died with the server; their descendants did not.
        assert find_marked(set(ids)), "the sleepers should outlive the crashed server"

        with serving(url, data_dir) as second:
            states = [second.process(p) for p in ids]
            assert {s["status"] for s in states} == {"lost"}
            assert find_marked(set(ids)) == {}, "the restarted server kills what is left"
            assert second.terminate() == 0
    finally:
        kill_marked(set(ids))  # only if the test failed half-way
        # The crashed server's orphans went to the nearest subreaper: this process, if an
        # in-process supervisor made it one. Reap the dead ones.
        OrphanReaper().reap()

    after = rows(url)
    assert all(after.get(key) == digest for key, digest in at_crash.items()), "an event changed"
    added = sorted(key for key in after if key not in at_crash)
    assert len(added) == 20  # one Lost per run, nothing else
    for pid in ids:
        types = event_types(url, pid)
        assert types[:2] == ["Queued", "Started"]
        assert types[-1] == "Lost"
        assert set(types[2:-1]) == {"OutputChunk"}
        assert_ticks(stored_output(url, pid))
    check_log_is_sound(url, expected_streams=21)


# --- 3. the server is stopped ----------------------------------------------------------------

#: Ignores SIGTERM (the shutdown SIGKILLs it after the grace) and prints numbered lines.
STUBBORN = "trap '' TERM\n" + TICKING.split("\n", 2)[2]
#: Says goodbye on SIGTERM and exits 3.
POLITE = "trap 'echo bye; exit 3' TERM\n" + TICKING.split("\n", 2)[2]


def test_sigterm_ends_streaming_runs_with_reason_shutdown(
    database_url_sync: str, tmp_path: Path
) -> None:
    """SIGTERM under streaming runs (test_cli covers quiet ones): the server exits 0 within the
    grace plus 10 s; every run ends `killed` / `shutdown` (the ones ignoring TERM by SIGKILL
    after the grace, the others with their own exit code); all output stored up to then, and
    what they printed while stopping, is in the log byte-exact; chains verify, replay agrees."""
    url = database_url_sync
    grace = 2.0
    env = {"SHELLTRAIL_SHUTDOWN_GRACE_SECONDS": str(grace)}
    with serving(url, tmp_path / "server", env=env) as server:
        stubborn = [server.start_run(server.create_command(STUBBORN)) for _ in range(3)]
        polite = [server.start_run(server.create_command(POLITE)) for _ in range(3)]
        ids = stubborn + polite
        try:

            def stored() -> dict[str, int] | None:
                sizes = {p: server.process(p)["stdout_bytes"] for p in ids}
                return sizes if min(sizes.values()) > 1000 else None

            seen = wait_until(stored, timeout=60, what="every run to print", interval=0.1)
            started = time.monotonic()
            status = server.terminate(timeout=grace + 30)
            elapsed = time.monotonic() - started
        finally:
            kill_marked(set(ids))  # only if the test failed half-way
    assert status == 0
    assert elapsed < grace + 10, f"the shutdown took {elapsed:.1f} s"
    assert find_marked(set(ids)) == {}

    for pid in ids:
        types = event_types(url, pid)
        assert [t for t in types if t != "OutputChunk"] == [
            "Queued",
            "Started",
            "StopRequested",
            "Killed",
        ]
        stdout = stored_output(url, pid)
        assert len(stdout) >= seen[pid], "output stored before the stop went missing"
        if pid in polite:
            assert stdout.endswith(b"bye\n")
            stdout = stdout[: -len(b"bye\n")]
            assert len(stdout) % 510 == 0  # whole lines, then the goodbye
        assert_ticks(stdout)
    killed = query(url, "SELECT id, status, stop_reason, exit_code, signal FROM processes")
    outcome = {
        str(r["id"]): (r["status"], r["stop_reason"], r["exit_code"], r["signal"]) for r in killed
    }
    assert {outcome[p] for p in stubborn} == {("killed", "shutdown", None, signal.SIGKILL)}
    assert {outcome[p] for p in polite} == {("killed", "shutdown", 3, signal.SIGTERM)}
    check_log_is_sound(url, expected_streams=12)  # 6 commands, 6 runs


# --- 4. the disk is full ---------------------------------------------------------------------


def _noise(size: int) -> str:
    """Text that compresses badly, so that PostgreSQL must find room for all of it."""
    return base64.b64encode(os.urandom(size * 3 // 4)).decode()


def _timed_post(server: Server, path: str, body: object) -> tuple[Reply, float]:
    began = time.monotonic()
    reply = server.call("POST", path, body)
    return reply, time.monotonic() - began


def test_a_full_disk_holds_runs_back_and_the_server_recovers(
    own_pg: OwnPostgres, tmp_path: Path
) -> None:
    """The disk holding the events table fills up under a streaming run.

    Set-up: the events table (and its TOAST table) is moved to a tablespace on a 96 MiB
    tmpfs, which a file then fills to the last byte. PostgreSQL's WAL and catalogs stay on
    the real disk: PostgreSQL PANICs when it cannot write WAL, but a relation that cannot grow
    only fails the transaction with SQLSTATE 53100, which is the case the server must handle.
    Autovacuum is off for the table, so space left by aborted inserts is never reused and
    every append of a large event fails until the file is removed.

    Expected: the server logs that the disk is full and retries; /readyz answers 503;
    /healthz and reads answer 200; requests that must append answer problem+json 503 within
    a few seconds, and what they asked for is not stored; the run blocks on its full pipe
    (back-pressure) with the bytes it printed beyond what was stored at the writer's bound.
    Once the file is removed, /readyz answers 200, a new run works, and the run that was
    streaming ends with its output complete and byte-exact.
    """
    with tmpfs(96) as disk:
        tablespace = disk / "events"
        tablespace.mkdir()
        own_pg.give_to_server(tablespace)
        url = asyncio.run(create_database(own_pg.admin_url, "shelltrail"))
        query(url, f"CREATE TABLESPACE small LOCATION '{tablespace}'")
        query(url, "ALTER TABLE events SET TABLESPACE small")
        query(
            url,
            "ALTER TABLE events SET (autovacuum_enabled = false, toast.autovacuum_enabled = false)",
        )
        gate = tmp_path / "gate"
        gate.mkdir()
        try:
            with serving(url, tmp_path / "server") as server:
                streaming = server.start_run(server.create_command(STREAMING), str(gate))
                command = server.create_command("echo ok")  # for a run once space is back
                wait_until(
                    lambda: printed(gate, [streaming])[streaming] > 0,
                    timeout=60,
                    what="the run to print",
                )
                fill(disk / "filler")
                reason = "cannot store events: the database's disk is full"

                def full() -> bool:
                    reply = server.call("GET", "/readyz")
                    return reply.status == 503 and reply.json()["status"] == reason

                wait_until(full, timeout=30, what="/readyz to report the full disk")
                # What needs an append gives up with 503: two such requests, in the background.
                pool = concurrent.futures.ThreadPoolExecutor(2)
                refused = [
                    pool.submit(_timed_post, server, path, body)
                    for path, body in (
                        ("/api/v1/commands", {"name": "big", "script": ": " + _noise(600_000)}),
                        (
                            "/api/v1/processes",
                            {"command_id": command, "args": [_noise(100_000) for _ in range(5)]},
                        ),
                    )
                ]
                pool.shutdown(wait=False)
                logged = [e for e in server.log_lines() if e["level"] == "error"]
                assert any("disk is full" in e["event"] for e in logged), logged
                committed = server.process(streaming)["stdout_bytes"]
                wait_until(
                    lambda: (
                        printed(gate, [streaming])[streaming] * CHUNK - committed
                        >= PENDING_BOUND - 2 * MiB
                    ),
                    timeout=60,
                    what="the writer's bound to be reached",
                )
                held = wait_paused(gate, [streaming])[streaming] * CHUNK - committed
                # Beyond the writer's bound: the actor's read in hand, waiting to be admitted,
                # and the pipe, each up to a MiB once grown (ADR 6), plus a chunk being written.
                assert held <= PENDING_BOUND + 2 * MiB + CHUNK, "memory must stay bounded"

                # The server stays up and answers what needs no append.
                assert server.call("GET", "/healthz").status == 200
                assert server.process(streaming)["status"] == "running"
                assert server.process(streaming)["stdout_bytes"] == committed
                assert server.call("GET", "/api/v1/processes").status == 200
                reply = server.call("GET", f"/api/v1/processes/{streaming}/output?limit=10")
                assert reply.status == 200
                assert len(reply.body) == 10
                for future in refused:
                    reply, took = future.result(timeout=60)
                    assert_problem(reply, 503)
                    assert "disk is full" in reply.json()["detail"]
                    assert reply.headers["Retry-After"] == "5"
                    assert took < 15, f"a refusal took {took:.1f} s"
                assert server.readyz() == 503

                (gate / "stop").touch()  # now, or it could fill the disk again
                (disk / "filler").unlink()
                wait_until(lambda: server.readyz() == 200, timeout=30, what="/readyz to recover")
                quick = server.start_run(command)
                assert [s["status"] for s in server.wait_ended([quick])] == ["succeeded"]
                assert [s["status"] for s in server.wait_ended([streaming])] == ["succeeded"]
                assert server.terminate() == 0

            assert check_streaming_output(url, streaming) * CHUNK >= committed + held
            assert stored_output(url, quick) == b"ok\n"
            # The refused requests left nothing behind: two commands, two runs.
            kinds = query(
                url, "SELECT stream_type, count(DISTINCT stream_id) AS n FROM events GROUP BY 1"
            )
            assert {r["stream_type"]: r["n"] for r in kinds} == {"command": 2, "process": 2}
            check_log_is_sound(url, expected_streams=4)
        finally:
            own_pg.destroy()  # before the tmpfs goes: its tablespace lives there


# --- the writer while the database fails -----------------------------------------------------


def _writer_state(store: EventStore) -> tuple[str | None, bool]:
    return store.writer.failure, store.healthy


async def test_appends_wait_or_give_up_while_the_database_is_down(own_pg: OwnPostgres) -> None:
    """With the database down, an append made under APPEND_TIMEOUT fails with StoreUnavailable
    soon after the timeout and is never stored; one made without it waits, and close() waits
    for it too (it used to wait forever when a batch was retrying), until the database is
    back and it is stored. Meanwhile the writer says why appends are not stored."""
    url = await create_database(own_pg.admin_url, "shelltrail")
    store = await EventStore.open(url, node="fault-node")
    closed = False
    try:
        patient_id, hasty_id = uuid.uuid4(), uuid.uuid4()
        await asyncio.to_thread(own_pg.stop, "immediate")
        patient = asyncio.create_task(
            store.append(patient_id, [CommandCreated(name="p", script="true")], expected_version=0)
        )
        token = APPEND_TIMEOUT.set(0.3)
        try:
            began = time.monotonic()
            with pytest.raises(StoreUnavailable, match="nothing was stored"):
                await store.append(
                    hasty_id, [CommandCreated(name="h", script="true")], expected_version=0
                )
            assert time.monotonic() - began < 5
        finally:
            APPEND_TIMEOUT.reset(token)
        failing = ("the database cannot be reached or is restarting", False)
        async with asyncio.timeout(30):
            while _writer_state(store) != failing:  # noqa: ASYNC110 -- polls the writer
                await asyncio.sleep(0.01)
        assert not patient.done()

        closing = asyncio.create_task(store.close())
        await asyncio.to_thread(own_pg.start)
        await asyncio.wait_for(closing, 30)
        closed = True
        assert [e.version for e in patient.result()] == [1]
        assert _writer_state(store) == (None, True)
        stored = await asyncio.to_thread(
            query, url, "SELECT stream_id, version FROM events ORDER BY stream_id, version"
        )
        assert [(r["stream_id"], r["version"]) for r in stored] == [(patient_id, 1)]
    finally:
        if not closed:  # the test failed half-way
            if not own_pg.running:
                await asyncio.to_thread(own_pg.start)
            await asyncio.wait_for(store.close(), 60)


async def test_a_copy_cut_off_while_the_server_does_not_read_is_retried(
    database_url: str,
) -> None:
    """The writer's connection dies while its COPY waits for the server to read (here: the
    table is locked, so 8 MiB cannot be sent): the writer notices, retries on another
    connection, and the append is stored once. asyncpg alone would wait forever."""
    store = await EventStore.open(database_url, node="fault-node")
    try:
        await _cut_off_a_copy(store, database_url)
    finally:
        # Bounded: a writer stuck in its COPY would make close() wait forever.
        await asyncio.wait_for(store.close(), 30)


async def _a_started_run(store: EventStore, node: str) -> tuple[uuid.UUID, datetime]:
    """Append a new run's Queued and Started (versions 1 and 2); its id and start time."""
    process_id = uuid.uuid4()
    started = datetime.now(UTC)
    await store.append(
        process_id,
        [
            Queued(command_id=uuid.uuid4(), command_version=1, script_sha256="0" * 64),
            Started(pid=1, pgid=1, node=node, started_at=started),
        ],
        expected_version=0,
    )
    return process_id, started


async def _cut_off_a_copy(store: EventStore, database_url: str) -> None:
    process_id, started = await _a_started_run(store, "n")
    payload = os.urandom(CHUNK)
    chunks = [
        OutputChunk(
            stream="stdout", offset=i * CHUNK, length=CHUNK, captured_at=started, data=payload
        )
        for i in range(128)
    ]
    locker = await asyncpg.connect(database_url)
    # Not the locker: inside a transaction, pg_stat_activity does not change.
    watcher = await asyncpg.connect(database_url)
    try:
        await locker.execute("BEGIN; LOCK TABLE events IN ACCESS EXCLUSIVE MODE")
        append = asyncio.create_task(store.append(process_id, chunks, expected_version=2))

        async def waiting(query: str, other_than: int = 0) -> int:
            """The backend whose statement (like ``query``) waits for the lock."""
            while True:
                pid = await watcher.fetchval(
                    "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                    "AND backend_type = 'client backend' AND wait_event_type = 'Lock' "
                    "AND query LIKE $1 AND pid <> $2",
                    query,
                    other_than,
                )
                if pid is not None:
                    return int(pid)
                await asyncio.sleep(0.02)

        first = await asyncio.wait_for(waiting("COPY%"), 30)
        await watcher.execute("SELECT pg_terminate_backend($1)", first)
        # The retry, on another connection: it first looks whether the batch was stored.
        await asyncio.wait_for(waiting("%", other_than=first), 30)
        assert not append.done()
        await locker.execute("ROLLBACK")
        stored = await asyncio.wait_for(append, 30)
    finally:
        await locker.close()
        await watcher.close()
    assert [e.version for e in stored] == list(range(3, 131))
    assert await store.stream_version(process_id) == 130


async def test_a_commit_whose_answer_was_lost_leaves_no_stale_state(own_pg: OwnPostgres) -> None:
    """A COMMIT goes through but its connection dies before the answer arrives (here: the
    commit waits for a synchronous standby that does not exist, and its backend is ended).
    The writer retries, finds the rows stored, and does not keep the run's state from before
    that batch: the next append folds onto the stored projection, so the writer's live state
    and the projection row agree."""
    url = await create_database(own_pg.admin_url, "shelltrail")
    store = await EventStore.open(url, node="fault-node")
    admin = await asyncpg.connect(own_pg.admin_url)
    try:
        sid, started = await _a_started_run(store, "fault-node")

        def chunk(offset: int, data: bytes) -> OutputChunk:
            return OutputChunk(
                stream="stdout", offset=offset, length=len(data), captured_at=started, data=data
            )

        await admin.execute("ALTER SYSTEM SET synchronous_standby_names = 'nobody'")
        await admin.execute("SELECT pg_reload_conf()")
        append = asyncio.create_task(store.append(sid, [chunk(0, b"first")], expected_version=2))
        waiting = (
            "SELECT pid FROM pg_stat_activity WHERE wait_event = 'SyncRep' "
            "AND datname = 'shelltrail'"
        )
        async with asyncio.timeout(30):
            while not (backend := await admin.fetchval(waiting)):  # noqa: ASYNC110 -- polls the database
                await asyncio.sleep(0.01)
        # Committed locally: ending the backend now loses only the answer.
        await admin.execute("SELECT pg_terminate_backend($1)", backend)
        await admin.execute("ALTER SYSTEM RESET synchronous_standby_names")
        await admin.execute("SELECT pg_reload_conf()")
        assert [e.version for e in await asyncio.wait_for(append, 30)] == [3]

        await store.append(sid, [chunk(5, b"second")], expected_version=3)
        state = store.live_state(sid)
        assert state is not None
        assert (state.version, state.stdout_bytes) == (4, 11)
        row = await get_process(store.pool, sid)
        assert row is not None
        assert (row.version, row.stdout_bytes) == (4, 11)
        stored = await asyncio.to_thread(
            query, url, "SELECT version FROM events WHERE stream_id = $1 ORDER BY version", sid
        )
        assert [r["version"] for r in stored] == [1, 2, 3, 4]
    finally:
        await admin.close()
        await asyncio.wait_for(store.close(), 30)
