"""The event store against a real PostgreSQL."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from datetime import UTC, datetime

import asyncpg
import pytest

from shelltrail.domain import (
    CommandCreated,
    CommandUpdated,
    Deleted,
    Exited,
    OutputChunk,
    Queued,
    Started,
)
from shelltrail.eventstore import (
    START,
    ConcurrencyError,
    EventStore,
    GlobalPosition,
    StoreClosed,
    WriterLimits,
    create_pool,
)
from shelltrail.eventstore.audit import verify_all, verify_stream
from shelltrail.eventstore.projections import _UPDATE_COUNTS
from shelltrail.eventstore.queries import get_process
from shelltrail.eventstore.records import StoredEvent
from tests.conftest import TEST_NODE
from tests.strategies import sample_process_history

NOW = datetime(2026, 1, 1, tzinfo=UTC)


#: HOT updates of ``processes`` by the current transaction.
_HOT_UPDATES = "SELECT pg_stat_get_xact_tuples_hot_updated('processes'::regclass)"


def queued() -> Queued:
    return Queued(command_id=uuid.uuid4(), command_version=1, script_sha256="0" * 64)


def started() -> Started:
    return Started(pid=100, pgid=100, node=TEST_NODE, started_at=NOW)


def chunk(offset: int, data: bytes, stream: str = "stdout") -> OutputChunk:
    return OutputChunk(stream=stream, offset=offset, length=len(data), captured_at=NOW, data=data)  # type: ignore[arg-type]


async def test_append_then_read_back_byte_exact(store: EventStore) -> None:
    """Events come back in version order with their raw bytes and a chained hash."""
    sid = uuid.uuid4()
    raw = bytes(range(256)) + b"\x00\xff\xfe not utf-8 \xc3"
    stored = await store.append(sid, [queued(), started(), chunk(0, raw)], expected_version=0)
    assert [e.version for e in stored] == [1, 2, 3]
    read = await store.read_stream(sid)
    assert [(e.version, e.type) for e in read] == [
        (1, "Queued"),
        (2, "Started"),
        (3, "OutputChunk"),
    ]
    assert read[2].payload == raw
    assert read[2].recorded().event == chunk(0, raw)
    assert [e.hash for e in read] == [e.hash for e in stored]
    assert len({e.hash for e in read}) == 3


async def test_stale_expected_version_is_a_conflict(store: EventStore) -> None:
    """Appending at a version that is no longer the head raises ConcurrencyError."""
    sid = uuid.uuid4()
    await store.append(sid, [queued()], expected_version=0)
    await store.append(sid, [started()], expected_version=1)
    with pytest.raises(ConcurrencyError) as info:
        await store.append(sid, [chunk(0, b"late")], expected_version=1)
    assert (info.value.expected, info.value.actual) == (1, 2)
    # The failed append wrote nothing, and the stream goes on from its real head.
    await store.append(sid, [chunk(0, b"ok")], expected_version=2)
    assert await store.stream_version(sid) == 3


async def test_two_stores_racing_on_one_stream_conflict(
    database_url: str, store: EventStore
) -> None:
    """The UNIQUE(stream_id, version) guard catches a writer whose head was stale."""
    sid = uuid.uuid4()
    await store.append(sid, [queued(), started()], expected_version=0)
    other = await EventStore.open(database_url, node="other")
    try:
        await other.append(sid, [chunk(0, b"a")], expected_version=2)
        with pytest.raises(ConcurrencyError):
            # `store` still believes the head is 2.
            await store.append(sid, [chunk(0, b"b")], expected_version=2)
    finally:
        await other.close()
    assert [e.payload for e in await store.read_stream(sid, after=2)] == [b"a"]


async def test_a_refused_request_does_not_spoil_its_batch(store: EventStore) -> None:
    """Appends batched with an impossible one still commit; only that one fails."""
    good = [uuid.uuid4() for _ in range(20)]
    bad = uuid.uuid4()
    results = await asyncio.gather(
        *(store.append(sid, [queued()], expected_version=0) for sid in good),
        store.append(bad, [started()], expected_version=0),  # Started before Queued
        return_exceptions=True,
    )
    assert all(isinstance(r, list) for r in results[:-1])
    assert "must be Queued" in str(results[-1])
    assert await store.stream_version(bad) == 0
    for sid in good:
        assert await store.stream_version(sid) == 1


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE events SET type = 'Exited'",
        "DELETE FROM events",
        "TRUNCATE events",
    ],
)
async def test_the_events_table_refuses_changes(store: EventStore, statement: str) -> None:
    """A trigger refuses UPDATE, DELETE and TRUNCATE, whatever the application does."""
    await store.append(uuid.uuid4(), [queued()], expected_version=0)
    async with store.pool.acquire() as conn:
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
            await conn.execute(statement)
        assert await conn.fetchval("SELECT count(*) FROM events") == 1


async def test_global_reader_never_skips_or_repeats(database_url: str) -> None:
    """Concurrent writers with transactions committing out of order; a tailing reader sees
    every event exactly once."""
    writers, per_writer = 6, 40
    pool = await asyncpg.create_pool(database_url, min_size=writers, max_size=writers + 2)
    assert pool is not None
    reader = await EventStore.open(database_url, node="reader")
    expected: set[tuple[uuid.UUID, int]] = set()
    done = asyncio.Event()

    async def write(n: int) -> None:
        rng = random.Random(n)
        for i in range(per_writer):
            sid = uuid.uuid4()
            async with pool.acquire() as conn, conn.transaction():
                # Insert, then hold the transaction open for a while: positions are taken
                # now, commits happen later and out of order.
                await conn.execute(
                    "INSERT INTO events"
                    " (stream_id, stream_type, version, type, data, recorded_at, hash)"
                    " VALUES ($1, 'process', 1, 'Queued', '{}', now(), $2)",
                    sid,
                    bytes(32),
                )
                await asyncio.sleep(rng.uniform(0, 0.02))
            expected.add((sid, 1))
            if i % 7 == 0:
                await asyncio.sleep(0)

    async def tail() -> list[tuple[uuid.UUID, int]]:
        seen: list[tuple[uuid.UUID, int]] = []
        position = START
        while True:
            finished = done.is_set()
            page = await reader.read_all(after=position, limit=50)
            for event in page:
                assert event.position is not None
                assert event.position > position
                position = event.position
                seen.append((event.stream_id, event.version))
            if finished and not page:
                return seen
            if not page:
                await asyncio.sleep(0.002)

    tailer = asyncio.create_task(tail())
    await asyncio.gather(*(write(n) for n in range(writers)))
    done.set()
    seen = await tailer
    await reader.close()
    await pool.close()
    assert len(seen) == len(set(seen)), "an event was read twice"
    assert set(seen) == expected, "an event was skipped"
    assert len(seen) == writers * per_writer


async def test_read_all_pages_in_a_stable_order(store: EventStore) -> None:
    """Paging the whole log returns each event once, in the same order each time."""
    for _ in range(5):
        await store.append(uuid.uuid4(), [queued(), started()], expected_version=0)
    once = await store.read_all(limit=1000)
    paged = []
    position: GlobalPosition = START
    while page := await store.read_all(after=position, limit=3):
        paged.extend(page)
        assert page[-1].position is not None
        position = page[-1].position
    assert [e.hash for e in paged] == [e.hash for e in once]
    assert len(once) == 10


async def test_subscription_gives_history_then_live_without_gap_or_repeat(
    store: EventStore,
) -> None:
    """A follower that joins mid-run gets every version exactly once, in order."""
    sid = uuid.uuid4()
    await store.append(sid, [queued(), started()], expected_version=0)
    total = 600
    received: list[int] = []

    async def follow() -> None:
        async for event in store.subscribe(sid, after=0):
            received.append(event.version)
            if event.type == "Exited":
                return

    async def produce() -> None:
        offset = 0
        for i in range(total):
            data = f"line {i}\n".encode()
            await store.append(sid, [chunk(offset, data)], expected_version=2 + i)
            offset += len(data)
            if i == 100:
                follower_task.set_name("joined")
        await store.append(
            sid, [Exited(exit_code=0, signal=None, finished_at=NOW)], expected_version=2 + total
        )

    producer = asyncio.create_task(produce())
    await asyncio.sleep(0.05)  # join while the run is producing
    follower_task = asyncio.create_task(follow())
    await asyncio.wait_for(asyncio.gather(producer, follower_task), 60)
    assert received == list(range(1, total + 4))


async def test_batches_hold_the_events_at_hand_in_order(store: EventStore) -> None:
    """Followed in batches, a stream comes as a page of history, then as what was queued
    while the follower did not look: one batch, each version once."""
    sid = uuid.uuid4()
    await store.append(sid, [queued(), started()], expected_version=0)
    batches = store.subscribe_batches(sid, after=0, idle=None).__aiter__()
    try:
        history = await batches.__anext__()
        assert history is not None
        assert [e.version for e in history] == [1, 2]
        offset = 0
        for i in range(5):  # five transactions, each published to the follower's queue
            data = b"%d\n" % i
            await store.append(sid, [chunk(offset, data)], expected_version=2 + i)
            offset += len(data)
        live = await batches.__anext__()
        assert live is not None
        assert [e.version for e in live] == [3, 4, 5, 6, 7]
    finally:
        await batches.aclose()  # type: ignore[attr-defined]


async def test_slow_follower_catches_up_from_the_database(store: EventStore) -> None:
    """A follower whose queue overflows still gets every event, from the database."""
    sid = uuid.uuid4()
    await store.append(sid, [queued(), started()], expected_version=0)
    iterator = store.subscribe(sid, after=0).__aiter__()
    first = await iterator.__anext__()
    assert first.version == 1
    offset = 0
    version = 2
    for i in range(3000):  # more than the follower's queue holds
        data = b"%d\n" % i
        await store.append(sid, [chunk(offset, data)], expected_version=version)
        offset += len(data)
        version += 1
    versions = [first.version]
    while versions[-1] < version:
        versions.append((await iterator.__anext__()).version)
    await iterator.aclose()  # type: ignore[attr-defined]
    assert versions == list(range(1, version + 1))


async def test_appends_from_threads_block_when_the_writer_is_behind(database_url: str) -> None:
    """Back-pressure: with a tiny pending limit a thread cannot run ahead of the writer."""
    limits = WriterLimits(max_pending_bytes=64 * 1024)
    store = await EventStore.open(database_url, node=TEST_NODE, limits=limits)
    sid = uuid.uuid4()
    await store.append(sid, [queued(), started()], expected_version=0)
    peak = 0
    errors: list[BaseException] = []

    def produce() -> None:
        nonlocal peak
        try:
            offset, version = 0, 2
            futures = []
            for _ in range(200):
                data = bytes(16 * 1024)
                futures.append(
                    store.append_from_thread(sid, [chunk(offset, data)], expected_version=version)
                )
                peak = max(peak, store.writer._pending_bytes)
                offset += len(data)
                version += 1
            for f in futures:
                f.result(timeout=30)
        except BaseException as exc:  # noqa: BLE001 -- reported to the test below
            errors.append(exc)

    # Run the producer in a thread while the loop keeps writing.
    await asyncio.to_thread(produce)
    assert not errors
    assert 0 < peak <= limits.max_pending_bytes
    assert await store.stream_version(sid) == 202
    await store.close()


async def test_closed_store_refuses_appends(database_url: str) -> None:
    """After close, appends fail clearly instead of hanging."""
    store = await EventStore.open(database_url, node=TEST_NODE)
    await store.close()
    with pytest.raises(StoreClosed):
        await store.append(uuid.uuid4(), [queued()], expected_version=0)


async def test_projections_are_updated_in_the_appending_transaction(store: EventStore) -> None:
    """After an append commits, the projection rows already show it."""
    cid = uuid.uuid4()
    await store.append(cid, [CommandCreated(name="hello", script="echo hi")], expected_version=0)
    await store.append(cid, [CommandUpdated(name="hello", script="echo bye")], expected_version=1)
    pid = uuid.uuid4()
    await store.append(
        pid, [queued(), started(), chunk(0, b"abc"), chunk(0, b"de", "stderr")], expected_version=0
    )
    row = await store.pool.fetchrow("SELECT * FROM processes WHERE id = $1", pid)
    assert row is not None
    assert (row["status"], row["stdout_bytes"], row["stderr_bytes"], row["version"]) == (
        "running",
        3,
        2,
        4,
    )
    command = await store.pool.fetchrow("SELECT * FROM commands WHERE id = $1", cid)
    assert command is not None
    assert (command["version"], command["script"]) == (2, "echo bye")
    versions = await store.pool.fetch(
        "SELECT version, script FROM command_versions WHERE command_id = $1 ORDER BY version", cid
    )
    assert [(v["version"], v["script"]) for v in versions] == [(1, "echo hi"), (2, "echo bye")]


async def test_live_state_is_the_stored_projection_until_the_run_ends(store: EventStore) -> None:
    """What the writer keeps of an unfinished run equals its projection row, event by event."""
    pid = uuid.uuid4()
    assert store.live_state(pid) is None  # never written here: read the projection
    history = sample_process_history()
    for version, event in enumerate(history):
        await store.append(pid, [event], expected_version=version)
        stored = await get_process(store.pool, pid)
        assert stored is not None
        assert stored.version == version + 1
        if stored.is_terminal:
            assert store.live_state(pid) is None
        else:
            assert store.live_state(pid) == stored
            assert repr(store.live_state(pid)) == repr(stored)  # time zones included
    assert version + 1 == len(history)


async def test_output_counts_are_updated_in_place(store: EventStore) -> None:
    """Counting output rewrites a process row on its own page, touching no index (HOT)."""
    pids = [uuid.uuid4() for _ in range(200)]  # several pages of rows
    await asyncio.gather(*(store.append(pid, [queued()], expected_version=0) for pid in pids))
    chosen = pids[::20]
    n = len(chosen)
    async with store.pool.acquire() as conn, conn.transaction():
        await conn.execute(_UPDATE_COUNTS, chosen, [1] * n, [0] * n, [2] * n)
        assert await conn.fetchval(_HOT_UPDATES) == n
    async with store.pool.acquire() as conn:
        options = await conn.fetchval("SELECT reloptions FROM pg_class WHERE relname = 'processes'")
    assert "fillfactor=70" in options


async def test_hash_chain_detects_a_changed_payload_byte(store: EventStore) -> None:
    """Changing one payload byte (trigger disabled by a superuser) is found by the audit."""
    sid = uuid.uuid4()
    await store.append(
        sid, [queued(), started(), chunk(0, b"hello"), chunk(5, b"world")], expected_version=0
    )
    async with store.pool.acquire() as conn:
        assert (await verify_stream(conn, sid)).verified
        await conn.execute("ALTER TABLE events DISABLE TRIGGER events_append_only")
        await conn.execute(
            "UPDATE events SET payload = 'jello'::bytea WHERE stream_id = $1 AND version = 3", sid
        )
        await conn.execute("ALTER TABLE events ENABLE TRIGGER events_append_only")
        audit = await verify_stream(conn, sid)
        streams, bad = await verify_all(conn)
    assert (audit.verified, audit.first_bad_version, audit.events) == (False, 3, 4)
    assert streams == 1
    assert [(b.stream_id, b.first_bad_version) for b in bad] == [(sid, 3)]


async def test_followers_see_other_nodes_events_after_the_listener_drops(
    database_url: str, store: EventStore, server_url: str
) -> None:
    """Another node's appends reach live followers, also after the NOTIFY connection was cut."""
    other = await EventStore.open(database_url, node="node-b")
    sid = uuid.uuid4()
    try:
        await other.append(sid, [queued(), started()], expected_version=0)
        received: asyncio.Queue[int] = asyncio.Queue()

        async def follow() -> None:
            async for event in store.subscribe(sid):
                received.put_nowait(event.version)
                if event.version == 4:
                    return

        follower = asyncio.create_task(follow())
        assert [await asyncio.wait_for(received.get(), 10) for _ in range(2)] == [1, 2]
        await other.append(sid, [chunk(0, b"one")], expected_version=2)  # via NOTIFY
        assert await asyncio.wait_for(received.get(), 10) == 3
        assert store._listener is not None
        admin = await asyncpg.connect(server_url)
        try:
            await admin.execute("SELECT pg_terminate_backend($1)", store._listener.get_server_pid())
        finally:
            await admin.close()
        await other.append(sid, [chunk(3, b"two")], expected_version=3)
        assert await asyncio.wait_for(received.get(), 20) == 4
        await asyncio.wait_for(follower, 5)
    finally:
        await other.close()


async def test_the_writer_forgets_streams_that_ended(store: EventStore) -> None:
    """The writer's per-stream caches hold unfinished runs only, however many have ended;
    a later event of an ended stream (a deletion) still appends at the right version."""
    history = sample_process_history()
    ended = [uuid.uuid4() for _ in range(30)]
    running = [uuid.uuid4() for _ in range(5)]
    for sid in ended:
        for version, event in enumerate(history):
            await store.append(sid, [event], expected_version=version)
    for sid in running:
        await store.append(sid, history[:2], expected_version=0)
    assert store.writer.cached_streams == len(running)
    deleted = await store.append(
        ended[0], [Deleted(requested_by="tester")], expected_version=len(history)
    )
    assert deleted[0].version == len(history) + 1
    async with store.pool.acquire() as conn:
        assert (await verify_stream(conn, ended[0])).verified


async def test_pool_returns_connections_without_a_reset_round_trip(database_url: str) -> None:
    """Release costs no query of its own, and still ends a transaction left open."""
    pool = await create_pool(database_url, min_size=1, max_size=1)
    try:
        async with pool.acquire() as conn:
            pid = await conn.fetchval("SELECT pg_backend_pid()")
            await conn.execute("BEGIN")  # left open on purpose
        async with pool.acquire() as conn:
            assert await conn.fetchval("SELECT pg_backend_pid()") == pid  # the same session
            assert not conn.is_in_transaction()
        observer = await asyncpg.connect(database_url)
        try:
            last_query = await observer.fetchval(
                "SELECT query FROM pg_stat_activity WHERE pid = $1", pid
            )
        finally:
            await observer.close()
        # asyncpg's default release runs "RESET ALL; UNLISTEN *; ..." and that would show.
        assert last_query == "SELECT pg_backend_pid()"
    finally:
        await pool.close()


async def test_bulk_appends_from_threads_yield_to_foreground_work(store: EventStore) -> None:
    """While requests are answered, a thread's bulk append waits; small ones never do."""
    writer = store.writer
    sid = uuid.uuid4()
    await store.append(sid, [queued(), started()], expected_version=0)
    bulk, small = bytes(writer._limits.bulk_bytes), b"one line\n"

    def append_in_thread(offset: int, data: bytes, version: int) -> float:
        began = time.perf_counter()
        future = store.append_from_thread(sid, [chunk(offset, data)], expected_version=version)
        queued_after = time.perf_counter() - began
        future.result(timeout=30)
        return queued_after

    # Nothing in the foreground: no append is held.
    await asyncio.to_thread(append_in_thread, 0, bulk, 2)
    assert writer.bulk_appends_held == 0

    release = writer.foreground.enter()
    try:
        waited = await asyncio.to_thread(append_in_thread, len(bulk), bulk, 3)
        assert writer.bulk_appends_held == 1
        assert waited >= writer._limits.bulk_yield_seconds
        await asyncio.to_thread(append_in_thread, 2 * len(bulk), small, 4)
        assert writer.bulk_appends_held == 1  # small output is never held
        await store.append(sid, [chunk(2 * len(bulk) + len(small), bulk)], expected_version=5)
        assert writer.bulk_appends_held == 1  # nor the loop's own appends
        # A larger append waits in proportion: 4 x 64 KiB, four pauses.
        at = 3 * len(bulk) + len(small)
        big = bytes(4 * writer._limits.bulk_yield_unit)
        waited = await asyncio.to_thread(append_in_thread, at, big, 6)
        assert writer.bulk_appends_held == 2
        assert waited >= 4 * writer._limits.bulk_yield_seconds
    finally:
        release()
        release()  # idempotent: counted once, released once
    assert writer.foreground.active == 0

    def busy() -> bool:
        return writer.foreground.busy

    assert busy()  # a request just answered: still busy for a moment
    deadline = time.monotonic() + 5
    while busy():
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)
    await asyncio.to_thread(append_in_thread, at + len(big), bulk, 7)
    assert writer.bulk_appends_held == 2
    assert await store.stream_version(sid) == 8


async def test_an_idle_writer_gives_memory_back_after_a_flood(store: EventStore) -> None:
    """After 64 MiB of output, once nothing waits, the writer trims the heap; not before."""
    writer = store.writer
    sid = uuid.uuid4()
    await store.append(sid, [queued(), started()], expected_version=0)
    piece = bytes(range(256)) * 256  # 64 KiB

    def flood(pieces: int, offset: int, version: int) -> None:
        futures = [
            store.append_from_thread(
                sid, [chunk(offset + i * len(piece), piece)], expected_version=version + i
            )
            for i in range(pieces)
        ]
        for f in futures:
            f.result(timeout=60)

    await asyncio.to_thread(flood, 512, 0, 2)  # 32 MiB
    assert writer.memory_trims == 0
    await asyncio.to_thread(flood, 512, 512 * len(piece), 514)  # 64 MiB in all
    deadline = time.monotonic() + 10
    while writer.memory_trims == 0:  # the last batch may still be finishing
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)
    assert writer.memory_trims == 1
    assert await store.stream_version(sid) == 2 + 1024


def _flood_from_the_loop(
    store: EventStore, sid: uuid.UUID, pieces: list[bytes], *, first_version: int
) -> list[asyncio.Future[list[StoredEvent]]]:
    """Queue one append per piece at once, as an actor would from its thread.

    Submitted from the loop thread without a pause, so every append is queued before the
    writer takes its first batch.
    """
    futures = []
    offset = 0
    for i, piece in enumerate(pieces):
        submitted = store.append_from_thread(
            sid, [chunk(offset, piece)], expected_version=first_version + i
        )
        futures.append(asyncio.wrap_future(submitted))
        offset += len(piece)
    return futures


async def test_a_floods_next_batch_is_prepared_while_the_one_before_commits(
    database_url: str,
) -> None:
    """A stream's next full batch is hashed ahead, used as prepared, and the chain holds."""
    store = await EventStore.open(
        database_url, node=TEST_NODE, limits=WriterLimits(max_batch_bytes=2 * 1024 * 1024)
    )
    try:
        sid = uuid.uuid4()
        await store.append(sid, [queued(), started()], expected_version=0)
        pieces = [random.randbytes(64 * 1024) for _ in range(128)]  # 4 batches of 2 MiB
        await asyncio.gather(*_flood_from_the_loop(store, sid, pieces, first_version=2))
        # The 2nd and 3rd batch each followed a full one; the 4th had nothing behind it.
        assert (store.writer.batches_prepared_ahead, store.writer.prepared_ahead_used) == (2, 2)
        stored = await store.read_stream(sid, after=2, limit=1000)
        assert [e.version for e in stored] == list(range(3, 131))
        assert [e.payload for e in stored] == pieces
        recorded = [e.recorded_at for e in stored]
        assert recorded == sorted(recorded)
        async with store.pool.acquire() as conn:
            assert (await verify_stream(conn, sid)).verified
        state = store.live_state(sid)
        assert state is not None
        assert state.stdout_bytes == 128 * 64 * 1024
    finally:
        await store.close()


async def test_a_batch_prepared_ahead_is_prepared_again_when_the_head_moved(
    database_url: str,
) -> None:
    """The lead batch fails on a head another node moved: its follower is not used as is."""
    store = await EventStore.open(
        database_url, node=TEST_NODE, limits=WriterLimits(max_batch_bytes=2 * 1024 * 1024)
    )
    other = await EventStore.open(database_url, node="other")
    try:
        sid = uuid.uuid4()
        await store.append(sid, [queued(), started()], expected_version=0)
        pieces = [random.randbytes(64 * 1024) for _ in range(96)]
        # Behind the writer's back: its cached head (version 2) is now stale.
        await other.append(sid, [chunk(0, pieces[0])], expected_version=2)
        results = await asyncio.gather(
            *_flood_from_the_loop(store, sid, pieces, first_version=2), return_exceptions=True
        )
        assert isinstance(results[0], ConcurrencyError)  # version 3 was the other node's
        assert all(isinstance(r, list) for r in results[1:])
        writer = store.writer
        assert writer.batches_prepared_ahead >= 1
        assert writer.prepared_ahead_used < writer.batches_prepared_ahead
        stored = await store.read_stream(sid, after=2, limit=1000)
        assert [e.version for e in stored] == list(range(3, 99))
        assert [e.payload for e in stored] == pieces
        async with store.pool.acquire() as conn:
            assert (await verify_stream(conn, sid)).verified
    finally:
        await other.close()
        await store.close()
