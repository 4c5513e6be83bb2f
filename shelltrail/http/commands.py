"""Handlers for /api/v1/commands: stored, versioned scripts."""

from __future__ import annotations

import uuid

from aiohttp import web

from shelltrail.domain import (
    CommandCreated,
    CommandDeleted,
    CommandState,
    CommandUpdated,
    CommandVersion,
)
from shelltrail.eventstore import ConcurrencyError
from shelltrail.eventstore.queries import (
    get_command,
    list_command_versions,
    list_commands,
)
from shelltrail.http.auth import Role
from shelltrail.http.context import STORE, json_response, path_id, principal_name
from shelltrail.http.models import Command, CommandIn, CommandVersionOut, Page, Problem
from shelltrail.http.problems import HTTPProblem, not_found, parse_query, read_body
from shelltrail.http.queries import MAX_VERSION, ListQuery, decode_keyset, encode_keyset
from shelltrail.http.routes import CANNOT_STORE, Response, Route

PREFIX = "/api/v1/commands"


def command_out(row: CommandState) -> Command:
    c = row.current
    return Command(
        id=row.id,
        name=c.name,
        description=c.description,
        script=c.script,
        version=c.version,
        timeout_seconds=c.timeout_seconds,
        env=c.env,
        max_output_bytes=c.max_output_bytes,
        output_limit_policy=c.output_limit_policy,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def version_out(v: CommandVersion) -> CommandVersionOut:
    return CommandVersionOut(
        version=v.version,
        name=v.name,
        script=v.script,
        description=v.description,
        timeout_seconds=v.timeout_seconds,
        env=v.env,
        created_at=v.created_at,
    )


async def live_command(request: web.Request) -> CommandState:
    row = await get_command(request.app[STORE].pool, path_id(request, "command"))
    if row is None or row.deleted:
        raise not_found("this command")
    return row


async def create_command(request: web.Request) -> web.Response:
    body = await read_body(request, CommandIn)
    store = request.app[STORE]
    command_id = uuid.uuid4()
    event = CommandCreated(**body.model_dump(), requested_by=principal_name(request))
    await store.append(command_id, [event], expected_version=0)
    row = await get_command(store.pool, command_id)
    assert row is not None
    return json_response(
        command_out(row), status=201, headers={"Location": f"{PREFIX}/{command_id}"}
    )


async def list_all(request: web.Request) -> web.Response:
    query = parse_query(request, ListQuery)
    rows = await list_commands(
        request.app[STORE].pool, limit=query.limit + 1, after=decode_keyset(query.cursor)
    )
    page, more = rows[: query.limit], len(rows) > query.limit
    cursor = encode_keyset(page[-1].created_at, page[-1].id) if more else None
    return json_response(Page[Command](items=[command_out(r) for r in page], next_cursor=cursor))


async def get_one(request: web.Request) -> web.Response:
    return json_response(command_out(await live_command(request)))


async def replace(request: web.Request) -> web.Response:
    row = await live_command(request)
    body = await read_body(request, CommandIn)
    store = request.app[STORE]
    event = CommandUpdated(**body.model_dump(), requested_by=principal_name(request))
    try:
        await store.append(row.id, [event], expected_version=row.stream_version)
    except ConcurrencyError:
        raise HTTPProblem(409, "the command changed meanwhile; read it and try again") from None
    updated = await get_command(store.pool, row.id)
    if updated is None or updated.deleted:
        raise not_found("this command")
    return json_response(command_out(updated))


async def versions(request: web.Request) -> web.Response:
    row = await live_command(request)
    query = parse_query(request, ListQuery)
    before: int | None = None
    if query.cursor is not None:
        try:
            before = int(query.cursor)
        except ValueError:
            before = 0
        if not 1 <= before <= MAX_VERSION:
            raise HTTPProblem(400, "the cursor is not one this server handed out")
    found = await list_command_versions(
        request.app[STORE].pool, row.id, limit=query.limit + 1, before_version=before
    )
    page, more = found[: query.limit], len(found) > query.limit
    return json_response(
        Page[CommandVersionOut](
            items=[version_out(v) for v in page],
            next_cursor=str(page[-1].version) if more else None,
        )
    )


async def delete(request: web.Request) -> web.Response:
    store = request.app[STORE]
    row = await get_command(store.pool, path_id(request, "command"))
    if row is None:
        raise not_found("this command")
    if not row.deleted:
        try:
            await store.append(
                row.id,
                [CommandDeleted(requested_by=principal_name(request))],
                expected_version=row.stream_version,
            )
        except ConcurrencyError:
            again = await get_command(store.pool, row.id)
            if again is None or not again.deleted:
                raise HTTPProblem(409, "the command changed meanwhile; try again") from None
    return web.Response(status=204)


_COMMAND_ERRORS = {
    404: Response("No command with this id (or it was deleted).", Problem),
}
_BODY_ERRORS = {
    400: Response("The body is not valid JSON.", Problem),
    413: Response("The body or the script is too large.", Problem),
    415: Response("The body is not application/json.", Problem),
    422: Response("Some fields are not valid.", Problem),
}

ROUTES = [
    Route(
        "POST",
        PREFIX,
        create_command,
        "Store a new command",
        "commands",
        Role.ADMIN,
        body=CommandIn,
        responses={
            201: Response("The command, at version 1.", Command),
            **_BODY_ERRORS,
            503: CANNOT_STORE,
        },
        headers={"Location": "URL of the new command"},
    ),
    Route(
        "GET",
        PREFIX,
        list_all,
        "List commands, newest first",
        "commands",
        Role.VIEWER,
        query=ListQuery,
        responses={200: Response("A page of commands.", Page[Command])},
    ),
    Route(
        "GET",
        PREFIX + "/{id}",
        get_one,
        "Get a command",
        "commands",
        Role.VIEWER,
        responses={200: Response("The command.", Command), **_COMMAND_ERRORS},
    ),
    Route(
        "PUT",
        PREFIX + "/{id}",
        replace,
        "Store a new version of a command",
        "commands",
        Role.ADMIN,
        body=CommandIn,
        responses={
            200: Response("The command at its new version.", Command),
            **_COMMAND_ERRORS,
            409: Response("The command changed meanwhile.", Problem),
            **_BODY_ERRORS,
            503: CANNOT_STORE,
        },
    ),
    Route(
        "GET",
        PREFIX + "/{id}/versions",
        versions,
        "List a command's versions, newest first",
        "commands",
        Role.VIEWER,
        query=ListQuery,
        responses={
            200: Response("A page of versions.", Page[CommandVersionOut]),
            **_COMMAND_ERRORS,
        },
    ),
    Route(
        "DELETE",
        PREFIX + "/{id}",
        delete,
        "Delete a command (its processes stay)",
        "commands",
        Role.ADMIN,
        responses={
            204: Response("Deleted (or already deleted)."),
            **_COMMAND_ERRORS,
            503: CANNOT_STORE,
        },
    ),
]
