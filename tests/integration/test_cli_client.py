"""The command-line client against a real server."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.integration.conftest import SCRIPTS_OPEN_FILES, TOKENS

SHELLTRAIL = [sys.executable, "-m", "shelltrail"]


def cli(
    server: str, *args: str, token: str | None = TOKENS["admin"], stdin: bytes = b""
) -> subprocess.CompletedProcess[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHELLTRAIL_")}
    env["SHELLTRAIL_URL"] = server
    if token is not None:
        env["SHELLTRAIL_TOKEN"] = token
    return subprocess.run(
        [*SHELLTRAIL, *args], env=env, capture_output=True, input=stdin, timeout=60, check=False
    )


def test_run_reproduces_output_and_exit_code(live_server: str) -> None:
    """`run` follows stdout and stderr byte-exact and exits with the script's code."""
    script = "echo out; echo err >&2; printf 'bin\\0ary\\xff'; printf \"$1\" >&2; exit 7"
    added = cli(live_server, "commands", "add", "hello", "--script", script)
    assert added.returncode == 0, added.stderr
    command_id = added.stdout.decode().strip()

    for ref in ("hello", command_id):
        result = cli(live_server, "run", ref, "ARG")
        assert result.returncode == 7
        assert result.stdout == b"out\nbin\x00ary\xff"
        assert result.stderr == b"err\nARG"


def test_scripts_get_the_open_file_limit_the_server_started_with(live_server: str) -> None:
    """The server raised its own soft limit on open files; its scripts do not inherit it."""
    script = (
        "awk '/^Max open files/ {print $4}' \"/proc/$PPID/limits\"; "  # the server's own
        'ulimit -Sn; bash -c "ulimit -Sn"; echo "${BASH_ENV-none}"'
    )
    result = cli(live_server, "run", "--script", script)
    assert result.returncode == 0, result.stderr
    server, script_limit, child_limit, bash_env = result.stdout.decode().split()
    assert int(server) > SCRIPTS_OPEN_FILES
    assert (script_limit, child_limit, bash_env) == (str(SCRIPTS_OPEN_FILES),) * 2 + ("none",)


def test_inline_script_and_the_other_verbs(live_server: str) -> None:
    """`run --script`, `ps`, `logs`, `events`, `audit`, `replay`, `rm`."""
    result = cli(live_server, "run", "--script", "for i in 1 2 3; do echo $i; sleep 0.05; done")
    assert (result.returncode, result.stdout) == (0, b"1\n2\n3\n")

    listing = json.loads(cli(live_server, "ps", "--json").stdout)
    assert [p["status"] for p in listing] == ["succeeded"]
    process = listing[0]["id"]

    assert cli(live_server, "logs", process).stdout == b"1\n2\n3\n"
    events = [
        json.loads(line)
        for line in cli(live_server, "events", process, "--json").stdout.splitlines()
    ]
    assert events[0]["type"] == "Queued"
    assert events[-1]["type"] == "Exited"
    audit = cli(live_server, "audit", process)
    assert audit.returncode == 0
    assert audit.stdout.startswith(b"verified:")
    assert cli(live_server, "replay", process, "--speed", "0").stdout == b"1\n2\n3\n"
    table = cli(live_server, "ps").stdout.decode()
    assert table.splitlines()[0].split() == [
        "ID",
        "STATUS",
        "EXIT",
        "COMMAND",
        "CREATED",
        "DURATION",
    ]
    assert process in table
    assert cli(live_server, "rm", process).returncode == 0
    assert json.loads(cli(live_server, "ps", "--json").stdout) == []


def test_logs_follow_streams_until_the_end(live_server: str) -> None:
    started = cli(
        live_server, "run", "--detach", "--script", "sleep 0.3; echo late; sleep 0.2; echo last"
    )
    assert started.returncode == 0
    process = started.stdout.decode().strip()
    followed = cli(live_server, "logs", "-f", process)
    assert (followed.returncode, followed.stdout) == (0, b"late\nlast\n")


def test_errors_are_one_readable_line(live_server: str) -> None:
    missing = cli(live_server, "commands", "show", "no-such-command")
    assert missing.returncode == 1
    assert missing.stderr.decode() == "shelltrail: no command named 'no-such-command'\n"

    bad_token = cli(live_server, "ps", token="not-the-token")
    assert bad_token.returncode == 1
    assert bad_token.stderr.decode() == "shelltrail: the token is not valid (HTTP 401)\n"

    viewer = cli(live_server, "commands", "add", "x", "--script", "true", token=TOKENS["viewer"])
    assert viewer.returncode == 1
    assert "needs the admin role" in viewer.stderr.decode()
    assert viewer.stderr.decode().count("\n") == 1

    invalid = cli(live_server, "commands", "add", "x" * 300, "--script", "true")
    assert invalid.returncode == 1
    assert invalid.stderr.decode().startswith("shelltrail: some fields are not valid: name: ")

    nowhere = cli("http://127.0.0.1:9", "ps")
    assert nowhere.returncode == 2
    lines = nowhere.stderr.decode().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("shelltrail: cannot reach the server at http://127.0.0.1:9")
