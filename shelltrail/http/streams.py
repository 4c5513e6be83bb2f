"""A process's events and output, as pages or as live streams.

Live streams follow the event store's subscriptions (history first, then live, no gap, no
duplicate) and end after the run's terminal event. A comment line every 15 seconds keeps
proxies from closing an idle stream; a client that goes away ends its stream within a second
(aiohttp does not cancel the handler: each idle stream looks at its connection every second).
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import json
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
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
from shelltrail.http.processes import PREFIX, known_process, live_process
from shelltrail.http.queries import MAX_VERSION, EventsQuery, OutputQuery, ReplayQuery
from shelltrail.http.routes import Response, Route

KEEPALIVE_SECONDS: Final = 15.0
#: How often an idle stream looks whether its client is still there. aiohttp does not cancel
#: a handler whose client left, and a stream of a silent run would otherwise wait for it.
PRESENCE_SECONDS: Final = 1.0
_PAGE_BYTES: Final = 16 * 1024 * 1024
#: A batch of events is sent in writes of about this size: one system call for many small
#: events, and no more than this held for a slow client beyond aiohttp's own buffer.
_WRITE_BYTES: Final = 256 * 1024
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


def _resume_after(request: web.Request, after: int) -> int:
    """The version a live stream starts after: ``Last-Event-ID`` if sent, else ``after``."""
    last_id = request.headers.get("Last-Event-ID")
    if last_id is None:
        return after
    try:
        after = int(last_id)
    except ValueError:
        after = -1
    if not 0 <= after <= MAX_VERSION:
        raise HTTPProblem(400, f"Last-Event-ID must be an event version, not {last_id[:40]!r}")
    return after


def _client_gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


async def _while_present(
    request: web.Request, batches: AsyncIterator[list[StoredEvent] | None]
) -> AsyncGenerator[list[StoredEvent] | None, None]:
    """``batches`` (``None`` on each idle tick) until the client is found gone on a tick."""
    async for batch in batches:
        if batch is None and _client_gone(request):
            return
        yield batch


@contextlib.asynccontextmanager
async def _live_events(
    request: web.Request, process_id: uuid.UUID, after: int, *, idle: float = PRESENCE_SECONDS
) -> AsyncIterator[AsyncIterator[list[StoredEvent] | None]]:
    """A run's events after ``after``, history then live, in batches of those at hand (each
    sent in one write, not one per event), ``None`` each ``idle`` seconds without one, for
    as long as the client is there.

    aiohttp does not cancel a handler whose client left, so each idle tick looks at the
    connection; a write that finds the client gone ends the stream quietly. The
    subscription is closed on the way out.
    """
    events = request.app[STORE].subscribe_batches(process_id, after=after, idle=idle)
    present = _while_present(request, events)
    try:
        yield present
    except ConnectionResetError:
        pass  # the client went away while we wrote: its stream is over
    finally:
        await present.aclose()
        await events.aclose()  # type: ignore[attr-defined]


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
    after = _resume_after(request, query.after)
    if after > state.version:
        # This server's state of a run it writes may lag behind another node's appends:
        # ask the projection before refusing.
        state = await live_process(request)
        if after > state.version:
            # Nothing a client saw can be past the head: waiting for it would never end.
            raise HTTPProblem(
                400, f"there is no event {after} yet: the process is at version {state.version}"
            )
    response = await _open_sse(request)
    if request.method == "HEAD" or (state.is_terminal and after >= state.version):
        return response  # nothing (left) to send
    loop = asyncio.get_running_loop()
    written = loop.time()
    idle = min(PRESENCE_SECONDS, KEEPALIVE_SECONDS)
    async with _live_events(request, state.id, after, idle=idle) as batches:
        async for batch in batches:
            if batch is None:
                if loop.time() - written >= KEEPALIVE_SECONDS:
                    await response.write(b": keep-alive\n\n")
                    written = loop.time()
                continue
            messages: list[bytes] = []
            ended = False
            for event in batch:
                messages.append(sse_message(event))
                if event.type in TERMINAL_TYPES:
                    ended = True
                    break
            await _write_in_groups(response, messages, end=ended)
            if ended:
                return response
            written = loop.time()
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
    if request.method == "HEAD":
        return response
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
    async with _live_events(request, state.id, after) as batches:
        async for batch in batches:
            if batch is None:
                continue
            pieces, ended = _output_pieces(batch, query.stream, position)
            position += sum(len(piece) for piece in pieces)
            await _write_in_groups(response, pieces)
            if ended:
                break
    return response


def _output_pieces(
    batch: list[StoredEvent], stream: str, position: int
) -> tuple[list[bytes], bool]:
    """The bytes of ``stream`` from ``position`` in ``batch``, and whether it ended the run."""
    pieces: list[bytes] = []
    for event in batch:
        if event.type in TERMINAL_TYPES:
            return pieces, True
        if event.type != "OutputChunk" or event.data["stream"] != stream:
            continue
        start, payload = event.data["offset"], event.payload or b""
        if start + len(payload) <= position:
            continue
        piece = payload[max(0, position - start) :]
        pieces.append(piece)
        position += len(piece)
    return pieces, False


async def _write_in_groups(
    response: web.StreamResponse, parts: list[bytes], *, end: bool = False
) -> None:
    """``parts`` in writes of about ``_WRITE_BYTES``: one system call for many small ones,
    and no more than that handed to a slow client at once. With ``end``, the last write also
    ends the body (a stream's last event and its end go together)."""
    group: list[bytes] = []
    size = 0
    for part in parts:
        if size >= _WRITE_BYTES:
            await response.write(b"".join(group))
            group, size = [], 0
        group.append(part)
        size += len(part)
    if end:
        await response.write_eof(b"".join(group))
    elif group:
        await response.write(b"".join(group))


async def replay(request: web.Request) -> web.StreamResponse:
    """The run's output as SSE, with its original pacing scaled by ``speed``."""
    query = parse_query(request, ReplayQuery)
    state = await known_process(request)
    response = await _open_sse(request)
    if request.method == "HEAD":
        return response
    async with (
        _live_events(request, state.id, 0) as batches,
        contextlib.aclosing(_one_by_one(batches)) as events,
    ):
        await _replay(request, response, events, query.speed)
    return response


async def _one_by_one(
    batches: AsyncIterator[list[StoredEvent] | None],
) -> AsyncGenerator[StoredEvent, None]:
    """The events of ``batches``, one at a time (idle ticks left out)."""
    async for batch in batches:
        for event in batch or ():
            yield event


async def _replay(
    request: web.Request,
    response: web.StreamResponse,
    events: AsyncIterator[StoredEvent],
    speed: float,
) -> None:
    previous: datetime | None = None
    async for event in events:
        if event.type == "OutputChunk":
            captured = datetime.fromisoformat(event.data["captured_at"])
            if previous is not None and speed > 0:
                delay = min((captured - previous).total_seconds() / speed, 3600.0)
                # In slices, so that a client that left does not hold the pause.
                while delay > 0 and not _client_gone(request):
                    await asyncio.sleep(min(delay, PRESENCE_SECONDS))
                    delay -= PRESENCE_SECONDS
                if _client_gone(request):
                    return
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
                headers={
                    "X-Next-Offset": "The offset after the last byte returned (not sent with "
                    "`follow=true`, whose end is `offset` plus the bytes received)."
                },
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
