"""Replay: projections rebuilt from the log alone equal the inline ones."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

from shelltrail.domain import DomainEvent
from shelltrail.eventstore import EventStore
from shelltrail.eventstore.db import Connection
from shelltrail.eventstore.replay import ReplayError, check, rebuild
from tests.conftest import TEST_NODE
from tests.strategies import (
    command_histories,
    process_histories,
    sample_command_history,
    sample_process_history,
)


async def _rows(conn: Connection, table: str) -> list[asyncpg.Record]:
    return list(await conn.fetch(f"SELECT * FROM {table} ORDER BY 1, 2"))


async def test_rebuild_restores_projections_from_the_log(store: EventStore) -> None:
    """After wiping the projection tables by replay, they equal what inline folding built."""
    for i in range(5):
        await store.append(uuid.uuid4(), sample_process_history(i), expected_version=0)
    for _ in range(3):
        await store.append(uuid.uuid4(), sample_command_history(), expected_version=0)
    async with store.pool.acquire() as conn:
        before = {t: await _rows(conn, t) for t in ("processes", "commands", "command_versions")}
        count = await rebuild(conn)
        after = {t: await _rows(conn, t) for t in ("processes", "commands", "command_versions")}
        _, differences = await check(conn)
    assert count == await store.pool.fetchval("SELECT count(*) FROM events")
    assert before == after
    assert differences == []


async def test_check_names_a_drifted_projection(store: EventStore) -> None:
    """replay --check reports which row and column differ from the log."""
    sid = uuid.uuid4()
    await store.append(sid, sample_process_history(), expected_version=0)
    async with store.pool.acquire() as conn:
        await conn.execute(
            "UPDATE processes SET stdout_bytes = stdout_bytes + 7 WHERE id = $1", sid
        )
        await conn.execute("DELETE FROM command_versions")  # nothing there: no difference
        _, differences = await check(conn)
    assert [(d.table, d.key) for d in differences] == [("processes", str(sid))]
    assert "stdout_bytes" in differences[0].what


async def test_check_names_rows_missing_from_either_side(store: EventStore) -> None:
    sid = uuid.uuid4()
    await store.append(sid, sample_process_history(), expected_version=0)
    async with store.pool.acquire() as conn:
        await conn.execute("DELETE FROM processes WHERE id = $1", sid)
        _, differences = await check(conn)
    assert [d.what for d in differences] == ["missing from the live table"]


async def test_undecodable_event_stops_replay_naming_it(store: EventStore) -> None:
    """An event replay cannot decode stops it with the stream and version, nothing skipped."""
    sid = uuid.uuid4()
    await store.append(sid, sample_process_history(), expected_version=0)
    bad = uuid.uuid4()
    async with store.pool.acquire() as conn:
        await conn.execute(
            "INSERT INTO events (stream_id, stream_type, version, type, data, recorded_at, hash) "
            "VALUES ($1, 'process', 1, 'Teleported', '{}', now(), $2)",
            bad,
            bytes(32),
        )
        before = await _rows(conn, "processes")
        with pytest.raises(
            ReplayError, match=f"event 1 of stream {bad}: unknown event type 'Teleported'"
        ):
            await rebuild(conn)
        with pytest.raises(ReplayError):
            await check(conn)
        # The failed rebuild changed nothing.
        assert await _rows(conn, "processes") == before


class InlineEqualsReplay(RuleBasedStateMachine):
    """Random histories, appended in random slices, project the same inline and by replay."""

    def __init__(self, database_url: str) -> None:
        super().__init__()
        self.database_url = database_url
        self.loop = asyncio.new_event_loop()
        self.store: EventStore | None = None
        self.pending: dict[uuid.UUID, list[DomainEvent]] = {}
        self.written: dict[uuid.UUID, int] = {}

    @initialize()
    def open_store(self) -> None:
        self.store = self.loop.run_until_complete(
            EventStore.open(self.database_url, node=TEST_NODE)
        )

    @rule(history=process_histories() | command_histories())
    def begin_stream(self, history: list[DomainEvent]) -> None:
        sid = uuid.uuid4()
        self.pending[sid] = list(history)
        self.written[sid] = 0

    @rule(data=st.data())
    def append_some(self, data: st.DataObject) -> None:
        open_streams = [sid for sid, events in self.pending.items() if events]
        if not open_streams:
            return
        sid = data.draw(st.sampled_from(open_streams))
        n = data.draw(st.integers(1, len(self.pending[sid])))
        events, self.pending[sid] = self.pending[sid][:n], self.pending[sid][n:]
        assert self.store is not None
        self.loop.run_until_complete(
            self.store.append(sid, events, expected_version=self.written[sid])
        )
        self.written[sid] += n

    @invariant()
    def replay_matches(self) -> None:
        if self.store is None:
            return

        async def compare() -> list[object]:
            assert self.store is not None
            async with self.store.pool.acquire() as conn:
                _, differences = await check(conn)
            return list(differences)

        assert self.loop.run_until_complete(compare()) == []

    def teardown(self) -> None:
        if self.store is not None:
            self.loop.run_until_complete(self.store.close())
        self.loop.close()


def test_inline_projections_equal_replay(database_url: str) -> None:
    """Stateful: whatever the order of appends, `replay --check` finds no difference."""
    run_state_machine_as_test(
        lambda: InlineEqualsReplay(database_url),  # type: ignore[arg-type]
        settings=settings(
            max_examples=15,
            stateful_step_count=12,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            '{"stream": "stdout", "offset": 0, "length": 1, '
            '"captured_at": "2026-01-01T00:00:00+00:00", "extra": 1}',
            "unexpected fields",
        ),
        (
            '{"stream": "stdout", "offset": -1, "length": 1, '
            '"captured_at": "2026-01-01T00:00:00+00:00"}',
            "offset",
        ),
        (
            '{"stream": "stdout", "offset": 0, "length": 1.5, '
            '"captured_at": "2026-01-01T00:00:00+00:00"}',
            "must be an integer",
        ),
        (
            '{"stream": "stdin", "offset": 0, "length": 1, '
            '"captured_at": "2026-01-01T00:00:00+00:00"}',
            "stream",
        ),
        (
            '{"stream": "stdout", "offset": 0, "length": 1, '
            '"captured_at": "2026-02-30T00:00:00+00:00"}',
            "captured_at",
        ),
        (
            '{"stream": "stdout", "offset": 0, "length": "1", '
            '"captured_at": "2026-01-01T00:00:00+00:00"}',
            "must be an integer",
        ),
        (
            '{"stream": "stdout", "offset": 0, "length": 1, "captured_at": "2026-01-01 noon"}',
            "captured_at",
        ),
    ],
)
async def test_malformed_chunks_stop_replay_too(store: EventStore, data: str, message: str) -> None:
    """Chunks take replay's fast path only when well formed; others get the strict decoder."""
    sid = uuid.uuid4()
    history = sample_process_history()
    await store.append(sid, history[:2], expected_version=0)
    async with store.pool.acquire() as conn:
        await conn.execute(
            "INSERT INTO events"
            " (stream_id, stream_type, version, type, data, payload, recorded_at, hash)"
            " VALUES ($1, 'process', 3, 'OutputChunk', $2::text::jsonb, 'x', now(), $3)",
            sid,
            data,
            bytes(32),
        )
        with pytest.raises(ReplayError, match=f"event 3 of stream {sid}: .*{message}"):
            await rebuild(conn)
