"""The route table: one entry per operation, read by the app and by the OpenAPI builder."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from pydantic import BaseModel

from shelltrail.http.auth import Role
from shelltrail.http.models import Problem

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class Response:
    description: str
    model: type[BaseModel] | None = None
    #: Media type and JSON schema when the body is not a model (raw bytes, SSE).
    media: Mapping[str, Mapping[str, Any]] | None = None
    headers: dict[str, str] = field(default_factory=dict)


#: The answer of a route that appends events while they cannot be stored (the database is
#: down, restarting or out of disk): the request waited a few seconds, nothing was stored.
CANNOT_STORE = Response(
    "Events cannot be stored now (the database is unreachable or out of space); nothing "
    "was stored. Retry after Retry-After.",
    Problem,
    headers={"Retry-After": "Seconds to wait before retrying"},
)


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    path: str
    handler: Handler
    summary: str
    tag: str
    #: ``None``: no token needed.
    role: Role | None
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    responses: dict[int, Response] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
