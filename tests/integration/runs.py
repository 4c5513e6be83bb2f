"""Helpers for tests that run real scripts through a ProcessSupervisor."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime

from shelltrail.actors import ProcessSupervisor
from shelltrail.actors.tree import find_marked
from shelltrail.domain import CommandVersion
from shelltrail.domain.events import OutputLimitPolicy
from shelltrail.eventstore import EventStore, StoredEvent


def command(
    script: str,
    *,
    env: dict[str, str] | None = None,
    timeout_seconds: float | None = None,
    max_output_bytes: int | None = None,
    policy: OutputLimitPolicy = "truncate",
) -> CommandVersion:
    return CommandVersion(
        command_id=uuid.uuid4(),
        version=1,
        name="test",
        script=script,
        description=None,
        timeout_seconds=timeout_seconds,
        env=env or {},
        max_output_bytes=max_output_bytes,
        output_limit_policy=policy,
        created_at=datetime.now(UTC),
    )


class Runs:
    """Start scripts and wait for their ends, as the API will."""

    def __init__(self, store: EventStore, supervisor: ProcessSupervisor) -> None:
        self.store = store
        self.supervisor = supervisor

    async def start(self, script: str, *args: str, **kwargs: object) -> uuid.UUID:
        env = kwargs.pop("run_env", None)
        timeout = kwargs.pop("run_timeout", None)
        stored = await self.supervisor.start_run(
            command(script, **kwargs),  # type: ignore[arg-type]
            args=args,
            env=env,  # type: ignore[arg-type]
            timeout_seconds=timeout,  # type: ignore[arg-type]
        )
        return stored[0].stream_id

    async def wait(self, process_id: uuid.UUID, timeout: float = 60) -> list[StoredEvent]:
        await asyncio.wait_for(self.supervisor.wait_finished(process_id), timeout)
        events: list[StoredEvent] = []
        while page := await self.store.read_stream(process_id, after=len(events)):
            events.extend(page)
        return events

    async def run(self, script: str, *args: str, **kwargs: object) -> list[StoredEvent]:
        return await self.wait(await self.start(script, *args, **kwargs))

    async def wait_started(self, process_id: uuid.UUID) -> None:
        async for event in self.store.subscribe(process_id):
            if event.type == "Started":
                return

    async def wait_for_output(self, process_id: uuid.UUID, needle: bytes) -> None:
        seen = b""
        async for event in self.store.subscribe(process_id):
            if event.type == "OutputChunk" and event.payload:
                seen += event.payload
                if needle in seen:
                    return


def output(events: list[StoredEvent], stream: str = "stdout") -> bytes:
    chunks = [e for e in events if e.type == "OutputChunk" and e.data["stream"] == stream]
    offset = 0
    for c in chunks:  # chunks tile the stream: no gap, no overlap
        assert c.data["offset"] == offset
        offset += c.data["length"]
    return b"".join(c.payload or b"" for c in chunks)


def last(events: list[StoredEvent]) -> StoredEvent:
    return events[-1]


async def no_survivors(process_id: uuid.UUID, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not await asyncio.to_thread(find_marked, {str(process_id)}):
            return True
        await asyncio.sleep(0.05)
    return False
