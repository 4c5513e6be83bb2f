"""HEAD on every GET route: the GET's status and headers, no body (RFC 9110, 9.3.2)."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp.test_utils import TestClient

from shelltrail.eventstore import EventStore
from shelltrail.http.app import API_ROUTES, OPS_ROUTES
from tests.integration.conftest import auth
from tests.integration.test_api import create_command, start, wait_done, wait_for_stdout

Client = TestClient[Any, Any]
SSE = {"Accept": "text/event-stream"}
#: Headers that may differ between two answers to the same request.
VARYING = {"Date", "X-Request-ID", "Content-Length", "Transfer-Encoding"}


def same_headers(head: Any, get: Any) -> bool:
    def kept(response: Any) -> dict[str, str]:
        return {k: v for k, v in response.headers.items() if k not in VARYING}

    return kept(head) == kept(get)


async def test_head_answers_every_get_route_as_get_does_without_a_body(api: Client) -> None:
    command = await create_command(api, "echo out; echo err >&2")
    process = await start(api, command["id"])
    await wait_done(api, process["id"])
    ids = {"/api/v1/commands/": command["id"], "/api/v1/processes/": process["id"]}
    routes = [r for r in [*OPS_ROUTES, *API_ROUTES] if r.method == "GET"]
    assert len(routes) >= 10
    for route in routes:
        path = route.path
        for prefix, known in ids.items():
            path = path.replace(prefix + "{id}", prefix + known)
        for headers in ({}, auth("viewer"), {**auth("viewer"), **SSE}):
            get = await api.get(path, headers=headers)
            get_body = await get.read()
            head = await api.head(path, headers=headers)
            assert head.status == get.status, (path, headers)
            assert same_headers(head, get), (path, dict(head.headers), dict(get.headers))
            assert await head.read() == b"", path
            # /metrics counts each request, so its next body is another length.
            if "Content-Length" in get.headers and route.path != "/metrics":
                assert head.headers.get("Content-Length") == str(len(get_body)), path


async def test_head_of_a_live_stream_sends_its_headers_and_ends(
    api: Client, store: EventStore
) -> None:
    """The streams of a running run would last as long as it: HEAD stops at the headers.

    Spoken over one raw connection, so that any byte written after the headers would show
    up before the answer to the next request on it.
    """
    command = await create_command(api, "echo started; sleep 1000")
    process = await start(api, command["id"])
    await wait_for_stdout(api, process["id"], 8)
    base = f"/api/v1/processes/{process['id']}"
    token = auth("viewer")["Authorization"]
    reader, writer = await asyncio.open_connection(api.server.host, api.server.port)
    try:
        for path, accept, content_type in (
            (base + "/events", "text/event-stream", b"text/event-stream"),
            (base + "/output?follow=true", "*/*", b"application/octet-stream"),
            (base + "/replay", "*/*", b"text/event-stream"),
        ):
            writer.write(
                f"HEAD {path} HTTP/1.1\r\nHost: test\r\nAuthorization: {token}\r\n"
                f"Accept: {accept}\r\n\r\n".encode()
            )
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            assert head.startswith(b"HTTP/1.1 200 "), (path, head)
            assert b"Content-Type: " + content_type in head, (path, head)
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n")
            after = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            assert after.startswith(b"HTTP/1.1 200 "), (path, after)  # nothing in between
            length = int(after.split(b"Content-Length: ")[1].split(b"\r\n")[0])
            await asyncio.wait_for(reader.readexactly(length), 10)
    finally:
        writer.close()
        await writer.wait_closed()
    got = await api.get(base, headers=auth("viewer"))
    assert (await got.json())["status"] == "running"  # the streams ended, not the run
    assert store.hub.follower_count == 0
    stop = await api.post(base + "/stop", json={"signal": "KILL"}, headers=auth("operator"))
    assert stop.status == 202


async def test_head_needs_the_same_token_and_other_methods_still_get_405(api: Client) -> None:
    missing = await api.head("/api/v1/commands")
    assert missing.status == 401
    assert missing.headers["WWW-Authenticate"].startswith("Bearer")
    refused = await api.put("/api/v1/commands", headers=auth())
    assert refused.status == 405
    assert "HEAD" in refused.headers["Allow"]
