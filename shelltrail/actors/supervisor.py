"""The façade the HTTP layer calls: start, stop and shut down runs.

Call every coroutine here on the event loop. Nothing here waits on an actor: the loop tells
actors what to do, and actors report back through calls run on the loop (``_LoopCalls``).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import functools
import os
import queue
import signal as signals
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import pykka
import structlog

from shelltrail.actors.process_actor import ProcessActor, RunnerConfig, RunSpec, Stop
from shelltrail.actors.rundirs import remove_rundir
from shelltrail.actors.scripts import ScriptFiles
from shelltrail.actors.threads import ActorThreads
from shelltrail.actors.tree import OrphanReaper, Sweeper, become_subreaper, kill_marked
from shelltrail.domain import (
    CommandVersion,
    Killed,
    Lost,
    ProcessEvent,
    Queued,
    StartFailed,
    StopRequested,
    script_sha256,
)
from shelltrail.domain.events import StopReason
from shelltrail.eventstore import EventStore, EventStoreError, StoredEvent

log = structlog.get_logger(__name__)

_REAP_INTERVAL: Final = 1.0


class QueueFull(Exception):
    """Too many runs are waiting; the caller should retry later."""

    def __init__(self, retry_after: int) -> None:
        self.retry_after = retry_after
        super().__init__("too many runs are queued; retry later")


class ShuttingDown(Exception):
    """The server is shutting down and starts no more runs."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SupervisorLimits:
    max_running: int = 256
    max_queued: int = 10_000
    max_output_bytes: int = 1024**3
    shutdown_grace_seconds: float = 5.0


class _Waker:
    """Writes and closes the actors' wake-up pipes in a thread of its own, for the loop.

    A write to a run's wake-up pipe wakes its actor, which then wants the GIL. The loop
    thread lets go of the GIL for the write and then waits to get it back: 0.7 ms per
    write on average while 1,000 runs were being stopped, during which no request was
    served (closing the pipe, 0.1 ms). The loop only queues the work, which is no system
    call; this thread does it, in order. (Not a ``ThreadPoolExecutor``: its ``submit`` takes
    a lock that its worker takes too, and a loop blocked on it lets go of the GIL.)
    """

    def __init__(self) -> None:
        self._work: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name="actor-waker", daemon=True)
        self._thread.start()

    def later(self, work: Callable[[], None]) -> None:
        self._work.put(work)

    def close(self) -> None:
        """Do the work queued so far, then end the thread."""
        self._work.put(None)
        self._thread.join()

    def _serve(self) -> None:
        while (work := self._work.get()) is not None:
            try:
                work()
            except Exception:
                log.exception("writing or closing a wake-up pipe failed")


class _LoopCalls:
    """Calls from any thread, run on the loop, with one wake-up of the loop for as many as
    arrive before it runs them.

    ``loop.call_soon_threadsafe`` writes to the loop's wake-up socket on every call, even
    from the loop's own thread: a system call, and in an actor's thread a wait for the GIL
    after it when many actors are busy. Runs that end together (a mass stop, hundreds of
    short runs a second) share one write here, and the loop's own calls make none.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._loop_thread = threading.get_ident()  # made on the loop (``start``)
        self._lock = threading.Lock()
        self._calls: list[Callable[[], None]] = []

    def call(self, call: Callable[[], None]) -> None:
        """Run ``call`` on the loop, soon; any thread."""
        if threading.get_ident() == self._loop_thread:
            self._loop.call_soon(call)
            return
        with self._lock:
            self._calls.append(call)
            if len(self._calls) > 1:
                return  # the loop has yet to run the first: it runs this one too
        try:
            self._loop.call_soon_threadsafe(self._run)
        except BaseException:  # e.g. the loop is closed: this call fails, and so will the next
            with self._lock:
                self._calls.clear()
            raise

    def _run(self) -> None:  # on the loop
        with self._lock:
            calls, self._calls = self._calls, []
        for call in calls:
            try:
                call()
            except Exception:  # as the loop would: log it, and run the others
                log.exception("a call from an actor's thread failed")


class _RunHandle:
    """An actor and the write end of the wake-up pipe that interrupts its ``select``.

    The launcher thread makes the pipe and starts the actor, so messages told before then
    wait here and are delivered by :meth:`attach`. Thread-safe.
    """

    def __init__(self, waker: _Waker) -> None:
        self._wake_w = -1  # set by attach
        self._waker = waker
        self._lock = threading.Lock()
        self._actor_ref: pykka.ActorRef[ProcessActor] | None = None
        self._early: list[object] = []
        self._closed = False

    def attach(self, actor_ref: pykka.ActorRef[ProcessActor], wake_w: int) -> None:
        """Runs in the launcher thread, once the actor has started. The handle owns
        ``wake_w`` from now on: :meth:`close` closes it, or closes it now if it came first
        (a run that ended before this was called)."""
        with self._lock:
            self._actor_ref = actor_ref
            self._wake_w = wake_w
            closed = self._closed
            early, self._early = self._early, []
        if closed:
            # Nothing was ever queued to write to it, and the waker may have ended already
            # (a shutdown just after a run that failed at once): closed here.
            os.close(wake_w)
            return
        for message in early:
            self.tell(message)

    def tell(self, message: object) -> None:
        """Put ``message`` in the actor's inbox, then have the waker wake the actor."""
        with self._lock:
            if self._actor_ref is None:
                self._early.append(message)
                return
            if self._closed:
                return
            with contextlib.suppress(pykka.ActorDeadError):
                self._actor_ref.tell(message)
        self._waker.later(self._write_wakeup)

    def _write_wakeup(self) -> None:
        """Runs in the waker's thread: one byte on the wake-up pipe, unless it is closed."""
        with self._lock:
            if self._closed:
                return
            # A full pipe already holds a wake-up; a broken one means the run has ended.
            with contextlib.suppress(BlockingIOError, OSError):
                os.write(self._wake_w, b"\0")

    def close(self) -> None:
        """No more wake-ups; the waker closes the write end after those queued before.

        Marked closed under the lock, so no later tell writes, and the descriptor is closed
        only after every queued write: none can land on a reused descriptor.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            wake_w = self._wake_w
        if wake_w >= 0:  # else attach, still to come, closes it
            self._waker.later(functools.partial(os.close, wake_w))


class ProcessSupervisor:
    """Owns the running actors, the FIFO queue beyond ``max_running``, and shutdown."""

    def __init__(self, store: EventStore, config: RunnerConfig, limits: SupervisorLimits) -> None:
        self._store = store
        self._config = config
        self._limits = limits
        self._reaper = OrphanReaper()
        self._sweeper: Sweeper | None = None
        self._scripts = ScriptFiles.of_node(
            config.runs_dir, config.node, open_files_limit=config.open_files_limit
        )
        self._running: dict[uuid.UUID, _RunHandle] = {}
        self._queue: collections.OrderedDict[uuid.UUID, RunSpec] = collections.OrderedDict()
        #: Resolved when a run accepted here has ended and its last events are committed.
        self._ended: dict[uuid.UUID, asyncio.Future[None]] = {}
        self._closing = False
        self._reaper_task: asyncio.Task[None] | None = None
        self._launcher = concurrent.futures.ThreadPoolExecutor(1, "actor-launcher")
        self._threads = ActorThreads(name="process-actor")
        self._waker = _Waker()
        #: Counters for /metrics.
        self.runs_accepted = 0
        self.runs_ended = 0
        self._background: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_calls: _LoopCalls | None = None

    @property
    def actor_threads(self) -> ActorThreads:
        """The threads the actors run on, reused from one run to the next."""
        return self._threads

    @property
    def running_count(self) -> int:
        return len(self._running)

    @property
    def queued_count(self) -> int:
        return len(self._queue)

    async def start(self) -> None:
        """Adopt orphans, close runs a previous server left behind, start reaping."""
        self._loop = asyncio.get_running_loop()
        self._loop_calls = _LoopCalls(self._loop)
        subreaper = become_subreaper()
        if not subreaper:
            log.warning("cannot become a child subreaper; orphans go to PID 1")
        self._sweeper = Sweeper(self._reaper, subreaper=subreaper)
        self._config.runs_dir.mkdir(parents=True, exist_ok=True)
        await self.recover()  # first: a crashed server's runs may still be writing
        await asyncio.to_thread(self._scripts.reset)
        self._reaper_task = asyncio.create_task(self._reap_periodically(), name="orphan-reaper")

    # --- starting -------------------------------------------------------------------------

    async def start_run(
        self,
        command: CommandVersion,
        *,
        args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        timeout_seconds: float | None = None,
        requested_by: str | None = None,
        idempotency_key: str | None = None,
    ) -> list[StoredEvent]:
        """Queue a run of ``command``; it starts now if a slot is free. Returns its events.

        Raises :class:`QueueFull` when no slot is free and the queue is full.
        """
        if self._closing:
            raise ShuttingDown("the server is shutting down")
        if len(self._running) >= self._limits.max_running and (
            len(self._queue) >= self._limits.max_queued
        ):
            raise QueueFull(retry_after=1)
        run_env = {**command.env, **(env or {})}
        timeout = timeout_seconds if timeout_seconds is not None else command.timeout_seconds
        process_id = uuid.uuid4()
        queued = Queued(
            command_id=command.command_id,
            command_version=command.version,
            script_sha256=script_sha256(command.script),
            args=tuple(args),
            env_names=tuple(sorted(run_env)),
            timeout_seconds=timeout,
            requested_by=requested_by,
            idempotency_key=idempotency_key,
            node=self._config.node,
        )
        stored = await self._store.append(process_id, [queued], expected_version=0)
        spec = RunSpec(
            process_id=process_id,
            script=command.script,
            args=tuple(args),
            env=run_env,
            timeout_seconds=timeout,
            max_output_bytes=(
                self._limits.max_output_bytes
                if command.max_output_bytes is None
                else command.max_output_bytes
            ),
            output_limit_policy=command.output_limit_policy,
            version=1,
        )
        self._queue[process_id] = spec
        self._ended[process_id] = asyncio.get_running_loop().create_future()
        self.runs_accepted += 1
        self._start_waiting()
        return stored

    def _start_waiting(self) -> None:
        while self._queue and len(self._running) < self._limits.max_running and not self._closing:
            _, spec = self._queue.popitem(last=False)
            self._launch(spec)

    def _launch(self, spec: RunSpec) -> None:
        sweeper, loop_calls = self._sweeper, self._loop_calls
        assert sweeper is not None, "start() the supervisor first"
        assert loop_calls is not None
        handle = _RunHandle(self._waker)
        self._running[spec.process_id] = handle

        def failed(reason: str) -> None:
            log.error("could not start a process actor", error=reason)
            loop_calls.call(functools.partial(self._launch_failed, spec, reason))

        def start_actor() -> None:  # runs in the launcher thread
            # The wake-up pipe is made here, not on the loop: a system call on the loop lets
            # go of the GIL, and getting it back waits for the busy actor threads.
            try:
                wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
            except OSError as exc:  # e.g. out of descriptors
                failed(str(exc))
                return

            def finished(  # runs in the actor's thread
                process_id: uuid.UUID, last_append: concurrent.futures.Future[Any] | None
            ) -> None:
                os.close(wake_r)
                loop_calls.call(functools.partial(self._finished, process_id, last_append))

            try:
                actor_ref = ProcessActor.start(
                    spec,
                    self._config,
                    sink=self._store.append_from_thread,
                    sweeper=sweeper,
                    reaper=self._reaper,
                    scripts=self._scripts,
                    wake_fd=wake_r,
                    on_finished=finished,
                    threads=self._threads,
                )
            except Exception as exc:  # noqa: BLE001 -- e.g. no thread could be started
                os.close(wake_r)
                os.close(wake_w)
                failed(str(exc))
                return
            handle.attach(actor_ref, wake_w)

        # Starting a thread waits for it to run; that wait belongs off the event loop.
        self._launcher.submit(start_actor)

    def _launch_failed(self, spec: RunSpec, reason: str) -> None:
        async def close_run() -> None:
            failed = StartFailed(reason=reason, failed_at=datetime.now(UTC))
            try:
                await self._store.append(spec.process_id, [failed], expected_version=spec.version)
            finally:
                self._finished(spec.process_id)

        task = asyncio.create_task(close_run())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _finished(
        self,
        process_id: uuid.UUID,
        last_append: concurrent.futures.Future[Any] | None = None,
    ) -> None:
        """The actor is gone; the run has ended once its last events are stored."""
        handle = self._running.pop(process_id, None)
        if handle is not None:
            handle.close()
        if last_append is None or last_append.done():
            self._mark_ended(process_id)
        else:
            loop_calls = self._loop_calls
            assert loop_calls is not None
            # Resolved by the writer, on the loop: no wake-up needed then.
            last_append.add_done_callback(
                lambda _: loop_calls.call(functools.partial(self._mark_ended, process_id))
            )
        self._start_waiting()

    def _mark_ended(self, process_id: uuid.UUID) -> None:
        self.runs_ended += 1
        ended = self._ended.pop(process_id, None)
        if ended is not None and not ended.done():
            ended.set_result(None)

    # --- stopping -------------------------------------------------------------------------

    async def stop_run(
        self,
        process_id: uuid.UUID,
        *,
        signal: int = signals.SIGTERM,
        grace_seconds: float = 10.0,
        reason: StopReason = "user",
        requested_by: str | None = None,
    ) -> bool:
        """Ask a run of this server to stop; False if it is neither running nor queued here."""
        handle = self._running.get(process_id)
        if handle is not None:
            handle.tell(
                Stop(
                    signal=signal,
                    grace_seconds=grace_seconds,
                    reason=reason,
                    requested_by=requested_by,
                )
            )
            return True
        spec = self._queue.pop(process_id, None)
        if spec is None:
            return False
        await self._cancel_queued(spec, signal, grace_seconds, reason, requested_by)
        return True

    async def _cancel_queued(
        self,
        spec: RunSpec,
        signal: int,
        grace_seconds: float,
        reason: StopReason,
        requested_by: str | None,
    ) -> None:
        events: list[ProcessEvent] = [
            StopRequested(
                reason=reason, signal=signal, grace_seconds=grace_seconds, requested_by=requested_by
            ),
            Killed(signal=signal, reason=reason, finished_at=datetime.now(UTC)),
        ]
        try:
            await self._store.append(spec.process_id, events, expected_version=spec.version)
        except BaseException:
            # Nothing was stored (the store gave up on this append): the run is still
            # queued, as its events say, and stays this server's to start or stop.
            if not self._closing:
                self._queue[spec.process_id] = spec
                self._queue.move_to_end(spec.process_id, last=False)
                self._start_waiting()
            raise
        self._mark_ended(spec.process_id)

    async def wait_finished(self, process_id: uuid.UUID) -> None:
        """Wait until a run accepted here has ended and its last events are committed."""
        ended = self._ended.get(process_id)
        if ended is not None:
            await asyncio.shield(ended)

    async def shutdown(self, grace_seconds: float | None = None) -> None:
        """Start nothing more, stop every run with reason ``shutdown``, wait for them."""
        grace = self._limits.shutdown_grace_seconds if grace_seconds is None else grace_seconds
        self._closing = True
        queued = list(self._queue.values())
        self._queue.clear()
        for spec in queued:
            try:
                await self._cancel_queued(spec, signals.SIGTERM, grace, "shutdown", None)
            except EventStoreError as exc:  # the next start closes it as lost
                log.error(
                    "could not record a queued run's end",
                    process_id=str(spec.process_id),
                    error=str(exc),
                )
                self._mark_ended(spec.process_id)
        handles = list(self._running.values())
        for handle in handles:
            handle.tell(Stop(signal=signals.SIGTERM, grace_seconds=grace, reason="shutdown"))
        if self._ended:
            await asyncio.gather(*(asyncio.shield(f) for f in self._ended.values()))
        self._launcher.shutdown(wait=False)
        self._waker.close()
        self._threads.close()
        if self._sweeper is not None:
            self._sweeper.close()
        if self._reaper_task is not None:
            self._reaper_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper_task
        log.info("all runs stopped", stopped=len(handles), cancelled=len(queued))

    # --- recovery -------------------------------------------------------------------------

    async def recover(self) -> int:
        """Close with ``Lost`` every unfinished run this node owned before a restart.

        Any of their processes still alive (children that outlived a crashed server) are
        killed first, found by their marker.
        """
        rows = await self._store.pool.fetch(
            "SELECT id, status, version FROM processes "
            "WHERE status IN ('queued', 'running') AND node = $1",
            self._config.node,
        )
        rows = [r for r in rows if r["id"] not in self._running and r["id"] not in self._queue]
        if not rows:
            return 0
        markers = {str(r["id"]) for r in rows}
        killed = await asyncio.to_thread(kill_marked, markers)
        if not self._config.keep_workdirs:
            for marker in markers:  # what the crashed runs left in their directories
                rundir = self._config.runs_dir / marker
                error = await asyncio.to_thread(remove_rundir, rundir)
                if error is not None:
                    log.warning(
                        "a lost run's directory could not be removed",
                        path=str(rundir),
                        error=str(error),
                    )
        now = datetime.now(UTC)
        for row in rows:
            lost = Lost(node=self._config.node, last_status=row["status"], detected_at=now)
            await self._store.append(row["id"], [lost], expected_version=row["version"])
        log.warning("closed runs lost by a previous server", runs=len(rows), killed=killed)
        return len(rows)

    async def _reap_periodically(self) -> None:
        while True:
            await asyncio.sleep(_REAP_INTERVAL)
            await asyncio.to_thread(self._reaper.reap)
