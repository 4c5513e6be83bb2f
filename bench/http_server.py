"""A real ``shelltrail serve`` in a subprocess, on a fresh database, for the HTTP benchmarks.

The server runs as ``python -m shelltrail serve`` with the interpreter running the
benchmarks, on a free loopback port, with its own data directory and an admin token made
up here. The benchmarks drive it with ``aiohttp`` from their own process, so client and
server share the machine's cores as real clients on the same host would. It is stopped
with SIGTERM (a clean shutdown) when the benchmark ends.

Also here: the few API calls the benchmarks share, a minimal SSE reader, and the CPU time
a process has used (from ``/proc``), to tell where the cores went.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import socket
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import aiohttp

from bench.db import Server, fresh_database

REPO: Final = Path(__file__).resolve().parent.parent
API: Final = "/api/v1"
TERMINAL_EVENTS: Final = frozenset({"Exited", "Killed", "Lost", "StartFailed"})
TERMINAL_STATUSES: Final = frozenset({"succeeded", "failed", "killed", "lost"})
_READY_TIMEOUT: Final = 120.0
_STOP_TIMEOUT: Final = 60.0


@dataclass(slots=True)
class HttpServer:
    """A running ``shelltrail serve``: where it listens, its token, its pid and log."""

    base: str
    token: str
    pid: int
    log_path: Path
    returncode: int | None = field(default=None)

    @property
    def api(self) -> str:
        return self.base + API

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def session(self, *, connections: int = 0) -> aiohttp.ClientSession:
        """A client session with the token; ``connections=0`` means no connection limit."""
        return aiohttp.ClientSession(
            headers=self.headers,
            read_bufsize=2**20,  # SSE lines of 64 KiB chunks are ~90 KiB of base64 JSON
            connector=aiohttp.TCPConnector(limit=connections, force_close=False),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=30),
        )

    def cpu_seconds(self) -> float:
        """User + system CPU time the server process itself has used so far."""
        return process_cpu_seconds(self.pid)

    def log_lines(self) -> list[str]:
        """What the server wrote to stdout and stderr (warnings and errors only)."""
        try:
            return self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return []


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def process_cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` (its threads included, its children not), in seconds."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    # After the command name: state is field 3, utime field 14 and stime field 15.
    ticks = int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


@asynccontextmanager
async def shelltrail_server(
    server: Server, purpose: str, *, env: Mapping[str, str] | None = None
) -> AsyncIterator[HttpServer]:
    """A ready ``shelltrail serve`` on a fresh database of ``server``; SIGTERM afterwards.

    ``env`` adds or overrides ``SHELLTRAIL_*`` settings. Raises ``RuntimeError`` (with
    the end of the server's log) if it does not get ready, or exits badly when stopped.
    """
    async with fresh_database(server, purpose) as url:
        with tempfile.TemporaryDirectory(prefix=f"shelltrail-bench-{purpose}-") as tmp:
            port = free_port()
            token = secrets.token_urlsafe(24)[:32]
            settings = {
                "SHELLTRAIL_DATABASE_URL": url,
                "SHELLTRAIL_HOST": "127.0.0.1",
                "SHELLTRAIL_PORT": str(port),
                "SHELLTRAIL_DATA_DIR": str(Path(tmp) / "data"),
                "SHELLTRAIL_TOKENS": f"bench:admin:{token}",
                "SHELLTRAIL_LOG_LEVEL": "warning",
                "SHELLTRAIL_MAX_RUNNING": "64",
                **(env or {}),
            }
            child_env = {k: v for k, v in os.environ.items() if not k.startswith("SHELLTRAIL_")}
            child_env.update(settings)
            path = child_env.get("PYTHONPATH")
            child_env["PYTHONPATH"] = str(REPO) + (os.pathsep + path if path else "")
            log_path = Path(tmp) / "server.log"
            with log_path.open("wb") as log:
                proc = await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "shelltrail",
                    "serve",
                    env=child_env,
                    cwd=REPO,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                )
            served = HttpServer(f"http://127.0.0.1:{port}", token, proc.pid, log_path)
            try:
                await _wait_ready(served, proc)
                yield served
            except BaseException:
                await _stop(served, proc)
                raise
            await _stop(served, proc)
            if served.returncode != 0:
                raise RuntimeError(
                    f"shelltrail serve exited with {served.returncode} on SIGTERM:\n"
                    + "\n".join(served.log_lines()[-20:])
                )


async def _wait_ready(served: HttpServer, proc: asyncio.subprocess.Process) -> None:
    deadline = time.monotonic() + _READY_TIMEOUT
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        while True:
            if proc.returncode is not None:
                raise RuntimeError(
                    f"shelltrail serve exited with {proc.returncode} while starting:\n"
                    + "\n".join(served.log_lines()[-20:])
                )
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with session.get(served.base + "/readyz") as response:
                    if response.status == 200:
                        return
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"shelltrail serve was not ready after {_READY_TIMEOUT:.0f} s:\n"
                    + "\n".join(served.log_lines()[-20:])
                )
            await asyncio.sleep(0.05)


async def _stop(served: HttpServer, proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), _STOP_TIMEOUT)
        except TimeoutError:
            proc.kill()
            await proc.wait()
    served.returncode = proc.returncode


# --- the API calls the benchmarks share ---------------------------------------------------


async def create_command(session: aiohttp.ClientSession, served: HttpServer, script: str) -> str:
    """Store a command; return its id."""
    body = {"name": f"bench-{secrets.token_hex(4)}", "script": script}
    async with session.post(f"{served.api}/commands", json=body) as response:
        if response.status != 201:
            raise RuntimeError(f"creating a command: {response.status} {await response.text()}")
        return str((await response.json())["id"])


async def start_process(
    session: aiohttp.ClientSession, served: HttpServer, command_id: str
) -> dict[str, Any]:
    """Start a run of a command; return the process object (status queued or running)."""
    async with session.post(f"{served.api}/processes", json={"command_id": command_id}) as r:
        if r.status != 201:
            raise RuntimeError(f"starting a run: {r.status} {await r.text()}")
        process: dict[str, Any] = await r.json()
        return process


async def get_process(
    session: aiohttp.ClientSession, served: HttpServer, process_id: str
) -> dict[str, Any]:
    async with session.get(f"{served.api}/processes/{process_id}") as response:
        if response.status != 200:
            raise RuntimeError(f"reading a process: {response.status} {await response.text()}")
        process: dict[str, Any] = await response.json()
        return process


async def poll_until_ended(
    session: aiohttp.ClientSession,
    served: HttpServer,
    process_id: str,
    *,
    wait_seconds: float,
    interval: float = 0.5,
) -> dict[str, Any]:
    """The process once its status is terminal (polling, for runs too big to follow)."""
    deadline = time.monotonic() + wait_seconds
    while True:
        process = await get_process(session, served, process_id)
        if process["status"] in TERMINAL_STATUSES:
            return process
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"process {process_id} still {process['status']} after {wait_seconds} s"
            )
        await asyncio.sleep(interval)


@dataclass(frozen=True, slots=True)
class SseMessage:
    id: str | None
    event: str
    data: str

    def json(self) -> Any:
        return json.loads(self.data)


async def sse_messages(response: aiohttp.ClientResponse) -> AsyncIterator[SseMessage]:
    """The messages of an SSE response, until the server closes it (comments skipped)."""
    msg_id: str | None = None
    event = "message"
    data: list[str] = []
    async for raw in response.content:
        line = raw.decode().rstrip("\r\n")
        if not line:
            if data:
                yield SseMessage(msg_id, event, "\n".join(data))
            msg_id, event, data = None, "message", []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            data.append(value)
        elif name == "event":
            event = value
        elif name == "id":
            msg_id = value
