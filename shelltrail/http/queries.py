"""Query-string models: each validates one operation's query and documents it."""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from datetime import UTC, datetime
from typing import Annotated, Final, Literal

from pydantic import BaseModel, ConfigDict, Field

from shelltrail.eventstore.queries import Keyset
from shelltrail.http.problems import HTTPProblem

#: Versions are PostgreSQL integers: a version, or a cursor or event id naming one, past this
#: cannot exist.
MAX_VERSION: Final = 2**31 - 1


class _Query(BaseModel):
    model_config = ConfigDict(extra="ignore")


Limit = Annotated[int, Field(ge=1, le=500, description="Items per page (1 to 500).")]
Cursor = Annotated[
    str,
    Field(max_length=200, pattern=r"^[A-Za-z0-9_-]+$", description="Opaque; from `next_cursor`."),
]


class ListQuery(_Query):
    limit: Limit = 50
    cursor: Cursor | None = None


class ProcessListQuery(ListQuery):
    status: Literal["queued", "running", "succeeded", "failed", "killed", "lost"] | None = None
    command_id: uuid.UUID | None = None


class ProcessQuery(_Query):
    at_version: Annotated[int, Field(ge=1, le=MAX_VERSION)] | None = None


class OutputQuery(_Query):
    stream: Literal["stdout", "stderr"] = "stdout"
    offset: Annotated[int, Field(ge=0, le=2**62)] = 0
    limit: Annotated[int, Field(ge=1, le=64 * 1024 * 1024)] = 16 * 1024 * 1024
    follow: bool = False


class EventsQuery(_Query):
    after: Annotated[int, Field(ge=0, le=MAX_VERSION)] = 0
    limit: Annotated[int, Field(ge=1, le=500)] = 50  # as the lists'


class ReplayQuery(_Query):
    speed: Annotated[float, Field(ge=0, le=1000, allow_inf_nan=False)] = 1.0


def encode_keyset(created_at: datetime, row_id: uuid.UUID) -> str:
    raw = json.dumps([created_at.isoformat(), str(row_id)]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_keyset(cursor: str | None) -> Keyset | None:
    if cursor is None:
        return None
    refused = HTTPProblem(400, "the cursor is not one this server handed out")
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created_at, row_id = json.loads(raw)
        if not (isinstance(created_at, str) and isinstance(row_id, str)):
            raise refused
        moment = datetime.fromisoformat(created_at)
        if moment.tzinfo is None:
            raise refused
        # In UTC, as the database compares it: an offset can push a date past year 9999.
        keyset = Keyset(moment.astimezone(UTC), uuid.UUID(row_id))
    except (ValueError, TypeError, OverflowError, binascii.Error, UnicodeDecodeError):
        raise refused from None
    return keyset
