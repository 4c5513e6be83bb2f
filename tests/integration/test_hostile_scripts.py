"""Scripts that misbehave end in the documented state without harming the server."""

from __future__ import annotations

import asyncio

import pytest

from tests.integration.runs import Runs, last, no_survivors, output

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
    row = await runs.store.pool.fetchrow(
        "SELECT stdout_bytes, stderr_bytes FROM processes WHERE id = $1", events[0].stream_id
    )
    assert row is not None
    assert (row["stdout_bytes"], row["stderr_bytes"]) == (0, 9)


async def test_nul_filled_megabytes(runs: Runs) -> None:
    events = await runs.run("head -c 5000000 /dev/zero; head -c 3000000 /dev/zero >&2")
    assert output(events) == bytes(5_000_000)
    assert output(events, "stderr") == bytes(3_000_000)


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
