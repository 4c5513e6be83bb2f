"""Fixtures for the HTTP API: the real application over real PostgreSQL and real processes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from shelltrail.actors import ProcessSupervisor, RunnerConfig, SupervisorLimits
from shelltrail.eventstore import EventStore
from shelltrail.http.app import create_app
from shelltrail.http.auth import TokenRegistry
from tests.conftest import TEST_NODE
from tests.integration.runs import Runs

TOKENS = {
    "admin": "admin-secret-0123456789",
    "operator": "operator-secret-0123456789",
    "viewer": "viewer-secret-0123456789",
}
SCRIPTS_OPEN_FILES = 512
TOKEN_SETTING = ",".join(f"{role}-user:{role}:{secret}" for role, secret in TOKENS.items())


def auth(role: str = "admin") -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[role]}"}


@pytest.fixture
async def supervisor(store: EventStore, tmp_path: Path) -> AsyncIterator[ProcessSupervisor]:
    config = RunnerConfig(node=TEST_NODE, runs_dir=tmp_path / "runs", stop_grace_seconds=1.0)
    supervisor = ProcessSupervisor(store, config, SupervisorLimits(max_running=32, max_queued=64))
    await supervisor.start()
    yield supervisor
    await supervisor.shutdown(grace_seconds=1)


@pytest.fixture
async def api(
    store: EventStore,
    supervisor: ProcessSupervisor,
    aiohttp_client: Callable[..., Awaitable[TestClient[Any, Any]]],
) -> TestClient[Any, Any]:
    app = create_app(store, supervisor, TokenRegistry.parse(TOKEN_SETTING))
    return await aiohttp_client(app)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def live_server(database_url_sync: str, tmp_path: Path) -> Iterator[str]:
    """A real `shelltrail serve` subprocess on a fresh database; yields its base URL."""
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHELLTRAIL_")}
    env.update(
        SHELLTRAIL_DATABASE_URL=database_url_sync,
        SHELLTRAIL_PORT=str(port),
        SHELLTRAIL_DATA_DIR=str(tmp_path / "server"),
        SHELLTRAIL_TOKENS=TOKEN_SETTING,
        SHELLTRAIL_LOG_LEVEL="warning",
    )
    # Started with a soft limit on open files below the hard one, as on most machines: the
    # server raises its own, and its scripts get 512 back (SCRIPTS_OPEN_FILES).
    serve = [sys.executable, "-m", "shelltrail", "serve"]
    limited = f'ulimit -S -n {SCRIPTS_OPEN_FILES} && exec "$@"'
    proc = subprocess.Popen(["bash", "-c", limited, "bash", *serve], env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, "the server exited"
            try:
                with urllib.request.urlopen(f"{base}/readyz", timeout=2):
                    break
            except OSError:
                assert time.monotonic() < deadline, "the server did not start"
                time.sleep(0.1)
        yield base
    finally:
        proc.terminate()
        assert proc.wait(30) == 0


@pytest.fixture
async def runs(store: EventStore, tmp_path: Path) -> AsyncIterator[Runs]:
    config = RunnerConfig(node=TEST_NODE, runs_dir=tmp_path / "runs", stop_grace_seconds=1.0)
    supervisor = ProcessSupervisor(store, config, SupervisorLimits(max_running=64, max_queued=1000))
    await supervisor.start()
    yield Runs(store, supervisor)
    await supervisor.shutdown(grace_seconds=1)
