"""Read-side queries: the projection tables and the output stored in the log.

Lists are newest first and paged with keyset cursors on ``(created_at, id)``, so a page
never repeats or skips a row because others were inserted meanwhile.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Final

import asyncpg

from shelltrail.domain import CommandState, CommandVersion, ProcessState
from shelltrail.eventstore.projections import (
    command_from_row,
    command_version_from_row,
    process_from_row,
)

Executor = asyncpg.Pool


@dataclass(frozen=True, slots=True)
class Keyset:
    """Where the previous page ended."""

    created_at: datetime
    id: uuid.UUID


_COMMAND_SELECT: Final = "SELECT * FROM commands"


async def get_command(db: Executor, command_id: uuid.UUID) -> CommandState | None:
    """The command, deleted or not (``deleted`` tells)."""
    row = await db.fetchrow(f"{_COMMAND_SELECT} WHERE id = $1", command_id)
    return command_from_row(row) if row is not None else None


async def list_commands(db: Executor, *, limit: int, after: Keyset | None) -> list[CommandState]:
    if after is None:
        rows = await db.fetch(
            f"{_COMMAND_SELECT} WHERE NOT deleted ORDER BY created_at DESC, id DESC LIMIT $1",
            limit,
        )
    else:
        rows = await db.fetch(
            f"{_COMMAND_SELECT} WHERE NOT deleted AND (created_at, id) < ($2, $3) "
            "ORDER BY created_at DESC, id DESC LIMIT $1",
            limit,
            after.created_at,
            after.id,
        )
    return [command_from_row(r) for r in rows]


async def list_command_versions(
    db: Executor, command_id: uuid.UUID, *, limit: int, before_version: int | None
) -> list[CommandVersion]:
    rows = await db.fetch(
        "SELECT * FROM command_versions WHERE command_id = $1 AND version < $2 "
        "ORDER BY version DESC LIMIT $3",
        command_id,
        before_version if before_version is not None else 2**31 - 1,
        limit,
    )
    return [command_version_from_row(r) for r in rows]


async def get_current_version(db: Executor, command_id: uuid.UUID) -> CommandVersion | None:
    """The current version of a command that is not deleted, in one query."""
    row = await db.fetchrow(
        "SELECT v.* FROM commands c JOIN command_versions v "
        "ON v.command_id = c.id AND v.version = c.version WHERE c.id = $1 AND NOT c.deleted",
        command_id,
    )
    return command_version_from_row(row) if row is not None else None


async def get_process(db: Executor, process_id: uuid.UUID) -> ProcessState | None:
    """The process, deleted or not (``deleted`` tells)."""
    row = await db.fetchrow("SELECT * FROM processes WHERE id = $1", process_id)
    return process_from_row(row) if row is not None else None


async def find_process_by_idempotency_key(db: Executor, key: str) -> ProcessState | None:
    row = await db.fetchrow("SELECT * FROM processes WHERE idempotency_key = $1", key)
    return process_from_row(row) if row is not None else None


async def list_processes(
    db: Executor,
    *,
    limit: int,
    after: Keyset | None,
    status: str | None = None,
    command_id: uuid.UUID | None = None,
) -> list[ProcessState]:
    conditions = ["NOT deleted"]
    args: list[object] = [limit]
    if status is not None:
        args.append(status)
        conditions.append(f"status = ${len(args)}")
    if command_id is not None:
        args.append(command_id)
        conditions.append(f"command_id = ${len(args)}")
    if after is not None:
        args.extend([after.created_at, after.id])
        conditions.append(f"(created_at, id) < (${len(args) - 1}, ${len(args)})")
    rows = await db.fetch(
        f"SELECT * FROM processes WHERE {' AND '.join(conditions)} "
        "ORDER BY created_at DESC, id DESC LIMIT $1",
        *args,
    )
    return [process_from_row(r) for r in rows]


async def read_output(
    db: Executor, process_id: uuid.UUID, stream: str, *, offset: int, limit: int
) -> bytes:
    """Up to ``limit`` bytes of one output stream, starting at byte ``offset``."""
    rows = await db.fetch(
        "SELECT (data->>'offset')::bigint AS start, "
        "substring(payload FROM greatest($3 - (data->>'offset')::bigint, 0)::int + 1 "
        "          FOR $4) AS part "
        "FROM events "
        "WHERE stream_id = $1 AND type = 'OutputChunk' AND data->>'stream' = $2 "
        "AND (data->>'offset')::bigint + (data->>'length')::bigint > $3 "
        "AND (data->>'offset')::bigint < $3 + $4 "
        "ORDER BY (data->>'offset')::bigint",
        process_id,
        stream,
        offset,
        limit,
    )
    return b"".join(r["part"] for r in rows)[:limit]


async def first_chunk_version(
    db: Executor, process_id: uuid.UUID, stream: str, offset: int
) -> int | None:
    """Version of the first chunk of ``stream`` holding bytes at or after ``offset``."""
    version = await db.fetchval(
        "SELECT min(version) FROM events "
        "WHERE stream_id = $1 AND type = 'OutputChunk' AND data->>'stream' = $2 "
        "AND (data->>'offset')::bigint + (data->>'length')::bigint > $3",
        process_id,
        stream,
        offset,
    )
    return int(version) if version is not None else None
