"""The aiohttp application: routes, authentication, errors, request logs."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import asyncpg
import structlog
from aiohttp import web

from shelltrail.actors import ProcessSupervisor
from shelltrail.eventstore import EventStore
from shelltrail.eventstore.migrate import pending_migrations
from shelltrail.eventstore.writer import APPEND_TIMEOUT, StoreUnavailable
from shelltrail.http import commands, processes, streams
from shelltrail.http.auth import Principal, Role, TokenRegistry
from shelltrail.http.context import (
    METRICS,
    PRINCIPAL,
    STORE,
    SUPERVISOR,
    TOKENS,
    json_response,
)
from shelltrail.http.metrics import Metrics
from shelltrail.http.models import Health
from shelltrail.http.openapi import build_openapi
from shelltrail.http.problems import HTTPProblem, problem_response
from shelltrail.http.routes import Handler, Response, Route

log = structlog.get_logger("shelltrail.http")

#: Request bodies larger than this are refused with 413 before they are parsed. A script
#: may be 1 MiB of UTF-8; JSON escaping can make its body several times larger.
MAX_BODY_BYTES: Final = 8 * 1024 * 1024
#: The longest request line (path and query string) and header value answered; longer ones
#: get a problem+json 400. aiohttp's own parser stops at ``_PARSER_LIMIT`` with a plain-text
#: 400 of its own, so it is set above; not far above, since it bounds what a request may
#: make the server buffer before it is refused (up to 128 header lines of that size).
MAX_QUERY_BYTES: Final = 8 * 1024
_PARSER_LIMIT: Final = 16 * 1024
OPENAPI_PATH: Final = "/api/v1/openapi.json"
DOCS_PATH: Final = "/api/docs"
#: How long an append a request makes may wait to be stored before it is withdrawn and the
#: request answers 503. Appends take milliseconds; this passes only while the database fails
#: (disk full, restarting) or is blocked.
REQUEST_APPEND_TIMEOUT: Final = 5.0
#: Errors of a database that is unreachable, restarting or out of resources: 503, not 500.
_DATABASE_FAILING: Final = (
    OSError,
    asyncpg.PostgresConnectionError,
    StoreUnavailable,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.InsufficientResourcesError,
)


async def healthz(_request: web.Request) -> web.Response:
    """200 while the process serves."""
    return json_response(Health(status="ok"))


async def readyz(request: web.Request) -> web.Response:
    """200 when the database answers and every migration is applied, else 503."""
    store = request.app[STORE]
    try:
        async with asyncio.timeout(3), store.pool.acquire() as conn:
            pending = await pending_migrations(conn)
    except Exception:  # noqa: BLE001 -- whatever stops the query, the server is not ready
        return json_response(Health(status="database unreachable"), status=503)
    if pending:
        return json_response(Health(status="migrations pending"), status=503)
    failure = store.writer.failure
    if failure is not None:  # it answers queries, but events cannot be stored (disk full…)
        return json_response(Health(status=f"cannot store events: {failure}"), status=503)
    return json_response(Health(status="ok"))


OPS_ROUTES = [
    Route(
        "GET",
        "/healthz",
        healthz,
        "Liveness",
        "operations",
        None,
        responses={200: Response("The server is up.", Health)},
    ),
    Route(
        "GET",
        "/readyz",
        readyz,
        "Readiness",
        "operations",
        None,
        responses={
            200: Response("The database answers and the schema is current.", Health),
            503: Response(
                "Not ready: the database is unreachable or migrating, or events cannot be "
                "stored (e.g. its disk is full).",
                Health,
            ),
        },
    ),
]


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text format."""
    return await request.app[METRICS].handle(request)


OPS_ROUTES.append(
    Route(
        "GET",
        "/metrics",
        metrics,
        "Metrics in Prometheus text format",
        "operations",
        Role.VIEWER,
        responses={
            200: Response(
                "Counters, gauges and histograms.",
                media={"text/plain": {"schema": {"type": "string"}}},
            )
        },
    )
)
API_ROUTES = [*commands.ROUTES, *processes.ROUTES, *streams.ROUTES]


def _docs_page() -> str:
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>shelltrail API</title>
<link rel="stylesheet" href="{DOCS_PATH}/static/swagger-ui.css"></head>
<body><div id="swagger-ui"></div>
<script src="{DOCS_PATH}/static/swagger-ui-bundle.js"></script>
<script>window.ui = SwaggerUIBundle({{url: "{OPENAPI_PATH}", dom_id: "#swagger-ui"}});</script>
</body></html>"""


def create_app(
    store: EventStore, supervisor: ProcessSupervisor, tokens: TokenRegistry
) -> web.Application:
    app = web.Application(
        client_max_size=MAX_BODY_BYTES,
        middlewares=[_request_log, _foreground, _problems],
        handler_args={"max_line_size": _PARSER_LIMIT, "max_field_size": _PARSER_LIMIT},
    )
    app[STORE] = store
    app[SUPERVISOR] = supervisor
    app[TOKENS] = tokens
    app[METRICS] = Metrics(store, supervisor)
    app.on_response_prepare.append(_answered)
    routes = [*OPS_ROUTES, *API_ROUTES]
    for route in routes:
        handler = _guarded(route)
        app.router.add_route(route.method, route.path, handler)
        if route.method == "GET":
            # RFC 9110 (9.1, 9.3.2): what answers GET answers HEAD, with the same status and
            # headers and no body. aiohttp drops a Response's body; the streaming handlers
            # stop once their headers are sent.
            app.router.add_route("HEAD", route.path, handler)
    document = build_openapi(routes)
    app.router.add_get(OPENAPI_PATH, _static_json(document))
    app.router.add_get(DOCS_PATH, _docs)
    app.router.add_static(DOCS_PATH + "/static", _swagger_ui_dir())
    return app


def _static_json(document: dict[str, Any]) -> Handler:
    body = json.dumps(document).encode()

    async def openapi(_request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="application/json")

    return openapi


async def _docs(_request: web.Request) -> web.Response:
    return web.Response(text=_docs_page(), content_type="text/html")


def _swagger_ui_dir() -> Path:
    import swagger_ui  # noqa: PLC0415 -- only for the path of its bundled assets

    return Path(swagger_ui.__file__).parent / "static"


def _guarded(route: Route) -> Handler:
    """The route's handler behind its token check: 401 without a valid token, 403 below
    its role. Public routes ignore the Authorization header altogether."""

    async def handler(request: web.Request) -> web.StreamResponse:
        if route.role is not None:
            who = _authenticate(request)
            if who.role < route.role:
                needed, held = route.role.name.lower(), who.role.name.lower()
                raise HTTPProblem(403, f"this needs the {needed} role; you are {held}")
            request[PRINCIPAL] = who
        return await route.handler(request)

    handler.__name__ = route.handler.__name__
    return handler


def _authenticate(request: web.Request) -> Principal:
    header = request.headers.get("Authorization")
    if header is None:
        raise HTTPProblem(
            401,
            "send a token: Authorization: Bearer <token>",
            headers={"WWW-Authenticate": 'Bearer realm="shelltrail"'},
        )
    scheme, _, token = header.partition(" ")
    who = request.app[TOKENS].authenticate(token.strip()) if scheme.lower() == "bearer" else None
    if who is None:
        raise HTTPProblem(
            401,
            "the token is not valid",
            headers={"WWW-Authenticate": 'Bearer realm="shelltrail", error="invalid_token"'},
        )
    return who


def _check_sizes(request: web.Request) -> None:
    if len(request.raw_path) > MAX_QUERY_BYTES:
        raise HTTPProblem(400, f"the path and query string are longer than {MAX_QUERY_BYTES} bytes")
    for name, value in request.headers.items():
        if len(value) > MAX_QUERY_BYTES:
            raise HTTPProblem(400, f"header {name[:40]} is longer than {MAX_QUERY_BYTES} bytes")


@web.middleware
async def _problems(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error as problem+json; an unexpected one as a bare 500, logged here."""
    # The appends this request makes give up (nothing stored) rather than wait forever.
    timeout = APPEND_TIMEOUT.set(REQUEST_APPEND_TIMEOUT)
    try:
        _check_sizes(request)
        return await handler(request)
    except HTTPProblem as exc:
        return problem_response(exc.status, exc.detail, errors=exc.errors, headers=exc.headers)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        detail = {
            404: "no such resource",
            405: f"{request.method} is not allowed here",
            413: f"the body is larger than {MAX_BODY_BYTES} bytes",
        }.get(exc.status, exc.reason)
        headers = {k: v for k, v in exc.headers.items() if k.lower() == "allow"}
        return problem_response(exc.status, detail, headers=headers)
    except (ConnectionResetError, asyncpg.InterfaceError) as exc:
        if request.transport is None or request.transport.is_closing():
            raise  # the client left: nobody to answer
        log.error("database unavailable", error=str(exc))
        return problem_response(503, "the database is unavailable; try again")
    except _DATABASE_FAILING as exc:
        log.error("database unavailable", error=str(exc))
        # A withdrawn append says why, and that nothing of the request was stored.
        detail = str(exc) if isinstance(exc, StoreUnavailable) else "the database is unavailable"
        return problem_response(503, f"{detail}; try again", headers={"Retry-After": "5"})
    except Exception:
        log.exception("request failed", method=request.method, path=request.path)
        return problem_response(500, "the server failed to answer this request")
    finally:
        APPEND_TIMEOUT.reset(timeout)


#: Ends the request's count as foreground work (``EventWriter.foreground``); idempotent.
_FOREGROUND_DONE: Final[web.RequestKey[Callable[[], None]]] = web.RequestKey("foreground_done")


@web.middleware
async def _foreground(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Count the request as foreground work until it is answered (or starts streaming)."""
    done = request.app[STORE].writer.foreground.enter()
    request[_FOREGROUND_DONE] = done
    try:
        return await handler(request)
    finally:
        done()


async def _answered(request: web.Request, _response: web.StreamResponse) -> None:
    """The response's headers go out (``on_response_prepare``): no longer foreground.

    For most requests the middleware has released them already. A stream (SSE, a followed
    output, a replay) goes on for as long as its client follows; still counted, a follower
    would hold every flood back for as long as it watched.
    """
    done = request.get(_FOREGROUND_DONE)
    if done is not None:
        done()


def _new_request_id() -> str:
    """32 random hex digits. Not ``uuid4``: its ``os.urandom`` is a system call, and a loop
    thread that lets go of the GIL for one waits to get it back while actor threads are
    busy (0.18 ms per request while 1,000 runs were being stopped). An id that names a
    request in the logs needs no cryptographic randomness."""
    return f"{random.getrandbits(128):032x}"


@web.middleware
async def _request_log(request: web.Request, handler: Handler) -> web.StreamResponse:
    """One line per request, with a request id (also sent back as X-Request-ID)."""
    request_id = request.headers.get("X-Request-ID", "")[:64] or _new_request_id()
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        if not response.prepared:
            response.headers["X-Request-ID"] = request_id
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        duration = time.perf_counter() - started
        request.app[METRICS].observe(request, status, duration)
        log.info(
            "request",
            method=request.method,
            path=request.path,
            status=status,
            duration_ms=round(duration * 1000, 2),
            request_id=request_id,
        )
