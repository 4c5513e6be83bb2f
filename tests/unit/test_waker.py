"""The wake-up pipes of the runs, written and closed by the waker thread, not the loop."""

from __future__ import annotations

import os
import select
from typing import Any

from shelltrail.actors.supervisor import _RunHandle, _Waker

WAIT = 10.0


class FakeActor:
    def __init__(self) -> None:
        self.told: list[object] = []

    def tell(self, message: object) -> None:
        self.told.append(message)


def read_wakeup(fd: int) -> bytes:
    ready, _, _ = select.select([fd], [], [], WAIT)
    assert ready, "no wake-up"
    return os.read(fd, 16)


def test_a_tell_puts_the_message_first_then_a_byte_on_the_pipe() -> None:
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    waker = _Waker()
    try:
        handle = _RunHandle(waker)
        actor = FakeActor()
        handle.tell("early")  # before the actor exists: kept
        handle.attach(actor, wake_w)  # type: ignore[arg-type]
        assert actor.told == ["early"]
        assert read_wakeup(wake_r) == b"\0"
        handle.tell("stop")
        assert actor.told == ["early", "stop"]
        assert read_wakeup(wake_r) == b"\0"
        handle.close()
    finally:
        waker.close()
        os.close(wake_r)


def test_after_close_nothing_is_told_or_written_and_the_pipe_is_closed() -> None:
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    waker = _Waker()
    handle = _RunHandle(waker)
    actor = FakeActor()
    handle.attach(actor, wake_w)  # type: ignore[arg-type]
    handle.close()
    handle.tell("late")
    waker.close()  # does everything queued, the closing of the pipe included
    assert actor.told == []
    assert os.read(wake_r, 16) == b""  # the write end is closed: end of file, no byte
    os.close(wake_r)


def test_a_run_closed_before_its_actor_is_attached_gets_its_pipe_closed_on_attach() -> None:
    """A run can end (its actor done, the loop told) before the launcher thread attaches
    the actor to the handle: the pipe it brings is closed then, and nothing is told."""
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    waker = _Waker()
    handle = _RunHandle(waker)
    handle.tell("early")
    handle.close()  # no pipe yet: nothing to close
    waker.close()  # as at shutdown: the waker may be gone when the launcher attaches
    actor = FakeActor()
    handle.attach(actor, wake_w)  # type: ignore[arg-type]
    assert actor.told == []
    assert os.read(wake_r, 16) == b""  # closed, with no byte written
    os.close(wake_r)


def test_a_failing_job_does_not_stop_the_waker() -> None:
    waker = _Waker()
    done: list[Any] = []

    def failing() -> None:
        raise RuntimeError("a bug")

    waker.later(failing)
    waker.later(lambda: done.append(True))
    waker.close()
    assert done == [True]
