"""Server-sent events under stress: fast runs, dropped connections, idle streams."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from shelltrail.domain import Exited, OutputChunk, Queued, Started
from shelltrail.eventstore import EventStore
from shelltrail.http import streams
from tests.conftest import TEST_NODE
from tests.integration.conftest import auth

Client = TestClient[Any, Any]
NOW = datetime.now(UTC)


async def produce_run(store: EventStore, process_id: uuid.UUID, chunks: int) -> None:
    """A run that writes `chunks` output chunks as fast as the store takes them."""
    await store.append(
        process_id,
        [
            Queued(command_id=uuid.uuid4(), command_version=1, script_sha256="x", node=TEST_NODE),
            Started(pid=1, pgid=1, node=TEST_NODE, started_at=NOW),
        ],
        expected_version=0,
    )
    version, offset, batch = 2, 0, 25
    for start in range(0, chunks, batch):
        events = []
        for i in range(start, min(start + batch, chunks)):
            data = f"chunk {i}\n".encode()
            events.append(
                OutputChunk(
                    stream="stdout", offset=offset, length=len(data), captured_at=NOW, data=data
                )
            )
            offset += len(data)
        await store.append(process_id, events, expected_version=version)
        version += len(events)
        await asyncio.sleep(0)
    await store.append(
        process_id, [Exited(exit_code=0, signal=None, finished_at=NOW)], expected_version=version
    )


async def read_sse(
    api: Client, process_id: uuid.UUID, last_id: int, stop_after: int | None
) -> list[int]:
    """Versions received; drops the connection after `stop_after` messages."""
    got: list[int] = []
    async with api.get(
        f"/api/v1/processes/{process_id}/events",
        headers={**auth("viewer"), "Accept": "text/event-stream", "Last-Event-ID": str(last_id)},
    ) as response:
        assert response.status == 200
        async for line in response.content:
            if line.startswith(b"id: "):
                got.append(int(line[4:]))
                if stop_after is not None and len(got) >= stop_after:
                    break
    return got


async def test_ten_thousand_chunks_with_two_reconnects(api: Client, store: EventStore) -> None:
    """A client that drops and resumes twice receives every version exactly once, in order."""
    process_id = uuid.uuid4()
    producer = asyncio.create_task(produce_run(store, process_id, 10_000))
    while await store.stream_version(process_id) == 0:  # noqa: ASYNC110 -- polls the database
        await asyncio.sleep(0.01)
    received: list[int] = []
    for stop_after in (1500, 3000, None):
        last = received[-1] if received else 0
        received.extend(await read_sse(api, process_id, last, stop_after))
    await producer
    assert received == list(range(1, 10_000 + 4))


async def test_idle_streams_get_keepalive_comments(
    api: Client, store: EventStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(streams, "KEEPALIVE_SECONDS", 0.05)
    process_id = uuid.uuid4()
    await store.append(
        process_id,
        [Queued(command_id=uuid.uuid4(), command_version=1, script_sha256="x", node=TEST_NODE)],
        expected_version=0,
    )
    async with api.get(
        f"/api/v1/processes/{process_id}/events",
        headers={**auth("viewer"), "Accept": "text/event-stream"},
    ) as response:
        lines = [await response.content.readline() for _ in range(5)]
    assert b": keep-alive\n" in lines


async def test_a_client_that_leaves_releases_its_subscription(
    api: Client, store: EventStore
) -> None:
    """An abandoned stream does not keep a follower in the server."""
    process_id = uuid.uuid4()
    await store.append(
        process_id,
        [Queued(command_id=uuid.uuid4(), command_version=1, script_sha256="x", node=TEST_NODE)],
        expected_version=0,
    )
    for _ in range(3):
        async with api.get(
            f"/api/v1/processes/{process_id}/events",
            headers={**auth("viewer"), "Accept": "text/event-stream"},
        ) as response:
            await response.content.readline()
            assert store.hub.follower_count >= 1
    for _ in range(200):
        if store.hub.follower_count == 0:
            break
        await asyncio.sleep(0.02)
    assert store.hub.follower_count == 0


async def test_requests_count_as_foreground_until_answered_or_streaming(
    api: Client, store: EventStore
) -> None:
    """Each request counts while it is answered; a stream stops counting once it streams."""
    foreground = store.writer.foreground
    process_id = uuid.uuid4()
    await store.append(
        process_id,
        [
            Queued(command_id=uuid.uuid4(), command_version=1, script_sha256="x", node=TEST_NODE),
            Started(pid=1, pgid=1, node=TEST_NODE, started_at=NOW),
        ],
        expected_version=0,
    )
    path = f"/api/v1/processes/{process_id}"
    answered = [
        await api.get(path, headers=auth("viewer")),
        await api.get(path),  # 401
        await api.get(f"/api/v1/processes/{uuid.uuid4()}", headers=auth("viewer")),  # 404
        await api.post(path + "/stop", data=b"{", headers=auth("operator")),  # 415
    ]
    assert [r.status for r in answered] == [200, 401, 404, 415]
    assert foreground.active == 0
    sse = {**auth("viewer"), "Accept": "text/event-stream"}
    async with (
        api.get(path + "/events", headers=sse) as events,
        api.get(path + "/output?follow=true", headers=auth("viewer")) as output,
    ):
        assert (events.status, output.status) == (200, 200)
        assert (await events.content.readline()).startswith(b"id: 1")
        # Both run on (the process has not ended) and neither holds output back.
        assert foreground.active == 0
    assert foreground.active == 0


async def test_the_foreground_middleware_counts_while_the_handler_runs(
    api: Client, store: EventStore
) -> None:
    """Counted during the handler, also when it fails; released early by a stream."""
    from aiohttp import web
    from aiohttp.test_utils import make_mocked_request

    from shelltrail.http.app import _answered, _foreground

    foreground = store.writer.foreground
    seen: list[int] = []

    async def answers(request: web.Request) -> web.StreamResponse:
        seen.append(foreground.active)
        return web.Response()

    async def fails(request: web.Request) -> web.StreamResponse:
        seen.append(foreground.active)
        raise RuntimeError("boom")

    async def streams(request: web.Request) -> web.StreamResponse:
        seen.append(foreground.active)
        await _answered(request, web.StreamResponse())  # its headers go out
        seen.append(foreground.active)
        await _answered(request, web.StreamResponse())  # a second time changes nothing
        seen.append(foreground.active)
        return web.Response()

    app = api.app
    assert app is not None

    def request() -> web.Request:
        return make_mocked_request("GET", "/", app=app)

    await _foreground(request(), answers)
    with pytest.raises(RuntimeError):
        await _foreground(request(), fails)
    await _foreground(request(), streams)
    assert seen == [1, 1, 1, 0, 0]
    assert foreground.active == 0
