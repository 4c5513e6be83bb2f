"""Connections: the one place that sets up how asyncpg talks to shelltrail's tables."""

from __future__ import annotations

import json
from typing import Any, TypeAlias

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from shelltrail.eventstore.hashing import canonical_json

#: A plain connection or one borrowed from a pool: everything here accepts both.
Connection: TypeAlias = "asyncpg.Connection[asyncpg.Record] | PoolConnectionProxy[asyncpg.Record]"


async def init_connection(conn: asyncpg.Connection) -> None:
    """Decode ``jsonb`` to Python values; encode values (or ready JSON text) to ``jsonb``.

    The binary format (a version byte, then the JSON text) lets COPY carry ``jsonb`` too.
    """
    await conn.set_type_codec(
        "jsonb",
        schema="pg_catalog",
        encoder=_encode_jsonb,
        decoder=_decode_jsonb,
        format="binary",
    )


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Release without a reset query (see :func:`create_pool`)."""


def _encode_jsonb(value: Any) -> bytes:
    text = value if isinstance(value, str) else canonical_json(value)
    return b"\x01" + text.encode()


def _decode_jsonb(raw: bytes) -> Any:
    return json.loads(raw[1:])


async def create_pool(dsn: str, *, min_size: int = 2, max_size: int = 10) -> asyncpg.Pool:
    """A pool of connections set up by :func:`init_connection`.

    A connection goes back to the pool without asyncpg's reset query (``RESET ALL``,
    ``UNLISTEN *``, advisory unlocks, ``CLOSE ALL``): that is one more round trip for every
    request and every writer transaction, and nothing borrowed from these pools changes its
    session. Migrations (advisory lock) and notifications (``LISTEN``) use connections of
    their own. An open transaction is still rolled back on release, by asyncpg itself.
    """
    pool = await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        init=init_connection,
        reset=_keep_session,
    )
    assert pool is not None
    return pool
