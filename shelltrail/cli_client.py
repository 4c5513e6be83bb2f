"""Client verbs of the ``shelltrail`` command: they talk to a server over the HTTP API.

The server is ``SHELLTRAIL_URL`` (default http://127.0.0.1:8080) and the token
``SHELLTRAIL_TOKEN``. Output is for people by default (aligned tables, relative times,
colours only on a terminal) and JSON with ``--json``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import signal
import sys
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from shelltrail.client import ApiClient, ApiError, Unreachable

Verb = Callable[[ApiClient, argparse.Namespace], Awaitable[int]]
_COLOURS: Final = {
    "succeeded": "32",
    "running": "36",
    "queued": "33",
    "failed": "31",
    "killed": "35",
    "lost": "31",
}


def add_client_verbs(verbs: Any) -> None:
    """Register the client verbs on the ``shelltrail`` argument parser."""
    _add_command_verbs(verbs)
    _add_process_verbs(verbs)


def _add_command_verbs(verbs: Any) -> None:
    commands = verbs.add_parser("commands", help="manage stored commands on a server")
    sub = commands.add_subparsers(dest="commands_verb", required=True, metavar="VERB")
    add = sub.add_parser("add", help="store a new command")
    add.add_argument("name")
    _script_options(add, required=True)
    add.set_defaults(client=_commands_add)
    listing = sub.add_parser("list", help="list commands")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(client=_commands_list)
    show = sub.add_parser("show", help="show a command")
    show.add_argument("command", help="id or name")
    show.add_argument("--json", action="store_true")
    show.set_defaults(client=_commands_show)
    edit = sub.add_parser("edit", help="store a new version of a command")
    edit.add_argument("command", help="id or name")
    edit.add_argument("--name")
    _script_options(edit, required=False)
    edit.set_defaults(client=_commands_edit)
    rm = sub.add_parser("rm", help="delete a command (its processes stay)")
    rm.add_argument("command", help="id or name")
    rm.set_defaults(client=_commands_rm)


def _add_process_verbs(verbs: Any) -> None:
    run = verbs.add_parser("run", help="start a command and follow its output")
    run.add_argument("command", nargs="?", help="id or name of a stored command")
    run.add_argument("args", nargs="*", help="the script's $1 … $n")
    run.add_argument("--script", help="store this script as a new command and run it")
    run.add_argument("--env", action="append", default=[], metavar="NAME=VALUE")
    run.add_argument("--timeout", type=float, metavar="SECONDS")
    run.add_argument("--detach", action="store_true", help="print the process, do not follow")
    run.add_argument("--json", action="store_true")
    run.set_defaults(client=_run)

    ps = verbs.add_parser("ps", help="list processes")
    ps.add_argument("--status", choices=list(_COLOURS))
    ps.add_argument("--command", help="id of a command")
    ps.add_argument("--limit", type=int, default=50)
    ps.add_argument("--json", action="store_true")
    ps.set_defaults(client=_ps)

    logs = verbs.add_parser("logs", help="print a process's output")
    logs.add_argument("process")
    logs.add_argument("-f", "--follow", action="store_true", help="until the process ends")
    logs.add_argument("--stderr", action="store_true", help="stderr instead of stdout")
    logs.set_defaults(client=_logs)

    for name, handler, text in (
        ("stop", _stop, "stop a process (its whole process tree)"),
        ("rm", _rm, "delete a process (stopping it first)"),
    ):
        verb = verbs.add_parser(name, help=text)
        verb.add_argument("process")
        if name == "stop":
            verb.add_argument("--signal", default="TERM", choices=["TERM", "INT", "HUP", "KILL"])
            verb.add_argument("--grace", type=float, default=10.0, metavar="SECONDS")
        verb.set_defaults(client=handler)

    events = verbs.add_parser("events", help="print a process's events")
    events.add_argument("process")
    events.add_argument("-f", "--follow", action="store_true", help="live, until the end")
    events.add_argument("--json", action="store_true")
    events.set_defaults(client=_events)


def _script_options(parser: argparse.ArgumentParser, *, required: bool) -> None:
    source = parser.add_mutually_exclusive_group(required=required)
    source.add_argument("--script", help="the script itself")
    source.add_argument("--file", type=Path, help="read the script from a file ('-': stdin)")
    parser.add_argument("--description")
    parser.add_argument("--timeout", type=float, metavar="SECONDS")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE")


async def run_client_verb(verb: Verb, args: argparse.Namespace) -> int:
    """Run a client verb; errors become one line on stderr."""
    try:
        async with ApiClient.from_env() as api:
            return await verb(api, args)
    except ApiError as exc:
        print(f"shelltrail: {exc}", file=sys.stderr)
        return 1
    except (Unreachable, UsageError) as exc:
        print(f"shelltrail: {exc}", file=sys.stderr)
        return 2


class UsageError(Exception):
    """The command line does not make sense; one line says why."""


# --- commands ---------------------------------------------------------------------------


def _env(pairs: Sequence[str]) -> dict[str, str]:
    env: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep:
            raise UsageError(f"--env takes NAME=VALUE, not {pair!r}")
        env[name] = value
    return env


def _script(args: argparse.Namespace) -> str | None:
    if args.script is not None:
        return str(args.script)
    if args.file is None:
        return None
    if str(args.file) == "-":
        return sys.stdin.read()
    try:
        return Path(args.file).read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot read {args.file}: {exc.strerror}") from None


async def _find_command(api: ApiClient, ref: str) -> dict[str, Any]:
    try:
        uuid.UUID(ref)
    except ValueError:
        pass
    else:
        return dict(await api.call("GET", f"/api/v1/commands/{ref}"))
    cursor: str | None = None
    while True:
        params = {"limit": "500", **({"cursor": cursor} if cursor else {})}
        page = await api.call("GET", "/api/v1/commands", params=params)
        for command in page["items"]:
            if command["name"] == ref:
                return dict(command)
        cursor = page["next_cursor"]
        if cursor is None:
            raise ApiError(404, f"no command named {ref!r}")


async def _commands_add(api: ApiClient, args: argparse.Namespace) -> int:
    body = {
        "name": args.name,
        "script": _script(args),
        "description": args.description,
        "timeout_seconds": args.timeout,
        "env": _env(args.env),
    }
    command = await api.call("POST", "/api/v1/commands", body=body)
    print(command["id"])
    return 0


async def _commands_list(api: ApiClient, args: argparse.Namespace) -> int:
    page = await api.call("GET", "/api/v1/commands", params={"limit": "500"})
    if args.json:
        print(json.dumps(page["items"], indent=2))
        return 0
    rows = [[c["id"], c["name"], str(c["version"]), _ago(c["updated_at"])] for c in page["items"]]
    _table(["ID", "NAME", "VERSION", "UPDATED"], rows)
    return 0


async def _commands_show(api: ApiClient, args: argparse.Namespace) -> int:
    command = await _find_command(api, args.command)
    if args.json:
        print(json.dumps(command, indent=2))
        return 0
    for key in ("id", "name", "version", "description", "timeout_seconds", "env", "updated_at"):
        print(f"{key + ':':17} {command[key]}")
    print("script:")
    print(command["script"], end="" if command["script"].endswith("\n") else "\n")
    return 0


async def _commands_edit(api: ApiClient, args: argparse.Namespace) -> int:
    command = await _find_command(api, args.command)
    script = _script(args)
    body = {
        "name": args.name or command["name"],
        "script": script if script is not None else command["script"],
        "description": args.description if args.description is not None else command["description"],
        "timeout_seconds": args.timeout if args.timeout is not None else command["timeout_seconds"],
        "env": {**command["env"], **_env(args.env)},
        "max_output_bytes": command.get("max_output_bytes"),
        "output_limit_policy": command.get("output_limit_policy", "truncate"),
    }
    updated = await api.call("PUT", f"/api/v1/commands/{command['id']}", body=body)
    print(f"{updated['id']} version {updated['version']}")
    return 0


async def _commands_rm(api: ApiClient, args: argparse.Namespace) -> int:
    command = await _find_command(api, args.command)
    await api.call("DELETE", f"/api/v1/commands/{command['id']}")
    return 0


# --- processes --------------------------------------------------------------------------


async def _run(api: ApiClient, args: argparse.Namespace) -> int:
    if args.script is not None:
        if args.command is not None:
            args.args.insert(0, args.command)
        name = f"inline {datetime.now(UTC):%Y-%m-%d %H:%M:%S}"
        created = await api.call(
            "POST", "/api/v1/commands", body={"name": name, "script": args.script}
        )
        command_id = created["id"]
    elif args.command is None:
        raise UsageError("name a stored command, or give --script")
    else:
        command_id = (await _find_command(api, args.command))["id"]
    body: dict[str, Any] = {"command_id": command_id, "args": args.args, "env": _env(args.env)}
    if args.timeout is not None:
        body["timeout_seconds"] = args.timeout
    process = await api.call("POST", "/api/v1/processes", body=body)
    if process["status"] == "queued" and not args.detach and sys.stderr.isatty():
        print("shelltrail: queued, waiting for a free slot…", file=sys.stderr, flush=True)
    if args.detach:
        print(json.dumps(process, indent=2) if args.json else process["id"])
        return 0
    return await follow_to_the_end(api, process["id"], json_output=args.json)


async def follow_to_the_end(api: ApiClient, process_id: str, *, json_output: bool) -> int:
    """Stream stdout and stderr until the run ends; return its exit code the way a shell would."""
    loop = asyncio.get_running_loop()
    interrupted = asyncio.Event()
    loop.add_signal_handler(signal.SIGINT, interrupted.set)
    follow = asyncio.ensure_future(_follow_both(api, process_id))
    try:
        while not follow.done():
            waiter = asyncio.ensure_future(interrupted.wait())
            await asyncio.wait({follow, waiter}, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            if interrupted.is_set():
                interrupted.clear()
                if await _confirm_stop():
                    await api.call("POST", f"/api/v1/processes/{process_id}/stop", body={})
        await follow
    finally:
        loop.remove_signal_handler(signal.SIGINT)
    process = await api.call("GET", f"/api/v1/processes/{process_id}")
    if json_output:
        print(json.dumps(process, indent=2))
    return exit_status(process)


async def _confirm_stop() -> bool:
    if not sys.stdin.isatty():
        return True
    answer = await asyncio.to_thread(input, "\nStop the run? [y/N] ")
    return answer.strip().lower() in ("y", "yes")


async def _follow_both(api: ApiClient, process_id: str) -> None:
    async def copy(stream: str, out: Any) -> None:
        async for piece in api.stream(
            f"/api/v1/processes/{process_id}/output", params={"stream": stream, "follow": "true"}
        ):
            out.write(piece)
            out.flush()

    await asyncio.gather(copy("stdout", sys.stdout.buffer), copy("stderr", sys.stderr.buffer))


def exit_status(process: dict[str, Any]) -> int:
    if process["exit_code"] is not None:
        return int(process["exit_code"])
    if process["signal"] is not None:
        return 128 + int(process["signal"])
    return 0 if process["status"] == "succeeded" else 1


async def _ps(api: ApiClient, args: argparse.Namespace) -> int:
    params = {"limit": str(args.limit)}
    if args.status:
        params["status"] = args.status
    if args.command:
        params["command_id"] = args.command
    page = await api.call("GET", "/api/v1/processes", params=params)
    if args.json:
        print(json.dumps(page["items"], indent=2))
        return 0
    rows = [
        [
            p["id"],
            _coloured(p["status"]),
            "" if p["exit_code"] is None else str(p["exit_code"]),
            p["command_id"][:8],
            _ago(p["created_at"]),
            "" if p["duration_seconds"] is None else f"{p['duration_seconds']:.1f}s",
        ]
        for p in page["items"]
    ]
    _table(["ID", "STATUS", "EXIT", "COMMAND", "CREATED", "DURATION"], rows)
    return 0


async def _logs(api: ApiClient, args: argparse.Namespace) -> int:
    stream = "stderr" if args.stderr else "stdout"
    params = {"stream": stream, "follow": "true" if args.follow else "false"}
    async for piece in api.stream(f"/api/v1/processes/{args.process}/output", params=params):
        sys.stdout.buffer.write(piece)
        sys.stdout.buffer.flush()
    return 0


async def _stop(api: ApiClient, args: argparse.Namespace) -> int:
    body = {"signal": args.signal, "grace_seconds": args.grace}
    process = await api.call("POST", f"/api/v1/processes/{args.process}/stop", body=body)
    print(f"{process['id']} stopping ({process['status']})")
    return 0


async def _rm(api: ApiClient, args: argparse.Namespace) -> int:
    await api.call("DELETE", f"/api/v1/processes/{args.process}")
    return 0


async def replay_output(api: ApiClient, process_id: str, speed: float) -> int:
    """Print a run's output again, with its original pacing (the server paces it)."""
    data: list[str] = []
    kind = ""
    async for raw in api.stream(
        f"/api/v1/processes/{process_id}/replay", params={"speed": str(speed)}, sse=True
    ):
        line = raw.decode().rstrip("\n")
        if line.startswith("event: "):
            kind = line[7:]
        elif line.startswith("data: "):
            data.append(line[6:])
        elif not line and data:
            message = json.loads("\n".join(data))
            data = []
            if kind == "output":
                out = sys.stderr.buffer if message["stream"] == "stderr" else sys.stdout.buffer
                out.write(base64.b64decode(message["data_base64"]))
                out.flush()
    return 0


async def audit_process(api: ApiClient, process_id: str) -> int:
    """Recompute a run's hash chain on the server; exit 1 if it does not verify."""
    audit = await api.call("GET", f"/api/v1/processes/{process_id}/audit")
    if audit["verified"]:
        print(f"verified: {audit['events']} events, head {audit['head_hash']}")
        return 0
    print(f"NOT verified: first bad event is version {audit['first_bad_version']}")
    return 1


async def _events(api: ApiClient, args: argparse.Namespace) -> int:
    if args.follow:
        async for event in api.events(args.process):
            _print_event(event, json_output=args.json)
        return 0
    after = 0
    while True:
        page = await api.call(
            "GET", f"/api/v1/processes/{args.process}/events", params={"after": str(after)}
        )
        for event in page["items"]:
            _print_event(event, json_output=args.json)
        if page["next_after"] is None:
            return 0
        after = page["next_after"]


def _print_event(event: dict[str, Any], *, json_output: bool) -> None:
    if json_output:
        print(json.dumps(event))
        return
    data = dict(event["data"])
    if event["type"] == "OutputChunk":
        raw = base64.b64decode(data.pop("data_base64"))
        data["text"] = raw.decode(errors="replace")[:60]
    detail = " ".join(f"{k}={v}" for k, v in data.items())
    print(f"{event['version']:>6}  {event['recorded_at']}  {event['type']:<15} {detail}")


# --- formatting -------------------------------------------------------------------------


def _coloured(status: str) -> str:
    if not sys.stdout.isatty() or status not in _COLOURS:
        return status
    return f"\033[{_COLOURS[status]}m{status}\033[0m"


def _ago(timestamp: str) -> str:
    seconds = (datetime.now(UTC) - datetime.fromisoformat(timestamp)).total_seconds()
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit} ago"
    return f"{int(max(seconds, 0))}s ago"


def _table(headers: list[str], rows: list[list[str]]) -> None:
    widths = [max([len(h)] + [_visible_len(r[i]) for r in rows]) for i, h in enumerate(headers)]
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
    for row in rows:
        cells = [cell + " " * (w - _visible_len(cell)) for cell, w in zip(row, widths, strict=True)]
        print("  ".join(cells).rstrip())


def _visible_len(text: str) -> int:
    if "\033[" not in text:
        return len(text)
    visible, skipping = 0, False
    for char in text:
        if char == "\033":
            skipping = True
        elif skipping and char == "m":
            skipping = False
        elif not skipping:
            visible += 1
    return visible
