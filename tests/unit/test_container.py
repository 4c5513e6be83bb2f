"""The container files, checked as far as a machine without a Docker engine allows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]


def compose() -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert isinstance(data, dict)
    return data


def test_compose_starts_postgres_then_shelltrail() -> None:
    """PostgreSQL 16 with a healthcheck; shelltrail waits for it and checks /readyz."""
    services = compose()["services"]
    postgres, app = services["postgres"], services["shelltrail"]
    assert postgres["image"] == "postgres:16"
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    assert app["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    assert app["environment"]["SHELLTRAIL_DATABASE_URL"].startswith("postgresql://")
    assert "SHELLTRAIL_TOKENS" in app["environment"]
    assert "/readyz" in " ".join(app["healthcheck"]["test"])
    assert all(port.startswith("127.0.0.1:") for port in app["ports"])


def test_dockerfile_builds_from_setup_cfg_as_a_non_root_user_under_an_init() -> None:
    lines = [
        line.strip()
        for line in (ROOT / "Dockerfile").read_text().splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]
    text = "\n".join(lines)
    assert any(line.startswith("COPY") and "setup.cfg" in line for line in lines)
    assert "pip install --no-cache-dir ." in text
    assert any(line.startswith("USER ") and line != "USER root" for line in lines)
    assert 'ENTRYPOINT ["tini", "--"]' in lines
    assert "bash" in text
    assert "setpriv" in text
    assert "/readyz" in text
