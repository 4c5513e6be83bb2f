"""The events the benchmarks append, and the same events as raw rows for the baselines.

A process stream as an actor writes it: ``Queued``, ``Started``, output chunks, ``Exited``.
The raw rows carry exactly the columns and values the store writes (same type, same JSON
text, same bytes), with a constant 32-byte hash in place of the chain: the baseline pays
for storing rows, not for computing them.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, Final

from shelltrail.domain import (
    DomainEvent,
    Exited,
    OutputChunk,
    Queued,
    Started,
    encode,
)
from shelltrail.eventstore.hashing import canonical_json

NODE: Final = "bench-node"
NOW: Final = datetime(2026, 1, 1, tzinfo=UTC)
_COMMAND_ID: Final = uuid.UUID("00000000-0000-4000-8000-000000000001")
_FAKE_HASH: Final = bytes(range(32))

RawRecord = tuple[Any, ...]


def queued() -> Queued:
    return Queued(command_id=_COMMAND_ID, command_version=1, script_sha256="0" * 64)


def started() -> Started:
    return Started(pid=4242, pgid=4242, node=NODE, started_at=NOW)


def chunk(offset: int, data: bytes, *, stderr: bool = False) -> OutputChunk:
    return OutputChunk(
        stream="stderr" if stderr else "stdout",
        offset=offset,
        length=len(data),
        captured_at=NOW,
        data=data,
    )


def exited() -> Exited:
    return Exited(exit_code=0, signal=None, finished_at=NOW)


def process_history(chunks: list[bytes], *, alternate_streams: bool = False) -> list[DomainEvent]:
    """A whole run: Queued, Started, one OutputChunk per item of ``chunks``, Exited.

    With ``alternate_streams`` the chunks go to stdout and stderr in turn, each stream's
    offsets tiling its own bytes.
    """
    offsets = {False: 0, True: 0}
    history: list[DomainEvent] = [queued(), started()]
    for i, data in enumerate(chunks):
        stderr = alternate_streams and i % 2 == 1
        history.append(chunk(offsets[stderr], data, stderr=stderr))
        offsets[stderr] += len(data)
    history.append(exited())
    return history


def raw_record(stream_id: uuid.UUID, version: int, event: DomainEvent) -> RawRecord:
    """``event`` as the row the store would write, in :data:`bench.db.RAW_COLUMNS` order."""
    type_name, data, payload = encode(event)
    return (
        stream_id,
        "process",
        version,
        type_name,
        canonical_json(data),
        payload,
        NOW,
        _FAKE_HASH,
    )
