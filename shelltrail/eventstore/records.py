"""Events as the store holds them, and the position used to read the whole log."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from shelltrail.domain import Recorded, decode


@dataclass(frozen=True, slots=True, kw_only=True)
class StoredEvent:
    """One row of the ``events`` table."""

    stream_id: uuid.UUID
    stream_type: str
    version: int
    type: str
    data: dict[str, Any]
    payload: bytes | None
    recorded_at: datetime
    hash: bytes
    #: Set when read back from the database; events published live carry ``None``.
    position: GlobalPosition | None = None

    def recorded(self) -> Recorded:
        """Decode into the domain's envelope (raises ``EventDecodeError``)."""
        return Recorded(
            stream_id=self.stream_id,
            version=self.version,
            recorded_at=self.recorded_at,
            event=decode(self.type, self.data, self.payload),
        )


@dataclass(frozen=True, slots=True, order=True)
class GlobalPosition:
    """A place in the whole log's safe order: the writing transaction, then the row.

    Only rows whose transaction id is below the oldest transaction still running are read,
    so a reader never skips a row that commits later with a smaller position.
    """

    tx_id: int
    position: int


START: Final = GlobalPosition(0, 0)

EVENT_COLUMNS: Final = (
    "stream_id, stream_type, version, type, data, payload, recorded_at, hash, "
    "tx_id::text AS tx_text, position"
)


def event_from_row(row: Any) -> StoredEvent:
    return StoredEvent(
        stream_id=row["stream_id"],
        stream_type=row["stream_type"],
        version=row["version"],
        type=row["type"],
        data=row["data"],
        payload=row["payload"],
        recorded_at=row["recorded_at"],
        hash=row["hash"],
        position=GlobalPosition(int(row["tx_text"]), row["position"]),
    )
