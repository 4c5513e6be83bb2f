"""The PostgreSQL event store: append, read, follow.

Open it with :meth:`EventStore.open` and close it with :meth:`EventStore.close`, both on the
event loop. Actor threads append through :meth:`EventStore.append_from_thread`; everything
else is called on the loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Final

import asyncpg
import structlog

from shelltrail.domain import DomainEvent, ProcessState
from shelltrail.eventstore.db import create_pool
from shelltrail.eventstore.records import (
    EVENT_COLUMNS,
    START,
    GlobalPosition,
    StoredEvent,
    event_from_row,
)
from shelltrail.eventstore.subscriptions import SubscriptionHub
from shelltrail.eventstore.writer import NOTIFY_CHANNEL, EventWriter, WriterLimits

log = structlog.get_logger(__name__)

PAGE_SIZE: Final = 1000


class EventStore:
    """Append-only event log over one connection pool."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        writer_pool: asyncpg.Pool | None = None,
        dsn: str,
        node: str,
        limits: WriterLimits | None = None,
    ) -> None:
        self.pool = pool
        self._writer_pool = writer_pool
        self.node = node
        self._dsn = dsn
        self.hub = SubscriptionHub()
        self.healthy = True
        self._writer = EventWriter(
            writer_pool or pool,
            node=node,
            publish=self.hub.publish,
            limits=limits or WriterLimits(),
            on_health=self._set_health,
        )
        self._listener: asyncpg.Connection | None = None
        self._relisten: asyncio.Future[None] | None = None
        self._closing = False

    @classmethod
    async def open(
        cls, dsn: str, *, node: str, limits: WriterLimits | None = None, pool_size: int = 10
    ) -> EventStore:
        limits = limits or WriterLimits()
        # Both pools take connections back without asyncpg's reset query (create_pool says
        # why). asyncpg still drops a connection it finds closed or failing on release, and
        # rolls back a transaction left open.
        pool = await create_pool(dsn, max_size=pool_size)
        writer_pool = await create_pool(dsn, min_size=1, max_size=limits.concurrent_transactions)
        store = cls(pool, writer_pool=writer_pool, dsn=dsn, node=node, limits=limits)
        store._writer.start()
        await store._listen()
        return store

    async def close(self) -> None:
        """Write everything submitted so far, then release the connections."""
        await self._writer.close()
        self._closing = True
        if self._relisten is not None:
            self._relisten.cancel()
        if self._listener is not None:
            await self._listener.close()
            self._listener = None
        if self._writer_pool is not None:
            await self._writer_pool.close()
        await self.pool.close()

    @property
    def writer(self) -> EventWriter:
        return self._writer

    def live_state(self, process_id: uuid.UUID) -> ProcessState | None:
        """An unfinished run's state as this server last stored it, without a query.

        Only for runs this server writes, while they run (:meth:`EventWriter.live_state`);
        ``None`` means: read the projection.
        """
        return self._writer.live_state(process_id)

    def _set_health(self, ok: bool) -> None:
        self.healthy = ok

    # --- appending ----------------------------------------------------------------------

    async def append(
        self,
        stream_id: uuid.UUID,
        events: Sequence[DomainEvent],
        *,
        expected_version: int | None,
    ) -> list[StoredEvent]:
        """Append events to a stream; returns them as stored, after commit.

        ``expected_version`` is the stream's current version (0 for a new stream), or
        ``None`` to append at whatever the head is. Raises :class:`ConcurrencyError` when
        it does not match. Call on the event loop.
        """
        return await self._writer.submit(stream_id, events, expected_version)

    def append_from_thread(
        self,
        stream_id: uuid.UUID,
        events: Sequence[DomainEvent],
        *,
        expected_version: int | None,
    ) -> concurrent.futures.Future[list[StoredEvent]]:
        """Like :meth:`append`, from a thread other than the loop's. May block briefly.

        Blocks while the writer is behind (back-pressure); the returned future resolves
        after commit.
        """
        return self._writer.submit_threadsafe(stream_id, events, expected_version)

    # --- reading ------------------------------------------------------------------------

    async def read_stream(
        self, stream_id: uuid.UUID, *, after: int = 0, limit: int = PAGE_SIZE
    ) -> list[StoredEvent]:
        """Events of one stream with version > ``after``, in version order."""
        rows = await self.pool.fetch(
            f"SELECT {EVENT_COLUMNS} FROM events WHERE stream_id = $1 AND version > $2 "
            "ORDER BY version LIMIT $3",
            stream_id,
            after,
            limit,
        )
        return [event_from_row(r) for r in rows]

    async def read_all(
        self, *, after: GlobalPosition = START, limit: int = PAGE_SIZE
    ) -> list[StoredEvent]:
        """The next committed events of the whole log in a safe, stable order.

        Only events of transactions older than every running one are returned, so the
        order never changes afterwards: pass the last event's ``position`` as ``after``
        to continue, and no event is ever skipped or returned twice.
        """
        rows = await self.pool.fetch(
            f"SELECT {EVENT_COLUMNS} FROM events "
            "WHERE (tx_id, position) > ($1::text::xid8, $2) "
            "AND tx_id < pg_snapshot_xmin(pg_current_snapshot()) "
            "ORDER BY events.tx_id, events.position LIMIT $3",
            str(after.tx_id),
            after.position,
            limit,
        )
        return [event_from_row(r) for r in rows]

    async def stream_version(self, stream_id: uuid.UUID) -> int:
        version = await self.pool.fetchval(
            "SELECT coalesce(max(version), 0) FROM events WHERE stream_id = $1", stream_id
        )
        return int(version)

    def subscribe(self, stream_id: uuid.UUID, *, after: int = 0) -> AsyncIterator[StoredEvent]:
        """Every event of a stream after ``after``: history first, then live; no gap, no repeat."""
        return self._follow(stream_id, after)

    def subscribe_with_idle(
        self, stream_id: uuid.UUID, *, after: int = 0, idle: float | None
    ) -> AsyncIterator[StoredEvent | None]:
        """Like :meth:`subscribe`, with ``None`` after each ``idle`` seconds without events."""
        return self.hub.follow(stream_id, after, self._page, page_size=PAGE_SIZE, idle=idle)

    def subscribe_batches(
        self, stream_id: uuid.UUID, *, after: int = 0, idle: float | None
    ) -> AsyncIterator[list[StoredEvent] | None]:
        """Like :meth:`subscribe_with_idle`, in batches of the events at hand
        (:meth:`SubscriptionHub.follow_batches`)."""
        return self.hub.follow_batches(stream_id, after, self._page, page_size=PAGE_SIZE, idle=idle)

    async def _page(self, stream_id: uuid.UUID, after: int) -> list[StoredEvent]:
        return await self.read_stream(stream_id, after=after, limit=PAGE_SIZE)

    async def _follow(self, stream_id: uuid.UUID, after: int) -> AsyncIterator[StoredEvent]:
        events = self.subscribe_with_idle(stream_id, after=after, idle=None)
        try:
            async for event in events:
                if event is not None:
                    yield event
        finally:
            await events.aclose()  # type: ignore[attr-defined]

    # --- other nodes --------------------------------------------------------------------

    async def _listen(self) -> None:
        # NOTIFY may be missed by a connection that also runs queries: keep this one idle.
        self._listener = await asyncpg.connect(self._dsn)
        await self._listener.add_listener(NOTIFY_CHANNEL, self._on_notify)
        self._listener.add_termination_listener(self._on_listener_lost)

    def _on_listener_lost(self, _conn: object) -> None:
        if self._closing:
            return
        log.warning("lost the notification connection; reconnecting")
        self._relisten = asyncio.ensure_future(self._listen_again())

    async def _listen_again(self) -> None:
        """Reconnect with back-off, then let every follower catch up on what it missed."""
        delay = 0.1
        while not self._closing:
            try:
                await self._listen()
            except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            self.hub.poke(None)
            return

    def _on_notify(self, _conn: object, _pid: int, _channel: str, payload: object) -> None:
        if not isinstance(payload, str):
            return
        node, _, rest = payload.partition(" ")
        if node == self.node:
            return  # our own writer already published these
        if rest == "*":
            self.hub.poke(None)
            return
        for item in rest.split():
            sid, _, _version = item.partition(":")
            try:
                self.hub.poke(uuid.UUID(sid))
            except ValueError:
                log.warning("ignoring a malformed notification", payload=payload[:200])
                return
