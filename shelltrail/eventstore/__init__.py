"""The PostgreSQL event store: migrations, append, reads, live follow, projections, replay."""

from shelltrail.eventstore.db import Connection, create_pool, init_connection
from shelltrail.eventstore.errors import (
    ConcurrencyError,
    DatabaseUnavailable,
    EventStoreError,
    StoreClosed,
)
from shelltrail.eventstore.records import START, GlobalPosition, StoredEvent
from shelltrail.eventstore.store import EventStore
from shelltrail.eventstore.writer import WriterLimits

__all__ = [
    "START",
    "ConcurrencyError",
    "Connection",
    "DatabaseUnavailable",
    "EventStore",
    "EventStoreError",
    "GlobalPosition",
    "StoreClosed",
    "StoredEvent",
    "WriterLimits",
    "create_pool",
    "init_connection",
]
