"""Recompute hash chains to prove that no stored event was changed."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Final

import asyncpg

from shelltrail.eventstore.db import Connection
from shelltrail.eventstore.hashing import GENESIS_HASH, canonical_json, event_hash

_COLUMNS: Final = "stream_id, version, type, data, payload, recorded_at, hash"


@dataclass(frozen=True, slots=True)
class StreamAudit:
    stream_id: uuid.UUID
    verified: bool
    events: int
    head_hash: bytes | None
    first_bad_version: int | None


class _Chain:
    def __init__(self, stream_id: uuid.UUID) -> None:
        self.stream_id = stream_id
        self.previous = GENESIS_HASH
        self.events = 0
        self.first_bad: int | None = None

    def add(self, row: asyncpg.Record) -> None:
        self.events += 1
        expected = event_hash(
            self.previous,
            stream_id=row["stream_id"],
            version=row["version"],
            type_name=row["type"],
            data_json=canonical_json(row["data"]),
            recorded_at=row["recorded_at"],
            payload=row["payload"],
        )
        if self.first_bad is None and (expected != row["hash"] or row["version"] != self.events):
            self.first_bad = row["version"]
        # Chain on the stored hash, so one tampered event is reported, not all after it.
        self.previous = row["hash"]

    def result(self) -> StreamAudit:
        return StreamAudit(
            stream_id=self.stream_id,
            verified=self.first_bad is None,
            events=self.events,
            head_hash=self.previous if self.events else None,
            first_bad_version=self.first_bad,
        )


async def verify_stream(conn: Connection, stream_id: uuid.UUID) -> StreamAudit:
    chain = _Chain(stream_id)
    async with conn.transaction(readonly=True):
        query = f"SELECT {_COLUMNS} FROM events WHERE stream_id = $1 ORDER BY version"
        async for row in conn.cursor(query, stream_id, prefetch=256):
            chain.add(row)
    return chain.result()


async def verify_all(conn: Connection) -> tuple[int, list[StreamAudit]]:
    """Check every stream; return the number of streams and the audits of the bad ones."""
    streams = 0
    bad: list[StreamAudit] = []
    chain: _Chain | None = None
    async with conn.transaction(readonly=True):
        query = f"SELECT {_COLUMNS} FROM events ORDER BY stream_id, version"
        async for row in conn.cursor(query, prefetch=256):
            if chain is None or chain.stream_id != row["stream_id"]:
                if chain is not None and chain.first_bad is not None:
                    bad.append(chain.result())
                chain = _Chain(row["stream_id"])
                streams += 1
            chain.add(row)
    if chain is not None and chain.first_bad is not None:
        bad.append(chain.result())
    return streams, bad
