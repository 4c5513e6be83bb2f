"""Rebuild the projection tables from the event log alone, or check them against it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import asyncpg

from shelltrail.domain import DomainError, InvalidTransition, Recorded, decode
from shelltrail.domain.codec import chunk_facts
from shelltrail.domain.process import ChunkFacts
from shelltrail.eventstore.db import Connection
from shelltrail.eventstore.projections import TABLES, ProjectionBuilder

# Replay needs each chunk's stream, offset, length (and a valid captured_at), never its
# bytes or its JSON. PostgreSQL checks the shape cheaply and hands over the four fields as
# text; Python checks their values (and falls back to the strict decoder, which names what
# is wrong). Everything else comes back as `data` and goes through the decoder. The ORDER
# BY sits inside the subquery (computing `fast` once per row): that way PostgreSQL walks the
# primary key in order instead of sorting the whole log, wide rows and all, on disk.
_CHUNK_SHAPE: Final = """(
    e.type = 'OutputChunk' AND e.stream_type = 'process'
    AND e.data - '{stream,offset,length,captured_at}'::text[] = '{}'::jsonb
    AND jsonb_typeof(e.data->'stream') = 'string'
    AND jsonb_typeof(e.data->'offset') = 'number'
    AND jsonb_typeof(e.data->'length') = 'number'
    AND jsonb_typeof(e.data->'captured_at') = 'string'
)"""
_REPLAY_QUERY: Final = f"""
SELECT stream_id, version,
       CASE WHEN fast THEN data->>'stream' END AS chunk_stream,
       CASE WHEN fast THEN data->>'offset' END AS chunk_offset,
       CASE WHEN fast THEN data->>'length' END AS chunk_length,
       CASE WHEN fast THEN data->>'captured_at' END AS chunk_captured_at,
       CASE WHEN fast THEN NULL ELSE stream_type END AS stream_type,
       CASE WHEN fast THEN NULL ELSE type END AS type,
       CASE WHEN fast THEN NULL ELSE data END AS data,
       CASE WHEN fast THEN NULL ELSE recorded_at END AS recorded_at
FROM (SELECT e.*, {_CHUNK_SHAPE} AS fast FROM events e ORDER BY position OFFSET 0) AS e
"""
_FETCH: Final = 10_000


class ReplayError(Exception):
    """An event in the log cannot be decoded or does not fit its stream's history."""

    def __init__(self, stream_id: Any, version: int, reason: str) -> None:
        self.stream_id = stream_id
        self.version = version
        super().__init__(f"event {version} of stream {stream_id}: {reason}")


@dataclass(frozen=True, slots=True)
class Difference:
    table: str
    key: str
    what: str

    def __str__(self) -> str:
        return f"{self.table} {self.key}: {self.what}"


def _chunk_from_text(stream: str, offset: str, length: str, captured_at: str) -> ChunkFacts:
    """Check a chunk's fields as the decoder would; on any doubt, let the decoder say why.

    `offset` and `length` are the text of JSON numbers (the query checked their type), so
    they are ASCII, and ``isdigit`` accepts exactly the non-negative integers.
    """
    if (stream == "stdout" or stream == "stderr") and offset.isdigit() and length.isdigit():  # noqa: PLR1714 -- faster than a set
        try:
            parsed: datetime | None = datetime.fromisoformat(captured_at)
        except ValueError:
            parsed = None
        if parsed is not None and parsed.tzinfo is not None:
            return stream, int(offset), int(length)
    data = {
        "stream": stream,
        "offset": json.loads(offset),
        "length": json.loads(length),
        "captured_at": captured_at,
    }
    return chunk_facts(data)


def _fold_page(builder: ProjectionBuilder, page: list[asyncpg.Record]) -> None:
    """Fold one page of rows; the loop is this module's hot path, kept free of await.

    A chunk that continues its stream's pending run is appended to it here, without a call
    into the builder: that is nearly every row of a real log.
    """
    add_chunk = builder.add_chunk
    runs = builder.chunk_runs
    row = None
    try:
        for row in page:
            if row[2] is not None:  # a chunk of the right shape, unpacked by the query
                facts = _chunk_from_text(row[2], row[3], row[4], row[5])
                run = runs.get(row[0])
                if run is not None and row[1] == run[0] + len(run[1]):
                    run[1].append(facts)
                else:
                    add_chunk(row[0], row[1], facts)
            elif row["type"] == "OutputChunk" and row["stream_type"] == "process":
                add_chunk(row["stream_id"], row["version"], chunk_facts(row["data"]))
            else:
                recorded = Recorded(
                    stream_id=row["stream_id"],
                    version=row["version"],
                    recorded_at=row["recorded_at"],
                    event=decode(row["type"], row["data"], None),
                )
                builder.add(row["stream_type"], recorded)
    except InvalidTransition as exc:
        assert row is not None
        # A run of chunks is folded later: the error knows which event it was.
        version = exc.version if exc.version is not None else row["version"]
        stream_id = exc.stream_id if exc.stream_id is not None else row["stream_id"]
        raise ReplayError(stream_id, version, str(exc)) from None
    except DomainError as exc:
        assert row is not None
        raise ReplayError(row["stream_id"], row["version"], str(exc)) from None


async def _pages_read_ahead(conn: Connection) -> AsyncIterator[list[asyncpg.Record]]:
    """The replay query's rows by page; the next page is computed while this one is folded."""
    cursor = await conn.cursor(_REPLAY_QUERY)
    pending = asyncio.ensure_future(cursor.fetch(_FETCH))
    while rows := await pending:
        pending = asyncio.ensure_future(cursor.fetch(_FETCH))
        await asyncio.sleep(0)  # send the request before folding this page
        yield rows


async def fold_log(conn: Connection) -> tuple[ProjectionBuilder, int]:
    """Fold every event into fresh projections. Call inside a transaction.

    Within one stream, position order is version order (version n+1 is written only once
    version n is committed), so one pass in position order serves every stream.
    """
    builder = ProjectionBuilder()
    count = 0
    async for page in _pages_read_ahead(conn):
        _fold_page(builder, page)
        count += len(page)
    try:
        builder.finish()
    except InvalidTransition as exc:
        raise ReplayError(exc.stream_id, exc.version or 0, str(exc)) from None
    return builder, count


async def rebuild(conn: Connection) -> int:
    """Replace the projection tables with a fold of the log; return the events replayed.

    Appends wait meanwhile (the log is locked against writes, not against reads).
    """
    async with conn.transaction():
        await conn.execute("LOCK TABLE events IN EXCLUSIVE MODE")
        builder, count = await fold_log(conn)
        await conn.execute(f"TRUNCATE {', '.join(TABLES)}")
        await builder.write(conn)
    return count


async def check(conn: Connection) -> tuple[int, list[Difference]]:
    """Rebuild into scratch tables from one snapshot and compare with the live tables."""
    async with conn.transaction(isolation="repeatable_read"):
        for table in TABLES:
            await conn.execute(
                f"CREATE TEMP TABLE replay_{table} (LIKE {table} INCLUDING DEFAULTS) ON COMMIT DROP"
            )
        builder, count = await fold_log(conn)
        await builder.write(conn, table_prefix="replay_")
        differences: list[Difference] = []
        for table, key in TABLES.items():
            differences.extend(await _compare(conn, table, key))
    return count, differences


async def _compare(conn: Connection, table: str, key: tuple[str, ...]) -> list[Difference]:
    on = " AND ".join(f"l.{k} = r.{k}" for k in key)
    rows = await conn.fetch(
        f"SELECT to_jsonb(l) AS live, to_jsonb(r) AS rebuilt FROM {table} l "
        f"FULL JOIN replay_{table} r ON {on} "
        "WHERE to_jsonb(l) IS DISTINCT FROM to_jsonb(r) LIMIT 100"
    )
    found = []
    for row in rows:
        live, rebuilt = row["live"], row["rebuilt"]
        some = live if live is not None else rebuilt
        ident = "/".join(str(some[k]) for k in key)
        if live is None:
            found.append(Difference(table, ident, "missing from the live table"))
        elif rebuilt is None:
            found.append(Difference(table, ident, "in the live table but not in the log"))
        else:
            columns = sorted(c for c in live if live[c] != rebuilt.get(c))
            detail = ", ".join(f"{c}: live {live[c]!r} != log {rebuilt.get(c)!r}" for c in columns)
            found.append(Difference(table, ident, detail))
    return found
