"""Errors the domain raises. None of them depends on I/O."""

from __future__ import annotations


class DomainError(Exception):
    """Base of every error raised by shelltrail's domain rules."""


class InvalidTransition(DomainError):
    """An event does not fit the history it is appended to (e.g. output after the end)."""


class EventDecodeError(DomainError):
    """A stored event cannot be turned back into a domain event."""
