"""A process's state as a pure fold of its events, and the status machine that guards it."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, NoReturn, TypeAlias

from shelltrail.domain.errors import InvalidTransition
from shelltrail.domain.events import (
    Deleted,
    Exited,
    Killed,
    Lost,
    OutputChunk,
    OutputTruncated,
    Queued,
    Recorded,
    Started,
    StartFailed,
    StopReason,
    StopRequested,
)

ProcessStatus: TypeAlias = Literal["queued", "running", "succeeded", "failed", "killed", "lost"]
TERMINAL_STATUSES: frozenset[ProcessStatus] = frozenset({"succeeded", "failed", "killed", "lost"})


@dataclass(frozen=True, slots=True, kw_only=True)
class ProcessState:
    """What is known about one run after some prefix of its events."""

    id: uuid.UUID
    command_id: uuid.UUID
    command_version: int
    status: ProcessStatus
    args: tuple[str, ...]
    env_names: tuple[str, ...]
    timeout_seconds: float | None
    requested_by: str | None
    idempotency_key: str | None
    created_at: datetime
    version: int
    pid: int | None = None
    pgid: int | None = None
    node: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    exit_code: int | None = None
    signal: int | None = None
    stop_reason: StopReason | None = None
    stop_requested_at: datetime | None = None
    stdout_bytes: int = 0
    stderr_bytes: int = 0
    dropped_bytes: int = 0
    cpu_user_seconds: float | None = None
    cpu_system_seconds: float | None = None
    max_rss_kib: int | None = None
    deleted: bool = False

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES

    @property
    def duration_seconds(self) -> float | None:
        if self.started_at is None or self.finished_at is None:
            return None
        return (self.finished_at - self.started_at).total_seconds()


def evolve_process(  # noqa: PLR0911, PLR0912 -- one case per event type reads best
    state: ProcessState | None, recorded: Recorded
) -> ProcessState:
    """Apply one recorded event to a process's state; refuse impossible histories."""
    event = recorded.event
    if state is None:
        if not isinstance(event, Queued):
            _refuse(recorded, "the first event of a process must be Queued")
        return ProcessState(
            id=recorded.stream_id,
            command_id=event.command_id,
            command_version=event.command_version,
            status="queued",
            args=event.args,
            env_names=event.env_names,
            timeout_seconds=event.timeout_seconds,
            requested_by=event.requested_by,
            idempotency_key=event.idempotency_key,
            node=event.node,
            created_at=recorded.recorded_at,
            version=recorded.version,
        )
    if recorded.version != state.version + 1:
        _refuse(recorded, f"version {recorded.version} does not follow {state.version}")
    if state.deleted:
        _refuse(recorded, "the process is deleted")
    replace = dataclasses.replace
    v = recorded.version
    match event:
        case Queued():
            _refuse(recorded, "the process is already queued")
        case StartFailed():
            if state.status != "queued":
                _refuse(recorded, f"a process that is {state.status} cannot fail to start")
            return replace(state, status="failed", finished_at=event.failed_at, version=v)
        case Started():
            if state.status != "queued":
                _refuse(recorded, f"cannot start a process that is {state.status}")
            return replace(
                state,
                status="running",
                pid=event.pid,
                pgid=event.pgid,
                node=event.node,
                started_at=event.started_at,
                version=v,
            )
        case OutputChunk():
            return evolve_output(
                state, recorded.stream_id, v, [(event.stream, event.offset, event.length)]
            )
        case OutputTruncated():
            if state.status != "running":
                _refuse(recorded, f"output from a process that is {state.status}")
            return replace(
                state, dropped_bytes=state.dropped_bytes + event.dropped_bytes, version=v
            )
        case StopRequested():
            if state.is_terminal:
                _refuse(recorded, f"cannot stop a process that is {state.status}")
            return replace(
                state,
                stop_reason=state.stop_reason or event.reason,
                stop_requested_at=state.stop_requested_at or recorded.recorded_at,
                version=v,
            )
        case Exited():
            _refuse_unless_running(state, recorded)
            status: ProcessStatus = "succeeded" if event.exit_code == 0 else "failed"
            return replace(
                state,
                status=status,
                exit_code=event.exit_code,
                signal=event.signal,
                finished_at=event.finished_at,
                cpu_user_seconds=event.cpu_user_seconds,
                cpu_system_seconds=event.cpu_system_seconds,
                max_rss_kib=event.max_rss_kib,
                version=v,
            )
        case Killed():
            if state.is_terminal:
                _refuse(recorded, f"a process that is {state.status} cannot be killed")
            return replace(
                state,
                status="killed",
                exit_code=event.exit_code,
                signal=event.signal,
                stop_reason=event.reason,
                finished_at=event.finished_at,
                cpu_user_seconds=event.cpu_user_seconds,
                cpu_system_seconds=event.cpu_system_seconds,
                max_rss_kib=event.max_rss_kib,
                version=v,
            )
        case Lost():
            if state.is_terminal:
                _refuse(recorded, f"a process that is {state.status} cannot be lost")
            return replace(state, status="lost", finished_at=event.detected_at, version=v)
        case Deleted():
            if not state.is_terminal:
                _refuse(recorded, f"cannot delete a process that is {state.status}; stop it first")
            return replace(state, deleted=True, version=v)
        case _:
            _refuse(recorded, f"{type(event).__name__} is not a process event")
    raise AssertionError("unreachable")  # pragma: no cover -- every case returns or raises


#: An output chunk as the fold needs it: stream, offset, length.
ChunkFacts: TypeAlias = tuple[str, int, int]


def evolve_output(
    state: ProcessState | None,
    stream_id: uuid.UUID,
    first_version: int,
    chunks: Sequence[ChunkFacts],
) -> ProcessState:
    """Apply consecutive OutputChunk events (versions ``first_version``, +1, …) at once.

    The same rules as :func:`evolve_process`, checked chunk by chunk, but one new state
    for the whole run of chunks: output dominates every log, and this is its fast path.
    """
    version = first_version
    if state is None:
        _refuse_at(stream_id, version, "the first event of a process must be Queued")
    if version != state.version + 1:
        _refuse_at(stream_id, version, f"version {version} does not follow {state.version}")
    if state.deleted:
        _refuse_at(stream_id, version, "the process is deleted")
    if state.status != "running":
        _refuse_at(stream_id, version, f"output from a process that is {state.status}")
    stdout, stderr = state.stdout_bytes, state.stderr_bytes
    for stream, offset, length in chunks:
        expected = stdout if stream == "stdout" else stderr
        if offset != expected:
            _refuse_at(
                stream_id, version, f"{stream} chunk at offset {offset}, expected {expected}"
            )
        if stream == "stdout":
            stdout += length
        else:
            stderr += length
        version += 1
    return dataclasses.replace(state, stdout_bytes=stdout, stderr_bytes=stderr, version=version - 1)


def fold_process(state: ProcessState | None, history: Sequence[Recorded]) -> ProcessState:
    """Apply a stream's consecutive events, taking runs of output chunks in one step."""
    i, n = 0, len(history)
    while i < n:
        recorded = history[i]
        if not isinstance(recorded.event, OutputChunk):
            state = evolve_process(state, recorded)
            i += 1
            continue
        j = i
        chunks: list[ChunkFacts] = []
        while (
            j < n
            and isinstance(chunk := history[j].event, OutputChunk)
            and history[j].version == recorded.version + (j - i)
        ):
            chunks.append((chunk.stream, chunk.offset, chunk.length))
            j += 1
        state = evolve_output(state, recorded.stream_id, recorded.version, chunks)
        i = j
    if state is None:
        raise InvalidTransition("a process needs at least its Queued event")
    return state


def project_process(
    history: Iterable[Recorded], *, until_version: int | None = None
) -> ProcessState:
    """Fold a process's events, optionally only up to ``until_version`` (inclusive)."""
    events = [r for r in history if until_version is None or r.version <= until_version]
    return fold_process(None, events)


def _refuse_unless_running(state: ProcessState, recorded: Recorded) -> None:
    if state.status != "running":
        _refuse(recorded, f"a process that is {state.status} cannot exit")


def _refuse(recorded: Recorded, why: str) -> NoReturn:
    raise InvalidTransition(
        f"{type(recorded.event).__name__} at version {recorded.version} "
        f"of process {recorded.stream_id}: {why}",
        stream_id=recorded.stream_id,
        version=recorded.version,
    )


def _refuse_at(stream_id: uuid.UUID, version: int, why: str) -> NoReturn:
    raise InvalidTransition(
        f"OutputChunk at version {version} of process {stream_id}: {why}",
        stream_id=stream_id,
        version=version,
    )
