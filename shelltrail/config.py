"""Settings, read from ``SHELLTRAIL_*`` environment variables only."""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit, urlunsplit

PREFIX: Final = "SHELLTRAIL_"


class ConfigError(ValueError):
    """A setting has a value shelltrail cannot use; the message names the variable."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    database_url: str | None
    host: str
    port: int
    data_dir: Path
    log_format: str
    log_level: str
    node: str
    #: How long a starting server waits for another holding its node's lease to let go.
    node_lease_wait_seconds: float
    max_running: int
    max_queued: int
    max_output_bytes: int
    stop_grace_seconds: float
    shutdown_grace_seconds: float
    keep_workdirs: bool
    #: ``name:role:secret`` entries, or ``@/path/to/file`` holding them.
    tokens: str | None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ

        def get(name: str, default: str) -> str:
            return env.get(PREFIX + name, default).strip() or default

        def number(name: str, default: str, *, minimum: float) -> float:
            raw = get(name, default)
            try:
                value = float(raw)
            except ValueError:
                raise ConfigError(f"{PREFIX}{name} must be a number, not {raw!r}") from None
            if value < minimum:
                raise ConfigError(f"{PREFIX}{name} must be at least {minimum:g}, not {raw!r}")
            return value

        def integer(name: str, default: str, *, minimum: int) -> int:
            raw = get(name, default)
            try:
                value = int(raw)
            except ValueError:
                raise ConfigError(f"{PREFIX}{name} must be an integer, not {raw!r}") from None
            if value < minimum:
                raise ConfigError(f"{PREFIX}{name} must be at least {minimum}, not {raw!r}")
            return value

        log_format = get("LOG_FORMAT", "console").lower()
        if log_format not in ("console", "json"):
            raise ConfigError(f"{PREFIX}LOG_FORMAT must be 'console' or 'json', not {log_format!r}")
        log_level = get("LOG_LEVEL", "info").upper()
        if log_level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ConfigError(f"{PREFIX}LOG_LEVEL must be debug, info, warning or error")
        port = integer("PORT", "8080", minimum=0)
        if port > 65535:
            raise ConfigError(f"{PREFIX}PORT must be at most 65535")
        return cls(
            database_url=env.get(PREFIX + "DATABASE_URL") or None,
            host=get("HOST", "127.0.0.1"),
            port=port,
            # Absolute: scripts run in directories of their own under it.
            data_dir=Path(get("DATA_DIR", ".shelltrail")).expanduser().absolute(),
            log_format=log_format,
            log_level=log_level,
            node=get("NODE", socket.gethostname()),
            node_lease_wait_seconds=number("NODE_LEASE_WAIT_SECONDS", "30", minimum=0),
            max_running=integer("MAX_RUNNING", "256", minimum=1),
            max_queued=integer("MAX_QUEUED", "10000", minimum=0),
            max_output_bytes=integer("MAX_OUTPUT_BYTES", str(1024**3), minimum=0),
            stop_grace_seconds=number("STOP_GRACE_SECONDS", "10", minimum=0),
            shutdown_grace_seconds=number("SHUTDOWN_GRACE_SECONDS", "5", minimum=0),
            keep_workdirs=get("KEEP_WORKDIRS", "false").lower() in ("1", "true", "yes"),
            tokens=env.get(PREFIX + "TOKENS") or None,
        )


def redact_url(url: str) -> str:
    """The URL with its password replaced by ``***``, safe to print and log."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    user = parts.username or ""
    host = netloc[1] if len(netloc) == 2 else ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))
