"""A pipe that a run fills is grown, so that a flood is read a MiB at a time."""

from __future__ import annotations

import fcntl
import os
import tempfile
import threading

import pytest

from shelltrail.actors import process_actor
from shelltrail.actors.process_actor import (
    _FLOOD_PIPE_BYTES,
    _READ_SIZE,
    _grow_pipe,
    _release_pipe,
    _StreamBuffer,
)


def test_a_full_pipe_is_grown_once_and_holds_a_mib() -> None:
    read_end, write_end = os.pipe2(os.O_NONBLOCK)
    try:
        buffer = _StreamBuffer(name="stdout", fd=read_end)
        assert fcntl.fcntl(read_end, fcntl.F_GETPIPE_SZ) == _READ_SIZE
        _grow_pipe(buffer)
        assert (buffer.grown, buffer.may_grow) == (True, False)
        assert fcntl.fcntl(read_end, fcntl.F_GETPIPE_SZ) == _FLOOD_PIPE_BYTES
        # It now holds a MiB, and one read takes it all.
        data = os.urandom(_FLOOD_PIPE_BYTES)
        assert os.write(write_end, data) == len(data)
        assert os.read(read_end, _FLOOD_PIPE_BYTES) == data
        _release_pipe(buffer)
        _release_pipe(buffer)  # idempotent
        assert not buffer.grown
    finally:
        os.close(read_end)
        os.close(write_end)


def test_a_pipe_the_kernel_will_not_grow_keeps_its_size() -> None:
    with tempfile.TemporaryFile() as not_a_pipe:
        buffer = _StreamBuffer(name="stdout", fd=not_a_pipe.fileno())
        _grow_pipe(buffer)  # F_SETPIPE_SZ fails on a file, as it does over the pipe quota
    assert (buffer.grown, buffer.may_grow) == (False, False)  # not tried again


def test_no_more_pipes_grow_than_the_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(process_actor, "_GROWN_PIPES", threading.BoundedSemaphore(1))
    pipes = [os.pipe2(os.O_NONBLOCK) for _ in range(3)]
    try:
        first, second, third = (_StreamBuffer(name="stdout", fd=r) for r, _ in pipes)
        _grow_pipe(first)
        _grow_pipe(second)
        assert (first.grown, second.grown) == (True, False)
        assert fcntl.fcntl(second.fd, fcntl.F_GETPIPE_SZ) == _READ_SIZE
        _release_pipe(first)  # its run ended
        _grow_pipe(third)
        assert third.grown
        _release_pipe(third)
    finally:
        for r, w in pipes:
            os.close(r)
            os.close(w)
