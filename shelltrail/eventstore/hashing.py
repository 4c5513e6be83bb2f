"""The per-stream hash chain that makes tampering with any stored event detectable.

Each event's hash is sha256 over the previous event's hash (32 zero bytes for the first
event of a stream) and the event's own content: stream id, version, type, canonical JSON
data, recorded time and raw payload. Changing any byte of any event breaks the chain from
that event on.
"""

from __future__ import annotations

import hashlib
import json
import struct
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any, Final

GENESIS_HASH: Final = bytes(32)
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MICROSECOND: Final = timedelta(microseconds=1)


_CANONICAL: Final = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def canonical_json(data: Any) -> str:
    """The one JSON text of a value that both the writer and the auditor hash."""
    return _CANONICAL.encode(data)


def event_hash(
    previous: bytes,
    *,
    stream_id: uuid.UUID,
    version: int,
    type_name: str,
    data_json: str,
    recorded_at: datetime,
    payload: bytes | None,
) -> bytes:
    micros = (recorded_at - _EPOCH) // _ONE_MICROSECOND
    h = hashlib.sha256(previous)
    h.update(stream_id.bytes)
    h.update(struct.pack(">qq", version, micros))
    encoded_type = type_name.encode()
    encoded_data = data_json.encode()
    h.update(struct.pack(">I", len(encoded_type)))
    h.update(encoded_type)
    h.update(struct.pack(">Q", len(encoded_data)))
    h.update(encoded_data)
    if payload is None:
        h.update(b"\x00")
    else:
        h.update(b"\x01")
        h.update(struct.pack(">Q", len(payload)))
        h.update(payload)
    return h.digest()
