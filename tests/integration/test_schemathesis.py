"""schemathesis against the served OpenAPI document: no 5xx, every response conforms.

The real server runs as a subprocess (`shelltrail serve`) on a fresh database; every
operation is exercised with generated requests and an admin token. SHELLTRAIL_FUZZ_EXAMPLES
sets the examples per operation (a long run outside CI, a short one inside).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import Case

from tests.integration.conftest import TOKEN_SETTING, TOKENS
from tests.integration.test_cli import free_port

EXAMPLES = int(os.environ.get("SHELLTRAIL_FUZZ_EXAMPLES", "12"))


@pytest.fixture
def server(database_url_sync: str, tmp_path: Path) -> Iterator[str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHELLTRAIL_")}
    env.update(
        SHELLTRAIL_DATABASE_URL=database_url_sync,
        SHELLTRAIL_PORT=str(port),
        SHELLTRAIL_DATA_DIR=str(tmp_path),
        SHELLTRAIL_TOKENS=TOKEN_SETTING,
        SHELLTRAIL_LOG_LEVEL="warning",
    )
    proc = subprocess.Popen([sys.executable, "-m", "shelltrail", "serve"], env=env)
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


def test_every_operation_conforms_to_the_document(server: str) -> None:
    schema = schemathesis.openapi.from_url(f"{server}/api/v1/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]  # type: ignore[union-attr]
    assert len(operations) >= 12
    for operation in operations:

        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            database=None,
        )
        @given(case=operation.as_strategy())
        def check(case: Case[Any]) -> None:
            case.headers = case.headers or {}  # type: ignore[assignment]
            case.headers["Authorization"] = f"Bearer {TOKENS['admin']}"
            # An opaque cursor is valid only if this server handed it out, which no schema
            # can say; cursors are tested in test_api.py.
            if case.query:
                case.query.pop("cursor", None)
            case.call_and_validate(base_url=server, timeout=30)

        check()
