"""Settings from the environment."""

from __future__ import annotations

from pathlib import Path

import pytest

from shelltrail.config import ConfigError, Settings, redact_url


def test_the_data_directory_is_made_absolute(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    settings = Settings.from_env({})
    assert settings.data_dir == tmp_path / ".shelltrail"
    assert settings.data_dir.is_absolute()


def test_bad_numbers_name_their_variable() -> None:
    with pytest.raises(ConfigError, match="SHELLTRAIL_MAX_RUNNING must be at least 1"):
        Settings.from_env({"SHELLTRAIL_MAX_RUNNING": "0"})


def test_passwords_are_hidden() -> None:
    assert redact_url("postgresql://bob:pw@db:5432/x") == "postgresql://bob:***@db:5432/x"
    assert redact_url("postgresql://db/x") == "postgresql://db/x"
