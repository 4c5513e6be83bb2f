"""One server at a time per node: the node lease, against a real PostgreSQL."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from pathlib import Path

import asyncpg
import pytest

from shelltrail.eventstore import lease as lease_module
from shelltrail.eventstore.lease import NodeInUse, NodeLease
from tests.integration.faults import SHELLTRAIL, Server, serving, wait_until


async def test_a_second_holder_of_a_node_is_refused_naming_the_first(database_url: str) -> None:
    first = NodeLease(database_url, "node-a")
    await first.acquire()
    try:
        with pytest.raises(NodeInUse) as refused:
            await NodeLease(database_url, "node-a", wait_seconds=0.3).acquire()
        message = str(refused.value)
        assert message.startswith("node 'node-a' is in use by another shelltrail server (")
        assert f"pid {os.getpid()} on " in message
        assert message.endswith("give this one its own SHELLTRAIL_NODE")

        other = NodeLease(database_url, "node-b", wait_seconds=0)
        await other.acquire()  # another node: no conflict
        await other.release()
    finally:
        await first.release()
    after = NodeLease(database_url, "node-a", wait_seconds=0)
    await after.acquire()  # released: free again at once
    await after.release()


async def test_a_waiting_server_gets_the_node_once_the_holder_lets_go(database_url: str) -> None:
    """A restart right after a crash finds the old session still ending: it waits for it."""
    first = NodeLease(database_url, "node-a")
    await first.acquire()
    second = NodeLease(database_url, "node-a", wait_seconds=30)
    waiting = asyncio.create_task(second.acquire())
    await asyncio.sleep(0.6)  # at least one refused try
    assert not waiting.done()
    await first.release()
    await asyncio.wait_for(waiting, 10)
    assert second.held
    await second.release()


async def test_the_lease_is_taken_again_after_its_connection_is_lost(database_url: str) -> None:
    lease = NodeLease(database_url, "node-a")
    await lease.acquire()
    admin = await asyncpg.connect(database_url)
    try:
        ended = await admin.fetchval(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name LIKE 'shelltrail node lease%' AND datname = current_database()"
        )
        assert ended
        async with asyncio.timeout(20):
            while not (lease.renewals == 1 and lease.held):  # noqa: ASYNC110 -- polls the lease
                await asyncio.sleep(0.05)
        with pytest.raises(NodeInUse):
            await NodeLease(database_url, "node-a", wait_seconds=0).acquire()
    finally:
        await admin.close()
        await lease.release()


def test_a_second_server_on_the_same_node_stops_and_leaves_the_runs_alone(
    database_url_sync: str, tmp_path: Path
) -> None:
    """Started twice under one node name, the second server refuses to run, in one line,
    before it recovers anything: the first server's run is not closed as lost."""
    with serving(database_url_sync, tmp_path / "first") as first:
        command = first.create_command("sleep 1000")
        run = first.start_run(command)
        wait_until(
            lambda: first.process(run)["status"] == "running", timeout=30, what="the run to start"
        )
        second = Server(database_url_sync, tmp_path / "second", node=first.node)
        env = {k: v for k, v in os.environ.items() if not k.startswith("SHELLTRAIL_")}
        env.update(
            SHELLTRAIL_DATABASE_URL=database_url_sync,
            SHELLTRAIL_PORT="0",
            SHELLTRAIL_DATA_DIR=str(second.data_dir),
            SHELLTRAIL_TOKENS="t:admin:" + "x" * 32,
            SHELLTRAIL_NODE=second.node,
            SHELLTRAIL_NODE_LEASE_WAIT_SECONDS="0.5",
            SHELLTRAIL_LOG_LEVEL="error",
        )
        result = subprocess.run(
            [*SHELLTRAIL, "serve"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 2
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert lines[0].startswith(
            f"shelltrail: node '{first.node}' is in use by another shelltrail server ("
        )
        assert f"pid {first.pid} on " in lines[0]
        assert first.process(run)["status"] == "running"
        assert first.call("POST", f"/api/v1/processes/{run}/stop", {}).status == 202
        ended = first.wait_ended([run])[0]
        assert ended["status"] == "killed"


async def test_a_lease_whose_connection_stops_answering_is_taken_again(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A connection that goes silent (here: its backend is stopped, as a network cut would
    leave it) is noticed by the periodic check, dropped, and the lease taken again once
    the old session is gone."""
    monkeypatch.setattr(lease_module, "_CHECK_SECONDS", 0.1)
    monkeypatch.setattr(lease_module, "_CHECK_TIMEOUT", 0.5)
    lease = NodeLease(database_url, "node-a")
    await lease.acquire()
    assert lease._conn is not None
    backend = lease._conn.get_server_pid()
    os.kill(backend, signal.SIGSTOP)
    try:
        async with asyncio.timeout(20):
            while lease.held:  # noqa: ASYNC110 -- polls the lease
                await asyncio.sleep(0.05)
    finally:
        os.kill(backend, signal.SIGCONT)  # it sees its client gone, and ends with its lock
    try:
        async with asyncio.timeout(30):
            while not (lease.renewals == 1 and lease.held):  # noqa: ASYNC110 -- polls the lease
                await asyncio.sleep(0.05)
    finally:
        await lease.release()
