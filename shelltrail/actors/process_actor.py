"""One pykka actor per run: it owns the run's subprocess from spawn to reap.

Everything in this module runs in the actor's own thread. The actor never touches asyncpg
or aiohttp; it hands events to a thread-safe sink (the event store's writer), which blocks
it when the writer is behind, so the script blocks on its full pipe (back-pressure).

The actor reacts to its mailbox and to its file descriptors: while the run lives it loops
in ``select`` over the two output pipes, a pidfd that becomes readable when the main
process exits, and a wake-up pipe written whenever a message is told to it.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import fcntl
import os
import selectors
import shutil
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Protocol

import pykka
import structlog

from shelltrail.actors.rundirs import remove_rundir
from shelltrail.actors.scripts import ScriptFiles
from shelltrail.actors.threads import ActorThreads
from shelltrail.actors.tree import MARKER, OrphanReaper, Sweeper, signal_group
from shelltrail.domain import (
    Exited,
    Killed,
    Lost,
    OutputChunk,
    OutputTruncated,
    ProcessEvent,
    Started,
    StartFailed,
    StopRequested,
)
from shelltrail.domain.events import OutputLimitPolicy, OutputStream, StopReason

DEFAULT_PATH: Final = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_READ_SIZE: Final = 65536
#: A pipe found full is grown to this (Linux's limit for unprivileged processes) and read
#: this much at a time: a run printing as fast as it can then costs one read, one wake-up
#: and one append per MiB instead of per 64 KiB.
_FLOOD_PIPE_BYTES: Final = 1024 * 1024
#: Pipes grown at once, server-wide. Each costs a MiB that its actor may hold beyond the
#: writer's bound while it waits to append, and 256 pages of the user's pipe quota.
_GROWN_PIPES: Final = threading.BoundedSemaphore(16)
#: The longest single wait in the actor's loop, in seconds (see ``_next_wakeup``).
_LONGEST_WAIT: Final = 3600.0
_STREAMS: Final[tuple[OutputStream, ...]] = ("stdout", "stderr")
#: The wake-up pipe is read this much at a time; one byte is written per message told.
_WAKE_READ: Final = 4096


class EventSink(Protocol):
    """Where an actor's events go: ``EventStore.append_from_thread``."""

    def __call__(
        self,
        stream_id: uuid.UUID,
        events: Sequence[ProcessEvent],
        *,
        expected_version: int | None,
    ) -> concurrent.futures.Future[Any]: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class RunSpec:
    """Everything needed to run one queued process."""

    process_id: uuid.UUID
    script: str
    args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    timeout_seconds: float | None = None
    max_output_bytes: int = 1024**3
    output_limit_policy: OutputLimitPolicy = "truncate"
    #: The stream's version when the actor takes over (its Queued event and any after it).
    version: int = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class RunnerConfig:
    node: str
    runs_dir: Path
    keep_workdirs: bool = False
    stop_grace_seconds: float = 10.0
    chunk_bytes: int = 65536
    #: Bytes wait at most this long before they are written, so a trickle shows up quickly.
    flush_interval: float = 0.015
    #: After the main process ends, how long to read what the pipes still hold.
    drain_timeout: float = 2.0
    path: str = DEFAULT_PATH
    #: The soft limit on open files the scripts get, where the server raised its own.
    open_files_limit: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Stop:
    """Ask the run to stop: ``signal`` to its process group, SIGKILL after ``grace_seconds``."""

    signal: int = signal.SIGTERM
    grace_seconds: float = 10.0
    reason: StopReason = "user"
    requested_by: str | None = None


class _Pump:
    """Internal: keep serving the file descriptors."""


@dataclass(slots=True)
class _StreamBuffer:
    name: OutputStream
    fd: int
    offset: int = 0
    pending: bytearray = field(default_factory=bytearray)
    first_byte_at: float | None = None
    captured_at: datetime | None = None
    open: bool = True  # no end of file read yet
    closed: bool = False  # the descriptor
    read_size: int = _READ_SIZE
    may_grow: bool = True  # not tried yet
    grown: bool = False  # holds one of _GROWN_PIPES


class ProcessActor(pykka.ThreadingActor):
    """Runs one script and records its life as events."""

    def __init__(
        self,
        spec: RunSpec,
        config: RunnerConfig,
        *,
        sink: EventSink,
        sweeper: Sweeper,
        reaper: OrphanReaper,
        scripts: ScriptFiles,
        threads: ActorThreads,
        wake_fd: int,
        on_finished: Callable[[uuid.UUID, concurrent.futures.Future[Any] | None], None],
    ) -> None:
        super().__init__()
        self._threads = threads
        self._spec = spec
        self._config = config
        self._sink = sink
        self._sweeper = sweeper
        self._reaper = reaper
        self._scripts = scripts
        self._script: Path | None = None  # acquired from ``scripts``
        self._wake_fd = wake_fd
        self._on_finished = on_finished
        self._marker = str(spec.process_id)
        self._log = structlog.get_logger(__name__).bind(process_id=self._marker)
        self._version = spec.version
        self._append_failed = False
        self._last_append: concurrent.futures.Future[Any] | None = None
        # Absolute: the script is started in it.
        self._rundir = config.runs_dir.absolute() / self._marker
        self._proc: subprocess.Popen[bytes] | None = None
        self._pidfd = -1
        self._selector: selectors.PollSelector | None = None
        self._streams: dict[int, _StreamBuffer] = {}
        self._stored = 0
        self._dropped = 0
        self._stopping: Stop | None = None
        self._timeout_at: float | None = None
        self._kill_at: float | None = None
        self._done = False

    # --- pykka hooks ----------------------------------------------------------------------

    def _start_actor_loop(self) -> None:
        # pykka's own starts a new thread per actor; this hook is how an actor class chooses
        # where its loop runs (ADR 0012).
        try:
            self._threads.run(
                self._actor_loop,
                name=f"ProcessActor-{self._marker[:8]}",
                reusable=self._reaped,
            )
        except BaseException:
            pykka.ActorRegistry.unregister(self.actor_ref)  # registered by start(), never run
            raise

    def _reaped(self) -> bool:
        """Whether the script this actor spawned (if any) has been reaped. If not (a
        failure path gave up on it), the actor's thread must end rather than serve the next
        run: its end sends the script the parent-death signal."""
        return self._proc is None or self._proc.returncode is not None

    def on_start(self) -> None:
        # pykka skips on_failure and on_stop when on_start raises: guard everything here.
        try:
            self._spawn()
        except Exception as exc:  # noqa: BLE001 -- any failure to start ends the run
            self._log.warning("run could not start", error=str(exc))
            try:
                self._close_fds()
                if self._proc is not None:  # spawned, then failed: take it down again
                    signal_group(self._proc.pid, signal.SIGKILL)
                    self._proc.wait()
                    self._reaper.release(self._proc.pid)
                self._emit([StartFailed(reason=str(exc), failed_at=_now())], last=True)
            finally:
                self._conclude()
            return
        self.actor_ref.tell(_Pump())

    def on_receive(self, message: Any) -> None:
        if self._done:
            return
        if isinstance(message, Stop):
            self._request_stop(message)
            self._serve()
        elif isinstance(message, _Pump):
            self._serve()

    def on_failure(self, exception_type: Any, exception_value: Any, traceback: Any) -> None:
        # A bug in this actor must not leave the run "running" or its processes alive.
        self._log.error("process actor failed", error=repr(exception_value))
        if self._done:
            return
        with contextlib.suppress(Exception):
            if self._proc is not None and self._proc.returncode is None:
                signal_group(self._proc.pid, signal.SIGKILL)
                self._proc.wait(10)  # reap it: no zombie, no stale Popen
                self._reaper.release(self._proc.pid)
        with contextlib.suppress(Exception):
            self._sweeper.sweep(self._marker)
        # Stopping anyway: say so with its reason. Otherwise the run lost its owner.
        ending: ProcessEvent = (
            Killed(signal=signal.SIGKILL, reason=self._stopping.reason, finished_at=_now())
            if self._stopping is not None
            else Lost(node=self._config.node, last_status="running", detected_at=_now())
        )
        with contextlib.suppress(Exception):
            self._emit([ending], last=True)
        self._close_fds()
        self._conclude(stop=False)  # pykka is already stopping this actor

    # --- starting -------------------------------------------------------------------------

    def _spawn(self) -> None:
        spec, config = self._spec, self._config
        workdir = self._rundir
        os.mkdir(workdir)
        script = self._script = self._scripts.acquire(spec.script, spec.process_id)
        env = self._scripts.environment(
            {
                "PATH": config.path,
                "HOME": str(workdir),
                "LANG": "C.UTF-8",
                **spec.env,
                MARKER: self._marker,
            }
        )
        argv = [*_pdeathsig_prefix(), _BASH, "--noprofile", "--norc", str(script), *spec.args]
        # The output pipes are made here rather than by Popen, whose file objects for them
        # (never used: the actor reads the descriptors) cost ten system calls per run.
        write_ends: list[int] = []
        try:
            for name in _STREAMS:
                read_end, write_end = os.pipe2(os.O_CLOEXEC)
                write_ends.append(write_end)
                self._streams[read_end] = _StreamBuffer(name=name, fd=read_end)
            with self._reaper.spawning():
                proc = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=write_ends[0],
                    stderr=write_ends[1],
                    cwd=workdir,
                    env=env,
                    start_new_session=True,  # its own session and process group, no preexec_fn
                )
                self._proc = proc  # from here on, a failure kills and reaps it (on_start)
                self._reaper.own(proc.pid)
        finally:
            for write_end in write_ends:  # the script holds its own copies
                os.close(write_end)
        started_at = _now()
        self._pidfd = os.pidfd_open(proc.pid)
        # poll, not epoll: registering, unregistering and closing cost no system call, and
        # each one an actor makes is a wait for the GIL when a thousand actors are busy
        # (docs/benchmarks.md). Four descriptors cost poll nothing more than epoll.
        self._selector = selectors.PollSelector()
        for fd in self._streams:
            self._selector.register(fd, selectors.EVENT_READ)
        self._selector.register(self._pidfd, selectors.EVENT_READ)
        self._selector.register(self._wake_fd, selectors.EVENT_READ)
        if spec.timeout_seconds is not None:
            self._timeout_at = time.monotonic() + spec.timeout_seconds
        self._emit([Started(pid=proc.pid, pgid=proc.pid, node=config.node, started_at=started_at)])
        self._log.debug("run started", pid=proc.pid)

    # --- running --------------------------------------------------------------------------

    def _serve(self) -> None:
        """Serve the descriptors until a message waits in the mailbox or the run ends."""
        assert self._selector is not None
        while not self._done:
            events = self._selector.select(self._next_wakeup())
            woken = False
            main_exited = False
            for key, _ in events:
                fd = key.fd
                if fd == self._wake_fd:
                    _drain_wakeups(fd)
                    woken = True
                elif fd == self._pidfd:
                    main_exited = True
                else:
                    self._read(self._streams[fd])
            self._check_deadlines()
            if main_exited:
                self._finish()
                return
            if woken:
                self.actor_ref.tell(_Pump())  # after the waiting message(s)
                return

    def _next_wakeup(self) -> float | None:
        now = time.monotonic()
        deadlines = [
            b.first_byte_at + self._config.flush_interval
            for b in self._streams.values()
            if b.first_byte_at is not None
        ]
        if self._timeout_at is not None and self._stopping is None:
            deadlines.append(self._timeout_at)
        if self._kill_at is not None:
            deadlines.append(self._kill_at)
        if not deadlines:
            return None
        # poll takes at most 2**31 - 1 ms (about 24.8 days); a longer timeout wakes up
        # early, finds nothing due, and waits again.
        return min(max(0.0, min(deadlines) - now), _LONGEST_WAIT)

    def _read(self, buffer: _StreamBuffer) -> None:
        try:
            data = os.read(buffer.fd, buffer.read_size)
        except BlockingIOError:
            return
        if len(data) >= _READ_SIZE:  # the script writes faster than it is read
            if buffer.may_grow:
                _grow_pipe(buffer)
            if buffer.grown:
                buffer.read_size = _FLOOD_PIPE_BYTES
        else:  # back to small reads: each read of a MiB allocates (and maps) a MiB
            buffer.read_size = _READ_SIZE
        if not data:
            buffer.open = False
            assert self._selector is not None
            self._selector.unregister(buffer.fd)
            return
        room = self._spec.max_output_bytes - self._stored
        if len(data) > room:
            kept = max(room, 0)
            self._dropped += len(data) - kept
            data = data[:kept]
            if (
                self._spec.output_limit_policy == "kill"
                and self._stopping is None
                and not self._main_exited()  # what is drained after the end is only dropped
            ):
                self._request_stop(
                    Stop(signal=signal.SIGKILL, grace_seconds=0, reason="output_limit")
                )
        if not data:
            return
        self._stored += len(data)
        if buffer.first_byte_at is None:
            buffer.first_byte_at = time.monotonic()
            buffer.captured_at = _now()
        buffer.pending += data
        del data  # not held while the flush may wait for the writer
        if len(buffer.pending) >= self._config.chunk_bytes:
            self._flush([buffer])

    def _flush(self, buffers: Sequence[_StreamBuffer]) -> None:
        chunks: list[ProcessEvent] = []
        size = self._config.chunk_bytes
        for buffer in buffers:
            if not buffer.pending:
                continue
            assert buffer.captured_at is not None
            with memoryview(buffer.pending) as pending:  # pieces are the only copies
                for start in range(0, len(pending), size):
                    piece = bytes(pending[start : start + size])
                    chunks.append(
                        OutputChunk(
                            stream=buffer.name,
                            offset=buffer.offset,
                            length=len(piece),
                            captured_at=buffer.captured_at,
                            data=piece,
                        )
                    )
                    buffer.offset += len(piece)
            buffer.pending.clear()
            buffer.first_byte_at = None
            buffer.captured_at = None
        if chunks:
            self._emit(chunks)

    def _check_deadlines(self) -> None:
        now = time.monotonic()
        due = [
            b
            for b in self._streams.values()
            if b.first_byte_at is not None and now >= b.first_byte_at + self._config.flush_interval
        ]
        if due:
            self._flush(due)
        if self._timeout_at is not None and self._stopping is None and now >= self._timeout_at:
            self._request_stop(
                Stop(grace_seconds=self._config.stop_grace_seconds, reason="timeout")
            )
        if self._kill_at is not None and now >= self._kill_at:
            self._kill_at = None
            assert self._proc is not None
            signal_group(self._proc.pid, signal.SIGKILL)

    def _main_exited(self) -> bool:
        """Whether the main process has ended: reaped, or exited and not yet reaped (its
        pidfd may be ready in the same wake-up as the pipe being read)."""
        if self._proc is None or self._proc.returncode is not None:
            return True
        if self._pidfd < 0:
            return False
        try:
            ended = os.waitid(os.P_PIDFD, self._pidfd, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return True
        return ended is not None

    def _request_stop(self, stop: Stop) -> None:
        assert self._proc is not None
        if self._stopping is not None:
            # Already stopping: only a harder signal changes anything.
            if stop.signal == signal.SIGKILL:
                signal_group(self._proc.pid, signal.SIGKILL)
            return
        self._stopping = stop
        self._emit(
            [
                StopRequested(
                    reason=stop.reason,
                    signal=stop.signal,
                    grace_seconds=stop.grace_seconds,
                    requested_by=stop.requested_by,
                )
            ]
        )
        signal_group(self._proc.pid, stop.signal)
        if stop.signal != signal.SIGKILL:
            self._kill_at = time.monotonic() + stop.grace_seconds

    # --- ending ---------------------------------------------------------------------------

    def _finish(self) -> None:
        proc = self._proc
        assert proc is not None
        _, status, usage = os.wait4(proc.pid, 0)
        self._reaper.release(proc.pid)
        proc.returncode = os.waitstatus_to_exitcode(status)
        # The run ends with its main process: nothing it started may outlive it.
        signal_group(proc.pid, signal.SIGKILL)
        self._sweeper.sweep(self._marker)
        self._drain_pipes()
        self._flush(list(self._streams.values()))
        events: list[ProcessEvent] = []
        if self._dropped:
            events.append(
                OutputTruncated(
                    limit_bytes=self._spec.max_output_bytes,
                    dropped_bytes=self._dropped,
                    policy=self._spec.output_limit_policy,
                )
            )
        exit_code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else None
        ended_by = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
        resources = {
            "cpu_user_seconds": round(usage.ru_utime, 6),
            "cpu_system_seconds": round(usage.ru_stime, 6),
            "max_rss_kib": int(usage.ru_maxrss),
        }
        if self._stopping is not None:
            events.append(
                Killed(
                    signal=ended_by if ended_by is not None else self._stopping.signal,
                    reason=self._stopping.reason,
                    exit_code=exit_code,
                    finished_at=_now(),
                    **resources,  # type: ignore[arg-type]
                )
            )
        else:
            events.append(
                Exited(exit_code=exit_code, signal=ended_by, finished_at=_now(), **resources)  # type: ignore[arg-type]
            )
        self._emit(events, last=True)
        self._close_fds()
        self._log.debug("run ended", exit_code=exit_code, signal=ended_by)
        self._conclude()

    def _drain_pipes(self) -> None:
        """Read what the pipes still hold; the writers are dead, so EOF comes quickly."""
        assert self._selector is not None
        deadline = time.monotonic() + self._config.drain_timeout
        with contextlib.suppress(KeyError):
            self._selector.unregister(self._pidfd)
        with contextlib.suppress(KeyError):
            self._selector.unregister(self._wake_fd)
        while any(b.open for b in self._streams.values()):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._log.warning("output pipes still open after the run ended; closing them")
                break
            for key, _ in self._selector.select(remaining):
                self._read(self._streams[key.fd])

    def _conclude(self, *, stop: bool = True) -> None:
        """Clean up, hand the supervisor the last append (it waits for it), stop.

        The actor does not wait for its last events to be committed: its thread and slot
        are free at once, and the supervisor reports the run ended once they are stored.
        """
        self._done = True
        try:
            if self._script is not None:
                self._scripts.release(self._script)
                self._script = None
            if not self._config.keep_workdirs:
                error = remove_rundir(self._rundir)
                if error is not None:
                    self._log.warning("its directory could not be removed", error=str(error))
        finally:
            self._on_finished(self._spec.process_id, self._last_append)
            if stop:
                self.stop()

    def _close_fds(self) -> None:
        if self._selector is not None:
            self._selector.close()
            self._selector = None
        if self._pidfd >= 0:
            os.close(self._pidfd)
            self._pidfd = -1
        for buffer in self._streams.values():
            if not buffer.closed:
                buffer.closed = True
                os.close(buffer.fd)
            _release_pipe(buffer)

    def _emit(self, events: Sequence[ProcessEvent], *, last: bool = False) -> None:
        """Hand events to the writer; blocks while the writer is behind.

        Each append expects the version the actor's own appends lead to, but the one that
        ends the run (``last``), and those made after an append was seen to fail: once the
        versions may be off, the run must still be closed, so they go at the stream's head.
        What this rescues is the end: output after a lost chunk is refused by the offset
        check, and appends already queued keep their versions. The event checks refuse a
        second end if something else closed the run meanwhile.
        """
        expected = None if last or self._append_failed else self._version
        future = self._sink(self._spec.process_id, events, expected_version=expected)
        self._version += len(events)
        future.add_done_callback(self._check_append)
        self._last_append = future

    def _check_append(self, future: concurrent.futures.Future[Any]) -> None:
        """Runs where the append resolved (the event loop): note and log, never block."""
        exc = future.exception()
        if exc is not None:
            self._append_failed = True
            self._log.error("appending the run's events failed", error=str(exc))


def _grow_pipe(buffer: _StreamBuffer) -> None:
    """The pipe was full: make it hold a MiB, if the budget and the kernel allow it (once)."""
    buffer.may_grow = False
    if not _GROWN_PIPES.acquire(blocking=False):
        return  # enough pipes are grown: this one keeps 64 KiB
    try:
        fcntl.fcntl(buffer.fd, fcntl.F_SETPIPE_SZ, _FLOOD_PIPE_BYTES)
    except OSError:  # e.g. over the user's pipe quota (pipe-user-pages-soft)
        _GROWN_PIPES.release()
        return
    buffer.grown = True


def _release_pipe(buffer: _StreamBuffer) -> None:
    """Give the budget back once the grown pipe is closed; idempotent."""
    if buffer.grown:
        buffer.grown = False
        _GROWN_PIPES.release()


def _now() -> datetime:
    return datetime.now(UTC)


def _drain_wakeups(fd: int) -> None:
    """Empty the wake-up pipe. A short read found it empty; a byte written after that makes
    it readable again for the next ``select``."""
    with contextlib.suppress(BlockingIOError):
        while len(os.read(fd, _WAKE_READ)) == _WAKE_READ:
            pass


_SETPRIV = shutil.which("setpriv")
# Resolved once from the server's PATH: a run's own PATH must not choose its interpreter.
_BASH = shutil.which("bash") or "bash"


def _pdeathsig_prefix() -> list[str]:
    """Make the script's main process die with the server, without a ``preexec_fn``."""
    return [_SETPRIV, "--pdeathsig", "KILL", "--"] if _SETPRIV else []


if _SETPRIV is None:
    structlog.get_logger(__name__).warning(
        "setpriv (util-linux) not found: scripts will not die with a crashed server; "
        "they are killed when it restarts"
    )
