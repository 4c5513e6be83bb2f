"""Live delivery of committed events to in-process followers of a stream.

A follower registers *before* it reads history, so every event committed after that
moment reaches its queue and every event committed before it is in the history it reads:
no gap is possible, and duplicates are dropped by version. A follower that falls too far
behind loses its queued events and catches up from the database instead, so a slow
follower costs bounded memory.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Final

from shelltrail.eventstore.records import StoredEvent

_QUEUE_SIZE: Final = 1024


class _CatchUp:
    """Queued instead of events when the follower must read from the database."""


CATCH_UP: Final = _CatchUp()


class _Follower:
    __slots__ = ("queue",)

    def __init__(self) -> None:
        self.queue: asyncio.Queue[StoredEvent | _CatchUp] = asyncio.Queue(_QUEUE_SIZE)

    def offer(self, item: StoredEvent | _CatchUp) -> None:
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:
            while not self.queue.empty():
                self.queue.get_nowait()
            self.queue.put_nowait(CATCH_UP)


def _next_batch(
    follower: _Follower, item: StoredEvent | _CatchUp, last: int
) -> tuple[list[StoredEvent], bool]:
    """The events that follow version ``last``: ``item``, then those queued behind it; and
    whether the follower must read from the database (asked to, or a gap: another node
    wrote) before what is still queued."""
    batch: list[StoredEvent] = []
    while True:
        if not isinstance(item, StoredEvent) or item.version > last + 1:
            return batch, True
        if item.version == last + 1:  # else one already read: a duplicate
            batch.append(item)
            last = item.version
        try:
            item = follower.queue.get_nowait()
        except asyncio.QueueEmpty:
            return batch, False


class SubscriptionHub:
    """Followers by stream. Use on the event loop only."""

    def __init__(self) -> None:
        self._followers: dict[uuid.UUID, set[_Follower]] = {}

    @property
    def follower_count(self) -> int:
        return sum(len(f) for f in self._followers.values())

    def publish(self, events: Iterable[StoredEvent]) -> None:
        """Hand committed events to the followers of their streams."""
        for event in events:
            for follower in self._followers.get(event.stream_id, ()):
                follower.offer(event)

    def poke(self, stream_id: uuid.UUID | None) -> None:
        """Tell followers of a stream (or of all, for ``None``) to read from the database."""
        groups = (
            self._followers.values()
            if stream_id is None
            else [self._followers.get(stream_id, set())]
        )
        for group in groups:
            for follower in group:
                follower.offer(CATCH_UP)

    async def follow(
        self,
        stream_id: uuid.UUID,
        after: int,
        read_page: Callable[[uuid.UUID, int], Awaitable[list[StoredEvent]]],
        *,
        page_size: int,
        idle: float | None = None,
    ) -> AsyncIterator[StoredEvent | None]:
        """Every event of a stream after version ``after``, one at a time: the events of
        :meth:`follow_batches`, with its ``None`` for each idle period."""
        batches = self.follow_batches(stream_id, after, read_page, page_size=page_size, idle=idle)
        try:
            async for batch in batches:
                if batch is None:
                    yield None
                    continue
                for event in batch:
                    yield event
        finally:
            await batches.aclose()  # type: ignore[attr-defined]

    async def follow_batches(
        self,
        stream_id: uuid.UUID,
        after: int,
        read_page: Callable[[uuid.UUID, int], Awaitable[list[StoredEvent]]],
        *,
        page_size: int,
        idle: float | None = None,
    ) -> AsyncIterator[list[StoredEvent] | None]:
        """Every event of a stream after version ``after``: history, then live, forever, in
        batches of consecutive versions: a page of history, or the live events queued when
        the follower looked. A writer of a stream (an SSE response) then sends a batch with
        one system call, not one per event.

        ``read_page(stream_id, after)`` returns the next committed events in version order,
        at most ``page_size`` (fewer at the head). With ``idle``, ``None`` is yielded each
        time that many seconds pass without an event (for keep-alives). The caller stops
        by leaving the loop.
        """
        follower = _Follower()
        self._followers.setdefault(stream_id, set()).add(follower)
        last = after
        try:
            catch_up = True  # history first
            while True:
                if catch_up:
                    while True:
                        page = await read_page(stream_id, last)
                        if page:
                            yield page
                            last = page[-1].version
                        if len(page) < page_size:
                            break
                try:
                    item = follower.queue.get_nowait()  # no timer while events flow
                except asyncio.QueueEmpty:
                    try:
                        item = await asyncio.wait_for(follower.queue.get(), idle)
                    except TimeoutError:
                        catch_up = False
                        yield None
                        continue
                batch, catch_up = _next_batch(follower, item, last)
                if batch:
                    yield batch
                    last = batch[-1].version
        finally:
            group = self._followers.get(stream_id)
            if group is not None:
                group.discard(follower)
                if not group:
                    del self._followers[stream_id]
