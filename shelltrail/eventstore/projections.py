"""Projection tables: the domain's folds, stored.

The same pure functions (:func:`evolve_process`, :func:`evolve_command`) update the tables
inline, once per appended batch, and rebuild them from the log during replay, so the two
cannot drift apart except through a bug that ``replay --check`` names.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

import asyncpg

from shelltrail.domain import (
    CommandState,
    CommandVersion,
    ProcessState,
    Recorded,
    evolve_command,
    evolve_process,
)
from shelltrail.domain.events import OutputChunk
from shelltrail.domain.process import ChunkFacts, evolve_output, fold_process
from shelltrail.eventstore.db import Connection

PROCESS_COLUMNS: Final[tuple[str, ...]] = tuple(f.name for f in dataclasses.fields(ProcessState))
COMMAND_COLUMNS: Final[tuple[str, ...]] = (
    "id",
    "name",
    "description",
    "script",
    "version",
    "timeout_seconds",
    "env",
    "max_output_bytes",
    "output_limit_policy",
    "created_at",
    "updated_at",
    "stream_version",
    "deleted",
)
COMMAND_VERSION_COLUMNS: Final[tuple[str, ...]] = (
    "command_id",
    "version",
    "name",
    "description",
    "script",
    "timeout_seconds",
    "env",
    "max_output_bytes",
    "output_limit_policy",
    "created_at",
)
#: Projection tables and their primary keys, in the order replay fills them.
TABLES: Final[dict[str, tuple[str, ...]]] = {
    "commands": ("id",),
    "command_versions": ("command_id", "version"),
    "processes": ("id",),
}
_TABLE_COLUMNS: Final[dict[str, tuple[str, ...]]] = {
    "commands": COMMAND_COLUMNS,
    "command_versions": COMMAND_VERSION_COLUMNS,
    "processes": PROCESS_COLUMNS,
}


# --- row mapping ----------------------------------------------------------------------


def process_to_row(state: ProcessState) -> tuple[Any, ...]:
    row = [getattr(state, name) for name in PROCESS_COLUMNS]
    row[PROCESS_COLUMNS.index("args")] = list(state.args)
    row[PROCESS_COLUMNS.index("env_names")] = list(state.env_names)
    return tuple(row)


def process_from_row(row: Mapping[str, Any] | asyncpg.Record) -> ProcessState:
    values = {name: row[name] for name in PROCESS_COLUMNS}
    values["args"] = tuple(values["args"])
    values["env_names"] = tuple(values["env_names"])
    return ProcessState(**values)


def command_to_row(state: CommandState) -> tuple[Any, ...]:
    c = state.current
    return (
        state.id,
        c.name,
        c.description,
        c.script,
        c.version,
        c.timeout_seconds,
        c.env,
        c.max_output_bytes,
        c.output_limit_policy,
        state.created_at,
        state.updated_at,
        state.stream_version,
        state.deleted,
    )


def command_version_to_row(v: CommandVersion) -> tuple[Any, ...]:
    return (
        v.command_id,
        v.version,
        v.name,
        v.description,
        v.script,
        v.timeout_seconds,
        v.env,
        v.max_output_bytes,
        v.output_limit_policy,
        v.created_at,
    )


def command_version_from_row(row: Mapping[str, Any] | asyncpg.Record) -> CommandVersion:
    return CommandVersion(**{name: row[name] for name in COMMAND_VERSION_COLUMNS})


def command_from_row(row: Mapping[str, Any] | asyncpg.Record) -> CommandState:
    """A command's state as stored; ``versions`` is left empty (it lives in its own table)."""
    current = CommandVersion(
        command_id=row["id"],
        version=row["version"],
        name=row["name"],
        script=row["script"],
        description=row["description"],
        timeout_seconds=row["timeout_seconds"],
        env=row["env"],
        max_output_bytes=row["max_output_bytes"],
        output_limit_policy=row["output_limit_policy"],
        created_at=row["updated_at"],
    )
    return CommandState(
        id=row["id"],
        current=current,
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        stream_version=row["stream_version"],
        deleted=row["deleted"],
    )


# --- inline update ------------------------------------------------------------------


def _upsert_sql(table: str, columns: Sequence[str], key: Sequence[str]) -> str:
    placeholders = ", ".join(f"${i}" for i in range(1, len(columns) + 1))
    updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in columns if c not in key)
    return (
        f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({placeholders}) "
        f"ON CONFLICT ({', '.join(key)}) DO UPDATE SET {updates}"
    )


_UPSERT_PROCESS: Final = _upsert_sql("processes", PROCESS_COLUMNS, ("id",))
_UPSERT_COMMAND: Final = _upsert_sql("commands", COMMAND_COLUMNS, ("id",))
# One statement for the whole batch: with many runs printing at once, most projection
# writes are these.
_UPDATE_COUNTS: Final = (
    "UPDATE processes AS p SET stdout_bytes = u.stdout_bytes, stderr_bytes = u.stderr_bytes, "
    "version = u.version "
    "FROM unnest($1::uuid[], $2::bigint[], $3::bigint[], $4::int[]) "
    "AS u(id, stdout_bytes, stderr_bytes, version) WHERE p.id = u.id"
)
_INSERT_COMMAND_VERSION: Final = (
    f"INSERT INTO command_versions ({', '.join(COMMAND_VERSION_COLUMNS)}) "
    f"VALUES ({', '.join(f'${i}' for i in range(1, len(COMMAND_VERSION_COLUMNS) + 1))})"
)


async def apply_inline(
    conn: Connection,
    batch: Iterable[tuple[str, Recorded]],
    known: Mapping[uuid.UUID, ProcessState] | None = None,
) -> dict[uuid.UUID, ProcessState]:
    """Fold a committed-to-be batch of ``(stream_type, event)`` into the projection tables.

    Call inside the transaction that appends the same events: the tables then never show
    a state the log does not hold. Raises :class:`InvalidTransition` for a history the
    domain refuses, which rolls the append back. ``known`` holds process states the caller
    already has (saving their reads); the new states of the batch's processes are returned.
    """
    known = known or {}
    by_stream: dict[uuid.UUID, list[Recorded]] = {}
    kinds: dict[uuid.UUID, str] = {}
    for stream_type, recorded in batch:
        by_stream.setdefault(recorded.stream_id, []).append(recorded)
        kinds[recorded.stream_id] = stream_type
    process_ids = [sid for sid, kind in kinds.items() if kind == "process"]
    command_ids = [sid for sid, kind in kinds.items() if kind == "command"]
    new_states: dict[uuid.UUID, ProcessState] = {}
    if process_ids:
        states: dict[uuid.UUID, ProcessState | None] = {
            sid: known[sid] for sid in process_ids if sid in known
        }
        # A stream starting in this batch has no row yet; others may need reading.
        unknown = [s for s in process_ids if s not in states and by_stream[s][0].version > 1]
        if unknown:
            rows = await conn.fetch("SELECT * FROM processes WHERE id = ANY($1::uuid[])", unknown)
            states.update((r["id"], process_from_row(r)) for r in rows)
        full_rows = []
        count_rows = []
        for sid in process_ids:
            old = states.get(sid)
            history = by_stream[sid]
            new = fold_process(old, history)
            new_states[sid] = new
            if old is not None and all(isinstance(r.event, OutputChunk) for r in history):
                # Only output arrived: a narrow update, which PostgreSQL can do in place.
                count_rows.append((sid, new.stdout_bytes, new.stderr_bytes, new.version))
            else:
                full_rows.append(process_to_row(new))
        if full_rows:
            await conn.executemany(_UPSERT_PROCESS, full_rows)
        if count_rows:
            columns = zip(*count_rows, strict=True)
            await conn.execute(_UPDATE_COUNTS, *(list(column) for column in columns))
    if command_ids:
        rows = await conn.fetch("SELECT * FROM commands WHERE id = ANY($1::uuid[])", command_ids)
        commands: dict[uuid.UUID, CommandState | None] = {
            r["id"]: command_from_row(r) for r in rows
        }
        command_rows = []
        version_rows: list[tuple[Any, ...]] = []
        for sid in command_ids:
            cstate = commands.get(sid)
            known_versions = cstate.version if cstate is not None else 0
            for recorded in by_stream[sid]:
                cstate = evolve_command(cstate, recorded)
            assert cstate is not None
            command_rows.append(command_to_row(cstate))
            version_rows.extend(
                command_version_to_row(v) for v in cstate.versions if v.version > known_versions
            )
        await conn.executemany(_UPSERT_COMMAND, command_rows)
        if version_rows:
            await conn.executemany(_INSERT_COMMAND_VERSION, version_rows)
    return new_states


# --- rebuild ------------------------------------------------------------------------


class ProjectionBuilder:
    """Folds a whole log, stream by stream, into fresh projection rows (for replay).

    Output chunks wait in a per-stream run and are folded in one step (``evolve_output``)
    when another event of that stream arrives, or at :meth:`finish`.
    """

    def __init__(self) -> None:
        self.processes: dict[uuid.UUID, ProcessState] = {}
        self.commands: dict[uuid.UUID, CommandState] = {}
        #: Per process stream, its pending run of chunks: (first version, chunk facts).
        #: Replay's hot loop extends a run in place when the next version continues it.
        self.chunk_runs: dict[uuid.UUID, tuple[int, list[ChunkFacts]]] = {}

    def add(self, stream_type: str, recorded: Recorded) -> None:
        sid = recorded.stream_id
        if stream_type == "process":
            if sid in self.chunk_runs:
                self._fold_chunks(sid)
            self.processes[sid] = evolve_process(self.processes.get(sid), recorded)
        else:
            self.commands[sid] = evolve_command(self.commands.get(sid), recorded)

    def add_chunk(self, stream_id: uuid.UUID, version: int, facts: ChunkFacts) -> None:
        pending = self.chunk_runs.get(stream_id)
        if pending is None:
            self.chunk_runs[stream_id] = (version, [facts])
            return
        first, chunks = pending
        if version != first + len(chunks):  # not consecutive: let the fold say so
            self._fold_chunks(stream_id)
            self.chunk_runs[stream_id] = (version, [facts])
            return
        chunks.append(facts)

    def finish(self) -> None:
        for sid in list(self.chunk_runs):
            self._fold_chunks(sid)

    def _fold_chunks(self, stream_id: uuid.UUID) -> None:
        first, chunks = self.chunk_runs.pop(stream_id)
        self.processes[stream_id] = evolve_output(
            self.processes.get(stream_id), stream_id, first, chunks
        )

    def rows(self) -> dict[str, list[tuple[Any, ...]]]:
        return {
            "commands": [command_to_row(c) for c in self.commands.values()],
            "command_versions": [
                command_version_to_row(v) for c in self.commands.values() for v in c.versions
            ],
            "processes": [process_to_row(p) for p in self.processes.values()],
        }

    async def write(self, conn: Connection, *, table_prefix: str = "") -> None:
        """COPY the rebuilt rows into ``{table_prefix}{table}`` for every projection table."""
        for table, rows in self.rows().items():
            if rows:
                await conn.copy_records_to_table(
                    f"{table_prefix}{table}", records=rows, columns=list(_TABLE_COLUMNS[table])
                )
