"""The composition root: the one module that wires every layer together."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import resource
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Final
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import structlog
from aiohttp import web

from shelltrail import allocator
from shelltrail.actors import ProcessSupervisor, RunnerConfig, SupervisorLimits
from shelltrail.actors.tree import hide_from_scripts
from shelltrail.config import PREFIX, Settings, redact_url
from shelltrail.eventstore import DatabaseUnavailable, EventStore, init_connection
from shelltrail.eventstore.embedded import EmbeddedPostgres
from shelltrail.eventstore.lease import NodeLease
from shelltrail.eventstore.migrate import migrate
from shelltrail.http.app import create_app
from shelltrail.http.auth import TokenConfigError, TokenRegistry

log = structlog.get_logger(__name__)

EMBEDDED_DATABASE: Final = "shelltrail"
_CONNECT_TIMEOUT: Final = 10.0


@asynccontextmanager
async def database_url(settings: Settings) -> AsyncIterator[str]:
    """The configured database URL, or the embedded server's (started here and stopped after).

    Raises :class:`DatabaseUnavailable` with a one-line reason when it cannot be reached.
    """
    if settings.database_url:
        await _check_reachable(settings.database_url)
        yield settings.database_url
        return
    embedded = EmbeddedPostgres(settings.data_dir)
    try:
        admin_url = await asyncio.to_thread(embedded.start)
    except Exception as exc:
        raise DatabaseUnavailable(
            f"cannot start the embedded PostgreSQL in {embedded.pgdata}: {exc}"
        ) from exc
    try:
        url = await ensure_database(admin_url, EMBEDDED_DATABASE)
        yield url
    finally:
        await asyncio.to_thread(embedded.stop)


async def ensure_database(admin_url: str, name: str) -> str:
    """Create database ``name`` on the server of ``admin_url`` if needed; return its URL."""
    conn = await _connect(admin_url)
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if not exists:
            # Another server may create it meanwhile: that is fine.
            with contextlib.suppress(asyncpg.DuplicateDatabaseError):
                await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return with_database(admin_url, name)


def with_database(url: str, name: str) -> str:
    """``url`` pointing at database ``name`` instead (keeps query parameters such as host)."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + name))


async def _connect(url: str) -> asyncpg.Connection:
    try:
        return await asyncpg.connect(url, timeout=_CONNECT_TIMEOUT)
    except (TimeoutError, OSError, asyncpg.PostgresError, ValueError) as exc:
        reason = str(exc) or type(exc).__name__
        raise DatabaseUnavailable(
            f"cannot connect to the database at {redact_url(url)}: {reason}"
        ) from None


async def _check_reachable(url: str) -> None:
    conn = await _connect(url)
    await conn.close()


async def migrate_database(url: str) -> int:
    """Apply pending migrations; return how many were applied."""
    conn = await _connect(url)
    try:
        return len(await migrate(conn))
    finally:
        await conn.close()


@asynccontextmanager
async def connection(url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await _connect(url)
    await init_connection(conn)
    try:
        yield conn
    finally:
        await conn.close()


async def serve(settings: Settings) -> None:
    """Run the server until SIGTERM or SIGINT, then shut down cleanly.

    Shutdown order: stop accepting requests, stop every run (reason ``shutdown``) within
    the grace period, write every pending event, stop the embedded database.
    """
    scripts_open_files = _raise_open_file_limit()
    _forget_secrets()
    allocator.fix_thresholds()
    if not hide_from_scripts():
        log.warning("cannot hide the server's environment from its scripts (prctl failed)")
    tokens, generated = TokenRegistry.from_settings(settings.tokens, settings.data_dir)
    if not tokens.configured and not _is_loopback(settings.host):
        raise TokenConfigError(
            f"refusing to listen on {settings.host} without SHELLTRAIL_TOKENS: anyone who "
            "reaches it could run scripts"
        )
    if generated is not None:
        # Printed once, never logged: only its hash is kept.
        print(
            f"shelltrail: generated an admin token (shown only now): {generated}",
            file=sys.stderr,
            flush=True,
        )
    async with database_url(settings) as url:
        await migrate_database(url)
        # Before anything of the node is recovered: a second server under the same node
        # name would close the first one's live runs as lost.
        lease = NodeLease(url, settings.node, wait_seconds=settings.node_lease_wait_seconds)
        await lease.acquire()
        try:
            await _serve_as_node(settings, url, tokens, scripts_open_files)
        finally:
            await lease.release()


async def _serve_as_node(
    settings: Settings, url: str, tokens: TokenRegistry, scripts_open_files: int | None
) -> None:
    """Serve until SIGTERM or SIGINT, holding the node's lease."""
    store = await EventStore.open(url, node=settings.node)
    try:
        supervisor = ProcessSupervisor(
            store,
            RunnerConfig(
                node=settings.node,
                runs_dir=settings.data_dir / "runs",
                keep_workdirs=settings.keep_workdirs,
                stop_grace_seconds=settings.stop_grace_seconds,
                open_files_limit=scripts_open_files,
            ),
            SupervisorLimits(
                max_running=settings.max_running,
                max_queued=settings.max_queued,
                max_output_bytes=settings.max_output_bytes,
                shutdown_grace_seconds=settings.shutdown_grace_seconds,
            ),
        )
        await supervisor.start()
        app = create_app(store, supervisor, tokens)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, settings.host, settings.port)
        await site.start()
        log.info("shelltrail is serving", url=f"http://{settings.host}:{settings.port}")
        await _wait_for_stop_signal()
        log.info("shutting down")
        await site.stop()
        await supervisor.shutdown()
        await runner.cleanup()
    finally:
        await store.close()


def _forget_secrets() -> None:
    """Drop the settings' secrets from the environment that child processes inherit.

    They were read into Settings already. The scripts get an environment of their own, but
    other children (the embedded PostgreSQL, started with the server's environment) would
    carry them, readable in their /proc entries by anything of the same user.
    """
    for name in ("TOKENS", "DATABASE_URL"):
        os.environ.pop(PREFIX + name, None)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _raise_open_file_limit() -> int | None:
    """Each run holds a few descriptors (pipes, pidfd, wake-up pipe): allow many.

    Returns the soft limit before, for the scripts, if it was raised.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= hard:
        return None
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return soft


async def _wait_for_stop_signal() -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
