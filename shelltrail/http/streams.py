"""A process's events and output, as pages or as live streams.

Live streams follow the event store's subscriptions (history first, then live, no gap, no
duplicate) and end after the run's terminal event. A comment line every 15 seconds keeps
proxies from closing an idle stream; a client that goes away ends its stream at once.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import json
import uuid
from datetime import datetime
from typing import Any, Final

from aiohttp import web

from shelltrail.domain.events import TERMINAL_EVENT_TYPES
from shelltrail.eventstore import StoredEvent
from shelltrail.eventstore.queries import first_chunk_version, read_output
from shelltrail.http.auth import Role
from shelltrail.http.context import STORE, json_response
from shelltrail.http.models import EventItem, EventPage, Problem
from shelltrail.http.problems import HTTPProblem, parse_query
from shelltrail.http.processes import PREFIX, known_process
from shelltrail.http.queries import EventsQuery, OutputQuery, ReplayQuery
from shelltrail.http.routes import Response, Route

KEEPALIVE_SECONDS: Final = 15.0
_PAGE_BYTES: Final = 16 * 1024 * 1024
TERMINAL_TYPES: Final = frozenset(t.__name__ for t in TERMINAL_EVENT_TYPES)


def event_item(event: StoredEvent) -> EventItem:
    data = dict(event.data)
    if event.type == "OutputChunk":
        data["data_base64"] = base64.b64encode(event.payload or b"").decode()
    return EventItem(
        version=event.version,
        type=event.type,
        recorded_at=event.recorded_at,
        hash=event.hash.hex(),
        data=data,
    )


#: Each event's SSE message, encoded once however many followers send it.
_MESSAGES: Final[collections.OrderedDict[tuple[uuid.UUID, int], bytes]] = collections.OrderedDict()
_MESSAGES_KEPT: Final = 4096


def sse_message(event: StoredEvent) -> bytes:
    key = (event.stream_id, event.version)
    message = _MESSAGES.get(key)
    if message is None:
        item = event_item(event).model_dump_json()
        message = f"id: {event.version}\nevent: {event.type}\ndata: {item}\n\n".encode()
        _MESSAGES[key] = message
        if len(_MESSAGES) > _MESSAGES_KEPT:
            _MESSAGES.popitem(last=False)
    return message


async def _open_sse(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
        }
    )
    await response.prepare(request)
    return response


async def events(request: web.Request) -> web.StreamResponse:
    query = parse_query(request, EventsQuery)
    state = await known_process(request)
    store = request.app[STORE]
    if "text/event-stream" not in request.headers.get("Accept", ""):
        page = await store.read_stream(state.id, after=query.after, limit=query.limit)
        more = len(page) == query.limit
        return json_response(
            EventPage(
                items=[event_item(e) for e in page],
                next_after=page[-1].version if more else None,
            )
        )
    after = query.after
    last_id = request.headers.get("Last-Event-ID")
    if last_id is not None:
        try:
            after = max(0, int(last_id))
        except ValueError:
            raise HTTPProblem(400, "Last-Event-ID must be an event version") from None
    response = await _open_sse(request)
    if state.is_terminal and after >= state.version:
        return response  # nothing left to send
    events = store.subscribe_with_idle(state.id, after=after, idle=KEEPALIVE_SECONDS)
    try:
        async for event in events:
            if event is None:
                await response.write(b": keep-alive\n\n")
                continue
            await response.write(sse_message(event))
            if event.type in TERMINAL_TYPES:
                break
    finally:
        await events.aclose()  # type: ignore[attr-defined]
    return response


async def output(request: web.Request) -> web.StreamResponse:
    query = parse_query(request, OutputQuery)
    state = await known_process(request)
    store = request.app[STORE]
    if not query.follow:
        data = await read_output(
            store.pool, state.id, query.stream, offset=query.offset, limit=query.limit
        )
        return web.Response(
            body=data,
            content_type="application/octet-stream",
            headers={"X-Next-Offset": str(query.offset + len(data))},
        )
    response = web.StreamResponse(
        headers={"Content-Type": "application/octet-stream", "Cache-Control": "no-cache"}
    )
    await response.prepare(request)
    if state.is_terminal:
        position = query.offset
        while data := await read_output(
            store.pool, state.id, query.stream, offset=position, limit=_PAGE_BYTES
        ):
            await response.write(data)
            position += len(data)
        return response
    first = await first_chunk_version(store.pool, state.id, query.stream, query.offset)
    after = first - 1 if first is not None else state.version
    position = query.offset
    async for event in store.subscribe(state.id, after=after):
        if event.type in TERMINAL_TYPES:
            break
        if event.type != "OutputChunk" or event.data["stream"] != query.stream:
            continue
        start, payload = event.data["offset"], event.payload or b""
        if start + len(payload) <= position:
            continue
        piece = payload[max(0, position - start) :]
        await response.write(piece)
        position += len(piece)
    return response


async def replay(request: web.Request) -> web.StreamResponse:
    """The run's output as SSE, with its original pacing scaled by ``speed``."""
    query = parse_query(request, ReplayQuery)
    state = await known_process(request)
    store = request.app[STORE]
    response = await _open_sse(request)
    previous: datetime | None = None
    async for event in store.subscribe(state.id, after=0):
        if event.type == "OutputChunk":
            captured = datetime.fromisoformat(event.data["captured_at"])
            if previous is not None and query.speed > 0:
                delay = (captured - previous).total_seconds() / query.speed
                if delay > 0:
                    await asyncio.sleep(min(delay, 3600))
            previous = captured
            chunk: dict[str, Any] = {
                "stream": event.data["stream"],
                "offset": event.data["offset"],
                "captured_at": event.data["captured_at"],
                "data_base64": base64.b64encode(event.payload or b"").decode(),
            }
            await response.write(
                f"id: {event.version}\nevent: output\ndata: {json.dumps(chunk)}\n\n".encode()
            )
        if event.type in TERMINAL_TYPES:
            end = {"type": event.type, "version": event.version}
            await response.write(f"event: end\ndata: {json.dumps(end)}\n\n".encode())
            break
    return response


_SSE = {"text/event-stream": {"schema": {"type": "string"}}}
_ERRORS = {
    400: Response("The query string is not valid.", Problem),
    404: Response("No process with this id (or it was deleted).", Problem),
}

ROUTES = [
    Route(
        "GET",
        PREFIX + "/{id}/events",
        events,
        "A process's events: a JSON page, or live SSE with `Accept: text/event-stream`",
        "processes",
        Role.VIEWER,
        query=EventsQuery,
        responses={
            200: Response(
                "A page of events (JSON), or every event after `after`/`Last-Event-ID`, "
                "history then live, until the terminal event (SSE).",
                EventPage,
                media=_SSE,
            ),
            **_ERRORS,
        },
    ),
    Route(
        "GET",
        PREFIX + "/{id}/output",
        output,
        "Raw bytes of one output stream",
        "processes",
        Role.VIEWER,
        query=OutputQuery,
        responses={
            200: Response(
                "The bytes from `offset`; with `follow=true`, streamed until the run ends.",
                media={"application/octet-stream": {"schema": {"type": "string"}}},
                headers={"X-Next-Offset": "The offset after the last byte returned."},
            ),
            **_ERRORS,
        },
    ),
    Route(
        "GET",
        PREFIX + "/{id}/replay",
        replay,
        "Replay a run's output with its original pacing (SSE)",
        "processes",
        Role.VIEWER,
        query=ReplayQuery,
        responses={200: Response("`output` events, then one `end` event.", media=_SSE), **_ERRORS},
    ),
]
