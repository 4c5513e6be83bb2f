"""The node lease: at most one server at a time runs as a given node.

A run belongs to the node that started it, and a server that starts closes every unfinished
run of its node with ``Lost``, after killing what is left of their processes. Two servers
running under one node name (two on one host with the default name, a copied setting) would
each take the other's live runs for a crashed predecessor's. So a server holds, for as long
as it runs, a session-level advisory lock keyed by its node name, on a connection of its own:
a second server asking for the same node waits a little (the session of a predecessor that
crashed ends once PostgreSQL sees its connection close), then stops with an error naming the
holder.

PostgreSQL releases the lock when the session ends: when the server exits, crashes, or loses
the connection. The session asks for TCP keepalives, so PostgreSQL ends one whose machine
died within about half a minute. The server checks its lease's connection every 10 s; when
it is lost (a database restart, a network cut), the lease is taken again as soon as the
database answers, and an error is logged if another server took it first.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import socket
import time
from typing import Final

import asyncpg
import structlog

from shelltrail.eventstore.errors import DatabaseUnavailable, EventStoreError

log = structlog.get_logger(__name__)

#: Settings of the lease's session, each applied where the server accepts it: PostgreSQL
#: notices a peer that vanished in about 25 s, and never ends the idle session itself.
_SESSION: Final = (
    "SET tcp_keepalives_idle = 10",
    "SET tcp_keepalives_interval = 5",
    "SET tcp_keepalives_count = 3",
    "SET idle_session_timeout = 0",  # PostgreSQL 14 and later
)
_RETRY_SECONDS: Final = 0.5
#: How often the lease's connection is checked, and how long the check may take.
_CHECK_SECONDS: Final = 10.0
_CHECK_TIMEOUT: Final = 5.0
#: What a lost or refused connection raises, besides PostgreSQL's own errors.
_CONNECTION_ERRORS: Final = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)


class NodeInUse(EventStoreError):
    """Another server holds this node's lease."""


def lease_key(node: str) -> int:
    """The advisory lock key (a signed 64-bit integer) of a node name."""
    digest = hashlib.sha256(b"shelltrail node lease\0" + node.encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class NodeLease:
    """Holds the advisory lock of one node while the server runs.

    :meth:`acquire` once at start, before any run of the node is recovered; :meth:`release`
    at the end. Both on the event loop.
    """

    def __init__(self, url: str, node: str, *, wait_seconds: float = 30.0) -> None:
        self._url = url
        self._node = node
        self._key = lease_key(node)
        self._wait_seconds = wait_seconds
        self._conn: asyncpg.Connection | None = None
        self._renewing: asyncio.Task[None] | None = None
        self._checking: asyncio.Task[None] | None = None
        self._released = False
        self.renewals = 0

    @property
    def held(self) -> bool:
        return self._conn is not None and not self._conn.is_closed()

    async def acquire(self) -> None:
        """Take the lease, waiting up to ``wait_seconds`` for a holder to go away.

        Raises :class:`NodeInUse` naming the holder when it does not, and
        :class:`DatabaseUnavailable` when the database cannot be reached.
        """
        deadline = time.monotonic() + self._wait_seconds
        said = False
        while not await self._try():
            if time.monotonic() >= deadline:
                raise NodeInUse(
                    f"node {self._node!r} is in use by another shelltrail server"
                    f"{await self._holder()}; give this one its own SHELLTRAIL_NODE"
                )
            if not said:
                log.warning("waiting for another server to release this node", node=self._node)
                said = True
            await asyncio.sleep(_RETRY_SECONDS)

    async def release(self) -> None:
        """Give the lease back (closing its connection ends the session and the lock)."""
        self._released = True
        for task in (self._renewing, self._checking):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await _close_quietly(conn)

    async def _try(self) -> bool:
        """One attempt on a fresh connection; keep it if the lock was granted.

        Raises :class:`DatabaseUnavailable` when the database cannot be reached or the
        connection is lost meanwhile.
        """
        conn = await self._connect()
        try:
            granted = bool(await conn.fetchval("SELECT pg_try_advisory_lock($1)", self._key))
        except _CONNECTION_ERRORS as exc:
            await _close_quietly(conn)
            raise self._unavailable(exc) from None
        except BaseException:
            await _close_quietly(conn)
            raise
        if not granted:
            await _close_quietly(conn)
            return False
        self._conn = conn
        conn.add_termination_listener(self._lost)
        self._checking = asyncio.get_running_loop().create_task(self._check(conn))
        log.info("holding the node lease", node=self._node)
        return True

    async def _connect(self) -> asyncpg.Connection:
        name = f"shelltrail node lease, pid {os.getpid()} on {socket.gethostname()}"
        try:
            conn = await asyncpg.connect(
                self._url, timeout=10, server_settings={"application_name": name[:63]}
            )
        except _CONNECTION_ERRORS as exc:
            raise self._unavailable(exc) from None
        for statement in _SESSION:  # a pooler or an older server may refuse one: go on
            with contextlib.suppress(asyncpg.PostgresError):
                await conn.execute(statement)
        return conn

    def _unavailable(self, exc: BaseException) -> DatabaseUnavailable:
        reason = str(exc) or type(exc).__name__
        return DatabaseUnavailable(
            f"cannot connect to the database to hold node {self._node!r}: {reason}"
        )

    async def _check(self, conn: asyncpg.Connection) -> None:
        """Ask the lease's connection a question now and then; end it if it does not answer.

        An idle connection cut by the network would otherwise look alive to this side
        while PostgreSQL has ended its session, and its lock with it.
        """
        while not conn.is_closed():
            await asyncio.sleep(_CHECK_SECONDS)
            try:
                await conn.fetchval("SELECT 1", timeout=_CHECK_TIMEOUT)
            except _CONNECTION_ERRORS:
                conn.terminate()  # the termination listener takes it from here
                return

    async def _holder(self) -> str:
        """Who holds the lease, as far as this role may see: ' (…)' or ''."""
        with contextlib.suppress(Exception):
            conn = await self._connect()
            try:
                row = await conn.fetchrow(
                    """
                    SELECT a.application_name, a.client_addr, a.backend_start
                    FROM pg_locks AS l JOIN pg_stat_activity AS a ON a.pid = l.pid
                    WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
                      AND l.database = (SELECT oid FROM pg_database
                                        WHERE datname = current_database())
                      AND (l.classid::bigint << 32) | l.objid::bigint = $1::bigint
                    """,
                    self._key,
                )
            finally:
                await _close_quietly(conn)
            if row is not None and row["application_name"]:
                since = row["backend_start"]  # NULL for a session of another role
                when = f", connected since {since:%Y-%m-%d %H:%M:%S %Z}" if since else ""
                return f" ({row['application_name']}{when})"
        return ""

    def _lost(self, _conn: object) -> None:
        """The lease's connection ended: the lock is gone; take it again once possible."""
        if self._released:
            return
        self._conn = None
        log.warning("lost the node lease with its database connection", node=self._node)
        self._renewing = asyncio.get_running_loop().create_task(self._renew())

    async def _renew(self) -> None:
        delay = _RETRY_SECONDS
        warned = False
        while not self._released:
            try:
                if await self._try():
                    self.renewals += 1
                    return
                if not warned:
                    log.error(
                        "another server took this node's lease: its start-up may close this "
                        "server's runs as lost; give each server its own SHELLTRAIL_NODE",
                        node=self._node,
                    )
                    warned = True
            except DatabaseUnavailable:
                pass
            except Exception:  # never leave the task dead: log and try again
                log.exception("taking the node lease again failed", node=self._node)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


async def _close_quietly(conn: asyncpg.Connection) -> None:
    """Close, or drop a connection that does not answer in time (a half-open one)."""
    try:
        await conn.close(timeout=_CHECK_TIMEOUT)
    except Exception:  # noqa: BLE001 -- whatever it was, the connection goes
        conn.terminate()
