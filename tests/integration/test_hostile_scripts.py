"""Scripts that misbehave end in the documented state without harming the server."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from tests.integration.conftest import auth
from tests.integration.runs import Runs, last, no_survivors, output
from tests.integration.test_api import create_command, start, wait_done

Client = TestClient[Any, Any]

pytestmark = pytest.mark.fuzz


async def test_thousands_of_short_lived_children(runs: Runs) -> None:
    events = await runs.run("for i in $(seq 2000); do /bin/true & done; wait; echo done")
    assert output(events) == b"done\n"
    assert (last(events).type, last(events).data["exit_code"]) == ("Exited", 0)


async def test_a_script_that_closes_stdout_and_runs_on(runs: Runs) -> None:
    """Closing stdout early is not the end of the run: its exit is."""
    events = await runs.run("echo before; exec 1>&-; sleep 0.3; echo still-here >&2; exit 4")
    assert output(events) == b"before\n"
    assert output(events, "stderr") == b"still-here\n"
    assert last(events).data["exit_code"] == 4


async def test_a_script_writing_only_to_stderr(runs: Runs) -> None:
    events = await runs.run("for i in 1 2 3; do echo e$i >&2; done")
    assert output(events) == b""
    assert output(events, "stderr") == b"e1\ne2\ne3\n"
    assert (last(events).type, last(events).data["exit_code"]) == ("Exited", 0)
    row = await runs.store.pool.fetchrow(
        "SELECT stdout_bytes, stderr_bytes FROM processes WHERE id = $1", events[0].stream_id
    )
    assert row is not None
    assert (row["stdout_bytes"], row["stderr_bytes"]) == (0, 9)


async def test_nul_filled_megabytes(runs: Runs) -> None:
    events = await runs.run("head -c 5000000 /dev/zero; head -c 3000000 /dev/zero >&2")
    assert output(events) == bytes(5_000_000)
    assert output(events, "stderr") == bytes(3_000_000)
    assert (last(events).type, last(events).data["exit_code"]) == ("Exited", 0)


async def test_exit_while_a_background_child_holds_the_pipes(runs: Runs) -> None:
    """The run ends when its main process exits, although a child still holds stdout."""
    started = asyncio.get_running_loop().time()
    events = await runs.run("(sleep 1000; echo never) & echo main-exits")
    assert asyncio.get_running_loop().time() - started < 10
    assert output(events) == b"main-exits\n"
    assert (last(events).type, last(events).data["exit_code"]) == ("Exited", 0)
    assert await no_survivors(events[0].stream_id)


async def test_other_runs_are_unharmed_by_a_flood(runs: Runs) -> None:
    """A run printing as fast as it can does not stop others from finishing correctly."""
    flood = await runs.start("head -c 100000000 /dev/urandom")
    quick = [await runs.start(f"echo quick {i}") for i in range(10)]
    for i, pid in enumerate(quick):
        assert output(await runs.wait(pid, timeout=60)) == f"quick {i}\n".encode()
    events = await runs.wait(flood, timeout=120)
    assert len(output(events)) == 100_000_000


#: Each hostile script, and how its run must end: status, exit code, stdout and stderr bytes.
HOSTILE = {
    "thousands of children": (
        "for i in $(seq 2000); do /bin/true & done; wait; echo done",
        ("succeeded", 0, 5, 0),
    ),
    "closes stdout, runs on": (
        "echo before; exec 1>&-; sleep 0.3; echo still-here >&2; exit 4",
        ("failed", 4, 7, 11),
    ),
    "stderr only": ("for i in 1 2 3; do echo e$i >&2; done", ("succeeded", 0, 0, 9)),
    "NUL megabytes": (
        "head -c 5000000 /dev/zero; head -c 3000000 /dev/zero >&2",
        ("succeeded", 0, 5_000_000, 3_000_000),
    ),
    "child holds the pipes": (
        "(sleep 1000; echo never) & echo main-exits",
        ("succeeded", 0, 11, 0),
    ),
}


async def test_hostile_scripts_at_once_harm_neither_the_server_nor_other_runs(
    api: Client,
) -> None:
    """All of them at once through the API: each ends as documented, the server answers
    throughout, and runs started amid them print exactly what they should."""
    hostile = {}
    for name, (script, _) in HOSTILE.items():
        command = await create_command(api, script)
        hostile[name] = (await start(api, command["id"]))["id"]
    canary = await create_command(api, "printf 'canary %s' \"$1\"")
    canaries = [(await start(api, canary["id"], args=[str(i)]))["id"] for i in range(5)]
    health = await api.get("/healthz")  # while the hostile runs run
    assert health.status == 200
    for i, pid in enumerate(canaries):
        done = await asyncio.wait_for(wait_done(api, pid), 60)
        assert (done["status"], done["exit_code"]) == ("succeeded", 0)
        out = await api.get(f"/api/v1/processes/{pid}/output", headers=auth("viewer"))
        assert await out.read() == f"canary {i}".encode()
    for name, pid in hostile.items():
        done = await asyncio.wait_for(wait_done(api, pid), 120)
        got = (done["status"], done["exit_code"], done["stdout_bytes"], done["stderr_bytes"])
        assert got == HOSTILE[name][1], name
        audit = await api.get(f"/api/v1/processes/{pid}/audit", headers=auth("viewer"))
        assert (await audit.json())["verified"] is True
        assert await no_survivors(uuid.UUID(pid)), name
    listing = await api.get("/api/v1/processes", params={"limit": "50"}, headers=auth("viewer"))
    assert listing.status == 200
    assert {p["id"] for p in (await listing.json())["items"]} == {*hostile.values(), *canaries}
