"""Errors the domain raises. None of them depends on I/O."""

from __future__ import annotations

import uuid


class DomainError(Exception):
    """Base of every error raised by shelltrail's domain rules."""


class InvalidTransition(DomainError):
    """An event does not fit the history it is appended to (e.g. output after the end)."""

    def __init__(
        self, message: str, *, stream_id: uuid.UUID | None = None, version: int | None = None
    ) -> None:
        super().__init__(message)
        self.stream_id = stream_id
        self.version = version


class EventDecodeError(DomainError):
    """A stored event cannot be turned back into a domain event."""
