"""Handlers for /api/v1/processes: start, read, stop and delete runs.

Handlers tell the supervisor what to do and read projections; they never wait on an actor.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal as signals
from typing import Final

from aiohttp import web

from shelltrail.actors import QueueFull, ShuttingDown
from shelltrail.domain import Deleted, ProcessState, project_process
from shelltrail.eventstore import ConcurrencyError, StoredEvent
from shelltrail.eventstore.audit import verify_stream
from shelltrail.eventstore.queries import (
    find_process_by_idempotency_key,
    get_current_version,
    get_process,
    list_processes,
)
from shelltrail.http.auth import Role
from shelltrail.http.context import STORE, SUPERVISOR, json_response, path_id, principal_name
from shelltrail.http.models import Audit, Page, Problem, Process, ProcessIn, StopIn
from shelltrail.http.problems import HTTPProblem, not_found, parse_query, read_body
from shelltrail.http.queries import (
    ProcessListQuery,
    ProcessQuery,
    decode_keyset,
    encode_keyset,
)
from shelltrail.http.routes import CANNOT_STORE, Response, Route

PREFIX: Final = "/api/v1/processes"
SIGNALS: Final = {
    "TERM": signals.SIGTERM,
    "INT": signals.SIGINT,
    "HUP": signals.SIGHUP,
    "KILL": signals.SIGKILL,
}
_MAX_IDEMPOTENCY_KEY: Final = 255
#: How long a request waits for a run of this server to end and store its last events:
#: DELETE after its SIGKILL, and a stop that found the run's actor already gone.
_END_WAIT: Final = 30.0


def process_out(state: ProcessState) -> Process:
    return Process(
        id=state.id,
        command_id=state.command_id,
        command_version=state.command_version,
        status=state.status,
        exit_code=state.exit_code,
        signal=state.signal,
        pid=state.pid,
        args=list(state.args),
        created_at=state.created_at,
        started_at=state.started_at,
        finished_at=state.finished_at,
        duration_seconds=state.duration_seconds,
        stdout_bytes=state.stdout_bytes,
        stderr_bytes=state.stderr_bytes,
        stop_reason=state.stop_reason,
        version=state.version,
    )


async def live_process(request: web.Request) -> ProcessState:
    """The process of the path, as stored in its projection; 404 if unknown or deleted."""
    state = await get_process(request.app[STORE].pool, path_id(request, "process"))
    if state is None or state.deleted:
        raise not_found("this process")
    return state


async def known_process(request: web.Request) -> ProcessState:
    """The process of the path, from the writer's state while this server runs it.

    That state shows every append that has resolved, and a run in it exists and is not
    deleted; other runs are read from the projection (:func:`live_process`). For handlers
    that need the run's identity and whether it has ended, not its latest counts: with
    many actor threads waking, each query awaited on the loop waits for the GIL twice.
    """
    state = request.app[STORE].live_state(path_id(request, "process"))
    return state if state is not None else await live_process(request)


def same_key(earlier: ProcessState, body: ProcessIn) -> web.Response:
    """The answer to a repeated Idempotency-Key: the process it started, unless deleted.

    The key stands for one request: sent again with another command, other args, an env
    name the run did not have, or a timeout other than the run's, it is refused (422), since
    the caller meant something else than what ran. (The run records the env names and the
    timeout with the command's merged in, and env values not at all, so only these can be
    told apart.) A deleted process answers 404 everywhere, so it is not returned here
    either; the key stays taken (a retry must not start the run again), hence a conflict.
    """
    if (
        earlier.command_id != body.command_id
        or earlier.args != tuple(body.args)
        or not set(body.env) <= set(earlier.env_names)
        or body.timeout_seconds not in (None, earlier.timeout_seconds)
    ):
        raise HTTPProblem(
            422,
            f"this Idempotency-Key started process {earlier.id} with another request "
            "(command, args, env names or timeout); send a new key for a new run",
        )
    if earlier.deleted:
        raise HTTPProblem(
            409,
            f"process {earlier.id}, started with this Idempotency-Key, was deleted; "
            "send another key to start a new run",
        )
    return json_response(process_out(earlier), status=200)


async def start(request: web.Request) -> web.Response:
    store = request.app[STORE]
    key = request.headers.get("Idempotency-Key")
    if key is not None and not 1 <= len(key) <= _MAX_IDEMPOTENCY_KEY:
        raise HTTPProblem(400, f"Idempotency-Key must be 1 to {_MAX_IDEMPOTENCY_KEY} characters")
    body = await read_body(request, ProcessIn)
    if key is not None:
        earlier = await find_process_by_idempotency_key(store.pool, key)
        if earlier is not None:
            return same_key(earlier, body)
    version = await get_current_version(store.pool, body.command_id)
    if version is None:
        raise not_found(f"command {body.command_id}")
    try:
        stored = await request.app[SUPERVISOR].start_run(
            version,
            args=body.args,
            env=body.env,
            timeout_seconds=body.timeout_seconds,
            requested_by=principal_name(request),
            idempotency_key=key,
        )
    except QueueFull as exc:
        raise HTTPProblem(429, str(exc), headers={"Retry-After": str(exc.retry_after)}) from None
    except ShuttingDown as exc:
        raise HTTPProblem(503, str(exc), headers={"Retry-After": "5"}) from None
    except Exception:
        if key is not None:  # the same key raced another request, which won
            earlier = await find_process_by_idempotency_key(store.pool, key)
            if earlier is not None:
                return same_key(earlier, body)
        raise
    # The process as its Queued event made it; later events may already be stored.
    state = project_process([event.recorded() for event in stored])
    return json_response(
        process_out(state), status=201, headers={"Location": f"{PREFIX}/{state.id}"}
    )


async def list_all(request: web.Request) -> web.Response:
    query = parse_query(request, ProcessListQuery)
    found = await list_processes(
        request.app[STORE].pool,
        limit=query.limit + 1,
        after=decode_keyset(query.cursor),
        status=query.status,
        command_id=query.command_id,
    )
    page, more = found[: query.limit], len(found) > query.limit
    cursor = encode_keyset(page[-1].created_at, page[-1].id) if more else None
    return json_response(Page[Process](items=[process_out(p) for p in page], next_cursor=cursor))


async def get_one(request: web.Request) -> web.Response:
    query = parse_query(request, ProcessQuery)
    state = await live_process(request)
    if query.at_version is None:
        return json_response(process_out(state))
    if query.at_version > state.version:
        raise HTTPProblem(400, f"the process has no version {query.at_version} yet")
    history = await read_history(request, state, until=query.at_version)
    return json_response(process_out(project_process([e.recorded() for e in history])))


async def read_history(
    request: web.Request, state: ProcessState, *, until: int
) -> list[StoredEvent]:
    store = request.app[STORE]
    events: list[StoredEvent] = []
    while len(events) < until:
        page = await store.read_stream(state.id, after=len(events), limit=until - len(events))
        if not page:
            break
        events.extend(page)
    return events


async def audit(request: web.Request) -> web.Response:
    state = await known_process(request)
    async with request.app[STORE].pool.acquire() as conn:
        result = await verify_stream(conn, state.id)
    return json_response(
        Audit(
            verified=result.verified,
            events=result.events,
            head_hash=result.head_hash.hex() if result.head_hash is not None else None,
            first_bad_version=result.first_bad_version,
        )
    )


async def stop(request: web.Request) -> web.Response:
    # Reading the projection instead made a stop of 1,000 runs through the API take a
    # fifth longer (docs/benchmarks.md).
    state = await known_process(request)
    body = await read_body(request, StopIn, empty=StopIn())
    if state.is_terminal:
        raise HTTPProblem(409, f"the process has already ended ({state.status})")
    stopped = await request.app[SUPERVISOR].stop_run(
        state.id,
        signal=SIGNALS[body.signal],
        grace_seconds=body.grace_seconds,
        requested_by=principal_name(request),
    )
    if not stopped:
        # A run of this server that has just ended: its actor is gone, and its last events
        # may still be on their way to the log. Let them land before saying which it is.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(request.app[SUPERVISOR].wait_finished(state.id), _END_WAIT)
        current = await get_process(request.app[STORE].pool, state.id)
        if current is not None and current.is_terminal:
            raise HTTPProblem(409, f"the process has already ended ({current.status})")
        raise HTTPProblem(409, f"the process is owned by node {state.node!r}, not this one")
    if state.status == "queued":  # cancelled at once: its Killed is already stored
        state = await get_process(request.app[STORE].pool, state.id) or state
    # A running process as read just before: its actor has yet to record the request, so
    # reading it again would show nothing more.
    return json_response(process_out(state), status=202)


async def delete(request: web.Request) -> web.Response:
    store, supervisor = request.app[STORE], request.app[SUPERVISOR]
    state = await get_process(store.pool, path_id(request, "process"))
    if state is None:
        raise not_found("this process")
    if state.deleted:
        return web.Response(status=204)
    if not state.is_terminal:
        await supervisor.stop_run(
            state.id,
            signal=signals.SIGKILL,
            grace_seconds=0,
            requested_by=principal_name(request),
        )
        try:
            await asyncio.wait_for(supervisor.wait_finished(state.id), _END_WAIT)
        except TimeoutError:
            raise HTTPProblem(409, "the process did not end in time; try again") from None
    for _ in range(3):
        current = await get_process(store.pool, state.id)
        if current is None or current.deleted:
            return web.Response(status=204)
        if not current.is_terminal:
            raise HTTPProblem(409, f"the process is {current.status} on node {current.node!r}")
        try:
            await store.append(
                state.id,
                [Deleted(requested_by=principal_name(request))],
                expected_version=current.version,
            )
        except ConcurrencyError:
            continue
        return web.Response(status=204)
    raise HTTPProblem(409, "the process kept changing; try again")


_PROCESS_ERRORS = {404: Response("No process with this id (or it was deleted).", Problem)}
_BODY_ERRORS = {
    400: Response("The body is not valid JSON.", Problem),
    413: Response("The body is too large.", Problem),
    415: Response("The body is not application/json.", Problem),
    422: Response("Some fields are not valid.", Problem),
}

ROUTES = [
    Route(
        "POST",
        PREFIX,
        start,
        "Start a run of a command",
        "processes",
        Role.OPERATOR,
        body=ProcessIn,
        responses={
            200: Response("A process started earlier with the same Idempotency-Key.", Process),
            201: Response("The new process (queued or running).", Process),
            404: Response("No such command (or it was deleted).", Problem),
            409: Response("The process started with this Idempotency-Key was deleted.", Problem),
            429: Response("Too many runs are queued; retry after Retry-After.", Problem),
            503: Response(
                "The server is shutting down, or events cannot be stored now (nothing was "
                "stored; retry after Retry-After).",
                Problem,
            ),
            **_BODY_ERRORS,
        },
        headers={"Location": "URL of the new process"},
    ),
    Route(
        "GET",
        PREFIX,
        list_all,
        "List processes, newest first",
        "processes",
        Role.VIEWER,
        query=ProcessListQuery,
        responses={200: Response("A page of processes.", Page[Process])},
    ),
    Route(
        "GET",
        PREFIX + "/{id}",
        get_one,
        "Get a process, now or as of an earlier version",
        "processes",
        Role.VIEWER,
        query=ProcessQuery,
        responses={200: Response("The process.", Process), **_PROCESS_ERRORS},
    ),
    Route(
        "GET",
        PREFIX + "/{id}/audit",
        audit,
        "Recompute the process's hash chain",
        "processes",
        Role.VIEWER,
        responses={200: Response("The audit result.", Audit), **_PROCESS_ERRORS},
    ),
    Route(
        "POST",
        PREFIX + "/{id}/stop",
        stop,
        "Stop a process (its whole process tree)",
        "processes",
        Role.OPERATOR,
        body=StopIn,
        responses={
            202: Response("Stopping; the process as it is now.", Process),
            **_PROCESS_ERRORS,
            409: Response("The process has already ended.", Problem),
            **_BODY_ERRORS,
            503: CANNOT_STORE,
        },
    ),
    Route(
        "DELETE",
        PREFIX + "/{id}",
        delete,
        "Delete a process (stopping it first if it runs)",
        "processes",
        Role.ADMIN,
        responses={
            204: Response("Deleted (or already deleted)."),
            **_PROCESS_ERRORS,
            409: Response("The process did not end in time; try again.", Problem),
            503: CANNOT_STORE,
        },
    ),
]
