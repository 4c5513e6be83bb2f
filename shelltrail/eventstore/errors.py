"""Errors raised by the event store."""

from __future__ import annotations

import uuid


class EventStoreError(Exception):
    """Base of the event store's own errors."""


class ConcurrencyError(EventStoreError):
    """An append expected a stream version that is not the stream's current one."""

    def __init__(self, stream_id: uuid.UUID, expected: int, actual: int | None) -> None:
        self.stream_id = stream_id
        self.expected = expected
        self.actual = actual
        now = "unknown (another writer got there first)" if actual is None else str(actual)
        super().__init__(f"stream {stream_id}: expected version {expected}, but it is at {now}")


class StoreClosed(EventStoreError):
    """The store is shutting down and accepts no more appends."""


class DatabaseUnavailable(EventStoreError):
    """The database cannot be reached (at start-up: names the URL, password hidden)."""
