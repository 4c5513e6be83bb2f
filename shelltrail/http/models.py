"""Request and response bodies, declared once: they validate input and describe the API.

The OpenAPI document (:mod:`shelltrail.http.openapi`) is generated from these models, so
what the server checks and what it documents cannot drift apart.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Final, Generic, Literal, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
)

MAX_SCRIPT_BYTES: Final = 1024 * 1024
ENV_NAME_PATTERN: Final = r"^[A-Za-z_][A-Za-z0-9_]*$"


def _integral(value: Any) -> Any:
    """JSON Schema counts 5.0 as an integer: accept it as 5 (strict mode would not)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


ByteCount = Annotated[int, Field(ge=0, le=2**62), BeforeValidator(_integral)]
EnvName = Annotated[str, StringConstraints(pattern=ENV_NAME_PATTERN, max_length=256)]
# PostgreSQL's jsonb cannot hold U+0000, and bash cannot take it in a script or argument.
NoNulText = Annotated[str, StringConstraints(pattern=r"^[^\x00]*$")]


#: pydantic describes the key pattern with patternProperties alone, which would let any
#: other key through: say so explicitly.
_ENV_SCHEMA: Final[dict[str, Any]] = {
    "additionalProperties": False,
    "propertyNames": {"pattern": ENV_NAME_PATTERN, "maxLength": 256},
}


class _Input(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class _Output(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- commands -------------------------------------------------------------------------


#: Linux refuses to exec with one argument or environment string of 128 KiB or more
#: (MAX_ARG_STRLEN, with its NUL), or with all of them past a quarter of the stack limit
#: (2 MiB by default): a run with such a value would be accepted, then fail to start. The
#: command's env and the run's env and args each get 512 KiB, 1.5 MiB together at most.
_EXEC_STRING_BYTES: Final = 128 * 1024
_EXEC_TOTAL_BYTES: Final = 512 * 1024


def _check_exec(field: str, strings: list[str]) -> None:
    """Refuse strings that Linux would not pass to a program (see above)."""
    total = 0
    for text in strings:
        size = len(text.encode(errors="replace")) + 1
        if size > _EXEC_STRING_BYTES:
            raise ValueError(f"each of {field} must be under 128 KiB in UTF-8")
        total += size
    if total > _EXEC_TOTAL_BYTES:
        raise ValueError(f"{field} together must be at most 512 KiB in UTF-8")


def _exec_env(env: dict[str, str]) -> dict[str, str]:
    _check_exec("env", [f"{name}={value}" for name, value in env.items()])
    return env


ExecEnv = Annotated[
    dict[EnvName, Annotated[NoNulText, StringConstraints(max_length=131_071)]],
    AfterValidator(_exec_env),
]


class CommandIn(_Input):
    """A stored script: created by POST, replaced (as a new version) by PUT."""

    name: Annotated[NoNulText, StringConstraints(min_length=1, max_length=200)]
    script: Annotated[NoNulText, StringConstraints(min_length=1)] = Field(
        description="The bash script, 1 byte to 1 MiB (UTF-8); larger bodies are refused with 413."
    )
    description: Annotated[NoNulText, StringConstraints(max_length=10_000)] | None = None
    timeout_seconds: Annotated[float, Field(gt=0, le=31_536_000)] | None = None
    env: ExecEnv = Field(default_factory=dict, max_length=1000, json_schema_extra=_ENV_SCHEMA)
    max_output_bytes: ByteCount | None = Field(
        default=None,
        description="Output kept per run (stdout and stderr together); default: the server's.",
    )
    output_limit_policy: Literal["truncate", "kill"] = Field(
        default="truncate",
        description="Beyond the cap: drop and count the bytes (truncate), or kill the run.",
    )

    @field_validator("script", mode="before")
    @classmethod
    def _script_size(cls, script: object) -> object:
        # Before the other checks: a script too large is a 413 whatever else is wrong in it.
        if isinstance(script, str) and len(script.encode(errors="replace")) > MAX_SCRIPT_BYTES:
            raise ScriptTooLarge
        return script


class ScriptTooLarge(ValueError):
    """A script over 1 MiB: answered with 413, not 422."""

    def __init__(self) -> None:
        super().__init__(f"script must be at most {MAX_SCRIPT_BYTES} bytes")


class Command(_Output):
    id: uuid.UUID
    name: str
    description: str | None
    script: str
    version: int
    timeout_seconds: float | None
    env: dict[str, str]
    max_output_bytes: int | None
    output_limit_policy: Literal["truncate", "kill"]
    created_at: datetime
    updated_at: datetime


class CommandVersionOut(_Output):
    version: int
    name: str
    script: str
    description: str | None
    timeout_seconds: float | None
    env: dict[str, str]
    created_at: datetime


# --- processes ------------------------------------------------------------------------


class ProcessIn(_Input):
    command_id: uuid.UUID
    args: list[Annotated[NoNulText, StringConstraints(max_length=131_071)]] = Field(
        default_factory=list,
        max_length=1000,
        description="The script's $1…$n: each under 128 KiB in UTF-8, 512 KiB together.",
    )
    env: ExecEnv = Field(default_factory=dict, max_length=1000, json_schema_extra=_ENV_SCHEMA)
    timeout_seconds: Annotated[float, Field(gt=0, le=31_536_000)] | None = None

    @field_validator("args")
    @classmethod
    def _args_fit_exec(cls, args: list[str]) -> list[str]:
        _check_exec("args", args)
        return args


Status = Literal["queued", "running", "succeeded", "failed", "killed", "lost"]
StopReason = Literal["user", "timeout", "output_limit", "shutdown"]


class Process(_Output):
    id: uuid.UUID
    command_id: uuid.UUID
    command_version: int
    status: Status
    exit_code: int | None
    signal: int | None
    pid: int | None
    args: list[str]
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    duration_seconds: float | None
    stdout_bytes: int
    stderr_bytes: int
    stop_reason: StopReason | None
    version: int


SignalName = Literal["TERM", "INT", "HUP", "KILL"]


class StopIn(_Input):
    signal: SignalName = "TERM"
    grace_seconds: Annotated[float, Field(ge=0, le=3600)] = 10.0


# --- events and audit -----------------------------------------------------------------


class EventItem(_Output):
    version: int
    type: str
    recorded_at: datetime
    hash: str = Field(description="sha256 of this event chained to the previous one, hex")
    data: dict[str, Any]


class EventPage(_Output):
    items: list[EventItem]
    next_after: int | None


class Audit(_Output):
    verified: bool
    events: int
    head_hash: str | None
    first_bad_version: int | None


# --- lists and errors -----------------------------------------------------------------

T = TypeVar("T")


class Page(_Output, Generic[T]):
    items: list[T]
    next_cursor: str | None


class FieldError(_Output):
    field: str
    message: str


class Problem(_Output):
    """RFC 9457 problem details."""

    type: str
    title: str
    status: int
    detail: str
    errors: list[FieldError] | None = None


class Health(_Output):
    status: str
