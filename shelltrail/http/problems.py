"""RFC 9457 problem responses, and turning request bodies and queries into models.

Every error the API returns goes through here, so each one is ``application/problem+json``
with the contract's status code, and none carries a stack trace.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, Final, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from shelltrail.http.models import ScriptTooLarge

PROBLEM_TYPE: Final = "application/problem+json"
_TITLES: Final = {
    400: "Bad request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    409: "Conflict",
    413: "Payload too large",
    415: "Unsupported media type",
    422: "Invalid fields",
    429: "Too many requests",
    500: "Internal server error",
    503: "Service unavailable",
}

M = TypeVar("M", bound=BaseModel)


class HTTPProblem(Exception):
    """Raise in a handler to answer with a problem response."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        errors: Sequence[Mapping[str, str]] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.errors = list(errors) if errors is not None else None
        self.headers = dict(headers or {})


def problem_response(
    status: int,
    detail: str,
    *,
    errors: Sequence[Mapping[str, str]] | None = None,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    title = _TITLES.get(status, "Error")
    body: dict[str, Any] = {
        "type": "about:blank",
        "title": title,
        "status": status,
        "detail": detail,
    }
    if errors is not None:
        body["errors"] = list(errors)
    return web.Response(
        status=status,
        text=json.dumps(body),
        content_type=PROBLEM_TYPE,
        headers=headers,
    )


def not_found(what: str) -> HTTPProblem:
    return HTTPProblem(404, f"{what} does not exist")


async def read_body(request: web.Request, model: type[M], *, empty: M | None = None) -> M:
    """The request's JSON body as ``model``: 415, 413, 400 or 422 when it is not one.

    With ``empty``, a request without a body (or with an empty one) means ``empty``.
    """
    if empty is not None and not request.body_exists:
        return empty
    raw = await request.read()  # aiohttp refuses bodies over client_max_size with 413
    if empty is not None and not raw.strip():
        return empty
    if request.content_type != "application/json":
        raise HTTPProblem(
            415, f"send the body as application/json, not {request.content_type or 'nothing'}"
        )
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        raise _from_validation(exc, body=True) from None


def parse_query(request: web.Request, model: type[M]) -> M:
    """The query string as ``model``; anything that does not fit is a 400."""
    values: dict[str, str] = {}
    for key in request.query:
        if key in model.model_fields:
            values[key] = request.query[key]
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        raise _from_validation(exc, body=False) from None


def _from_validation(exc: ValidationError, *, body: bool) -> HTTPProblem:
    errors = exc.errors(include_url=False, include_context=True, include_input=False)
    for error in errors:
        if error["type"] == "json_invalid":
            return HTTPProblem(400, f"the body is not valid JSON: {error['msg']}")
        cause = (error.get("ctx") or {}).get("error")
        if isinstance(cause, ScriptTooLarge):
            return HTTPProblem(413, str(cause))
    fields = [
        {"field": ".".join(str(part) for part in error["loc"]) or "body", "message": error["msg"]}
        for error in errors
    ]
    if not body:
        return HTTPProblem(400, "the query string is not valid", errors=fields)
    if any(e["type"] == "model_type" for e in errors):
        return HTTPProblem(422, "the body must be a JSON object", errors=fields)
    return HTTPProblem(422, "some fields are not valid", errors=fields)
