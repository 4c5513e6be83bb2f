"""shelltrail's domain: events, the pure projections over them, and their rules.

Nothing here performs I/O or imports from the other layers.
"""

from shelltrail.domain.codec import decode, encode, stream_type_of
from shelltrail.domain.command import (
    CommandState,
    CommandVersion,
    evolve_command,
    project_command,
    script_sha256,
)
from shelltrail.domain.errors import DomainError, EventDecodeError, InvalidTransition
from shelltrail.domain.events import (
    CommandCreated,
    CommandDeleted,
    CommandEvent,
    CommandUpdated,
    Deleted,
    DomainEvent,
    Exited,
    Killed,
    Lost,
    OutputChunk,
    OutputTruncated,
    ProcessEvent,
    Queued,
    Recorded,
    Started,
    StartFailed,
    StopRequested,
)
from shelltrail.domain.process import (
    TERMINAL_STATUSES,
    ProcessState,
    ProcessStatus,
    evolve_process,
    project_process,
)

__all__ = [
    "TERMINAL_STATUSES",
    "CommandCreated",
    "CommandDeleted",
    "CommandEvent",
    "CommandState",
    "CommandUpdated",
    "CommandVersion",
    "Deleted",
    "DomainError",
    "DomainEvent",
    "EventDecodeError",
    "Exited",
    "InvalidTransition",
    "Killed",
    "Lost",
    "OutputChunk",
    "OutputTruncated",
    "ProcessEvent",
    "ProcessState",
    "ProcessStatus",
    "Queued",
    "Recorded",
    "StartFailed",
    "Started",
    "StopRequested",
    "decode",
    "encode",
    "evolve_command",
    "evolve_process",
    "project_command",
    "project_process",
    "script_sha256",
    "stream_type_of",
]
