"""The events of shelltrail: the only source of truth.

A command (a stored, versioned script) and a process (one run of a command) are each a
stream of these events. Every other piece of state is derived from them by a fold.
Names are past tense; each class is immutable and carries only facts known when it
happened.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal, TypeAlias

OutputStream: TypeAlias = Literal["stdout", "stderr"]
StopReason: TypeAlias = Literal["user", "timeout", "output_limit", "shutdown"]
OutputLimitPolicy: TypeAlias = Literal["truncate", "kill"]

OUTPUT_STREAMS: tuple[OutputStream, ...] = ("stdout", "stderr")
STOP_REASONS: tuple[StopReason, ...] = ("user", "timeout", "output_limit", "shutdown")
OUTPUT_LIMIT_POLICIES: tuple[OutputLimitPolicy, ...] = ("truncate", "kill")


# --- command stream -----------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class CommandCreated:
    """A script was stored under a new command id (version 1)."""

    name: str
    script: str
    description: str | None = None
    timeout_seconds: float | None = None
    env: dict[str, str] = field(default_factory=dict)
    max_output_bytes: int | None = None
    output_limit_policy: OutputLimitPolicy = "truncate"
    requested_by: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class CommandUpdated:
    """A command got a new version: a full snapshot, not a patch."""

    name: str
    script: str
    description: str | None = None
    timeout_seconds: float | None = None
    env: dict[str, str] = field(default_factory=dict)
    max_output_bytes: int | None = None
    output_limit_policy: OutputLimitPolicy = "truncate"
    requested_by: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class CommandDeleted:
    """A command was deleted; its processes stay."""

    requested_by: str | None = None


# --- process stream -----------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Queued:
    """A run of a command was requested and accepted."""

    command_id: uuid.UUID
    command_version: int
    script_sha256: str
    args: tuple[str, ...] = ()
    env_names: tuple[str, ...] = ()
    timeout_seconds: float | None = None
    requested_by: str | None = None
    idempotency_key: str | None = None
    #: The server that accepted the run and keeps it in its queue.
    node: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class StartFailed:
    """The run could not be started (e.g. its working directory or bash was unavailable)."""

    reason: str
    failed_at: datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class Started:
    """The run's main process was spawned in its own session and process group."""

    pid: int
    pgid: int
    node: str
    started_at: datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class OutputChunk:
    """Bytes the run wrote to one of its streams, stored raw.

    ``offset`` is the position of the first byte within that stream's stored bytes, so
    the chunks of one stream tile it without gap or overlap. ``data`` is ``None`` when only
    the chunk's metadata was read (replay folds lengths, not bytes).
    """

    stream: OutputStream
    offset: int
    length: int
    captured_at: datetime
    data: bytes | None = None

    def __post_init__(self) -> None:
        if self.data is not None and len(self.data) != self.length:
            raise ValueError(f"chunk of {len(self.data)} bytes says its length is {self.length}")


@dataclass(frozen=True, slots=True, kw_only=True)
class OutputTruncated:
    """The run went past its output cap: bytes beyond it were counted and dropped."""

    limit_bytes: int
    dropped_bytes: int
    policy: OutputLimitPolicy


@dataclass(frozen=True, slots=True, kw_only=True)
class StopRequested:
    """Someone (a user, the timeout, the output cap, a shutdown) asked the run to stop."""

    reason: StopReason
    signal: int
    grace_seconds: float
    requested_by: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Exited:
    """The main process ended on its own: with an exit code, or by a signal nobody sent."""

    exit_code: int | None
    signal: int | None
    finished_at: datetime
    cpu_user_seconds: float = 0.0
    cpu_system_seconds: float = 0.0
    max_rss_kib: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class Killed:
    """The run was ended by shelltrail after a stop request."""

    signal: int
    reason: StopReason
    finished_at: datetime
    exit_code: int | None = None
    cpu_user_seconds: float = 0.0
    cpu_system_seconds: float = 0.0
    max_rss_kib: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class Lost:
    """The node that owned the run died or restarted before the run ended."""

    node: str | None
    last_status: str
    detected_at: datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class Deleted:
    """Tombstone: the run is hidden from listings; its events stay for audit."""

    requested_by: str | None = None


CommandEvent: TypeAlias = CommandCreated | CommandUpdated | CommandDeleted
ProcessEvent: TypeAlias = (
    Queued
    | StartFailed
    | Started
    | OutputChunk
    | OutputTruncated
    | StopRequested
    | Exited
    | Killed
    | Lost
    | Deleted
)
DomainEvent: TypeAlias = CommandEvent | ProcessEvent

COMMAND_EVENT_TYPES: tuple[type[CommandEvent], ...] = (
    CommandCreated,
    CommandUpdated,
    CommandDeleted,
)
PROCESS_EVENT_TYPES: tuple[type[ProcessEvent], ...] = (
    Queued,
    StartFailed,
    Started,
    OutputChunk,
    OutputTruncated,
    StopRequested,
    Exited,
    Killed,
    Lost,
    Deleted,
)
TERMINAL_EVENT_TYPES: tuple[type[ProcessEvent], ...] = (Exited, Killed, Lost, StartFailed)


@dataclass(frozen=True, slots=True, kw_only=True)
class Recorded:
    """An event as stored in a stream: its version and the time it was recorded."""

    stream_id: uuid.UUID
    version: int
    recorded_at: datetime
    event: DomainEvent
