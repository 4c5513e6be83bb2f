"""Bearer tokens and roles.

Running scripts over HTTP is remote code execution by design, so every route but the
health checks (and the API's own documentation) needs a token. Tokens are configured as
``name:role:secret`` entries; only their sha256 is kept in memory, compared in constant time,
and never logged. With none configured, the server makes one admin token on its first
start, prints it once, and keeps only its hash in the data directory.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import structlog

log = structlog.get_logger(__name__)

GENERATED_TOKEN_FILE: Final = "admin-token.sha256"  # noqa: S105 -- a file name; it holds a hash


class Role(enum.IntEnum):
    """Each role may do everything the ones below it may."""

    VIEWER = 1  # every GET
    OPERATOR = 2  # + start and stop processes
    ADMIN = 3  # + create, change, delete commands; delete processes


@dataclass(frozen=True, slots=True)
class Principal:
    name: str
    role: Role


class TokenConfigError(ValueError):
    """SHELLTRAIL_TOKENS cannot be understood; the message says where (never the secret)."""


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


class TokenRegistry:
    """Known token hashes and whom they belong to."""

    def __init__(self, principals: dict[bytes, Principal], *, configured: bool) -> None:
        self._principals = principals
        #: False when the only token is the one generated on first start.
        self.configured = configured

    def authenticate(self, presented: str) -> Principal | None:
        digest = _digest(presented)
        found: Principal | None = None
        # Compare against every hash, in constant time, whatever matches.
        for known, principal in self._principals.items():
            if hmac.compare_digest(known, digest):
                found = principal
        return found

    @classmethod
    def parse(cls, setting: str) -> TokenRegistry:
        """``name:role:secret`` entries separated by commas (or newlines, in a file)."""
        principals: dict[bytes, Principal] = {}
        entries = [e.strip() for e in setting.replace("\n", ",").split(",")]
        for number, entry in enumerate((e for e in entries if e), start=1):
            parts = entry.split(":", 2)
            if len(parts) != 3 or not parts[0] or not parts[2]:
                raise TokenConfigError(f"token entry {number} is not name:role:secret")
            name, role_name, secret = parts
            try:
                role = Role[role_name.upper()]
            except KeyError:
                raise TokenConfigError(
                    f"token {name!r} has role {role_name!r}; use viewer, operator or admin"
                ) from None
            if len(secret) < 16:
                raise TokenConfigError(f"token {name!r} is shorter than 16 characters")
            digest = _digest(secret)
            if digest in principals:
                raise TokenConfigError(f"token {name!r} has the same secret as another")
            principals[digest] = Principal(name, role)
        if not principals:
            raise TokenConfigError("no token entries")
        return cls(principals, configured=True)

    @classmethod
    def from_settings(cls, setting: str | None, data_dir: Path) -> tuple[TokenRegistry, str | None]:
        """The registry, and a newly generated admin token to show once (or ``None``).

        ``setting`` is SHELLTRAIL_TOKENS: the entries themselves, or ``@/path/to/file``.
        """
        if setting:
            if setting.startswith("@"):
                path = Path(setting[1:])
                try:
                    setting = path.read_text(encoding="utf-8")
                except OSError as exc:
                    raise TokenConfigError(f"cannot read the tokens file {path}: {exc}") from None
            return cls.parse(setting), None
        stored = data_dir / GENERATED_TOKEN_FILE
        if stored.exists():
            try:
                digest = bytes.fromhex(stored.read_text().strip())
            except (OSError, ValueError):
                digest = b""
            if len(digest) != hashlib.sha256().digest_size:
                raise TokenConfigError(
                    f"{stored} does not hold a token hash; delete it to get a new admin token"
                )
            return cls({digest: Principal("admin", Role.ADMIN)}, configured=False), None
        token = secrets.token_urlsafe(32)
        data_dir.mkdir(parents=True, exist_ok=True)
        stored.write_text(_digest(token).hex() + "\n")
        stored.chmod(0o600)
        return cls({_digest(token): Principal("admin", Role.ADMIN)}, configured=False), token
