"""Turn domain events into stored rows and back.

A stored event is its ``type`` (the class name), a JSON object ``data`` and an optional raw
``payload``. Output bytes travel in ``payload`` only, never in JSON: scripts print NUL bytes
and invalid UTF-8. Decoding is strict: an unknown type, a missing or unexpected field or a
value of the wrong type raises :class:`EventDecodeError`, so nothing is ever silently skipped.
"""

from __future__ import annotations

import dataclasses
import types
import typing
import uuid
from datetime import datetime
from typing import Any, Final, Literal

from shelltrail.domain.errors import EventDecodeError
from shelltrail.domain.events import (
    COMMAND_EVENT_TYPES,
    PROCESS_EVENT_TYPES,
    DomainEvent,
    OutputChunk,
)

EVENT_CLASSES: Final[dict[str, type[DomainEvent]]] = {
    cls.__name__: cls for cls in (*COMMAND_EVENT_TYPES, *PROCESS_EVENT_TYPES)
}

#: Field of a class whose value is stored as the row's ``payload`` instead of in JSON.
_PAYLOAD_FIELD: Final = "data"
_PAYLOAD_CLASSES: Final[frozenset[type[Any]]] = frozenset({OutputChunk})


def stream_type_of(event: DomainEvent) -> str:
    """The kind of stream an event belongs to: ``command`` or ``process``."""
    return "command" if isinstance(event, COMMAND_EVENT_TYPES) else "process"


def encode(event: DomainEvent) -> tuple[str, dict[str, Any], bytes | None]:
    """Return ``(type, data, payload)`` for an event."""
    cls = type(event)
    names = _FIELD_NAMES.get(cls)
    if names is None:
        names = _FIELD_NAMES[cls] = tuple(f.name for f in dataclasses.fields(cls))
    payload: bytes | None = None
    data: dict[str, Any] = {}
    carries_payload = cls in _PAYLOAD_CLASSES
    for name in names:
        value = getattr(event, name)
        if carries_payload and name == _PAYLOAD_FIELD:
            if value is None:
                raise ValueError(f"{cls.__name__} without its bytes cannot be stored")
            payload = value
            continue
        data[name] = value if type(value) in _PLAIN else _to_json(value)
    return cls.__name__, data, payload


_FIELD_NAMES: dict[type[Any], tuple[str, ...]] = {}
_PLAIN: Final = frozenset({str, int, float, bool, type(None)})


def decode(type_name: str, data: Any, payload: bytes | None) -> DomainEvent:
    """Rebuild an event from its stored form, refusing anything that does not fit.

    ``payload`` may be ``None`` for an ``OutputChunk`` when the caller only needs its
    metadata (replay): the chunk's ``data`` is then ``None`` too.
    """
    cls = EVENT_CLASSES.get(type_name)
    if cls is None:
        raise EventDecodeError(f"unknown event type {type_name!r}")
    if not isinstance(data, dict):
        raise EventDecodeError(f"{type_name}: data is not a JSON object")
    hints = _hints(cls)
    kwargs: dict[str, Any] = {}
    if cls in _PAYLOAD_CLASSES:
        if _PAYLOAD_FIELD in data:
            raise EventDecodeError(f"{type_name}: bytes belong in the payload, not in data")
        kwargs[_PAYLOAD_FIELD] = payload
    unexpected = set(data) - set(hints)
    if unexpected:
        raise EventDecodeError(f"{type_name}: unexpected fields {sorted(unexpected)}")
    for f in dataclasses.fields(cls):
        if f.name in kwargs:
            continue
        if f.name not in data:
            has_default = (
                f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
            )
            if has_default:
                continue
            raise EventDecodeError(f"{type_name}: missing field {f.name!r}")
        try:
            kwargs[f.name] = _from_json(hints[f.name], data[f.name])
        except (TypeError, ValueError) as exc:
            raise EventDecodeError(f"{type_name}.{f.name}: {exc}") from None
    try:
        return cls(**kwargs)
    except ValueError as exc:
        raise EventDecodeError(f"{type_name}: {exc}") from None


_CHUNK_KEYS: Final = frozenset({"stream", "offset", "length", "captured_at"})


def chunk_facts(data: Any) -> tuple[str, int, int]:
    """``(stream, offset, length)`` of a stored OutputChunk, as strictly as :func:`decode`.

    The fast path of replay: well-formed chunk data is checked field by field without
    building the event; anything unusual goes through :func:`decode` for its exact error.
    """
    if isinstance(data, dict) and data.keys() == _CHUNK_KEYS:
        stream, offset, length = data["stream"], data["offset"], data["length"]
        captured_at = data["captured_at"]
        if (
            (stream == "stdout" or stream == "stderr")  # noqa: PLR1714 -- faster than a set
            and type(offset) is int
            and type(length) is int
            and offset >= 0
            and length >= 0
            and type(captured_at) is str
        ):
            try:
                parsed = datetime.fromisoformat(captured_at)
            except ValueError:
                parsed = None
            if parsed is not None and parsed.tzinfo is not None:
                return stream, offset, length
    event = decode("OutputChunk", data, None)
    assert isinstance(event, OutputChunk)
    return event.stream, event.offset, event.length


def _to_json(value: Any) -> Any:
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, tuple):
        return [_to_json(v) for v in value]
    if isinstance(value, dict):
        return {k: _to_json(v) for k, v in value.items()}
    return value


_HINTS_CACHE: dict[type[Any], dict[str, Any]] = {}


def _hints(cls: type[Any]) -> dict[str, Any]:
    hints = _HINTS_CACHE.get(cls)
    if hints is None:
        hints = typing.get_type_hints(cls)
        _HINTS_CACHE[cls] = hints
    return hints


def _from_json(hint: Any, value: Any) -> Any:  # noqa: PLR0911, PLR0912 -- one branch per type
    origin = typing.get_origin(hint)
    if origin is types.UnionType or origin is typing.Union:
        members = typing.get_args(hint)
        if value is None:
            if type(None) in members:
                return None
            raise ValueError("must not be null")
        (inner,) = [m for m in members if m is not type(None)]
        return _from_json(inner, value)
    if origin is Literal:
        if value not in typing.get_args(hint):
            raise ValueError(f"{value!r} is not one of {typing.get_args(hint)}")
        return value
    if origin is tuple:
        if not isinstance(value, list):
            raise TypeError("must be a list")
        (item, _ellipsis) = typing.get_args(hint)
        return tuple(_from_json(item, v) for v in value)
    if origin is dict:
        if not isinstance(value, dict):
            raise TypeError("must be an object")
        key_type, value_type = typing.get_args(hint)
        return {_from_json(key_type, k): _from_json(value_type, v) for k, v in value.items()}
    if hint is uuid.UUID:
        if not isinstance(value, str):
            raise TypeError("must be a UUID string")
        return uuid.UUID(value)
    if hint is datetime:
        if not isinstance(value, str):
            raise TypeError("must be an RFC 3339 string")
        parsed = datetime.fromisoformat(value)
        if parsed.tzinfo is None:
            raise ValueError("must carry a UTC offset")
        return parsed
    if hint is bool:
        if not isinstance(value, bool):
            raise TypeError("must be a boolean")
        return value
    if hint is int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError("must be an integer")
        return value
    if hint is float:
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise TypeError("must be a number")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise TypeError("must be a string")
        return value
    raise TypeError(f"no decoder for {hint!r}")  # pragma: no cover -- a new field type
