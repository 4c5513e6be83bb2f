"""The HTTP API against its contract, with real PostgreSQL and real processes."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import uuid
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from shelltrail.actors.tree import find_marked
from shelltrail.eventstore import EventStore
from tests.integration.conftest import auth

Client = TestClient[Any, Any]


async def create_command(api: Client, script: str = "echo hello", **fields: Any) -> dict[str, Any]:
    response = await api.post(
        "/api/v1/commands", json={"name": "job", "script": script, **fields}, headers=auth()
    )
    assert response.status == 201, await response.text()
    return dict(await response.json())


async def start(api: Client, command_id: str, **fields: Any) -> dict[str, Any]:
    response = await api.post(
        "/api/v1/processes", json={"command_id": command_id, **fields}, headers=auth("operator")
    )
    assert response.status == 201, await response.text()
    return dict(await response.json())


async def wait_done(api: Client, process_id: str) -> dict[str, Any]:
    """Follow the process's SSE stream to its end, then return the process."""
    async with api.get(
        f"/api/v1/processes/{process_id}/events",
        headers={**auth("viewer"), "Accept": "text/event-stream"},
    ) as response:
        assert response.status == 200
        await response.read()
    got = await api.get(f"/api/v1/processes/{process_id}", headers=auth("viewer"))
    return dict(await got.json())


async def wait_for_stdout(api: Client, process_id: str, nbytes: int) -> dict[str, Any]:
    """The process once its stored stdout holds ``nbytes`` (polled, for at most 10 s)."""
    deadline = asyncio.get_running_loop().time() + 10
    while True:
        got = await api.get(f"/api/v1/processes/{process_id}", headers=auth("viewer"))
        process = dict(await got.json())
        if process["stdout_bytes"] >= nbytes:
            return process
        assert asyncio.get_running_loop().time() < deadline, f"no output: {process}"
        await asyncio.sleep(0.02)


def sse_messages(text: str) -> list[dict[str, str]]:
    messages = []
    for block in text.split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.splitlines():
            if line.startswith(":") or not line:
                continue
            key, _, value = line.partition(": ")
            fields[key] = value
        if fields:
            messages.append(fields)
    return messages


# --- commands -------------------------------------------------------------------------


async def test_command_lifecycle(api: Client) -> None:
    """Create, read, list, replace (new version), list versions, delete twice."""
    created = await create_command(api, "echo one", env={"A": "1"}, timeout_seconds=30)
    cid = created["id"]
    assert created["version"] == 1
    assert created["env"] == {"A": "1"}
    assert set(created) == {
        "id",
        "name",
        "description",
        "script",
        "version",
        "timeout_seconds",
        "env",
        "max_output_bytes",
        "output_limit_policy",
        "created_at",
        "updated_at",
    }
    got = await api.get(f"/api/v1/commands/{cid}", headers=auth("viewer"))
    assert (await got.json()) == created
    put = await api.put(
        f"/api/v1/commands/{cid}", json={"name": "job", "script": "echo two"}, headers=auth()
    )
    assert put.status == 200
    assert (await put.json())["version"] == 2
    versions = await (await api.get(f"/api/v1/commands/{cid}/versions", headers=auth())).json()
    assert [(v["version"], v["script"]) for v in versions["items"]] == [
        (2, "echo two"),
        (1, "echo one"),
    ]
    listing = await (await api.get("/api/v1/commands", headers=auth("viewer"))).json()
    assert [c["id"] for c in listing["items"]] == [cid]
    assert listing["next_cursor"] is None
    for _ in range(2):
        deleted = await api.delete(f"/api/v1/commands/{cid}", headers=auth())
        assert deleted.status == 204
    gone = await api.get(f"/api/v1/commands/{cid}", headers=auth())
    assert gone.status == 404
    assert gone.content_type == "application/problem+json"


async def test_command_list_pages_with_a_stable_cursor(api: Client) -> None:
    """Keyset cursors: every command exactly once, newest first, even with inserts between."""
    ids = [(await create_command(api, f"echo {i}"))["id"] for i in range(7)]
    seen: list[str] = []
    cursor: str | None = None
    while True:
        query = {"limit": "3", **({"cursor": cursor} if cursor else {})}
        page = await (await api.get("/api/v1/commands", params=query, headers=auth())).json()
        seen.extend(c["id"] for c in page["items"])
        await create_command(api, "echo newer")  # inserted while paging
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen[: len(ids)] == list(reversed(ids))[: len(seen)] or set(ids) <= set(seen)
    assert len(seen) == len(set(seen))
    assert set(ids) <= set(seen)


@pytest.mark.parametrize(
    ("body", "content_type", "status", "field"),
    [
        (b"{not json", "application/json", 400, None),
        (b'{"name": "x", "script": "true"}', "text/plain", 415, None),
        (b'{"name": "x", "script": "true", "extra": 1}', "application/json", 422, "extra"),
        (b'{"name": 5, "script": "true"}', "application/json", 422, "name"),
        (b'{"name": "", "script": "true"}', "application/json", 422, "name"),
        (b'{"name": "x", "script": ""}', "application/json", 422, "script"),
        (
            b'{"name": "x", "script": "true", "timeout_seconds": 0}',
            "application/json",
            422,
            "timeout_seconds",
        ),
        (
            b'{"name": "x", "script": "true", "timeout_seconds": "5"}',
            "application/json",
            422,
            "timeout_seconds",
        ),
        (
            b'{"name": "x", "script": "true", "env": {"1BAD": "v"}}',
            "application/json",
            422,
            "env.1BAD.[key]",
        ),
        (b'{"name": "x", "script": "a\\u0000b"}', "application/json", 422, "script"),
        (b"[1, 2]", "application/json", 422, "body"),
        (b'{"name": "a\\u0000", "script": "true"}', "application/json", 422, "name"),
        (
            b'{"name": "a", "script": "x", "description": "\\u0000"}',
            "application/json",
            422,
            "description",
        ),
        (
            json.dumps({"name": "x" * 201, "script": "true"}).encode(),
            "application/json",
            422,
            "name",
        ),
    ],
)
async def test_bad_command_bodies_get_clear_problems(
    api: Client, body: bytes, content_type: str, status: int, field: str | None
) -> None:
    response = await api.post(
        "/api/v1/commands", data=body, headers={**auth(), "Content-Type": content_type}
    )
    assert response.status == status
    assert response.content_type == "application/problem+json"
    problem = await response.json()
    assert {"type", "title", "status", "detail"} <= set(problem)
    assert problem["status"] == status
    if field is not None:
        assert field in [e["field"] for e in problem["errors"]], problem


async def test_a_script_over_one_mebibyte_is_413(api: Client) -> None:
    headers = {**auth(), "Content-Type": "application/json"}

    def body(size: int) -> io.BytesIO:
        return io.BytesIO(json.dumps({"name": "big", "script": "#" * size}).encode())

    response = await api.post("/api/v1/commands", data=body(1024 * 1024 + 1), headers=headers)
    assert response.status == 413
    # Too large is too large, whatever else is wrong with it (here a NUL).
    with_nul = json.dumps({"name": "big", "script": "\u0000" + "#" * 1024 * 1024})
    response = await api.post(
        "/api/v1/commands", data=io.BytesIO(with_nul.encode()), headers=headers
    )
    assert response.status == 413
    exactly = await api.post("/api/v1/commands", data=body(1024 * 1024), headers=headers)
    assert exactly.status == 201


async def test_oversized_body_is_413(api: Client) -> None:
    response = await api.post(
        "/api/v1/commands",
        data=io.BytesIO(b"x" * (9 * 1024 * 1024)),
        headers={**auth(), "Content-Type": "application/json"},
    )
    assert response.status == 413
    assert response.content_type == "application/problem+json"


@pytest.mark.parametrize("cursor", ["99999999999", "0", "-1", "1" * 150, "x"])
async def test_a_versions_cursor_out_of_range_is_a_bad_query(api: Client, cursor: str) -> None:
    command = await create_command(api, "true")
    response = await api.get(
        f"/api/v1/commands/{command['id']}/versions", params={"cursor": cursor}, headers=auth()
    )
    assert response.status == 400
    assert response.content_type == "application/problem+json"


async def test_a_header_too_long_is_a_problem(api: Client) -> None:
    response = await api.get("/api/v1/commands", headers={**auth(), "X-Padding": "a" * (9 * 1024)})
    assert response.status == 400
    assert response.content_type == "application/problem+json"
    assert "X-Padding" in (await response.json())["detail"]


def _keyset(created_at: object, row_id: object = "00000000-0000-0000-0000-000000000001") -> str:
    """A list cursor as the server encodes one, of any content."""
    raw = json.dumps([created_at, row_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/api/v1/commands/not-a-uuid", 404),
        ("GET", f"/api/v1/commands/{uuid.uuid4()}", 404),
        ("GET", f"/api/v1/processes/{uuid.uuid4()}", 404),
        ("GET", "/api/v1/nowhere", 404),
        ("PATCH", "/api/v1/commands", 405),
        ("GET", "/api/v1/commands?limit=0", 400),
        ("GET", "/api/v1/commands?limit=abc", 400),
        ("GET", "/api/v1/commands?cursor=garbage", 400),
        # Cursors made by hand: values the database cannot take must not reach it.
        ("GET", f"/api/v1/commands?cursor={_keyset('0001-01-01T00:00:00+05:00')}", 400),
        ("GET", f"/api/v1/processes?cursor={_keyset('9999-12-31T23:59:59-05:00')}", 400),
        ("GET", f"/api/v1/processes?cursor={_keyset('2026-01-01T00:00:00')}", 400),
        ("GET", f"/api/v1/commands?cursor={_keyset('2026-01-01T00:00:00+00:00', [1])}", 400),
        ("GET", f"/api/v1/commands?cursor={_keyset(20260101, 'x')}", 400),
        ("GET", "/api/v1/processes?status=sleeping", 400),
        ("GET", "/api/v1/commands?name=" + "a" * 9000, 400),
        ("GET", f"/api/v1/processes/{uuid.uuid4()}/events?limit=501", 400),
        ("GET", "/api/v1/processes?command_id=nope", 400),
    ],
)
async def test_unknown_ids_routes_methods_and_bad_queries(
    api: Client, method: str, path: str, status: int
) -> None:
    response = await api.request(method, path, headers=auth())
    assert response.status == status
    assert response.content_type == "application/problem+json"
    assert (await response.json())["status"] == status


# --- processes ------------------------------------------------------------------------


async def test_run_a_command_and_read_everything_about_it(api: Client) -> None:
    command = await create_command(api, 'echo "out $1"; echo err >&2; exit 3')
    process = await start(api, command["id"], args=["A"])
    assert process["status"] in ("queued", "running")
    assert process["command_version"] == 1
    done = await wait_done(api, process["id"])
    assert (done["status"], done["exit_code"], done["signal"]) == ("failed", 3, None)
    assert (done["stdout_bytes"], done["stderr_bytes"]) == (6, 4)
    assert done["duration_seconds"] is not None
    pid = process["id"]

    out = await api.get(f"/api/v1/processes/{pid}/output", headers=auth("viewer"))
    assert (await out.read(), out.headers["X-Next-Offset"]) == (b"out A\n", "6")
    err = await api.get(
        f"/api/v1/processes/{pid}/output",
        params={"stream": "stderr", "offset": "1"},
        headers=auth(),
    )
    assert (await err.read(), err.headers["X-Next-Offset"]) == (b"rr\n", "4")

    events = await (await api.get(f"/api/v1/processes/{pid}/events", headers=auth())).json()
    types = [e["type"] for e in events["items"]]
    assert types[0] == "Queued"
    assert types[-1] == "Exited"
    chunk = next(e for e in events["items"] if e["type"] == "OutputChunk")
    assert set(chunk) == {"version", "type", "recorded_at", "hash", "data"}
    assert base64.b64decode(chunk["data"]["data_base64"]) in (b"out A\n", b"err\n")

    first = await (
        await api.get(f"/api/v1/processes/{pid}", params={"at_version": "1"}, headers=auth())
    ).json()
    assert (first["status"], first["version"], first["started_at"]) == ("queued", 1, None)

    audit = await (await api.get(f"/api/v1/processes/{pid}/audit", headers=auth())).json()
    assert audit == {
        "verified": True,
        "events": done["version"],
        "head_hash": events["items"][-1]["hash"],
        "first_bad_version": None,
    }
    listing = await (
        await api.get("/api/v1/processes", params={"status": "failed"}, headers=auth())
    ).json()
    assert [p["id"] for p in listing["items"]] == [pid]


async def test_stop_a_running_process_and_conflict_after_the_end(api: Client) -> None:
    command = await create_command(api, "echo ready; sleep 1000 & wait")
    process = await start(api, command["id"])
    before = await wait_for_stdout(api, process["id"], len(b"ready\n"))
    stop = await api.post(
        f"/api/v1/processes/{process['id']}/stop",
        json={"signal": "TERM", "grace_seconds": 1},
        headers=auth("operator"),
    )
    assert stop.status == 202
    # The answer is the run as stored just before: what a GET showed, here "ready" printed.
    assert (await stop.json()) == before
    done = await wait_done(api, process["id"])
    assert (done["status"], done["stop_reason"]) == ("killed", "user")
    again = await api.post(
        f"/api/v1/processes/{process['id']}/stop", json={}, headers=auth("operator")
    )
    assert again.status == 409
    assert not await asyncio.to_thread(find_marked, {process["id"]})


async def test_stopping_a_run_as_it_ends_says_it_ended(api: Client) -> None:
    """A stop racing a run's end answers 202 or 'already ended', never a wrong reason.

    Found by the stateful fuzz test: between the actor's end and its last event's commit,
    the answer named another node as the run's owner.
    """
    command = await create_command(api, "true")
    for _ in range(20):
        process = await start(api, command["id"])
        stop = await api.post(
            f"/api/v1/processes/{process['id']}/stop", json={}, headers=auth("operator")
        )
        if stop.status != 202:
            assert stop.status == 409
            assert "already ended" in (await stop.json())["detail"]
        await wait_done(api, process["id"])


async def test_deleting_a_running_process_stops_it_first(api: Client) -> None:
    command = await create_command(api, "sleep 1000")
    process = await start(api, command["id"])
    for _ in range(2):
        response = await api.delete(f"/api/v1/processes/{process['id']}", headers=auth())
        assert response.status == 204
    assert (await api.get(f"/api/v1/processes/{process['id']}", headers=auth())).status == 404
    assert not await asyncio.to_thread(find_marked, {process["id"]})


async def test_idempotency_key_returns_the_same_process(api: Client) -> None:
    command = await create_command(api, "true")
    headers = {**auth("operator"), "Idempotency-Key": "nightly-2026-11-22"}
    first = await api.post("/api/v1/processes", json={"command_id": command["id"]}, headers=headers)
    second = await api.post(
        "/api/v1/processes", json={"command_id": command["id"]}, headers=headers
    )
    assert (first.status, second.status) == (201, 200)
    assert (await first.json())["id"] == (await second.json())["id"]


async def test_an_idempotency_key_stands_for_one_request(api: Client) -> None:
    """Reused with another request, the key is refused (422); with a body that is no request
    at all, the body's own error comes first."""
    command = await create_command(api, "true")
    other = await create_command(api, "true")
    headers = {**auth("operator"), "Idempotency-Key": "one-request"}
    body = {"command_id": command["id"], "args": ["a"], "env": {"X": "1"}}
    first = await api.post("/api/v1/processes", json=body, headers=headers)
    assert first.status == 201
    pid = (await first.json())["id"]
    same = await api.post("/api/v1/processes", json={**body, "env": {"X": "2"}}, headers=headers)
    assert same.status == 200  # env values are not recorded, only their names
    for changed in (
        {**body, "command_id": other["id"]},
        {**body, "args": ["b"]},
        {**body, "env": {"Y": "1"}},
        {**body, "timeout_seconds": 5},
    ):
        refused = await api.post("/api/v1/processes", json=changed, headers=headers)
        assert refused.status == 422, changed
        assert refused.content_type == "application/problem+json"
        assert pid in (await refused.json())["detail"]
    garbage = await api.post("/api/v1/processes", data=b"garbage", headers=headers)
    assert garbage.status == 415


async def test_stop_without_a_body_takes_the_defaults(api: Client) -> None:
    """Every field of a stop is optional: no body at all (or an empty one) means TERM, 10 s."""
    command = await create_command(api, "sleep 1000")
    for body in (None, b""):
        process = await start(api, command["id"])
        stop = await api.post(
            f"/api/v1/processes/{process['id']}/stop", data=body, headers=auth("operator")
        )
        assert stop.status == 202
        done = await wait_done(api, process["id"])
        assert (done["status"], done["signal"], done["stop_reason"]) == ("killed", 15, "user")


async def test_arguments_linux_would_refuse_to_pass_are_refused_up_front(api: Client) -> None:
    """An arg of 128 KiB or more, or args past 512 KiB together, would fail at exec: 422."""
    command = await create_command(api, 'echo "${#1}"')
    for args in (["é" * 65_536], ["x" * 100_000] * 6):
        refused = await api.post(
            "/api/v1/processes",
            json={"command_id": command["id"], "args": args},
            headers=auth("operator"),
        )
        assert refused.status == 422
        assert (await refused.json())["errors"][0]["field"] == "args"
    largest = ["x" * (128 * 1024 - 1)]
    process = await start(api, command["id"], args=largest)
    done = await wait_done(api, process["id"])
    assert done["status"] == "succeeded"


async def test_the_key_of_a_deleted_process_is_a_conflict(api: Client) -> None:
    """A deleted process is 404 everywhere: its Idempotency-Key neither returns it nor reruns.

    Found by the stateful fuzz test: the key used to answer 200 with the deleted process.
    """
    command = await create_command(api, "true")
    headers = {**auth("operator"), "Idempotency-Key": "deleted-run"}
    body = {"command_id": command["id"]}
    first = await api.post("/api/v1/processes", json=body, headers=headers)
    assert first.status == 201
    pid = (await first.json())["id"]
    await wait_done(api, pid)
    assert (await api.delete(f"/api/v1/processes/{pid}", headers=auth())).status == 204
    again = await api.post("/api/v1/processes", json=body, headers=headers)
    assert again.status == 409
    assert again.content_type == "application/problem+json"
    assert pid in (await again.json())["detail"]
    listing = await (await api.get("/api/v1/processes", headers=auth())).json()
    assert listing["items"] == []


async def test_the_longest_timeout_does_not_break_a_run(api: Client) -> None:
    """A timeout the API accepts (up to a year) leaves a run to end on its own.

    Found by the stateful fuzz test: beyond about 24.8 days, the actor's wait overflowed
    epoll's timeout and every such run ended `lost`.
    """
    command = await create_command(api, "echo fine", timeout_seconds=31_536_000)
    process = await start(api, command["id"])
    done = await wait_done(api, process["id"])
    assert (done["status"], done["exit_code"], done["stdout_bytes"]) == ("succeeded", 0, 5)
    run_level = await start(api, command["id"], timeout_seconds=2_200_000)
    done = await wait_done(api, run_level["id"])
    assert (done["status"], done["exit_code"]) == ("succeeded", 0)


async def test_starting_an_unknown_or_deleted_command_is_404(api: Client) -> None:
    command = await create_command(api, "true")
    await api.delete(f"/api/v1/commands/{command['id']}", headers=auth())
    for cid in (command["id"], str(uuid.uuid4())):
        response = await api.post(
            "/api/v1/processes", json={"command_id": cid}, headers=auth("operator")
        )
        assert response.status == 404


async def test_a_full_queue_answers_429_with_retry_after(api: Client) -> None:
    command = await create_command(api, "sleep 1000")
    statuses = []
    for _ in range(32 + 64 + 1):  # max_running + max_queued + 1 (see the fixture)
        response = await api.post(
            "/api/v1/processes", json={"command_id": command["id"]}, headers=auth("operator")
        )
        statuses.append(response.status)
        if response.status == 429:
            assert int(response.headers["Retry-After"]) >= 1
            break
    assert statuses[-1] == 429
    assert statuses.count(201) == 32 + 64


async def test_sse_follows_history_then_live_and_resumes(api: Client) -> None:
    """SSE: every version once, in order; a client resuming with Last-Event-ID misses none."""
    command = await create_command(api, "for i in $(seq 1 300); do echo line $i; sleep 0.001; done")
    process = await start(api, command["id"])
    versions: list[int] = []
    last_id = "0"
    for attempt in range(3):
        async with api.get(
            f"/api/v1/processes/{process['id']}/events",
            headers={**auth("viewer"), "Accept": "text/event-stream", "Last-Event-ID": last_id},
        ) as response:
            assert response.headers["Content-Type"].startswith("text/event-stream")
            buffer = ""
            while True:
                line = await response.content.readline()
                if not line:
                    break
                buffer += line.decode()
                if buffer.endswith("\n\n"):
                    for message in sse_messages(buffer):
                        versions.append(int(message["id"]))
                        last_id = message["id"]
                        assert json.loads(message["data"])["version"] == int(message["id"])
                    buffer = ""
                    if attempt < 2 and len(versions) >= 5 * (attempt + 1):
                        break  # drop the connection mid-run, resume after
    assert versions == list(range(1, len(versions) + 1))
    final = await (await api.get(f"/api/v1/processes/{process['id']}", headers=auth())).json()
    assert versions[-1] == final["version"]


async def test_output_follow_streams_until_the_end(api: Client) -> None:
    command = await create_command(api, "for i in 1 2 3; do echo $i; sleep 0.1; done; printf end")
    process = await start(api, command["id"])
    response = await api.get(
        f"/api/v1/processes/{process['id']}/output",
        params={"follow": "true", "offset": "2"},
        headers=auth("viewer"),
    )
    assert await response.read() == b"2\n3\nend"


async def test_replay_without_delays(api: Client) -> None:
    command = await create_command(api, "echo a; echo b >&2")
    process = await start(api, command["id"])
    await wait_done(api, process["id"])
    response = await api.get(
        f"/api/v1/processes/{process['id']}/replay", params={"speed": "0"}, headers=auth()
    )
    messages = sse_messages(await response.text())
    outputs = [json.loads(m["data"]) for m in messages if m.get("event") == "output"]
    assert sorted(base64.b64decode(o["data_base64"]) for o in outputs) == [b"a\n", b"b\n"]
    assert messages[-1]["event"] == "end"


async def test_audit_names_a_tampered_event(api: Client, store: EventStore) -> None:
    command = await create_command(api, "echo secret-output")
    process = await start(api, command["id"])
    await wait_done(api, process["id"])
    pid = uuid.UUID(process["id"])
    async with store.pool.acquire() as conn:
        version = await conn.fetchval(
            "SELECT version FROM events WHERE stream_id = $1 AND type = 'OutputChunk'", pid
        )
        await conn.execute("ALTER TABLE events DISABLE TRIGGER events_append_only")
        await conn.execute(
            "UPDATE events SET payload = overlay(payload placing 'S'::bytea from 1) "
            "WHERE stream_id = $1 AND version = $2",
            pid,
            version,
        )
        await conn.execute("ALTER TABLE events ENABLE TRIGGER events_append_only")
    audit = await (await api.get(f"/api/v1/processes/{pid}/audit", headers=auth())).json()
    assert (audit["verified"], audit["first_bad_version"]) == (False, version)


# --- documents --------------------------------------------------------------------------


async def test_openapi_and_offline_docs(api: Client) -> None:
    document = await (await api.get("/api/v1/openapi.json")).json()
    assert document["openapi"] == "3.1.0"
    assert "/api/v1/processes/{id}/events" in document["paths"]
    page = await api.get("/api/docs")
    assert page.status == 200
    assert "swagger-ui-bundle.js" in await page.text()
    bundle = await api.get("/api/docs/static/swagger-ui-bundle.js")
    assert bundle.status == 200
    assert len(await bundle.read()) > 100_000


async def test_output_follow_of_an_ended_run_returns_everything(api: Client) -> None:
    command = await create_command(api, "head -c 200000 /dev/zero | tr '\\0' y")
    process = await start(api, command["id"])
    await wait_done(api, process["id"])
    response = await api.get(
        f"/api/v1/processes/{process['id']}/output",
        params={"follow": "true", "offset": "5"},
        headers=auth("viewer"),
    )
    assert await response.read() == b"y" * 199_995


async def test_a_command_can_cap_its_output_and_kill_at_the_cap(api: Client) -> None:
    command = await create_command(api, "yes", max_output_bytes=50_000, output_limit_policy="kill")
    assert (command["max_output_bytes"], command["output_limit_policy"]) == (50_000, "kill")
    process = await start(api, command["id"])
    done = await wait_done(api, process["id"])
    assert (done["status"], done["stop_reason"], done["stdout_bytes"]) == (
        "killed",
        "output_limit",
        50_000,
    )


async def test_metrics_move_when_runs_happen(api: Client) -> None:
    """Runs, events and requests show up in /metrics (Prometheus text)."""

    async def scrape() -> dict[str, float]:
        response = await api.get("/metrics", headers=auth("viewer"))
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        values: dict[str, float] = {}
        for line in (await response.text()).splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                values[name] = float(value)
        return values

    before = await scrape()
    command = await create_command(api, "echo metrics")
    process = await start(api, command["id"])
    await wait_done(api, process["id"])
    after = await scrape()
    assert after["shelltrail_runs_started_total"] == before["shelltrail_runs_started_total"] + 1
    assert after["shelltrail_runs_finished_total"] >= before["shelltrail_runs_finished_total"] + 1
    assert after["shelltrail_events_appended_total"] > before["shelltrail_events_appended_total"]
    assert after["shelltrail_output_bytes_total"] >= before["shelltrail_output_bytes_total"] + 8
    assert after['shelltrail_processes{status="succeeded"}'] == 1
    assert after["shelltrail_bulk_appends_held_total"] == 0  # a line of output is no flood
    created = 'shelltrail_http_requests_total{method="POST",route="/api/v1/processes",status="201"}'
    assert after[created] == 1


async def test_each_request_logs_one_line_with_its_request_id(
    api: Client, caplog: pytest.LogCaptureFixture
) -> None:
    """The request log line carries method, path, status, duration and the request id."""
    caplog.set_level("INFO", logger="shelltrail.http")
    response = await api.get("/healthz", headers={"X-Request-ID": "trace-me-42"})
    assert response.headers["X-Request-ID"] == "trace-me-42"
    lines = [r.msg for r in caplog.records if r.name == "shelltrail.http"]
    logged = [m for m in lines if isinstance(m, dict) and m.get("request_id") == "trace-me-42"]
    assert len(logged) == 1
    assert {"method": "GET", "path": "/healthz", "status": 200}.items() <= logged[0].items()
    assert logged[0]["duration_ms"] >= 0


async def test_readyz_follows_the_database(api: Client, store: EventStore, server_url: str) -> None:
    """503 while the database refuses connections, 200 again when it is back."""
    import asyncpg

    assert (await api.get("/readyz")).status == 200
    name = await store.pool.fetchval("SELECT current_database()")
    admin = await asyncpg.connect(server_url)
    try:
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = $1 AND pid <> pg_backend_pid()",
            name,
        )
        down = await api.get("/readyz")
        assert down.status == 503
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        for _ in range(100):
            if (await api.get("/readyz")).status == 200:
                break
            await asyncio.sleep(0.05)
        assert (await api.get("/readyz")).status == 200
    finally:
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        await admin.close()
