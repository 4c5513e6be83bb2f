"""The aiohttp application."""

from __future__ import annotations

from typing import Final

import asyncpg
from aiohttp import web

from shelltrail.actors import ProcessSupervisor
from shelltrail.eventstore import EventStore
from shelltrail.eventstore.migrate import pending_migrations

STORE: Final = web.AppKey("store", EventStore)
SUPERVISOR: Final = web.AppKey("supervisor", ProcessSupervisor)


def create_app(store: EventStore, supervisor: ProcessSupervisor) -> web.Application:
    app = web.Application()
    app[STORE] = store
    app[SUPERVISOR] = supervisor
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app


async def healthz(_request: web.Request) -> web.Response:
    """200 while the process serves."""
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """200 when the database answers and every migration is applied, else 503."""
    store = request.app[STORE]
    try:
        async with store.pool.acquire(timeout=2) as conn:
            pending = await pending_migrations(conn)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        return web.json_response(
            {"status": "unavailable", "database": "unreachable", "detail": type(exc).__name__},
            status=503,
        )
    if pending:
        return web.json_response(
            {"status": "unavailable", "pending_migrations": [m.version for m in pending]},
            status=503,
        )
    return web.json_response({"status": "ok"})
