"""schemathesis against the served OpenAPI document: no 5xx, every response conforms.

The real server runs as a subprocess (`shelltrail serve`) on a fresh database; every
operation is exercised with generated requests and an admin token. SHELLTRAIL_FUZZ_EXAMPLES
sets the examples per operation (a long run outside CI, a short one inside).
"""

from __future__ import annotations

import os
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import Case

from tests.integration.conftest import TOKENS

pytestmark = pytest.mark.fuzz

EXAMPLES = int(os.environ.get("SHELLTRAIL_FUZZ_EXAMPLES", "12"))


def test_every_operation_conforms_to_the_document(live_server: str) -> None:
    server = live_server
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
