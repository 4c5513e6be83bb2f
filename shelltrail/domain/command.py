"""A command's state (its current version and every earlier one) as a pure fold."""

from __future__ import annotations

import dataclasses
import hashlib
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import NoReturn

from shelltrail.domain.errors import InvalidTransition
from shelltrail.domain.events import (
    CommandCreated,
    CommandDeleted,
    CommandUpdated,
    OutputLimitPolicy,
    Recorded,
)


@dataclass(frozen=True, slots=True, kw_only=True)
class CommandVersion:
    """One version of a command: a full snapshot of its script and settings."""

    command_id: uuid.UUID
    version: int
    name: str
    script: str
    description: str | None
    timeout_seconds: float | None
    env: dict[str, str]
    max_output_bytes: int | None
    output_limit_policy: OutputLimitPolicy
    created_at: datetime

    @property
    def script_sha256(self) -> str:
        return script_sha256(self.script)


@dataclass(frozen=True, slots=True, kw_only=True)
class CommandState:
    """A command after some prefix of its events: the current version plus its history."""

    id: uuid.UUID
    current: CommandVersion
    created_at: datetime
    updated_at: datetime
    stream_version: int
    deleted: bool = False
    versions: tuple[CommandVersion, ...] = ()

    @property
    def version(self) -> int:
        return self.current.version


def script_sha256(script: str) -> str:
    return hashlib.sha256(script.encode()).hexdigest()


def evolve_command(state: CommandState | None, recorded: Recorded) -> CommandState:
    """Apply one recorded event to a command's state; refuse impossible histories."""
    event = recorded.event
    if state is None:
        if not isinstance(event, CommandCreated):
            _refuse(recorded, "the first event of a command must be CommandCreated")
        first = _snapshot(recorded.stream_id, 1, event, recorded.recorded_at)
        return CommandState(
            id=recorded.stream_id,
            current=first,
            created_at=recorded.recorded_at,
            updated_at=recorded.recorded_at,
            stream_version=recorded.version,
            versions=(first,),
        )
    if recorded.version != state.stream_version + 1:
        _refuse(recorded, f"version {recorded.version} does not follow {state.stream_version}")
    if state.deleted:
        _refuse(recorded, "the command is deleted")
    match event:
        case CommandUpdated():
            new = _snapshot(state.id, state.version + 1, event, recorded.recorded_at)
            return dataclasses.replace(
                state,
                current=new,
                updated_at=recorded.recorded_at,
                stream_version=recorded.version,
                versions=(*state.versions, new),
            )
        case CommandDeleted():
            return dataclasses.replace(
                state,
                deleted=True,
                updated_at=recorded.recorded_at,
                stream_version=recorded.version,
            )
        case _:
            _refuse(recorded, "a command is created only once")
    raise AssertionError("unreachable")  # pragma: no cover -- every case returns or raises


def project_command(history: Iterable[Recorded]) -> CommandState:
    state: CommandState | None = None
    for recorded in history:
        state = evolve_command(state, recorded)
    if state is None:
        raise InvalidTransition("a command needs at least its CommandCreated event")
    return state


def _snapshot(
    command_id: uuid.UUID,
    version: int,
    event: CommandCreated | CommandUpdated,
    at: datetime,
) -> CommandVersion:
    return CommandVersion(
        command_id=command_id,
        version=version,
        name=event.name,
        script=event.script,
        description=event.description,
        timeout_seconds=event.timeout_seconds,
        env=dict(event.env),
        max_output_bytes=event.max_output_bytes,
        output_limit_policy=event.output_limit_policy,
        created_at=at,
    )


def _refuse(recorded: Recorded, why: str) -> NoReturn:
    raise InvalidTransition(
        f"{type(recorded.event).__name__} at version {recorded.version} "
        f"of command {recorded.stream_id}: {why}",
        stream_id=recorded.stream_id,
        version=recorded.version,
    )
