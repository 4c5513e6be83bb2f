"""Every route with no token, a bad token and each role."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from shelltrail.http.app import API_ROUTES, OPS_ROUTES
from shelltrail.http.auth import Role, TokenConfigError, TokenRegistry
from tests.integration.conftest import TOKENS, auth

Client = TestClient[Any, Any]
ROLES = {"viewer": Role.VIEWER, "operator": Role.OPERATOR, "admin": Role.ADMIN}


def concrete(path: str) -> str:
    return path.replace("{id}", str(uuid.uuid4()))


async def test_every_route_checks_tokens_and_roles(api: Client) -> None:
    """No token or a bad one: 401 with WWW-Authenticate; a role too low: 403; else allowed."""
    for route in [*API_ROUTES, *(r for r in OPS_ROUTES if r.role is not None)]:
        assert route.role is not None, f"{route.method} {route.path} must need a token"
        path = concrete(route.path)
        kwargs: dict[str, Any] = {"json": {}} if route.body is not None else {}
        missing = await api.request(route.method, path, **kwargs)
        assert missing.status == 401, (route.path, route.method)
        assert missing.headers["WWW-Authenticate"].startswith("Bearer")
        assert missing.content_type == "application/problem+json"
        bad = await api.request(
            route.method, path, headers={"Authorization": "Bearer not-a-token"}, **kwargs
        )
        assert bad.status == 401
        for name, role in ROLES.items():
            response = await api.request(route.method, path, headers=auth(name), **kwargs)
            if role < route.role:
                assert response.status == 403, (route.method, route.path, name)
            else:
                assert response.status not in (401, 403), (route.method, route.path, name)


async def test_health_and_documents_need_no_token(api: Client) -> None:
    """Public routes answer with no token, and ignore a bad one."""
    for route in OPS_ROUTES:
        if route.role is not None:
            continue
        assert (await api.get(route.path)).status == 200
        bad = await api.get(route.path, headers={"Authorization": "Bearer nonsense"})
        assert bad.status == 200
    assert (await api.get("/api/v1/openapi.json")).status == 200
    assert (await api.get("/api/docs")).status == 200


async def test_a_non_bearer_scheme_is_refused(api: Client) -> None:
    response = await api.get(
        "/api/v1/commands", headers={"Authorization": f"Basic {TOKENS['admin']}"}
    )
    assert response.status == 401


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("alice:admin", "entry 1 is not name:role:secret"),
        ("alice:root:0123456789abcdef", "role 'root'"),
        ("alice:admin:short", "shorter than 16"),
        ("a:admin:0123456789abcdef,b:viewer:0123456789abcdef", "same secret"),
        (" , ", "no token entries"),
    ],
)
def test_token_settings_are_checked(setting: str, message: str) -> None:
    with pytest.raises(TokenConfigError, match=message):
        TokenRegistry.parse(setting)


def test_a_generated_admin_token_is_kept_only_as_a_hash(tmp_path: Path) -> None:
    """First start prints a token once; later starts know it without seeing it again."""
    registry, token = TokenRegistry.from_settings(None, tmp_path)
    assert token is not None
    assert token not in (tmp_path / "admin-token.sha256").read_text()
    again, shown = TokenRegistry.from_settings(None, tmp_path)
    assert shown is None
    for reg in (registry, again):
        who = reg.authenticate(token)
        assert who is not None
        assert who.role is Role.ADMIN
        assert not reg.configured


def test_tokens_can_come_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text("ci:operator:0123456789abcdef\nops:admin:fedcba9876543210\n")
    registry, generated = TokenRegistry.from_settings(f"@{path}", tmp_path)
    assert generated is None
    who = registry.authenticate("0123456789abcdef")
    assert who is not None
    assert (who.name, who.role) == ("ci", Role.OPERATOR)


def test_a_corrupt_token_hash_file_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "admin-token.sha256").write_text("not hex\n")
    with pytest.raises(TokenConfigError, match="does not hold a token hash"):
        TokenRegistry.from_settings(None, tmp_path)
