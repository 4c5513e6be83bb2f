"""The single writer: batches pending appends into few transactions.

Appends arrive from the event loop (``submit``) and from actor threads (``submit_threadsafe``).
One task on the loop drains them, writes each batch in one transaction (COPY into
``events``, the inline projections, one NOTIFY), commits, and only then resolves the
callers and publishes the events to live subscribers: followers see committed events only.

Back-pressure: appends from threads block while too many bytes wait to be written, so a
script printing faster than the database can store waits on its full pipe instead of
growing the server's memory.

Failures: an error after which the database may work again later (lost connection, server
restarting, disk full) retries the batch with back-off until it commits; meanwhile
:attr:`EventWriter.failure` says why appends are not stored. An append made on the loop
with :data:`APPEND_TIMEOUT` set is withdrawn instead, with :class:`StoreUnavailable`, when it
is still not stored after that time and nothing of it can have been committed.

Floods: a stream is in one transaction at a time, so a run printing megabytes stores them one
batch after another. While one of its batches is in its transaction, the stream's next full
batch is prepared in a thread (versions, times, hash chain) from the head the first one
will leave, and written as prepared if, once the first is done, the writer's head of the
stream is exactly that one (:class:`_Lead`). One flood at a time is followed like this.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import contextvars
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

import asyncpg
import structlog

from shelltrail import allocator
from shelltrail.domain import (
    DomainEvent,
    EventDecodeError,
    InvalidTransition,
    ProcessState,
    Recorded,
    encode,
)
from shelltrail.domain import stream_type_of as _stream_type_of
from shelltrail.eventstore.db import Connection
from shelltrail.eventstore.errors import ConcurrencyError, DatabaseUnavailable, StoreClosed
from shelltrail.eventstore.hashing import GENESIS_HASH, canonical_json, event_hash
from shelltrail.eventstore.projections import apply_inline
from shelltrail.eventstore.records import StoredEvent

log = structlog.get_logger(__name__)

NOTIFY_CHANNEL: Final = "shelltrail_events"
_NOTIFY_LIMIT: Final = 7900  # PostgreSQL refuses NOTIFY payloads of 8000 bytes or more
#: A batch carrying at least this many bytes is prepared (encoded and hashed) in a thread.
_PREPARE_IN_THREAD_BYTES: Final = 1024 * 1024
#: Output committed since the last trim after which an idle writer trims the heap.
_TRIM_AFTER_BYTES: Final = 64 * 1024 * 1024
#: The columns the writer fills (the rest are defaults: position, tx_id).
INSERT_COLUMNS: Final = [
    "stream_id",
    "stream_type",
    "version",
    "type",
    "data",
    "payload",
    "recorded_at",
    "hash",
]
#: Errors after which the database may be fine again later: retry the batch, don't fail it.
_TRANSIENT: Final = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,  # another backend crashed; the server restarts
    # Out of a resource (SQLSTATE 53100, 53200, 53300): the transaction is rolled back whole,
    # the same batch commits once the resource is back, and meanwhile back-pressure holds the
    # runs. Failing it would lose their output for good. (53400, a configuration limit, is
    # left out: retrying cannot help an append that exceeds one.)
    asyncpg.DiskFullError,
    asyncpg.OutOfMemoryError,
    asyncpg.TooManyConnectionsError,
    # A connection cut in the middle of an operation can leave asyncpg's protocol in a
    # state it reports this way; the pool drops that connection, and a retry gets another.
    asyncpg.InternalClientError,
)

#: How long an append made on the event loop may wait to be stored, in seconds; ``None``
#: (the default) waits until it is. Past it, the append is withdrawn at the first point where
#: nothing of it can have been committed (still queued, or its batch's transaction failed
#: before COMMIT) and fails with :class:`StoreUnavailable`. The HTTP layer sets it for the
#: appends a request makes, so that no request waits forever for a failing database.
APPEND_TIMEOUT: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "shelltrail_append_timeout", default=None
)

Resolve = Callable[[list[StoredEvent] | BaseException], None]


class StoreUnavailable(DatabaseUnavailable):
    """An append was withdrawn after :data:`APPEND_TIMEOUT`: nothing of it was stored."""


def describe_failure(exc: BaseException) -> str:
    """Why appends are not stored, in words fit for a log line, /readyz and an API error."""
    if isinstance(exc, asyncpg.DiskFullError):
        return "the database's disk is full"
    if isinstance(exc, asyncpg.InsufficientResourcesError):
        return f"the database lacks resources ({exc.sqlstate}: {exc.__class__.__name__})"
    return "the database cannot be reached or is restarting"


@dataclass(slots=True, eq=False)
class _Pending:
    stream_id: uuid.UUID
    stream_type: str
    expected_version: int | None
    events: Sequence[DomainEvent]
    nbytes: int
    from_thread: bool
    resolve: Resolve
    encoded: list[tuple[str, dict[str, Any], bytes | None]] = field(default_factory=list)
    #: Past its APPEND_TIMEOUT: withdraw it at the first safe point.
    expired: bool = False
    timer: asyncio.TimerHandle | None = None


@dataclass(frozen=True, slots=True)
class _Attempt:
    """A batch made ready to write: kept across retries so that they write the same rows."""

    #: The stream heads it was prepared from, and the heads it leaves.
    base: dict[uuid.UUID, tuple[int, bytes]]
    heads: dict[uuid.UUID, tuple[int, bytes]]
    outcomes: list[list[StoredEvent] | BaseException]
    records: list[tuple[Any, ...]]
    recorded: list[tuple[str, Recorded]]


@dataclass(slots=True, eq=False)
class _Lead:
    """A bulk batch of one stream in its transaction, which the stream's next may follow.

    The follower (at most one) is prepared from ``prepared``, the head the lead's rows leave,
    while the lead is still writing; it starts its own transaction once ``finished`` is set,
    and uses what it prepared only if the stream's head is then that one.
    """

    stream_id: uuid.UUID
    prepared: asyncio.Future[tuple[int, bytes] | None]
    finished: asyncio.Event = field(default_factory=asyncio.Event)
    followed: bool = False


@dataclass(slots=True)
class _Try:
    """One try at committing a batch."""

    #: COMMIT was (or may have been) sent: a failure from here on may hide a commit.
    commit_sent: bool = False


@dataclass(frozen=True, slots=True)
class WriterLimits:
    max_batch_events: int = 5000
    max_batch_bytes: int = 8 * 1024 * 1024
    #: Bytes that threads may have waiting before their appends block.
    max_pending_bytes: int = 32 * 1024 * 1024
    #: Transactions committing at once (each stream in at most one): commits wait on the
    #: disk's flush, and PostgreSQL flushes concurrent commits together.
    concurrent_transactions: int = 4
    #: A thread's append of at least ``bulk_bytes`` (a run printing fast) first waits this
    #: long per ``bulk_yield_unit`` bytes it carries (at least once) if requests are being
    #: answered (see :class:`Foreground`); 0 turns it off.
    bulk_yield_seconds: float = 0.005
    bulk_bytes: int = 32 * 1024
    bulk_yield_unit: int = 64 * 1024


class Foreground:
    """Tells whether requests are being answered, the work that bulk output yields to.

    A run printing as fast as it can takes the event loop's time for every byte it stores
    (the COPY), and PostgreSQL's and the actors' share of the CPU; beside it, requests
    took four to six times as long as on an idle server. While the foreground is busy, a
    thread's bulk append waits ``bulk_yield_seconds`` per ``bulk_yield_unit`` it carries
    before it is queued: the run's actor stops reading, the pipe fills, the script blocks
    (back-pressure), and the flood takes what the requests leave. With no request for
    ``RECENT_SECONDS``, output is stored at full speed.

    A request spends most of its time in queues outside its handler (the socket, the
    loop's ready list), so "being answered" also covers the moments just after one: busy
    while anything counts or something stopped counting less than ``RECENT_SECONDS`` ago.

    :meth:`enter` and the release it returns run on the event loop; threads read
    :attr:`busy`.
    """

    RECENT_SECONDS: Final = 0.05

    def __init__(self) -> None:
        self.active = 0
        self._last_done = float("-inf")

    @property
    def busy(self) -> bool:
        return self.active > 0 or time.monotonic() - self._last_done < self.RECENT_SECONDS

    def enter(self) -> Callable[[], None]:
        """Count one piece of work; call the result (once or more) when it is done."""
        self.active += 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self.active -= 1
                self._last_done = time.monotonic()

        return release


class EventWriter:
    """Owns the writing connection. Create, ``start()`` and ``close()`` on the event loop."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        node: str,
        publish: Callable[[list[StoredEvent]], None],
        limits: WriterLimits = WriterLimits(),
        on_health: Callable[[bool], None] = lambda ok: None,
    ) -> None:
        self._pool = pool
        self._node = node
        self._publish = publish
        self._limits = limits
        self._on_health = on_health
        self._queue: collections.deque[_Pending] = collections.deque()
        self._lock = threading.Lock()
        self._space = threading.Condition(self._lock)
        self._pending_bytes = 0
        self._wake_scheduled = False
        self._closing = False
        # Caches of what this writer last committed per stream; a stale entry (another node
        # wrote the stream) makes the next append hit UNIQUE(stream_id, version) and drop it.
        self._heads: dict[uuid.UUID, tuple[int, bytes]] = {}
        self._states: dict[uuid.UUID, ProcessState] = {}
        self._busy: set[uuid.UUID] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        # Why appends are not being stored: the batches retrying now, by a key of their own,
        # and the last error of a batch that ended with every append withdrawn. A commit
        # clears the latter; the loop thread alone updates both.
        self._retrying: dict[object, BaseException] = {}
        self._gave_up: BaseException | None = None
        # Plain counters for /metrics; the loop thread alone updates them.
        self.batches_committed = 0
        self.events_committed = 0
        self.payload_bytes_committed = 0
        self.commit_seconds_total = 0.0
        self._trimmed_at = 0
        #: Times an idle writer handed freed memory back after 64 MiB of output.
        self.memory_trims = 0
        #: Bulk appends from threads that waited for foreground work (see Foreground).
        self.bulk_appends_held = 0
        #: Batches prepared while their stream's previous batch was still being written,
        #: and how many of those were written as prepared (see _Lead).
        self.batches_prepared_ahead = 0
        self.prepared_ahead_used = 0
        self._leads: dict[uuid.UUID, _Lead] = {}
        self._following = 0  # appends of followers waiting for their lead
        self.foreground = Foreground()

    def start(self) -> None:
        """Call on the event loop."""
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._task = asyncio.create_task(self._run(), name="shelltrail-event-writer")

    async def close(self) -> None:
        """Write everything already submitted, then stop. Call on the event loop."""
        with self._lock:
            self._closing = True
            self._space.notify_all()
        self._schedule_wake()
        if self._task is not None:
            task, self._task = self._task, None
            await task

    # --- submitting ---------------------------------------------------------------------

    def submit(
        self,
        stream_id: uuid.UUID,
        events: Sequence[DomainEvent],
        expected_version: int | None,
    ) -> asyncio.Future[list[StoredEvent]]:
        """Queue an append from the event loop; the future resolves after commit."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[StoredEvent]] = loop.create_future()
        pending = self._enqueue(
            stream_id, events, expected_version, _resolver(future), from_thread=False
        )
        timeout = APPEND_TIMEOUT.get()
        if timeout is not None:
            pending.timer = loop.call_later(timeout, self._expire, pending)
        return future

    def submit_threadsafe(
        self,
        stream_id: uuid.UUID,
        events: Sequence[DomainEvent],
        expected_version: int | None,
    ) -> concurrent.futures.Future[list[StoredEvent]]:
        """Queue an append from any thread but the loop's; may block for back-pressure.

        Runs in the caller's thread. Blocks while more than ``max_pending_bytes`` submitted
        from threads wait to be written.
        """
        future: concurrent.futures.Future[list[StoredEvent]] = concurrent.futures.Future()
        self._enqueue(stream_id, events, expected_version, _resolver(future), from_thread=True)
        return future

    def _enqueue(
        self,
        stream_id: uuid.UUID,
        events: Sequence[DomainEvent],
        expected_version: int | None,
        resolve: Resolve,
        *,
        from_thread: bool,
    ) -> _Pending:
        if not events:
            raise ValueError("append needs at least one event")
        stream_type = _stream_type_of(events[0])
        if any(_stream_type_of(e) != stream_type for e in events):
            raise ValueError("all events of one append must belong to one kind of stream")
        encoded = [encode(e) for e in events]
        nbytes = sum(len(p) if p is not None else 200 for _, _, p in encoded)
        if from_thread and nbytes >= self._limits.bulk_bytes and self.foreground.busy:
            pause = self._limits.bulk_yield_seconds
            if pause > 0:
                self.bulk_appends_held += 1  # threads only: a lost increment is harmless
                # One pause per bulk_yield_unit carried, in one sleep: stopping early once
                # no request was being answered let a flood take twice the share beside
                # requests coming and going (load-flood: 21 to 43 MiB/s, reads p50 1.96x).
                time.sleep(pause * max(1, round(nbytes / self._limits.bulk_yield_unit)))
        pending = _Pending(
            stream_id, stream_type, expected_version, events, nbytes, from_thread, resolve, encoded
        )
        with self._lock:
            if from_thread:
                while (
                    not self._closing
                    and self._pending_bytes > 0
                    and self._pending_bytes + nbytes > self._limits.max_pending_bytes
                ):
                    self._space.wait()
            if self._closing:
                raise StoreClosed("the event store is closed")
            if from_thread:
                self._pending_bytes += nbytes
            self._queue.append(pending)
        self._schedule_wake()
        return pending

    @property
    def pending_bytes(self) -> int:
        """Bytes submitted from threads and not yet written (the back-pressure gauge)."""
        return self._pending_bytes

    def live_state(self, process_id: uuid.UUID) -> ProcessState | None:
        """A process's state as this writer last saw committed, while the run is unfinished.

        ``None`` for a run that has ended, one this writer has not written since it started,
        or one whose cached state was dropped (see :meth:`_remember`); read the projection
        then. Runs on the loop, as the cache changes there.
        """
        return self._states.get(process_id)

    @property
    def queued_appends(self) -> int:
        """Appends not yet in a transaction: queued, or taken to follow a batch (_Lead)."""
        return len(self._queue) + self._following

    @property
    def cached_streams(self) -> int:
        """Streams whose chain head or folded state the writer keeps: the unfinished ones."""
        return len(self._heads.keys() | self._states.keys())

    @property
    def failure(self) -> str | None:
        """Why appends are not being stored now (see :func:`describe_failure`), else None."""
        exc = self._current_failure()
        return describe_failure(exc) if exc is not None else None

    def _current_failure(self) -> BaseException | None:
        return next(reversed(self._retrying.values()), None) or self._gave_up

    def _set_failing(self, key: object, exc: BaseException | None) -> None:
        """Record (or with ``None`` clear) the error a batch is retrying on. Loop thread."""
        if exc is None:
            self._retrying.pop(key, None)
        else:
            self._retrying[key] = exc
        self._on_health(self.failure is None)

    def _expire(self, pending: _Pending) -> None:
        """APPEND_TIMEOUT has passed: withdraw the append if it still waits in the queue.

        Runs on the loop. One already in a batch is withdrawn if that batch's transaction
        fails before its COMMIT (:meth:`_write`); if it commits, the append succeeds.
        """
        pending.expired = True
        with self._lock:  # threads append to the queue under the lock
            try:
                self._queue.remove(pending)
            except ValueError:
                return
        self._withdraw(pending, self._current_failure())

    @staticmethod
    def _withdraw(pending: _Pending, cause: BaseException | None) -> None:
        reason = describe_failure(cause) if cause is not None else "the database is too slow"
        log.warning("append withdrawn: not stored in time", reason=reason)
        pending.resolve(
            StoreUnavailable(f"the event log cannot store this now ({reason}); nothing was stored")
        )

    def _schedule_wake(self) -> None:
        with self._lock:
            if self._wake_scheduled or self._loop is None:
                return
            self._wake_scheduled = True
        assert self._wake is not None
        # A closed loop raises RuntimeError: nothing will ever write again, and close() said so.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._wake.set)

    # --- writing ------------------------------------------------------------------------

    async def _run(self) -> None:
        assert self._wake is not None
        in_flight: set[asyncio.Task[None]] = set()

        def done(task: asyncio.Task[None]) -> None:
            # Wake up once the task has left ``in_flight``: the wake-up in _write_batch comes
            # before it has, and one that finds the last batch still there must not be the
            # last, or close() would wait forever.
            in_flight.discard(task)
            assert self._wake is not None
            self._wake.set()

        def spawn(work: Any) -> None:
            task = asyncio.create_task(work)
            in_flight.add(task)
            task.add_done_callback(done)

        while True:
            # A follower waiting for its lead holds no connection: it takes no slot while it
            # waits, and the lead's once the lead is done (at most one flood is followed).
            followers = sum(1 for lead in self._leads.values() if lead.followed)
            while len(in_flight) - followers < self._limits.concurrent_transactions and (
                batch := self._take_batch()
            ):
                spawn(self._write_batch(batch, self._lead_for(batch)))
            while (follow := self._take_follower()) is not None:
                spawn(self._follow(*follow))
            if self._closing and not self._queue and not in_flight:
                return
            await self._wake.wait()
            self._wake.clear()
            with self._lock:
                self._wake_scheduled = False

    def _lead_for(self, batch: list[_Pending]) -> _Lead | None:
        """Make a bulk batch of one stream a lead that the stream's next batch may follow."""
        sid = batch[0].stream_id
        if any(p.stream_id != sid for p in batch) or (
            sum(p.nbytes for p in batch) < _PREPARE_IN_THREAD_BYTES
        ):
            return None
        assert self._loop is not None
        lead = _Lead(sid, self._loop.create_future())
        self._leads[sid] = lead
        return lead

    def _take_follower(self) -> tuple[list[_Pending], _Lead] | None:
        """A full batch of a lead's stream from the queue, to prepare while the lead writes.

        Only appends from threads with no deadline follow (a follower leaves the queue, where
        an expiring append must still be), and only a full batch of 1 MiB or more: one taken
        early would be small, and more small batches cost more than preparing ahead saves.

        One flood at a time: a follower takes its lead's slot without waiting its turn, so
        a chain of them keeps that slot while the flood lasts; the other slots go to the
        oldest appends as before.
        """
        if (
            self._pending_bytes < 2 * _PREPARE_IN_THREAD_BYTES  # no flood: skip the scan
            or any(lead.followed for lead in self._leads.values())
        ):
            return None
        for lead in self._leads.values():
            batch: list[_Pending] = []
            events = nbytes = 0
            full = False
            with self._lock:  # threads append to the queue under the lock
                for nxt in self._queue:
                    if nxt.stream_id != lead.stream_id:
                        continue
                    if not nxt.from_thread or nxt.timer is not None:
                        break
                    if batch and self._overflows(events, nbytes, nxt):
                        full = True
                        break
                    batch.append(nxt)
                    events += len(nxt.events)
                    nbytes += nxt.nbytes
                if not full or nbytes < _PREPARE_IN_THREAD_BYTES:
                    continue
                for pending in batch:
                    self._queue.remove(pending)
            lead.followed = True
            self._following += len(batch)
            return batch, lead
        return None

    async def _follow(self, batch: list[_Pending], lead: _Lead) -> None:
        """Prepare ``batch`` while ``lead`` writes, then write it once the lead is done."""
        prepared: _Attempt | None = None
        base = await lead.prepared
        if base is not None:
            try:
                prepared = await asyncio.to_thread(_prepare, batch, {lead.stream_id: base})
            except Exception:  # the batch is prepared again, and fails there if it must
                log.exception("preparing a batch ahead failed")
            else:
                self.batches_prepared_ahead += 1
        await lead.finished.wait()
        self._following -= len(batch)
        own = self._lead_for(batch)
        if own is not None:
            assert self._wake is not None
            self._wake.set()  # the stream's next full batch may follow this one now
        await self._write_batch(batch, own, prepared)

    async def _write_batch(
        self, batch: list[_Pending], lead: _Lead | None, prepared: _Attempt | None = None
    ) -> None:
        try:
            await self._write(batch, lead, prepared)
        except Exception as exc:
            log.exception("append batch failed unexpectedly")
            self._finish(batch, [exc] * len(batch))
        finally:
            streams = {p.stream_id for p in batch}
            if lead is not None:
                if not lead.prepared.done():
                    lead.prepared.set_result(None)
                del self._leads[lead.stream_id]
                lead.finished.set()
                if lead.followed:
                    streams.discard(lead.stream_id)  # the follower writes it next
            self._busy.difference_update(streams)
            assert self._wake is not None
            self._wake.set()  # streams and a slot are free again (a followed lead passes both on)

    def _take_batch(self) -> list[_Pending]:
        """The oldest appends that fit in one batch, skipping streams being written.

        (Appends taken to follow a batch of their stream have left the queue: _Lead.)

        A stream is in at most one transaction at a time, so its versions, its hash chain
        and its projection row never race; skipped appends keep their order.
        """
        batch: list[_Pending] = []
        skipped: list[_Pending] = []
        held: set[uuid.UUID] = set()
        events = nbytes = 0
        while self._queue:
            nxt = self._queue.popleft()
            if nxt.stream_id in self._busy or nxt.stream_id in held:
                held.add(nxt.stream_id)
                skipped.append(nxt)
                continue
            if batch and self._overflows(events, nbytes, nxt):
                skipped.append(nxt)
                break
            batch.append(nxt)
            events += len(nxt.events)
            nbytes += nxt.nbytes
        self._queue.extendleft(reversed(skipped))
        self._busy.update(p.stream_id for p in batch)
        return batch

    def _overflows(self, events: int, nbytes: int, nxt: _Pending) -> bool:
        """Whether ``nxt`` would take a batch of ``events`` and ``nbytes`` past the limits."""
        return (
            events + len(nxt.events) > self._limits.max_batch_events
            or nbytes + nxt.nbytes > self._limits.max_batch_bytes
        )

    async def _write(  # noqa: PLR0912 -- each way a commit can fail, side by side
        self, batch: list[_Pending], lead: _Lead | None = None, prepared: _Attempt | None = None
    ) -> None:
        delay = 0.05
        attempts: list[_Attempt] = []
        key = object()
        # Once a try has failed after sending COMMIT, it may have committed: retries write
        # the same rows (or find them stored), and nothing is withdrawn from this batch.
        doubtful = False
        reread = False  # an append "at the head" retried once after a stale cached head
        try:
            while True:
                started = time.perf_counter()
                current = _Try()
                try:
                    outcomes = await self._commit(batch, attempts, current, lead, prepared)
                    self.commit_seconds_total += time.perf_counter() - started
                except _TRANSIENT as exc:
                    doubtful = doubtful or current.commit_sent
                    self._forget_states_if_sent(batch, current)
                    self._set_failing(key, exc)
                    _log_retry(exc, delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 2.0)
                    if not doubtful and any(p.expired for p in batch):
                        # Nothing of this batch is stored: give up the appends whose callers
                        # stopped waiting, and prepare the rest afresh.
                        batch = self._withdraw_expired(batch, exc)
                        attempts.clear()
                        prepared = None
                        if not batch:
                            self._gave_up = exc
                            return
                    continue
                except (asyncpg.UniqueViolationError, InvalidTransition, EventDecodeError) as exc:
                    if len(batch) == 1:
                        self._heads.pop(batch[0].stream_id, None)
                        self._states.pop(batch[0].stream_id, None)
                        if (
                            isinstance(exc, asyncpg.UniqueViolationError)
                            and batch[0].expected_version is None
                            and not reread
                        ):
                            # "At the head", and the cached head was stale (another node
                            # wrote the stream): once more, from the head read afresh.
                            reread = True
                            attempts.clear()
                            prepared = None
                            continue
                        outcomes = [_as_store_error(batch[0], exc)]
                    else:
                        # One request spoiled the transaction: give each its own.
                        for pending in batch:
                            await self._write([pending])
                        return
                except asyncpg.PostgresError as exc:
                    if len(batch) > 1:
                        for pending in batch:
                            await self._write([pending])
                        return
                    log.error("append refused by the database", error=str(exc))
                    outcomes = [exc]
                self._gave_up = None  # the database answered
                break
        finally:
            self._set_failing(key, None)
        self._finish(batch, outcomes)

    def _forget_states_if_sent(self, batch: list[_Pending], current: _Try) -> None:
        """Drop the cached states of the batch's streams once its COMMIT was sent.

        A try that failed after that may have committed, so the states may be behind the
        projection; they are read again when next needed.
        """
        if current.commit_sent:
            for pending in batch:
                self._states.pop(pending.stream_id, None)

    def _withdraw_expired(self, batch: list[_Pending], cause: BaseException) -> list[_Pending]:
        """Withdraw the batch's expired appends; return the others."""
        kept = []
        for pending in batch:
            if pending.expired:
                self._withdraw(pending, cause)
            else:
                kept.append(pending)
        return kept

    async def _commit(
        self,
        batch: list[_Pending],
        attempts: list[_Attempt],
        current: _Try,
        lead: _Lead | None,
        prepared: _Attempt | None,
    ) -> list[list[StoredEvent] | BaseException]:
        """Write a batch in one transaction; ``attempts`` remembers what was tried.

        After a lost connection the same rows are written again (same versions, times and
        hashes), unless the first of them is already stored: then the earlier COMMIT went
        through before the connection dropped, and the batch is done.

        ``prepared`` (made while the stream's previous batch was writing) is used if the
        heads it was made from are the heads now; ``lead`` hears the heads this batch leaves.
        """
        async with self._pool.acquire() as conn, _ended_if_lost(conn):
            async with conn.transaction():
                streams = {p.stream_id for p in batch}
                if attempts:
                    attempt = attempts[0]
                    if attempt.records and await self._already_stored(conn, attempt):
                        current.commit_sent = True  # stored already: never withdraw it now
                        self._heads.update(attempt.heads)
                        self._forget_states_if_sent(batch, current)  # re-read when needed
                        return attempt.outcomes
                else:
                    # A request for a new stream (expected version 0) needs no lookup: if the
                    # stream exists after all, the insert fails on its unique version.
                    await self._load_heads(
                        conn, {p.stream_id for p in batch if p.expected_version != 0}
                    )
                    heads = {sid: self._heads[sid] for sid in streams if sid in self._heads}
                    if prepared is not None and prepared.base == heads:
                        attempt = prepared
                        self.prepared_ahead_used += 1
                    elif sum(p.nbytes for p in batch) >= _PREPARE_IN_THREAD_BYTES:
                        # Hashing megabytes of output would hold the event loop, and every
                        # request waiting on it, for milliseconds; hashlib releases the GIL, so
                        # a thread does it beside the loop. The batch's streams are in no other
                        # transaction, so their heads cannot change meanwhile.
                        attempt = await asyncio.to_thread(_prepare, batch, heads)
                    else:
                        attempt = _prepare(batch, heads)
                    attempts.append(attempt)
                    if lead is not None and not lead.prepared.done():
                        lead.prepared.set_result(attempt.heads.get(lead.stream_id))
                states: dict[uuid.UUID, ProcessState] = {}
                if attempt.records:
                    await conn.copy_records_to_table(
                        "events", records=attempt.records, columns=INSERT_COLUMNS
                    )
                    states = await apply_inline(
                        conn,
                        attempt.recorded,
                        {s: self._states[s] for s in streams if s in self._states},
                    )
                    await conn.execute(
                        "SELECT pg_notify($1, $2)",
                        NOTIFY_CHANNEL,
                        self._notify_payload(attempt.heads, batch),
                    )
                current.commit_sent = True  # leaving the block sends COMMIT
            # Committed. The caches change before the connection goes back to the pool
            # (its release lets other tasks run): once an append has resolved, live_state()
            # shows it.
            self._remember(attempt.heads, states)
        return attempt.outcomes

    def _remember(
        self, heads: dict[uuid.UUID, tuple[int, bytes]], states: dict[uuid.UUID, ProcessState]
    ) -> None:
        """Cache what a batch committed: its streams' heads and processes' states."""
        self._heads.update(heads)
        if len(self._states) > 100_000:  # a cache, not a registry
            self._states.clear()
        self._states.update(states)
        # A run that has ended rarely gets another event (a deletion, read back from the
        # log when it comes): forget it, so the caches hold the live runs, not every run ever.
        for sid, state in states.items():
            if state.is_terminal:
                del self._states[sid]
                self._heads.pop(sid, None)

    @staticmethod
    async def _already_stored(conn: Connection, attempt: _Attempt) -> bool:
        stream_id, _, version, *_, digest = attempt.records[0]
        found = await conn.fetchval(
            "SELECT hash FROM events WHERE stream_id = $1 AND version = $2", stream_id, version
        )
        return bool(found == digest)

    async def _load_heads(self, conn: Connection, stream_ids: set[uuid.UUID]) -> None:
        missing = [sid for sid in stream_ids if sid not in self._heads]
        if not missing:
            return
        rows = await conn.fetch(
            """
            SELECT s.id, e.version, e.hash
            FROM unnest($1::uuid[]) AS s(id)
            CROSS JOIN LATERAL (
                SELECT version, hash FROM events
                WHERE stream_id = s.id ORDER BY version DESC LIMIT 1
            ) AS e
            """,
            missing,
        )
        for row in rows:
            self._heads[row["id"]] = (row["version"], row["hash"])
        if len(self._heads) > 100_000:  # a cache, not a registry: start afresh
            self._heads = {row["id"]: (row["version"], row["hash"]) for row in rows}

    def _notify_payload(
        self, heads: dict[uuid.UUID, tuple[int, bytes]], batch: list[_Pending]
    ) -> str:
        streams = {p.stream_id for p in batch}
        text = (
            self._node + " " + " ".join(f"{sid}:{heads[sid][0]}" for sid in streams if sid in heads)
        )
        return text if len(text) <= _NOTIFY_LIMIT else f"{self._node} *"

    def _finish(
        self, batch: list[_Pending], outcomes: list[list[StoredEvent] | BaseException]
    ) -> None:
        freed = sum(p.nbytes for p in batch if p.from_thread)
        if freed:
            with self._lock:
                self._pending_bytes -= freed
                self._space.notify_all()
        published: list[StoredEvent] = []
        for pending, outcome in zip(batch, outcomes, strict=True):
            if pending.timer is not None:
                pending.timer.cancel()
            if not isinstance(outcome, BaseException):
                published.extend(outcome)
                self.events_committed += len(outcome)
                self.payload_bytes_committed += sum(len(e.payload or b"") for e in outcome)
            pending.resolve(outcome)
        self.batches_committed += 1
        if published:
            self._publish(published)
        if (
            self.payload_bytes_committed - self._trimmed_at >= _TRIM_AFTER_BYTES
            and not self._pending_bytes
            and not self._queue
            and self._loop is not None
        ):
            # A flood is through: hand the memory its buffers used back to the system.
            self._trimmed_at = self.payload_bytes_committed
            self.memory_trims += 1
            self._loop.run_in_executor(None, allocator.give_back_free_memory)


def _prepare(batch: list[_Pending], heads: dict[uuid.UUID, tuple[int, bytes]]) -> _Attempt:
    """Versions, times and hashes of a batch's events, from the stream heads it is given.

    A pure function of its arguments (``heads`` is a copy, updated here): it may run in a
    thread beside the event loop.
    """
    base = dict(heads)
    outcomes: list[list[StoredEvent] | BaseException] = []
    records: list[tuple[Any, ...]] = []
    recorded: list[tuple[str, Recorded]] = []
    now = datetime.now(UTC)
    for pending in batch:
        version, previous = heads.get(pending.stream_id, (0, GENESIS_HASH))
        expected = pending.expected_version
        if expected is not None and expected != version:
            outcomes.append(ConcurrencyError(pending.stream_id, expected, version))
            continue
        stored = []
        for event, (type_name, data, payload) in zip(pending.events, pending.encoded, strict=True):
            version += 1
            data_json = canonical_json(data)
            previous = event_hash(
                previous,
                stream_id=pending.stream_id,
                version=version,
                type_name=type_name,
                data_json=data_json,
                recorded_at=now,
                payload=payload,
            )
            stored.append(
                StoredEvent(
                    stream_id=pending.stream_id,
                    stream_type=pending.stream_type,
                    version=version,
                    type=type_name,
                    data=data,
                    payload=payload,
                    recorded_at=now,
                    hash=previous,
                )
            )
            records.append(
                (
                    pending.stream_id,
                    pending.stream_type,
                    version,
                    type_name,
                    data_json,
                    payload,
                    now,
                    previous,
                )
            )
            recorded.append(
                (
                    pending.stream_type,
                    Recorded(
                        stream_id=pending.stream_id,
                        version=version,
                        recorded_at=now,
                        event=event,
                    ),
                )
            )
        heads[pending.stream_id] = (version, previous)
        outcomes.append(stored)
    return _Attempt(base=base, heads=heads, outcomes=outcomes, records=records, recorded=recorded)


@contextlib.asynccontextmanager
async def _ended_if_lost(conn: Connection) -> AsyncIterator[None]:
    """Raise ConnectionDoesNotExistError in the block as soon as ``conn`` is lost.

    asyncpg's COPY (and executemany) waits for the socket to accept more data without
    noticing that the connection is gone: a server that dies while its receive buffer is full
    would leave the writer waiting forever. The block is cancelled instead.
    """
    task = asyncio.current_task()
    assert task is not None
    state = {"inside": True, "lost": False}

    def on_lost(_conn: object) -> None:  # called soon after asyncpg saw the connection end
        if state["inside"]:
            state["lost"] = True
            task.cancel("the database connection was lost")

    conn.add_termination_listener(on_lost)
    try:
        yield
    except BaseException as exc:
        if not state["lost"]:
            raise
        # Ours was the cancel (whatever it became on its way out, e.g. an InterfaceError from
        # the transaction's exit): withdraw it, unless the task was cancelled from outside too.
        if task.uncancel() > 0 and isinstance(exc, asyncio.CancelledError):
            raise
        raise asyncpg.ConnectionDoesNotExistError("the database connection was lost") from exc
    finally:
        state["inside"] = False
        # A lost connection has dropped its listeners, and its proxy refuses every call.
        with contextlib.suppress(asyncpg.InterfaceError):
            conn.remove_termination_listener(on_lost)


def _log_retry(exc: BaseException, delay: float) -> None:
    if isinstance(exc, asyncpg.DiskFullError):
        # The operator's cue: runs are held back (back-pressure) until space is freed.
        log.error(
            "the database's disk is full: appends are retried until space is freed",
            error=str(exc),
            retry_in=delay,
        )
    else:
        log.warning(
            "append failed, retrying", reason=describe_failure(exc), error=str(exc), retry_in=delay
        )


def _resolver(
    future: asyncio.Future[list[StoredEvent]] | concurrent.futures.Future[list[StoredEvent]],
) -> Resolve:
    """Settle ``future`` (once) with the append's stored events or its error."""

    def resolve(result: list[StoredEvent] | BaseException) -> None:
        if future.done():
            return
        if isinstance(result, BaseException):
            future.set_exception(result)
        else:
            future.set_result(result)

    return resolve


def _as_store_error(pending: _Pending, exc: BaseException) -> BaseException:
    if (
        isinstance(exc, asyncpg.UniqueViolationError)
        and exc.constraint_name == "events_stream_version_key"
    ):
        expected = pending.expected_version if pending.expected_version is not None else -1
        return ConcurrencyError(pending.stream_id, expected, None)
    return exc
