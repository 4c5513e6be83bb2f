"""The `shelltrail` command, run as a user runs it: a real process, real PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from shelltrail.eventstore import EventStore
from shelltrail.eventstore.migrate import available_migrations
from tests.strategies import sample_process_history

SHELLTRAIL = [sys.executable, "-m", "shelltrail"]


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("SHELLTRAIL_")}
    return subprocess.run(
        [*SHELLTRAIL, *args],
        env={**base, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_unreachable_database_is_one_clear_line() -> None:
    """A database that does not answer: one line naming it, password hidden, exit 2."""
    port = free_port()  # nothing listens there
    url = f"postgresql://alice:s3cret@127.0.0.1:{port}/shelltrail"
    result = run_cli("migrate", env={"SHELLTRAIL_DATABASE_URL": url})
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("shelltrail: cannot connect to the database at ")
    assert f"postgresql://alice:***@127.0.0.1:{port}/shelltrail" in lines[0]
    assert "s3cret" not in result.stderr + result.stdout
    assert "Traceback" not in result.stderr


def test_bad_setting_is_one_clear_line() -> None:
    result = run_cli("migrate", env={"SHELLTRAIL_PORT": "eighty"})
    assert result.returncode == 2
    assert result.stderr.strip() == "shelltrail: SHELLTRAIL_PORT must be an integer, not 'eighty'"


def test_migrate_is_idempotent(empty_database_url: str) -> None:
    """`shelltrail migrate` applies everything once; a second run applies nothing."""
    env = {"SHELLTRAIL_DATABASE_URL": empty_database_url}
    first = run_cli("migrate", env=env)
    second = run_cli("migrate", env=env)
    assert (first.returncode, second.returncode) == (0, 0), first.stderr + second.stderr
    assert first.stdout.strip() == f"{len(available_migrations())} migration(s) applied"
    assert second.stdout.strip() == "0 migration(s) applied"


async def test_two_servers_migrating_at_once_apply_each_migration_once(
    empty_database_url: str,
) -> None:
    """The advisory lock makes concurrent migrations safe."""
    env = {**os.environ, "SHELLTRAIL_DATABASE_URL": empty_database_url}
    procs = [
        await asyncio.create_subprocess_exec(
            *SHELLTRAIL,
            "migrate",
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        for _ in range(3)
    ]
    outputs = [await p.communicate() for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outputs
    applied = sorted(out.decode().strip() for out, _ in outputs)
    every = f"{len(available_migrations())} migration(s) applied"
    assert applied == ["0 migration(s) applied", "0 migration(s) applied", every]


async def test_replay_and_check_through_the_cli(store: EventStore, database_url: str) -> None:
    """`replay --check` passes on a sound log, names a drifted row, and `replay` repairs it."""
    sid = uuid.uuid4()
    await store.append(sid, sample_process_history(), expected_version=0)
    env = {"SHELLTRAIL_DATABASE_URL": database_url}
    ok = await asyncio.to_thread(run_cli, "replay", "--check", env=env)
    assert ok.returncode == 0, ok.stderr
    assert "projections match the log" in ok.stdout

    await store.pool.execute("UPDATE processes SET status = 'running' WHERE id = $1", sid)
    drifted = await asyncio.to_thread(run_cli, "replay", "--check", env=env)
    assert drifted.returncode == 1
    assert f"difference: processes {sid}: status: live 'running' != log 'killed'" in drifted.stdout

    repaired = await asyncio.to_thread(run_cli, "replay", env=env)
    assert repaired.returncode == 0, repaired.stderr
    assert await store.pool.fetchval("SELECT status FROM processes WHERE id = $1", sid) == "killed"
    again = await asyncio.to_thread(run_cli, "replay", "--check", env=env)
    assert again.returncode == 0


async def test_audit_verify_reports_the_first_bad_event(
    store: EventStore, database_url: str
) -> None:
    sid = uuid.uuid4()
    await store.append(sid, sample_process_history(), expected_version=0)
    env = {"SHELLTRAIL_DATABASE_URL": database_url}
    ok = await asyncio.to_thread(run_cli, "audit", "verify", env=env)
    assert (ok.returncode, ok.stdout.strip()) == (0, "all 1 stream(s) verified")
    async with store.pool.acquire() as conn:
        await conn.execute("ALTER TABLE events DISABLE TRIGGER events_append_only")
        await conn.execute(
            "UPDATE events SET data = jsonb_set(data, '{offset}', '99') "
            "WHERE stream_id = $1 AND version = 4",
            sid,
        )
        await conn.execute("ALTER TABLE events ENABLE TRIGGER events_append_only")
    bad = await asyncio.to_thread(run_cli, "audit", "verify", env=env)
    assert bad.returncode == 1
    assert bad.stdout.strip() == f"stream {sid}: first bad event is version 4"


def _wait_ready(port: int, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the server exited while starting"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError("the server did not become ready")


def _postmaster_alive(data_dir: Path) -> bool:
    pidfile = data_dir / "postgres" / "postmaster.pid"
    if not pidfile.exists():
        return False
    pid = int(pidfile.read_text().split()[0])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.slow
def test_embedded_database_survives_restarts_and_crashes(tmp_path: Path) -> None:
    """Without a database URL: data persists across restarts, a server left by a crash is
    adopted, and a clean exit stops the embedded PostgreSQL."""
    data_dir = tmp_path / "data"
    base = {k: v for k, v in os.environ.items() if not k.startswith("SHELLTRAIL_")}
    port = free_port()
    env = {**base, "SHELLTRAIL_DATA_DIR": str(data_dir), "SHELLTRAIL_PORT": str(port)}

    first = subprocess.Popen([*SHELLTRAIL, "serve"], env=env, stderr=subprocess.DEVNULL)
    try:
        _wait_ready(port, first)
        first.send_signal(signal.SIGKILL)  # a crash: no cleanup at all
        first.wait(10)
        assert _postmaster_alive(data_dir), "PostgreSQL should outlive a crashed shelltrail"

        second = subprocess.Popen([*SHELLTRAIL, "serve"], env=env, stderr=subprocess.DEVNULL)
        _wait_ready(port, second)
        second.send_signal(signal.SIGTERM)
        assert second.wait(30) == 0
    finally:
        for proc in (first,):
            if proc.poll() is None:
                proc.kill()
    assert not _postmaster_alive(data_dir), "a clean exit stops the embedded PostgreSQL"

    # The data is still there: migrations are not applied again.
    result = run_cli("migrate", env={"SHELLTRAIL_DATA_DIR": str(data_dir)})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "0 migration(s) applied"
    assert not _postmaster_alive(data_dir)


@pytest.mark.slow
def test_the_embedded_database_does_not_inherit_the_servers_secrets(tmp_path: Path) -> None:
    """The embedded PostgreSQL is a child of the server: its environment, readable in /proc by
    any process of the same user (a script), holds neither the tokens nor a database URL."""
    data_dir = tmp_path / "data"
    base = {k: v for k, v in os.environ.items() if not k.startswith("SHELLTRAIL_")}
    port = free_port()
    secret = "s3cret-" + uuid.uuid4().hex
    env = {
        **base,
        "SHELLTRAIL_DATA_DIR": str(data_dir),
        "SHELLTRAIL_PORT": str(port),
        "SHELLTRAIL_TOKENS": f"admin:admin:{secret}",
    }
    server = subprocess.Popen([*SHELLTRAIL, "serve"], env=env, stderr=subprocess.DEVNULL)
    try:
        _wait_ready(port, server)
        postmaster = int((data_dir / "postgres" / "postmaster.pid").read_text().split()[0])
        environ = Path(f"/proc/{postmaster}/environ").read_bytes()
        assert b"PATH=" in environ  # it was read
        assert secret.encode() not in environ
        assert b"SHELLTRAIL_TOKENS" not in environ
    finally:
        server.send_signal(signal.SIGTERM)  # a clean exit stops the embedded PostgreSQL too
        assert server.wait(30) == 0


def test_refuses_a_public_address_without_tokens(tmp_path: Path) -> None:
    """Without SHELLTRAIL_TOKENS the server binds only to loopback."""
    result = run_cli(
        "serve", env={"SHELLTRAIL_HOST": "0.0.0.0", "SHELLTRAIL_DATA_DIR": str(tmp_path)}
    )
    assert result.returncode == 2
    assert "refusing to listen on 0.0.0.0 without SHELLTRAIL_TOKENS" in result.stderr
    assert "Traceback" not in result.stderr


def _call(base: str, method: str, path: str, token: str, body: object | None = None) -> object:
    request = urllib.request.Request(
        base + path,
        method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read() or b"null")


def test_sigterm_stops_runs_with_reason_shutdown(database_url_sync: str, tmp_path: Path) -> None:
    """SIGTERM: running scripts end as `killed` / `shutdown`, their events are stored, exit 0."""
    token = "admin-token-0123456789"
    port = free_port()
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("SHELLTRAIL_")}
    env = {
        **base_env,
        "SHELLTRAIL_DATABASE_URL": database_url_sync,
        "SHELLTRAIL_PORT": str(port),
        "SHELLTRAIL_DATA_DIR": str(tmp_path),
        "SHELLTRAIL_TOKENS": f"ops:admin:{token}",
        "SHELLTRAIL_SHUTDOWN_GRACE_SECONDS": "1",
    }
    server = subprocess.Popen([*SHELLTRAIL, "serve"], env=env, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(port, server)
        command = _call(
            base,
            "POST",
            "/api/v1/commands",
            token,
            {"name": "busy", "script": "trap '' TERM; echo up; sleep 1000"},
        )
        assert isinstance(command, dict)
        ids = []
        for _ in range(3):
            process = _call(base, "POST", "/api/v1/processes", token, {"command_id": command["id"]})
            assert isinstance(process, dict)
            ids.append(process["id"])
        deadline = time.monotonic() + 30
        while True:
            states = [_call(base, "GET", f"/api/v1/processes/{i}", token) for i in ids]
            if all(isinstance(s, dict) and s["stdout_bytes"] > 0 for s in states):
                break
            assert time.monotonic() < deadline
            time.sleep(0.05)
        started = time.monotonic()
        server.send_signal(signal.SIGTERM)
        assert server.wait(30) == 0
        assert time.monotonic() - started < 15
    finally:
        if server.poll() is None:
            server.kill()
    # Read back with a fresh server: every run ended, killed for the shutdown.
    rows = asyncio.run(_statuses(database_url_sync))
    assert sorted(rows) == [("killed", "shutdown")] * 3


async def _statuses(url: str) -> list[tuple[str, str]]:
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch("SELECT status, stop_reason FROM processes")
        return [(r["status"], r["stop_reason"]) for r in rows]
    finally:
        await conn.close()
