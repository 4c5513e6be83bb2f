"""What handlers share: typed application and request keys, and small helpers."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Final

from aiohttp import web
from pydantic import BaseModel

from shelltrail.actors import ProcessSupervisor
from shelltrail.eventstore import EventStore
from shelltrail.http.auth import Principal, TokenRegistry
from shelltrail.http.metrics import Metrics
from shelltrail.http.problems import not_found

STORE: Final = web.AppKey("store", EventStore)
SUPERVISOR: Final = web.AppKey("supervisor", ProcessSupervisor)
TOKENS: Final = web.AppKey("tokens", TokenRegistry)
METRICS: Final = web.AppKey("metrics", Metrics)
PRINCIPAL: Final = web.RequestKey("principal", Principal)


def json_response(
    model: BaseModel, *, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    return web.Response(
        status=status,
        body=model.model_dump_json().encode(),
        content_type="application/json",
        headers=headers,
    )


def path_id(request: web.Request, what: str) -> uuid.UUID:
    """The ``{id}`` of the path; an id that is not a UUID names nothing: 404."""
    try:
        return uuid.UUID(request.match_info["id"])
    except ValueError:
        raise not_found(f"this {what}") from None


def principal(request: web.Request) -> Principal | None:
    return request.get(PRINCIPAL)


def principal_name(request: web.Request) -> str | None:
    who = principal(request)
    return who.name if who is not None else None
