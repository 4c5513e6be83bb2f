"""Fixtures for the HTTP API: the real application over real PostgreSQL and real processes."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from shelltrail.actors import ProcessSupervisor, RunnerConfig, SupervisorLimits
from shelltrail.eventstore import EventStore
from shelltrail.http.app import create_app
from shelltrail.http.auth import TokenRegistry
from tests.conftest import TEST_NODE

TOKENS = {
    "admin": "admin-secret-0123456789",
    "operator": "operator-secret-0123456789",
    "viewer": "viewer-secret-0123456789",
}
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
