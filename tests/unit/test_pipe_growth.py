"""A pipe that a run fills is grown, so that a flood is read a MiB at a time."""

from __future__ import annotations

import fcntl
import os

from shelltrail.actors.process_actor import _READ_SIZE, _grow_pipe, _StreamBuffer


def test_a_full_pipe_is_grown_once_and_read_in_larger_pieces() -> None:
    read_end, write_end = os.pipe2(os.O_NONBLOCK)
    try:
        buffer = _StreamBuffer(name="stdout", fd=read_end)
        assert fcntl.fcntl(read_end, fcntl.F_GETPIPE_SZ) == _READ_SIZE
        _grow_pipe(buffer)
        assert buffer.grown
        assert buffer.read_size == 1024 * 1024
        assert fcntl.fcntl(read_end, fcntl.F_GETPIPE_SZ) == buffer.read_size
        # It now holds a MiB, and one read takes it all.
        data = os.urandom(buffer.read_size)
        assert os.write(write_end, data) == len(data)
        assert os.read(read_end, buffer.read_size) == data
    finally:
        os.close(read_end)
        os.close(write_end)


def test_a_pipe_that_cannot_grow_keeps_its_size() -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)
    os.close(write_end)
    buffer = _StreamBuffer(name="stdout", fd=read_end)  # closed: fcntl fails as over quota
    _grow_pipe(buffer)
    assert buffer.grown  # not tried again
    assert buffer.read_size == _READ_SIZE
