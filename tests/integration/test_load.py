"""A short load-mixed (bench/load.py) against a real ``shelltrail serve``.

Many clients at once start short runs and follow them, read statuses and output, and
follow other runs' events, as the benchmark does for a minute with 100 clients. Only
properties are checked here, never timings (the figures belong to the benchmark):
no request fails, every run ends as it should, and the server holds no more descriptors
or threads once the runs have ended than before the load.
"""

from __future__ import annotations

import pytest

from bench.db import Server
from bench.http_server import shelltrail_server
from bench.load import (
    FOLLOW,
    MIXED,
    OUTPUT,
    RUN,
    START,
    STATUS,
    Tally,
    run_load,
    unfinished_runs,
    warm_up,
)
from bench.procfs import back_to, url_port

pytestmark = pytest.mark.load

CLIENTS = 30
SECONDS = 8.0
WARM_UP_SECONDS = 2.0


async def test_mixed_load_fails_no_request_ends_every_run_and_leaks_nothing(
    server_url: str,
) -> None:
    """30 clients for 8 s: no error, every run succeeds, fds and threads return to before."""
    server = Server(server_url, "test", "")
    warm, tally = Tally(), Tally()
    async with shelltrail_server(server, "load_test") as served:
        port = url_port(served.base)
        # Fill the connection pools and start the helper threads before the baseline.
        command_id, before = await warm_up(
            served, warm, clients=CLIENTS, seconds=WARM_UP_SECONDS, seeds=5, deadline_seconds=30
        )

        tally.known = list(warm.known)
        async with served.session() as session:
            await run_load(
                session, served, command_id, tally, [(CLIENTS, MIXED)], seconds=SECONDS, seed=1
            )
            unfinished = await unfinished_runs(session, served, warm.started + tally.started)
        # The session is closed: the server should let go of every connection and run.
        after, returned = await back_to(served.pid, before, http_port=port, deadline_seconds=30)

    assert warm.errors == {}
    assert tally.errors == {}
    assert tally.server_errors == 0
    for route in (START, STATUS, OUTPUT, FOLLOW, RUN):  # every kind of request was made
        assert tally.latencies[route], f"no {route} completed"
    assert unfinished == []
    assert returned, f"before the load: {before.describe()}; after: {after.describe()}"
