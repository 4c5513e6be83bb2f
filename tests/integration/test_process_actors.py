"""Process actors with real processes and real PostgreSQL."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from shelltrail.actors import (
    MARKER,
    ProcessSupervisor,
    QueueFull,
    RunnerConfig,
    SupervisorLimits,
)
from shelltrail.actors.process_actor import _FLOOD_PIPE_BYTES
from shelltrail.actors.scripts import ScriptFiles
from shelltrail.actors.tree import descendants, find_marked, kill_marked
from shelltrail.domain import OutputChunk
from shelltrail.eventstore import EventStore
from shelltrail.eventstore.writer import StoreUnavailable
from tests.conftest import TEST_NODE
from tests.integration.runs import Runs, last, no_survivors, output


def _now() -> datetime:
    return datetime.now(UTC)


async def test_both_streams_and_the_exit_code(runs: Runs) -> None:
    """stdout and stderr are kept apart, byte-exact, and the exit code is recorded."""
    events = await runs.run("echo out; echo err >&2; echo more; exit 3")
    assert [e.type for e in events][:2] == ["Queued", "Started"]
    assert output(events) == b"out\nmore\n"
    assert output(events, "stderr") == b"err\n"
    end = last(events)
    assert (end.type, end.data["exit_code"], end.data["signal"]) == ("Exited", 3, None)
    row = await runs.store.pool.fetchrow("SELECT * FROM processes WHERE id = $1", end.stream_id)
    assert row is not None
    assert (row["status"], row["exit_code"], row["stdout_bytes"], row["stderr_bytes"]) == (
        "failed",
        3,
        9,
        4,
    )
    assert row["cpu_user_seconds"] is not None
    assert row["max_rss_kib"] > 0


async def test_args_are_positional_parameters_and_workdir_is_fresh(
    runs: Runs, tmp_path: Path
) -> None:
    """`args` become $1…$n; each run starts in an empty directory removed afterwards."""
    events = await runs.run('printf "%s|" "$#" "$1" "$2"; ls -A; pwd', "a b", "c")
    text = output(events).decode()
    first_line, listing_and_pwd = text.split("|", 3)[:3], text.split("|", 3)[3]
    assert first_line == ["2", "a b", "c"]
    workdir = listing_and_pwd.strip()
    assert workdir.startswith(str(tmp_path / "runs"))
    assert listing_and_pwd.strip().count("\n") == 0  # `ls -A` printed nothing
    assert not await asyncio.to_thread(Path(workdir).exists)


async def test_hundred_runs_in_parallel(runs: Runs) -> None:
    """100 runs at once each record their own output and exit code."""
    ids = await asyncio.gather(*(runs.start(f'echo "run {i}"; exit {i % 7}') for i in range(100)))
    results = await asyncio.gather(*(runs.wait(pid) for pid in ids))
    for i, events in enumerate(results):
        assert output(events) == f"run {i}\n".encode()
        assert last(events).data["exit_code"] == i % 7


async def test_binary_output_is_byte_exact(runs: Runs) -> None:
    """1 MiB of random bytes comes back with the same sha256."""
    events = await runs.run("head -c 1048576 /dev/urandom > blob; cat blob; sha256sum blob >&2")
    data = output(events)
    assert len(data) == 1024 * 1024
    assert hashlib.sha256(data).hexdigest() == output(events, "stderr").split()[0].decode()
    chunks = [e for e in events if e.type == "OutputChunk"]
    assert all(c.data["length"] <= 65536 for c in chunks)
    assert len(chunks) < 64  # coalesced, not one row per read


@pytest.mark.parametrize(
    ("script", "expected"),
    [
        ("printf 'a\\0b\\0\\0c'", b"a\x00b\x00\x00c"),
        ("printf 'no newline at the end'", b"no newline at the end"),
        ("printf '\\xff\\xfe\\xc3(invalid utf-8)'", b"\xff\xfe\xc3(invalid utf-8)"),
    ],
)
async def test_awkward_bytes_come_back_exactly(runs: Runs, script: str, expected: bytes) -> None:
    assert output(await runs.run(script)) == expected


async def test_a_ten_megabyte_line(runs: Runs) -> None:
    """A single 10 MB line without any newline is stored whole."""
    events = await runs.run("head -c 10000000 /dev/zero | tr '\\0' x")
    assert output(events) == b"x" * 10_000_000


async def test_stdin_is_empty(runs: Runs) -> None:
    """A script reading stdin gets EOF at once instead of hanging."""
    events = await runs.run('cat; read line; echo "read returned $?"')
    assert output(events) == b"read returned 1\n"


async def test_environment_holds_no_server_secret(
    runs: Runs, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only PATH, HOME, LANG, the command's and run's env and the marker reach the script."""
    monkeypatch.setenv("SHELLTRAIL_DATABASE_URL", "postgresql://admin:hunter2@db/prod")
    monkeypatch.setenv("SHELLTRAIL_TOKENS", "admin:admin:topsecret")
    pid = await runs.start(
        "env -0", env={"FROM_COMMAND": "1", "BOTH": "command"}, run_env={"BOTH": "run"}
    )
    events = await runs.wait(pid)
    env = dict(item.split("=", 1) for item in output(events).decode().split("\0") if item)
    assert "hunter2" not in output(events).decode()
    assert "topsecret" not in output(events).decode()
    env.pop("PWD", None)
    env.pop("SHLVL", None)
    env.pop("_", None)
    assert set(env) == {"PATH", "HOME", "LANG", "FROM_COMMAND", "BOTH", MARKER}
    assert (env["BOTH"], env[MARKER]) == ("run", str(pid))


async def test_a_runs_own_bash_env_still_works_after_the_prelude(
    store: EventStore, tmp_path: Path
) -> None:
    """With a limit on open files to give back, bash reads the server's prelude first (as
    BASH_ENV); the run's own BASH_ENV is then read and left in its environment."""
    own = tmp_path / "own-bash-env.sh"
    own.write_text("FROM_OWN_BASH_ENV=yes\n")
    config = RunnerConfig(node=TEST_NODE, runs_dir=tmp_path / "runs", open_files_limit=200)
    supervisor = ProcessSupervisor(store, config, SupervisorLimits())
    await supervisor.start()
    runs = Runs(store, supervisor)
    script = 'ulimit -Sn; echo "$FROM_OWN_BASH_ENV $BASH_ENV"; env | grep -c SHELLTRAIL_BASH'
    try:
        with_own = await runs.run(script, env={"BASH_ENV": str(own)})
        without = await runs.run('ulimit -Sn; echo "${BASH_ENV-none}"')
    finally:
        await supervisor.shutdown()
    assert output(with_own).decode().split() == ["200", "yes", str(own), "0"]
    assert output(without).decode().split() == ["200", "none"]


async def test_stop_reaches_background_jobs(runs: Runs) -> None:
    """Stopping `sleep & sleep & wait` leaves no process of the run alive."""
    pid = await runs.start("sleep 1000 & sleep 1000 & echo ready; wait")
    await runs.wait_for_output(pid, b"ready")
    assert await runs.supervisor.stop_run(pid, requested_by="alice")
    events = await runs.wait(pid)
    assert [e.type for e in events][-2:] == ["StopRequested", "Killed"]
    assert events[-2].data["requested_by"] == "alice"
    assert (last(events).data["reason"], last(events).data["signal"]) == ("user", signal.SIGTERM)
    assert await no_survivors(pid)


async def test_a_script_ignoring_term_is_killed_after_the_grace(runs: Runs) -> None:
    pid = await runs.start("trap '' TERM; echo ready; sleep 1000")
    await runs.wait_for_output(pid, b"ready")
    started = time.monotonic()
    await runs.supervisor.stop_run(pid, grace_seconds=0.5)
    events = await runs.wait(pid)
    assert time.monotonic() - started >= 0.5
    assert (last(events).type, last(events).data["signal"]) == ("Killed", signal.SIGKILL)
    assert await no_survivors(pid)


async def test_escaped_descendants_are_killed_too(runs: Runs) -> None:
    """`setsid` and double forks leave the process group; the marker still finds them."""
    pid = await runs.start(
        "setsid sleep 1000 & (setsid bash -c 'sleep 1001 & sleep 1002' >/dev/null 2>&1 &) ; "
        "echo ready; sleep 1000"
    )
    await runs.wait_for_output(pid, b"ready")
    await asyncio.sleep(0.2)  # let the double fork finish leaving
    assert len(await asyncio.to_thread(find_marked, {str(pid)})) >= 4
    await runs.supervisor.stop_run(pid, grace_seconds=0.5)
    await runs.wait(pid)
    assert await no_survivors(pid, timeout=2)


async def test_descendants_die_when_the_main_process_exits(runs: Runs) -> None:
    """The run ends with its main process; what the children wrote until then is kept."""
    events = await runs.run("(echo from-child; sleep 1000) & sleep 0.2; echo main-done")
    assert output(events) == b"from-child\nmain-done\n"
    assert last(events).data["exit_code"] == 0
    assert await no_survivors(events[0].stream_id, timeout=2)


async def test_timeout_stops_the_run(runs: Runs) -> None:
    pid = await runs.start("sleep 1000", timeout_seconds=0.3)
    events = await runs.wait(pid)
    assert (last(events).type, last(events).data["reason"]) == ("Killed", "timeout")
    assert events[-2].type == "StopRequested"


async def test_run_timeout_overrides_the_command(runs: Runs) -> None:
    pid = await runs.start("sleep 1000", timeout_seconds=1000, run_timeout=0.2)
    events = await runs.wait(pid)
    assert last(events).data["reason"] == "timeout"


async def test_output_cap_truncates_and_keeps_running(runs: Runs) -> None:
    """Policy truncate: bytes beyond the cap are counted and dropped; the script goes on."""
    events = await runs.run("head -c 5000 /dev/zero; echo done >&2; exit 0", max_output_bytes=1000)
    assert len(output(events)) + len(output(events, "stderr")) == 1000
    truncated = next(e for e in events if e.type == "OutputTruncated")
    assert truncated.data == {"limit_bytes": 1000, "dropped_bytes": 4005, "policy": "truncate"}
    assert (last(events).type, last(events).data["exit_code"]) == ("Exited", 0)


async def test_a_command_may_keep_no_output_at_all(runs: Runs) -> None:
    """A cap of 0 is a cap (the command's own), not "unset": every byte is counted, none kept."""
    events = await runs.run("echo hello; echo there >&2", max_output_bytes=0)
    assert output(events) == output(events, "stderr") == b""
    truncated = next(e for e in events if e.type == "OutputTruncated")
    assert truncated.data == {"limit_bytes": 0, "dropped_bytes": 12, "policy": "truncate"}
    assert (last(events).type, last(events).data["exit_code"]) == ("Exited", 0)


@pytest.mark.parametrize("then", ["echo after", "true"])
async def test_a_run_whose_stream_another_writer_touched_is_still_closed(
    runs: Runs, database_url: str, tmp_path: Path, then: str
) -> None:
    """Another writer appends to a running run's stream (here: another node's store), so
    the actor's next append conflicts, whether that is more output or the run's end. The
    run still ends with its terminal event: never left "running" with nobody to close it."""
    gate = tmp_path / "go"
    pid = await runs.start(f'echo ready; while [ ! -e "{gate}" ]; do sleep 0.02; done; {then}')
    await runs.wait_for_output(pid, b"ready")
    other = await EventStore.open(database_url, node="other")
    try:
        head = await runs.store.stream_version(pid)
        foreign = [
            OutputChunk(stream="stderr", offset=i, length=1, captured_at=_now(), data=b"!")
            for i in range(2)  # two: the actor's versions are now off by more than its own
        ]
        await other.append(pid, foreign, expected_version=head)
    finally:
        await other.close()
    gate.touch()
    events = await runs.wait(pid)
    assert (last(events).type, last(events).data["exit_code"]) == ("Exited", 0)
    stored = await runs.store.pool.fetchval("SELECT status FROM processes WHERE id = $1", pid)
    assert stored == "succeeded"


async def test_output_cap_with_kill_policy(runs: Runs) -> None:
    events = await runs.run("yes", max_output_bytes=100_000, policy="kill")
    assert (last(events).type, last(events).data["reason"]) == ("Killed", "output_limit")
    assert len(output(events)) == 100_000
    assert any(e.type == "OutputTruncated" for e in events)


async def test_queue_beyond_max_running_is_fifo(store: EventStore, tmp_path: Path) -> None:
    """Runs beyond the limit wait as `queued`, start in order, and a full queue refuses."""
    config = RunnerConfig(node=TEST_NODE, runs_dir=tmp_path / "runs")
    supervisor = ProcessSupervisor(store, config, SupervisorLimits(max_running=1, max_queued=2))
    await supervisor.start()
    runs = Runs(store, supervisor)
    try:
        first = await runs.start("echo ready; sleep 1000")
        second = await runs.start("date +%s%N")
        third = await runs.start("date +%s%N")
        with pytest.raises(QueueFull):
            await runs.start("true")
        await runs.wait_for_output(first, b"ready")
        status = await store.pool.fetchval("SELECT status FROM processes WHERE id = $1", second)
        assert status == "queued"
        await supervisor.stop_run(first)
        a, b = await runs.wait(second), await runs.wait(third)
        assert int(output(a)) < int(output(b))
    finally:
        await supervisor.shutdown(grace_seconds=1)


async def test_a_queued_run_can_be_stopped(store: EventStore, tmp_path: Path) -> None:
    config = RunnerConfig(node=TEST_NODE, runs_dir=tmp_path / "runs")
    supervisor = ProcessSupervisor(store, config, SupervisorLimits(max_running=1))
    await supervisor.start()
    runs = Runs(store, supervisor)
    try:
        blocker = await runs.start("sleep 1000")
        waiting = await runs.start("echo never")
        assert await supervisor.stop_run(waiting)
        row = await store.pool.fetchrow("SELECT * FROM processes WHERE id = $1", waiting)
        assert row is not None
        assert (row["status"], row["stop_reason"], row["started_at"]) == ("killed", "user", None)
        await supervisor.stop_run(blocker, grace_seconds=0)
    finally:
        await supervisor.shutdown(grace_seconds=1)


async def test_a_stop_that_cannot_be_stored_leaves_the_run_queued(
    store: EventStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A queued run whose stop the store gave up on (database down, the request timed out)
    stays queued here, as its events say: it still starts, and can still be stopped."""
    config = RunnerConfig(node=TEST_NODE, runs_dir=tmp_path / "runs")
    supervisor = ProcessSupervisor(store, config, SupervisorLimits(max_running=1))
    await supervisor.start()
    runs = Runs(store, supervisor)
    try:
        blocker = await runs.start("echo ready; sleep 1000")
        waiting = await runs.start("echo ran")
        await runs.wait_for_output(blocker, b"ready")
        real_append = store.append

        async def give_up(*args: Any, **kwargs: Any) -> Any:
            monkeypatch.setattr(store, "append", real_append)  # only this once
            raise StoreUnavailable("the event log cannot store this now; nothing was stored")

        monkeypatch.setattr(store, "append", give_up)
        with pytest.raises(StoreUnavailable):
            await supervisor.stop_run(waiting)
        assert supervisor.queued_count == 1
        await supervisor.stop_run(blocker, grace_seconds=0)
        events = await runs.wait(waiting)
        assert (last(events).type, output(events)) == ("Exited", b"ran\n")
    finally:
        await supervisor.shutdown(grace_seconds=1)


async def test_shutdown_stops_runs_with_reason_shutdown(store: EventStore, tmp_path: Path) -> None:
    config = RunnerConfig(node=TEST_NODE, runs_dir=tmp_path / "runs")
    supervisor = ProcessSupervisor(store, config, SupervisorLimits(max_running=2))
    await supervisor.start()
    runs = Runs(store, supervisor)
    ids = [await runs.start("echo ready; sleep 1000") for _ in range(3)]
    await runs.wait_for_output(ids[0], b"ready")
    await supervisor.shutdown(grace_seconds=0.5)
    statuses = await store.pool.fetch(
        "SELECT status, stop_reason FROM processes WHERE id = ANY($1::uuid[])", ids
    )
    assert [(r["status"], r["stop_reason"]) for r in statuses] == [("killed", "shutdown")] * 3
    for pid in ids:
        assert await no_survivors(pid)


async def test_a_run_that_cannot_start_is_closed(store: EventStore, tmp_path: Path) -> None:
    """Spawn failures end the run with StartFailed instead of leaving it queued."""
    runs_dir = tmp_path / "runs"
    config = RunnerConfig(node=TEST_NODE, runs_dir=runs_dir)
    supervisor = ProcessSupervisor(store, config, SupervisorLimits())
    await supervisor.start()
    shutil.rmtree(runs_dir)
    runs_dir.write_text("a file where the runs' directories should go")
    try:
        events = await Runs(store, supervisor).run("true")
    finally:
        await supervisor.shutdown()
    assert (last(events).type, events[-1].data["reason"].startswith("[Errno")) == (
        "StartFailed",
        True,
    )
    row = await store.pool.fetchrow(
        "SELECT status FROM processes WHERE id = $1", events[0].stream_id
    )
    assert row is not None
    assert row["status"] == "failed"


def _open_pipes() -> list[str]:
    """The pipes this process holds open, one entry per descriptor."""
    pipes = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # the listing's own descriptor, closed since
            continue
        if target.startswith("pipe:"):
            pipes.append(target)
    return sorted(pipes)


@pytest.mark.parametrize(
    "failing", ["wake pipe", "actor start", "output pipe", "Popen", "pidfd_open"]
)
async def test_a_start_failing_half_way_leaves_no_descriptor_open(
    runs: Runs, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    """Starting a run takes steps that open descriptors: the wake-up pipe and the actor (in
    the launcher thread), the output pipes one after the other, the script, its pidfd (in
    the actor's). Whichever step fails, the run ends StartFailed and nothing stays open."""
    from shelltrail.actors.process_actor import ProcessActor

    calls: dict[str, int] = {}

    def fail_in(threads: str, real: Any, nth: int) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            thread = threading.current_thread().name
            if thread.startswith(threads):
                calls[thread] = calls.get(thread, 0) + 1
                if calls[thread] == nth:
                    raise OSError(errno.EMFILE, "Too many open files")
            return real(*args, **kwargs)

        return call

    await runs.run("true")  # the first run's pool connections and threads, before counting
    before = _open_pipes()
    if failing == "wake pipe":
        monkeypatch.setattr(os, "pipe2", fail_in("actor-launcher", os.pipe2, 1))
    elif failing == "actor start":  # its wake-up pipe made, no thread for it
        monkeypatch.setattr(ProcessActor, "start", fail_in("actor-launcher", ProcessActor.start, 1))
    elif failing == "output pipe":  # the second one, stderr's, once stdout's is made
        monkeypatch.setattr(os, "pipe2", fail_in("ProcessActor-", os.pipe2, 2))
    elif failing == "Popen":
        monkeypatch.setattr(subprocess, "Popen", fail_in("ProcessActor-", subprocess.Popen, 1))
    else:  # the script is running by then: it is killed and reaped
        monkeypatch.setattr(os, "pidfd_open", fail_in("ProcessActor-", os.pidfd_open, 1))
    pid = await runs.start("sleep 1000")
    events = await runs.wait(pid)
    assert (last(events).type, last(events).data["reason"]) == (
        "StartFailed",
        "[Errno 24] Too many open files",
    )
    assert await no_survivors(pid)
    monkeypatch.undo()
    for _ in range(200):  # the run's wake-up pipe is closed by the waker, just after its end
        if _open_pipes() == before:
            break
        await asyncio.sleep(0.01)
    assert _open_pipes() == before
    assert calls  # the failure was injected where the test meant it


async def test_restart_closes_unfinished_runs_as_lost(store: EventStore, tmp_path: Path) -> None:
    """Runs left running by a previous server are closed with Lost and their processes killed."""
    pid = uuid.uuid4()
    from shelltrail.domain import Queued, Started

    marker_env = {**os.environ, MARKER: str(pid)}
    # Spawned from another thread: the main thread's children are the reaper's to reap.
    orphan = await asyncio.to_thread(subprocess.Popen, ["sleep", "1000"], env=marker_env)
    await store.append(
        pid,
        [
            Queued(command_id=uuid.uuid4(), command_version=1, script_sha256="x", node=TEST_NODE),
            Started(pid=orphan.pid, pgid=orphan.pid, node=TEST_NODE, started_at=datetime.now(UTC)),
        ],
        expected_version=0,
    )
    other_node = uuid.uuid4()
    await store.append(
        other_node,
        [Queued(command_id=uuid.uuid4(), command_version=1, script_sha256="x", node="elsewhere")],
        expected_version=0,
    )
    config = RunnerConfig(node=TEST_NODE, runs_dir=tmp_path / "runs")
    leftover = tmp_path / "runs" / str(pid)
    leftover.mkdir(parents=True)
    (leftover / "partial-output.txt").write_text("half of something")
    supervisor = ProcessSupervisor(store, config, SupervisorLimits())
    await supervisor.start()
    try:
        assert not (tmp_path / "runs" / str(pid)).exists()
        assert await asyncio.to_thread(orphan.wait, 10) == -signal.SIGKILL
        rows = await store.pool.fetch("SELECT id, status FROM processes")
        assert {r["id"]: r["status"] for r in rows} == {pid: "lost", other_node: "queued"}
        lost = (await store.read_stream(pid))[-1]
        assert lost.data["last_status"] == "running"
    finally:
        await supervisor.shutdown()


_CRASHING_SERVER = """
import asyncio, sys, uuid
from datetime import UTC, datetime
from pathlib import Path
from shelltrail.actors import ProcessSupervisor, RunnerConfig, SupervisorLimits
from shelltrail.domain import CommandVersion
from shelltrail.eventstore import EventStore
from shelltrail.logs import configure_logging

async def main() -> None:
    configure_logging(level="WARNING")
    store = await EventStore.open(sys.argv[1], node="crash-node")
    config = RunnerConfig(node="crash-node", runs_dir=Path(sys.argv[2]))
    supervisor = ProcessSupervisor(store, config, SupervisorLimits())
    await supervisor.start()
    command = CommandVersion(
        command_id=uuid.uuid4(), version=1, name="n", description=None, timeout_seconds=None,
        env={}, max_output_bytes=None, output_limit_policy="truncate", created_at=datetime.now(UTC),
        script="sleep 1000 & setsid sleep 1000 & echo tick; wait",  # silent: no SIGPIPE
    )
    for _ in range(10):
        await supervisor.start_run(command)
    print("started", flush=True)
    await asyncio.sleep(1000)

asyncio.run(main())
"""


def _running(pid: int) -> bool:
    """Whether ``pid`` is alive (a zombie, killed and not yet reaped, is not)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != b"Z"


async def test_a_crashed_server_leaves_no_survivor_and_its_runs_are_lost(
    store: EventStore, database_url: str, tmp_path: Path
) -> None:
    """SIGKILL the server mid-run: its main processes die with it, and the restarted server
    kills what remains and closes all 10 runs with Lost."""
    server = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _CRASHING_SERVER,
        database_url,
        str(tmp_path / "runs"),
        stdout=asyncio.subprocess.PIPE,
    )
    assert server.stdout is not None
    assert await asyncio.wait_for(server.stdout.readline(), 60) == b"started\n"
    ids = [r["id"] for r in await store.pool.fetch("SELECT id FROM processes")]
    assert len(ids) == 10

    async def all_ticking() -> None:
        for pid in ids:
            while not await store.pool.fetchval(  # noqa: ASYNC110 -- polls the database
                "SELECT stdout_bytes > 0 FROM processes WHERE id = $1", pid
            ):
                await asyncio.sleep(0.02)

    await asyncio.wait_for(all_ticking(), 30)
    mains = [r["pid"] for r in await store.pool.fetch("SELECT pid FROM processes")]
    assert all(mains)
    assert all(_running(pid) for pid in mains)
    server.kill()
    await server.wait()
    # The parent-death signal: the main processes die with the server, before any restart.
    deadline = time.monotonic() + 10
    while any(_running(pid) for pid in mains):
        assert time.monotonic() < deadline, "the runs' main processes outlived the server"
        await asyncio.sleep(0.02)

    config = RunnerConfig(node="crash-node", runs_dir=tmp_path / "runs")
    restarted = ProcessSupervisor(store, config, SupervisorLimits())
    await restarted.start()
    try:
        rows = await store.pool.fetch("SELECT status FROM processes")
        assert [r["status"] for r in rows] == ["lost"] * 10
        for pid in ids:
            assert await no_survivors(pid, timeout=2)
    finally:
        await restarted.shutdown()


async def test_a_failing_actor_still_closes_its_run(
    runs: Runs, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug inside the actor kills the process tree and records a terminal event."""
    from shelltrail.actors import process_actor

    def broken(self: object, buffer: object) -> None:
        raise RuntimeError("a bug while reading output")

    monkeypatch.setattr(process_actor.ProcessActor, "_read", broken)
    pid = await runs.start("sleep 1000 & echo boom; wait")
    events = await runs.wait(pid)
    assert last(events).type == "Lost"
    assert await no_survivors(pid)
    row = await runs.store.pool.fetchrow("SELECT status FROM processes WHERE id = $1", pid)
    assert row is not None
    assert row["status"] == "lost"


async def test_runs_one_after_another_reuse_one_actor_thread(runs: Runs) -> None:
    """An ended run's thread runs the next actor: no thread started and ended per run."""
    threads = runs.supervisor.actor_threads
    before = threads.started
    for _ in range(3):
        pid = await runs.start("echo $$")
        events = await runs.wait(pid)
        assert events[-1].type == "Exited"
        for _ in range(1000):  # the actor's loop ends just after its last append is handed on
            if threads.idle >= 1:
                break
            await asyncio.sleep(0.005)
        assert threads.idle >= 1
    assert threads.started - before == 1


async def test_no_zombie_is_left_behind(runs: Runs) -> None:
    """Orphans the runs left, once killed, are reaped by the server (their subreaper)."""
    from shelltrail.actors.tree import _zombie_children

    pid = await runs.start("sleep 1000 & setsid sleep 1000 & echo ready")
    await runs.wait(pid)
    assert await no_survivors(pid)
    for _ in range(100):
        if not await asyncio.to_thread(_zombie_children):
            break
        await asyncio.sleep(0.05)
    assert await asyncio.to_thread(_zombie_children) == []


async def test_a_flooding_script_is_held_back_by_the_writer(
    database_url: str, tmp_path: Path
) -> None:
    """Back-pressure: what waits for the writer stays under its bound, and nothing is lost."""
    from shelltrail.eventstore import WriterLimits

    limit = 256 * 1024
    store = await EventStore.open(
        database_url, node=TEST_NODE, limits=WriterLimits(max_pending_bytes=limit)
    )
    supervisor = ProcessSupervisor(
        store, RunnerConfig(node=TEST_NODE, runs_dir=tmp_path / "runs"), SupervisorLimits()
    )
    await supervisor.start()
    try:
        runs = Runs(store, supervisor)
        pid = await runs.start("head -c 30000000 /dev/zero")
        peak = 0
        ended = asyncio.ensure_future(supervisor.wait_finished(pid))
        while not ended.done():
            peak = max(peak, store.writer.pending_bytes)
            await asyncio.sleep(0.001)
        events = await runs.wait(pid)
        assert len(output(events)) == 30_000_000
        # One append may be admitted into an empty queue whatever its size: what one read
        # of a flooding run's grown pipe brings, a MiB.
        assert 0 < peak <= limit + _FLOOD_PIPE_BYTES
    finally:
        await supervisor.shutdown()
        await store.close()


async def test_each_run_starts_in_an_empty_directory_and_runs_of_a_script_share_its_file(
    store: EventStore, tmp_path: Path
) -> None:
    """The run's directory is its working directory and HOME, empty, removed at its end; the
    script is one read-only file for all its runs, written fresh by each server start, that
    each run gets under a name of its own."""
    runs_dir = tmp_path / "runs"
    script = 'echo "$PWD $HOME $0"; ls -A; stat -c "%a %i" "$0"'
    scripts = ScriptFiles.of_node(runs_dir, TEST_NODE).directory
    scripts.mkdir(parents=True)
    shared = scripts / f"{hashlib.sha256(script.encode()).hexdigest()}.sh"
    shared.write_text("echo a file a crashed server may have left half-written")
    config = RunnerConfig(node=TEST_NODE, runs_dir=runs_dir)
    supervisor = ProcessSupervisor(store, config, SupervisorLimits())
    await supervisor.start()
    runs = Runs(store, supervisor)
    try:
        first, second = await asyncio.gather(runs.run(script), runs.run(script))
    finally:
        await supervisor.shutdown()
    inodes = set()
    for events in (first, second):
        process_id = events[0].stream_id
        rundir = runs_dir.absolute() / str(process_id)
        where, file = output(events).decode().splitlines()  # `ls -A` printed nothing
        assert where.split() == [str(rundir), str(rundir), str(scripts / f"{process_id}.sh")]
        mode, inode = file.split()
        assert mode == "400"
        inodes.add(int(inode))
        assert not rundir.exists()
        assert not (scripts / f"{process_id}.sh").exists()
    assert inodes == {shared.stat().st_ino}
    assert shared.read_text() == script


async def test_a_script_removing_or_changing_its_own_file_changes_no_other_run(
    runs: Runs,
) -> None:
    removes = 'echo "ran $1"; rm -f "$0"'
    changes = 'echo "ran $1"; chmod u+w "$0"; echo "echo changed" > "$0"'
    for script in (removes, changes):
        outputs = [output(await runs.run(script, str(n))) for n in range(2)]
        assert outputs == [b"ran 0\n", b"ran 1\n"]


async def test_a_relative_runs_directory_works(
    store: EventStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The default data directory is relative (`.shelltrail`): scripts must still be found."""
    monkeypatch.chdir(tmp_path)
    config = RunnerConfig(node=TEST_NODE, runs_dir=Path("relative/runs"))
    supervisor = ProcessSupervisor(store, config, SupervisorLimits())
    await supervisor.start()
    try:
        events = await Runs(store, supervisor).run("echo found; exit 5")
    finally:
        await supervisor.shutdown()
    assert output(events) == b"found\n"
    assert last(events).data["exit_code"] == 5


def test_the_search_below_given_processes_finds_and_kills_only_marked_ones() -> None:
    """`descendants` walks a process tree; `kill_marked(among=…)` kills inside it alone."""
    mine, other = str(uuid.uuid4()), str(uuid.uuid4())
    tree = "sleep 1000 & (sleep 1001 & wait) & echo ready; wait"

    def spawn(marker: str) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            ["bash", "-c", tree],
            env={"PATH": os.environ["PATH"], MARKER: marker},
            stdout=subprocess.PIPE,
        )
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"ready\n"
        return proc

    def whole_tree(pid: int) -> list[int]:
        """bash, its sleep, the subshell and the subshell's sleep, once all four exist."""
        deadline = time.monotonic() + 10
        while len(below := descendants([pid])) < 4:
            assert time.monotonic() < deadline, below
            time.sleep(0.01)
        return below

    target, bystander = spawn(mine), spawn(other)
    try:
        bystanders = whole_tree(bystander.pid)
        below = whole_tree(target.pid)
        assert below[0] == target.pid
        assert set(find_marked({mine}, among=below)) == set(below)
        assert find_marked({other}, among=below) == {}

        killed = kill_marked({mine, other}, among=lambda: descendants([target.pid]))
        assert killed >= 4
        assert target.wait(10) == -signal.SIGKILL
        assert bystander.poll() is None  # not below the given process: untouched
        assert set(find_marked({other})) == set(bystanders)
    finally:
        for proc in (target, bystander):
            if proc.poll() is None:
                kill_marked({mine, other})
                proc.wait(10)
            assert proc.stdout is not None
            proc.stdout.close()
