"""Server-sent events under stress: fast runs, dropped connections, idle streams."""

from __future__ import annotations

import asyncio
import json
import socket
import time
import urllib.request
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from shelltrail.domain import Exited, OutputChunk, Queued, Started
from shelltrail.eventstore import EventStore
from shelltrail.http import streams
from tests.conftest import TEST_NODE
from tests.integration.conftest import TOKENS, auth

Client = TestClient[Any, Any]


async def _a_queued_run(store: EventStore) -> uuid.UUID:
    """A new run with only its Queued event (version 1)."""
    process_id = uuid.uuid4()
    await store.append(
        process_id,
        [Queued(command_id=uuid.uuid4(), command_version=1, script_sha256="x", node=TEST_NODE)],
        expected_version=0,
    )
    return process_id


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
    process_id = await _a_queued_run(store)
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
    process_id = await _a_queued_run(store)
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


@pytest.mark.parametrize(
    ("header", "query", "detail"),
    [
        ("99999999999", "", "Last-Event-ID must be an event version"),
        ("-1", "", "Last-Event-ID must be an event version"),
        ("abc", "", "Last-Event-ID must be an event version"),
        ("7", "", "there is no event 7 yet: the process is at version 1"),
        (None, "?after=7", "there is no event 7 yet: the process is at version 1"),
    ],
)
async def test_a_stream_cannot_resume_after_an_event_that_does_not_exist(
    api: Client, store: EventStore, header: str | None, query: str, detail: str
) -> None:
    """Resuming past the head would wait for an event that will never come: 400 instead."""
    process_id = await _a_queued_run(store)
    headers = {**auth("viewer"), "Accept": "text/event-stream"}
    if header is not None:
        headers["Last-Event-ID"] = header
    response = await api.get(f"/api/v1/processes/{process_id}/events{query}", headers=headers)
    assert response.status == 400
    assert response.content_type == "application/problem+json"
    assert (await response.json())["detail"].startswith(detail)


def test_followers_that_leave_a_silent_run_are_released(live_server: str) -> None:
    """A real server (aiohttp does not cancel a handler whose client left): the streams of
    clients that went away end within seconds, though the run prints nothing and goes on."""
    headers = {"Authorization": f"Bearer {TOKENS['admin']}", "Content-Type": "application/json"}

    def call(method: str, path: str, body: object | None = None) -> Any:
        request = urllib.request.Request(
            live_server + path,
            method=method,
            data=json.dumps(body).encode() if body is not None else None,
            headers=headers,
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read()) if response.status != 204 else None

    def followers() -> float:
        request = urllib.request.Request(live_server + "/metrics", headers=headers)
        with urllib.request.urlopen(request, timeout=30) as response:
            text = response.read().decode()
        line = next(x for x in text.splitlines() if x.startswith("shelltrail_live_followers "))
        return float(line.split()[1])

    command = call("POST", "/api/v1/commands", {"name": "silent", "script": "sleep 1000"})
    process = call("POST", "/api/v1/processes", {"command_id": command["id"]})
    paths = [
        f"/api/v1/processes/{process['id']}/output?follow=true",
        f"/api/v1/processes/{process['id']}/events",
        f"/api/v1/processes/{process['id']}/replay",
    ]
    port = int(live_server.rsplit(":", 1)[1])
    for path in paths:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
            conn.sendall(
                f"GET {path} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n"
                f"Authorization: {headers['Authorization']}\r\n\r\n".encode()
            )
            assert conn.recv(12) == b"HTTP/1.1 200"
    deadline = time.monotonic() + 2
    while followers() < len(paths) and time.monotonic() < deadline:
        time.sleep(0.05)  # the last one may still be subscribing
    deadline = time.monotonic() + 10
    while (count := followers()) > 0:
        assert time.monotonic() < deadline, f"{count:g} streams outlived their clients"
        time.sleep(0.1)
    assert call("GET", f"/api/v1/processes/{process['id']}")["status"] == "running"
    call("POST", f"/api/v1/processes/{process['id']}/stop", {"signal": "KILL"})


async def test_a_stream_resumes_after_events_another_node_appended(
    api: Client, store: EventStore, database_url: str
) -> None:
    """This server's state of a run it wrote lags behind another node's appends; a client
    resuming after one of those is not refused: the projection is asked first."""
    process_id = uuid.uuid4()
    started = datetime.now(UTC)
    await store.append(
        process_id,
        [
            Queued(command_id=uuid.uuid4(), command_version=1, script_sha256="x", node=TEST_NODE),
            Started(pid=1, pgid=1, node=TEST_NODE, started_at=started),
        ],
        expected_version=0,
    )
    assert store.live_state(process_id) is not None  # this server's own view: version 2
    other = await EventStore.open(database_url, node="other")
    try:
        chunk = OutputChunk(stream="stdout", offset=0, length=1, captured_at=started, data=b"x")
        ended = Exited(exit_code=0, signal=None, finished_at=datetime.now(UTC))
        await other.append(process_id, [chunk, ended], expected_version=2)
    finally:
        await other.close()
    response = await api.get(
        f"/api/v1/processes/{process_id}/events",
        headers={**auth("viewer"), "Accept": "text/event-stream", "Last-Event-ID": "4"},
    )
    assert response.status == 200
    assert await response.read() == b""  # it saw the end already: nothing left to send
