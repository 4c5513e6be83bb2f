"""A pipe that a run fills is grown, so that a flood is read a MiB at a time."""

from __future__ import annotations

import concurrent.futures
import fcntl
import os
import subprocess
import tempfile
import threading
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from shelltrail.actors import process_actor
from shelltrail.actors.process_actor import (
    _FLOOD_PIPE_BYTES,
    _READ_SIZE,
    ProcessActor,
    RunnerConfig,
    RunSpec,
    _grow_pipe,
    _release_pipe,
    _StreamBuffer,
)
from shelltrail.domain import OutputChunk, ProcessEvent


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


def _reading_actor(spec: RunSpec, runs_dir: Path) -> tuple[ProcessActor, list[ProcessEvent]]:
    """An actor never started, for its reading alone, fed by a pipe of the test's; and the
    events it appends."""
    appended: list[ProcessEvent] = []

    def sink(
        stream_id: uuid.UUID, events: Sequence[ProcessEvent], *, expected_version: int | None
    ) -> concurrent.futures.Future[Any]:
        appended.extend(events)
        done: concurrent.futures.Future[Any] = concurrent.futures.Future()
        done.set_result(None)
        return done

    actor = ProcessActor(
        spec,
        RunnerConfig(node="test", runs_dir=runs_dir),
        sink=sink,
        sweeper=None,  # type: ignore[arg-type]
        reaper=None,  # type: ignore[arg-type]
        scripts=None,  # type: ignore[arg-type]
        threads=None,  # type: ignore[arg-type]
        wake_fd=-1,
        on_finished=lambda *_: None,
    )
    return actor, appended


def test_reads_take_a_mib_while_the_pipe_stays_full_and_64_kib_after(tmp_path: Path) -> None:
    actor, appended = _reading_actor(RunSpec(process_id=uuid.uuid4(), script="true"), tmp_path)
    read_end, write_end = os.pipe2(os.O_NONBLOCK)
    buffer = _StreamBuffer(name="stdout", fd=read_end)
    try:
        first, flood, last = os.urandom(_READ_SIZE), os.urandom(_FLOOD_PIPE_BYTES), b"done\n"
        os.write(write_end, first)  # the default pipe, full
        actor._read(buffer)
        assert (buffer.grown, buffer.read_size) == (True, _FLOOD_PIPE_BYTES)
        assert os.write(write_end, flood) == len(flood)  # the grown pipe holds it all
        actor._read(buffer)  # one read takes the MiB
        assert buffer.read_size == _FLOOD_PIPE_BYTES
        os.write(write_end, last)
        actor._read(buffer)  # a short read: small reads again, the pipe stays grown
        assert (buffer.grown, buffer.read_size) == (True, _READ_SIZE)
        actor._flush([buffer])
    finally:
        _release_pipe(buffer)
        os.close(read_end)
        os.close(write_end)
    chunks = [e for e in appended if isinstance(e, OutputChunk)]
    pieces = [c.data or b"" for c in chunks]
    assert b"".join(pieces) == first + flood + last
    assert all(c.length == len(p) <= _READ_SIZE for c, p in zip(chunks, pieces, strict=True))
    assert [c.offset for c in chunks] == [
        sum(c.length for c in chunks[:i]) for i in range(len(chunks))
    ]


@pytest.mark.parametrize("reaped", [True, False])
def test_output_past_the_cap_read_after_the_end_does_not_make_a_kill(
    tmp_path: Path, reaped: bool
) -> None:
    """Policy kill, but the cap is crossed only by what is read after the main process
    ended: reaped already (``_finish`` drains the pipes), or exited and not yet reaped (its
    last write and its exit arrive in one wake-up, the pipe read first). The bytes are
    dropped and counted; no stop is requested, so the run ends as it did, not "killed"."""
    spec = RunSpec(
        process_id=uuid.uuid4(), script="true", max_output_bytes=4, output_limit_policy="kill"
    )
    actor, appended = _reading_actor(spec, tmp_path)
    ended = subprocess.Popen(["true"])
    actor._proc = ended
    if reaped:
        ended.wait()
    else:
        actor._pidfd = os.pidfd_open(ended.pid)
        while os.waitid(os.P_PID, ended.pid, os.WEXITED | os.WNOWAIT) is None:
            pass  # exited, left unreaped
    read_end, write_end = os.pipe2(os.O_NONBLOCK)
    buffer = _StreamBuffer(name="stdout", fd=read_end)
    try:
        os.write(write_end, b"0123456789")
        actor._read(buffer)
        actor._flush([buffer])
    finally:
        os.close(read_end)
        os.close(write_end)
    if not reaped:
        os.close(actor._pidfd)
        ended.wait()
    assert actor._stopping is None
    assert actor._dropped == 6
    assert [type(e).__name__ for e in appended] == ["OutputChunk"]
