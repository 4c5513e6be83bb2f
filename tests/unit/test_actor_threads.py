"""ActorThreads: actor loops on reused threads (shelltrail.actors.threads)."""

from __future__ import annotations

import contextvars
import functools
import shutil
import signal
import subprocess
import threading

import pytest

from shelltrail.actors.threads import ActorThreads
from tests.integration.faults import wait_until

WAIT = 10.0
#: Polls every millisecond: the conditions here turn true within microseconds.
wait = functools.partial(wait_until, timeout=WAIT, interval=0.001)


def comm(pid: int) -> str:
    with open(f"/proc/{pid}/comm") as f:
        return f.read().strip()


class Job:
    """A job that records its thread and name, and ends when released."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.done = threading.Event()
        self.thread: threading.Thread | None = None
        self.name = ""

    def __call__(self) -> None:
        self.thread = threading.current_thread()
        self.name = self.thread.name
        self.release.wait(WAIT)
        self.done.set()


def test_a_thread_whose_job_ended_runs_the_next_one() -> None:
    threads = ActorThreads(idle_seconds=WAIT)
    try:
        first, second = Job(), Job()
        first.release.set()
        threads.run(first, name="first")
        assert first.done.wait(WAIT)
        wait(lambda: threads.idle == 1, what="the thread is idle again")
        second.release.set()
        threads.run(second, name="second")
        assert second.done.wait(WAIT)
        assert second.thread is first.thread
        assert threads.started == 1
        assert (first.name, second.name) == ("first", "second")
    finally:
        threads.close()


def test_jobs_at_the_same_time_get_threads_of_their_own() -> None:
    threads = ActorThreads(idle_seconds=WAIT)
    jobs = [Job() for _ in range(5)]
    try:
        for number, job in enumerate(jobs):
            threads.run(job, name=f"job-{number}")
        wait(lambda: all(job.thread is not None for job in jobs), what="every job runs")
        assert len({id(job.thread) for job in jobs}) == 5
        assert threads.started == 5
    finally:
        for job in jobs:
            job.release.set()
        threads.close()


def test_an_idle_thread_ends_after_the_idle_time() -> None:
    threads = ActorThreads(idle_seconds=0.05)
    job = Job()
    job.release.set()
    threads.run(job, name="short")
    assert job.done.wait(WAIT)
    assert job.thread is not None
    job.thread.join(WAIT)
    assert not job.thread.is_alive()
    assert threads.idle == 0
    later = Job()  # a new thread, then
    later.release.set()
    threads.run(later, name="later")
    assert later.done.wait(WAIT)
    assert later.thread is not job.thread
    assert threads.started == 2
    threads.close()


def test_close_ends_idle_threads_at_once_and_busy_ones_after_their_job() -> None:
    threads = ActorThreads(idle_seconds=WAIT)
    idle, busy = Job(), Job()
    idle.release.set()
    threads.run(idle, name="idle")
    assert idle.done.wait(WAIT)
    wait(lambda: threads.idle == 1, what="the first thread is idle")
    threads.run(busy, name="busy")  # takes the idle thread
    wait(lambda: busy.thread is not None, what="the job runs")
    other = Job()
    other.release.set()
    threads.run(other, name="other")  # a second thread
    assert other.done.wait(WAIT)
    wait(lambda: threads.idle == 1, what="the second thread is idle")
    threads.close()
    assert other.thread is not None
    assert busy.thread is not None
    other.thread.join(WAIT)
    assert not other.thread.is_alive()
    assert busy.thread.is_alive()
    busy.release.set()
    busy.thread.join(WAIT)
    assert not busy.thread.is_alive()


def test_each_job_starts_from_an_empty_context() -> None:
    variable: contextvars.ContextVar[str] = contextvars.ContextVar("variable", default="unset")
    seen: list[str] = []
    done = threading.Event()

    def first() -> None:
        seen.append(variable.get())
        variable.set("set by the first job")
        done.set()

    def second() -> None:
        seen.append(variable.get())
        done.set()

    threads = ActorThreads(idle_seconds=WAIT)
    try:
        threads.run(first, name="first")
        assert done.wait(WAIT)
        wait(lambda: threads.idle == 1, what="the thread is idle again")
        done.clear()
        threads.run(second, name="second")
        assert done.wait(WAIT)
        assert seen == ["unset", "unset"]
        assert threads.started == 1
    finally:
        threads.close()


def test_a_failing_job_does_not_end_its_thread() -> None:
    threads = ActorThreads(idle_seconds=WAIT)

    def failing() -> None:
        raise RuntimeError("a bug in a job")

    try:
        threads.run(failing, name="failing")
        wait(lambda: threads.idle == 1, what="the thread is idle again")
        job = Job()
        job.release.set()
        threads.run(job, name="after")
        assert job.done.wait(WAIT)
        assert threads.started == 1
    finally:
        threads.close()


def test_a_job_that_leaves_a_child_unreaped_ends_its_thread() -> None:
    """Its thread ends at once instead of waiting for the next job, so the parent-death
    signal reaches the child the job left (as when each actor had a thread of its own)."""
    setpriv = shutil.which("setpriv")
    assert setpriv is not None, "setpriv (util-linux) is needed"
    threads = ActorThreads(idle_seconds=WAIT)
    children: list[subprocess.Popen[bytes]] = []

    def spawn_and_leave() -> None:
        child = subprocess.Popen([setpriv, "--pdeathsig", "KILL", "--", "sleep", "1000"])
        children.append(child)
        # setpriv sets the signal, then execs sleep: the job ends only once it is set.
        wait(lambda: comm(child.pid) == "sleep", what="setpriv has set the signal")

    try:
        threads.run(spawn_and_leave, name="leaves a child", reusable=lambda: False)
        wait(lambda: bool(children), what="the child is spawned")
        assert children[0].wait(WAIT) == -signal.SIGKILL
        assert threads.idle == 0
        job = Job()
        job.release.set()
        threads.run(job, name="next")  # a new thread
        assert job.done.wait(WAIT)
        assert threads.started == 2
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()
        threads.close()


def test_a_thread_that_cannot_start_is_not_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(_thread: threading.Thread) -> None:
        raise RuntimeError("can't start new thread")

    threads = ActorThreads(idle_seconds=WAIT)
    monkeypatch.setattr(threading.Thread, "start", refuse)
    with pytest.raises(RuntimeError, match="can't start"):
        threads.run(Job(), name="never")
    assert threads.started == 0
    assert threads.idle == 0
