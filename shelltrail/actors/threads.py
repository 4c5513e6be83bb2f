"""Threads for the actors' loops, kept for the next actor instead of ending with each run.

A pykka ``ThreadingActor`` starts a new thread and lets it end with the actor. At hundreds
of runs per second that is a cost of its own: each new thread maps a stack, and each ended
one unmaps it (glibc keeps only 40 MiB of stacks, five of the default 8 MiB) and its
interpreter frames, and every unmapping in a process whose threads run on the other core
interrupts that core to flush its TLB. :class:`ActorThreads` hands each actor loop to a
thread that has finished its last one, if one is idle, and starts a new one only otherwise.
A thread idle for ``idle_seconds`` ends, so an idle server keeps no more than it needs.

One actor at a time per thread, from its start to its end, as with pykka's own threads:
the actor still owns its thread while it lives. The children it spawns are the thread's,
and the parent-death signal of :mod:`shelltrail.actors.process_actor` is sent when the
thread ends: a job that leaves a child of its thread unreaped (an actor that failed to reap
its script) says so through ``reusable``, and its thread ends at once instead of waiting for
the next actor, so that signal still kills what the actor left.
"""

from __future__ import annotations

import contextvars
import queue
import threading
from collections.abc import Callable
from typing import Final

import structlog

log = structlog.get_logger(__name__)

#: How long a thread waits for its next actor before it ends.
IDLE_SECONDS: Final = 5.0

Job = Callable[[], None]
#: A job as a worker runs it: True if its thread may run another one afterwards.
_Task = Callable[[], bool]


class _Worker:
    __slots__ = ("jobs",)

    def __init__(self) -> None:
        self.jobs: queue.SimpleQueue[_Task | None] = queue.SimpleQueue()


class ActorThreads:
    """Runs jobs (actor loops) on reused threads; thread-safe."""

    def __init__(self, *, name: str = "actor", idle_seconds: float = IDLE_SECONDS) -> None:
        self._name = name
        self._idle_seconds = idle_seconds
        self._lock = threading.Lock()
        self._idle: list[_Worker] = []  # the most recently idle last: its stack is warm
        self._started = 0
        self._closed = False

    def run(self, job: Job, *, name: str, reusable: Callable[[], bool] | None = None) -> None:
        """Run ``job`` on an idle thread, or on a new one (which may raise RuntimeError).

        ``name`` becomes the thread's name while the job runs. ``reusable``, asked once the
        job has returned, says whether the thread may run another job; if not, it ends.
        """
        task = _task(job, name, reusable)
        with self._lock:
            worker = self._idle.pop() if self._idle else None
            self._started += worker is None
            number = self._started
        if worker is not None:
            worker.jobs.put(task)
            return
        worker = _Worker()
        thread = threading.Thread(
            target=self._serve, args=(worker, task), name=f"{self._name}-{number}", daemon=True
        )
        try:
            thread.start()
        except BaseException:
            with self._lock:
                self._started -= 1
            raise

    @property
    def started(self) -> int:
        """Threads started so far (each ends once idle for ``idle_seconds``)."""
        with self._lock:
            return self._started

    @property
    def idle(self) -> int:
        """Threads waiting for an actor now."""
        with self._lock:
            return len(self._idle)

    def close(self) -> None:
        """End the idle threads now, and each busy one when its job ends."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for worker in idle:
            worker.jobs.put(None)

    def _serve(self, worker: _Worker, task: _Task | None) -> None:  # the worker's thread
        while task is not None:
            try:
                # Each actor starts from an empty context: nothing bound by the one before.
                if not contextvars.Context().run(task):
                    return  # ending the thread is the point (see the module's docstring)
            except Exception:  # pykka handles the actors' own errors: this is a bug here
                log.exception("an actor thread's job failed")
            task = self._next(worker)

    def _next(self, worker: _Worker) -> _Task | None:
        with self._lock:
            if self._closed:
                return None
            self._idle.append(worker)
        try:
            return worker.jobs.get(timeout=self._idle_seconds)
        except queue.Empty:
            pass
        with self._lock:
            if worker in self._idle:  # still idle: end
                self._idle.remove(worker)
                return None
        # Taken for a job just as the wait ended: that job is on its way.
        return worker.jobs.get()


def _task(job: Job, name: str, reusable: Callable[[], bool] | None) -> _Task:
    def task() -> bool:
        thread = threading.current_thread()
        own = thread.name
        thread.name = name
        try:
            job()
        finally:
            thread.name = own
        return reusable is None or reusable()

    return task
