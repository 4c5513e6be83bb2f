"""Random sequences of API calls against a model of what must be true (hypothesis stateful).

The machine drives a real ``shelltrail serve`` subprocess (the ``live_server`` fixture: its
own database, real processes) through a small synchronous HTTP client built on
``http.client``. A subprocess rather than an in-process app because hypothesis runs rules
synchronously, the server needs its own event loop, and the subprocess is exactly what users
run (CLI, settings, logging, shutdown included). One server serves every example: each example
ends by deleting what it made, and the next begins by checking that the lists are empty, so
every example starts from a blank model.

Scripts are quick and deterministic, so the model knows every run's outcome: ``printf`` of the
run's arguments or of an environment variable, a chosen exit code, or ``sleep 300`` for runs
that are stopped, deleted or timed out. Waits follow the run's SSE stream to its end under a
deadline, never fixed sleeps. SHELLTRAIL_FUZZ_EXAMPLES sets the number of examples (a short run
in CI, ``make fuzz`` a long one).

What the model checks, call after call: status codes and problem bodies; every field of every
command and process body; versions (commands +1 per change, processes = their last event);
lists (exact contents, newest first, every page, filters); a deleted thing answering 404
everywhere, and a deleted command's runs staying; each finished run's status, exit code,
signal, stop reason, byte counts, output (any offset and limit), events (contiguous, tiling
output chunks), SSE stream, audit and state at an earlier version; stop answering 202 while a
run runs and 409 once it has ended; the roles' limits; bad bodies changing nothing.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import signal as signals
import time
import urllib.parse
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from hashlib import sha256
from typing import Any, Final, Literal

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    precondition,
    rule,
    run_state_machine_as_test,
)

from tests.integration.conftest import TOKENS

pytestmark = pytest.mark.fuzz

EXAMPLES: Final = int(os.environ.get("SHELLTRAIL_FUZZ_EXAMPLES", "25"))
STEPS: Final = 50
#: How long a run that must end may take to end: generous, the machine is shared.
RUN_DEADLINE: Final = 60.0
#: Runs of ``sleep 300`` alive at once, at most: enough to interleave, few processes.
MAX_SLEEPING: Final = 3

COMMAND_FIELDS: Final = frozenset(
    [
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
    ]
)
VERSION_FIELDS: Final = frozenset(
    ["version", "name", "script", "description", "timeout_seconds", "env", "created_at"]
)
PROCESS_FIELDS: Final = frozenset(
    [
        "id",
        "command_id",
        "command_version",
        "status",
        "exit_code",
        "signal",
        "pid",
        "args",
        "created_at",
        "started_at",
        "finished_at",
        "duration_seconds",
        "stdout_bytes",
        "stderr_bytes",
        "stop_reason",
        "version",
    ]
)
TERMINAL: Final = {"succeeded", "failed", "killed", "lost"}
TERMINAL_EVENTS: Final = {"Exited", "Killed", "Lost", "StartFailed"}
SIGNALS: Final = {
    "TERM": signals.SIGTERM,
    "INT": signals.SIGINT,
    "HUP": signals.SIGHUP,
    "KILL": signals.SIGKILL,
}
Role = Literal["viewer", "operator", "admin"]


# --- a small synchronous client ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def json(self) -> Any:
        assert self.headers.get_content_type() == "application/json", self
        return json.loads(self.body)

    def problem(self, status: int) -> dict[str, Any]:
        """The RFC 9457 body of an error answer with ``status``."""
        assert self.status == status, (self.status, self.body[:500])
        assert self.headers.get_content_type() == "application/problem+json", self.headers
        body: dict[str, Any] = json.loads(self.body)
        assert {"type", "title", "status", "detail"} <= set(body), body
        assert body["status"] == status
        return body


_NO_BODY: Final = object()


class Api:
    """One connection per request: simple, and nothing a failed step leaves half-read."""

    def __init__(self, base_url: str) -> None:
        parts = urllib.parse.urlsplit(base_url)
        assert parts.hostname is not None
        assert parts.port is not None
        self.host, self.port = parts.hostname, parts.port

    def call(
        self,
        method: str,
        path: str,
        *,
        role: Role = "admin",
        body: Any = _NO_BODY,
        raw: bytes | None = None,
        params: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> Reply:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=RUN_DEADLINE)
        try:
            sent = {"Authorization": f"Bearer {TOKENS[role]}", **(headers or {})}
            data = raw
            if body is not _NO_BODY:
                data = json.dumps(body).encode()
                sent.setdefault("Content-Type", "application/json")
            query = f"?{urllib.parse.urlencode(params)}" if params else ""
            conn.request(method, path + query, body=data, headers=sent)
            response = conn.getresponse()
            return Reply(response.status, response.headers, response.read())
        finally:
            conn.close()

    def stream(self, path: str, headers: dict[str, str] | None = None) -> bytes:
        """A streamed body (SSE) until the server ends it, within RUN_DEADLINE."""
        deadline = time.monotonic() + RUN_DEADLINE
        conn = http.client.HTTPConnection(self.host, self.port, timeout=RUN_DEADLINE)
        try:
            sent = {"Authorization": f"Bearer {TOKENS['viewer']}", **(headers or {})}
            conn.request("GET", path, headers=sent)
            response = conn.getresponse()
            assert response.status == 200, response.read()
            assert response.headers.get_content_type() == "text/event-stream"
            received = bytearray()
            while piece := response.read1(65536):
                received += piece
                assert time.monotonic() < deadline, f"{path} did not end in time"
            return bytes(received)
        finally:
            conn.close()

    def follow(self, process_id: str, last_id: int | None = None) -> list[dict[str, Any]]:
        """The process's events as SSE (after ``last_id``) until the server ends the stream."""
        headers = {"Accept": "text/event-stream"}
        if last_id is not None:
            headers["Last-Event-ID"] = str(last_id)
        messages = sse_messages(self.stream(f"/api/v1/processes/{process_id}/events", headers))
        items = [json.loads(m["data"]) for m in messages]
        assert [int(m["id"]) for m in messages] == [i["version"] for i in items]
        assert [m["event"] for m in messages] == [i["type"] for i in items]
        return items


def sse_messages(body: bytes) -> list[dict[str, str]]:
    messages = []
    for block in body.decode().split("\n\n"):
        # Only \n ends a line here: str.splitlines() would also split at U+0085 or U+2028,
        # which JSON carries unescaped.
        fields = dict(line.split(": ", 1) for line in block.split("\n") if line and line[0] != ":")
        if fields:
            messages.append(fields)
    return messages


def utc(value: str) -> datetime:
    """An RFC 3339 UTC time from a body; anything else fails the step."""
    parsed = datetime.fromisoformat(value)
    assert parsed.utcoffset() == timedelta(0), value
    return parsed


# --- the model --------------------------------------------------------------------------


ScriptKind = Literal["args", "env", "stderr_exit", "sleep"]


@dataclass(frozen=True, slots=True)
class Script:
    """A script whose outcome the model can tell from its arguments and environment."""

    kind: ScriptKind
    code: int = 0

    @property
    def text(self) -> str:
        match self.kind:
            case "args":
                return "printf '%s\\0' \"$@\""
            case "env":
                return "printf '%s' \"${GREETING-unset}\""
            case "stderr_exit":
                return f"printf '%s' \"$1\" >&2; exit {self.code}"
            case "sleep":
                return "sleep 300"

    def outcome(self, args: list[str], env: dict[str, str]) -> tuple[bytes, bytes, int]:
        """stdout, stderr and exit code of a run that ends on its own."""
        match self.kind:
            case "args":  # printf applies its format once even to no arguments
                return b"".join(a.encode() + b"\0" for a in args or [""]), b"", 0
            case "env":
                return env.get("GREETING", "unset").encode(), b"", 0
            case "stderr_exit":
                return b"", (args[0] if args else "").encode(), self.code
            case "sleep":
                raise AssertionError("a sleeping run does not end on its own")


@dataclass(slots=True)
class CommandModel:
    id: str
    #: The request bodies of every version, oldest first (``script`` as a Script).
    versions: list[dict[str, Any]]
    body: dict[str, Any]
    deleted: bool = False

    @property
    def script(self) -> Script:
        script: Script = self.versions[-1]["script"]
        return script


@dataclass(slots=True)
class ProcessModel:
    id: str
    command_id: str
    command_version: int
    script: Script
    args: list[str]
    env: dict[str, str]
    timeout: float | None
    key: str | None
    created_at: datetime
    #: The body that started it (sent again with its Idempotency-Key).
    request: dict[str, Any] = field(default_factory=dict)
    #: Signal and grace of the user's stop request, once 202 answered it.
    stop: tuple[str, float | None] | None = None
    #: The body once the run is known to have ended.
    final: dict[str, Any] | None = None
    #: Its events once the run has ended (they never change again).
    events: list[dict[str, Any]] = field(default_factory=list)
    deleted: bool = False

    @property
    def ends(self) -> bool:
        """Whether the run ends without anyone else acting."""
        return self.script.kind != "sleep" or self.stop is not None or self.timeout is not None

    @property
    def sleeping(self) -> bool:
        return not self.deleted and self.final is None and not self.ends


# --- strategies -------------------------------------------------------------------------

_TEXT_CHARS: Final = st.characters(codec="utf-8", exclude_characters="\x00")
texts = st.text(_TEXT_CHARS, max_size=40)
names = st.text(_TEXT_CHARS, min_size=1, max_size=60)
# Prefixed, so no generated name is one bash gives a meaning (BASH_ENV, IFS, SHELLOPTS...).
env_names = st.builds(lambda s: f"V_{s}", st.from_regex(r"[A-Za-z0-9_]{0,12}", fullmatch=True))
envs = st.dictionaries(st.just("GREETING") | env_names, texts, max_size=3)
scripts = st.one_of(
    st.builds(Script, st.sampled_from(["args", "env", "sleep"])),
    st.builds(Script, st.just("stderr_exit"), st.integers(0, 255)),
)
command_bodies = st.fixed_dictionaries(
    {"name": names, "script": scripts},
    optional={
        "description": st.none() | texts,
        # Long enough never to end a run (timeouts are tried on runs of their own), up to the
        # API's limit: beyond epoll's 24.8 days these once broke every run.
        "timeout_seconds": st.none() | st.floats(3600, 31_536_000),
        "env": envs,
    },
)
signal_names = st.sampled_from(sorted(SIGNALS))
BAD_START_BODIES: Final[list[tuple[dict[str, Any], str]]] = [
    ({"args": ["a\x00b"]}, "args.0"),
    ({"args": "not a list"}, "args"),
    ({"env": {"1BAD": "x"}}, "env.1BAD.[key]"),
    ({"env": {"GOOD": 5}}, "env.GOOD"),
    ({"timeout_seconds": 0}, "timeout_seconds"),
    ({"timeout_seconds": "5"}, "timeout_seconds"),
    ({"unexpected": True}, "unexpected"),
]
BAD_COMMAND_BODIES: Final[list[tuple[dict[str, Any], str]]] = [
    ({"name": "", "script": "true"}, "name"),
    ({"name": "x", "script": ""}, "script"),
    ({"name": "x" * 201, "script": "true"}, "name"),
    ({"name": "x", "script": "a\x00b"}, "script"),
    ({"name": "x", "script": "true", "env": {"A-B": "1"}}, "env.A-B.[key]"),
    ({"name": "x", "script": "true", "timeout_seconds": -1}, "timeout_seconds"),
    ({"name": "x", "script": "true", "output_limit_policy": "explode"}, "output_limit_policy"),
    ({"script": "true"}, "name"),
    ({"name": 1, "script": "true"}, "name"),
]


def newest_first(bodies: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The order of lists: by creation time, then id, newest first.

    Creation times come from the server's clock, so this is the order of creation unless
    the clock stepped back; the model does not bet on the clock.
    """
    return sorted(bodies, key=lambda b: (utc(b["created_at"]), uuid.UUID(b["id"])), reverse=True)


def _sent(body: dict[str, Any]) -> dict[str, Any]:
    """A generated command body as JSON: the Script as its text."""
    return {**body, "script": body["script"].text}


class ApiMachine(RuleBasedStateMachine):
    """The API as a user sees it, against what the model says must be true."""

    api: Api  # set by the test before the machine runs

    def __init__(self) -> None:
        super().__init__()
        self.commands: dict[str, CommandModel] = {}
        self.processes: dict[str, ProcessModel] = {}
        self.keys = 0
        self.prefix = uuid.uuid4().hex  # idempotency keys of this example only
        # Every earlier example deleted what it made: nothing of it may show.
        assert self.pages("/api/v1/commands", 500) == []
        assert self.pages("/api/v1/processes", 500) == []

    # --- helpers ------------------------------------------------------------------------

    def live_commands(self) -> list[CommandModel]:
        return [c for c in self.commands.values() if not c.deleted]

    def live_processes(self) -> list[ProcessModel]:
        return [p for p in self.processes.values() if not p.deleted]

    def pages(self, path: str, limit: int, params: dict[str, str] | None = None) -> list[Any]:
        """Every item of a list, walked page by page with its cursors."""
        items: list[Any] = []
        query = {"limit": str(limit), **(params or {})}
        for _ in range(1000):
            page = self.api.call("GET", path, role="viewer", params=query)
            assert page.status == 200, page
            body = page.json()
            assert set(body) == {"items", "next_cursor"}
            assert len(body["items"]) <= limit
            items.extend(body["items"])
            if body["next_cursor"] is None:
                return items
            assert body["items"], "an empty page must be the last"
            query["cursor"] = body["next_cursor"]
        raise AssertionError(f"{path} never ended")

    def check_command_body(self, body: dict[str, Any], model: CommandModel) -> None:
        assert set(body) == COMMAND_FIELDS, body
        sent = model.versions[-1]
        assert body["id"] == model.id
        assert body["version"] == len(model.versions)
        assert body["name"] == sent["name"]
        assert body["script"] == sent["script"].text
        assert body["description"] == sent.get("description")
        assert body["timeout_seconds"] == sent.get("timeout_seconds")
        assert body["env"] == sent.get("env", {})
        assert (body["max_output_bytes"], body["output_limit_policy"]) == (None, "truncate")
        assert utc(body["created_at"]) <= utc(body["updated_at"])

    def check_process_body(self, body: dict[str, Any], model: ProcessModel) -> None:
        assert set(body) == PROCESS_FIELDS, body
        assert body["id"] == model.id
        assert (body["command_id"], body["command_version"]) == (
            model.command_id,
            model.command_version,
        )
        assert body["args"] == model.args
        assert utc(body["created_at"]) == model.created_at
        assert body["version"] >= 1
        if body["started_at"] is not None:
            assert body["pid"] is not None
            assert utc(body["created_at"]) <= utc(body["started_at"])
        else:  # never started: waiting, or ended in the queue
            assert body["status"] in ("queued", "killed", "failed", "lost"), body
            assert body["pid"] is None
        if body["status"] == "running":
            assert body["started_at"] is not None
        if body["status"] not in TERMINAL:
            assert (body["finished_at"], body["duration_seconds"]) == (None, None)
            assert (body["exit_code"], body["signal"]) == (None, None)
        elif body["started_at"] is None:
            assert (body["finished_at"] is not None, body["duration_seconds"]) == (True, None)
        else:
            finished, started = utc(body["finished_at"]), utc(body["started_at"])
            assert started <= finished
            assert body["duration_seconds"] == pytest.approx((finished - started).total_seconds())
        if model.final is not None:
            assert body == model.final  # an ended run never changes again

    def expect_final(self, body: dict[str, Any], model: ProcessModel) -> None:
        """The ended run's body as its script, arguments and stop request dictate."""
        if model.script.kind != "sleep":
            stdout, stderr, code = model.script.outcome(model.args, model.env)
            status = "succeeded" if code == 0 else "failed"
            assert (body["status"], body["exit_code"], body["signal"], body["stop_reason"]) == (
                status,
                code,
                None,
                None,
            ), body
            assert (body["stdout_bytes"], body["stderr_bytes"]) == (len(stdout), len(stderr))
            return
        assert (body["status"], body["exit_code"]) == ("killed", None), body
        assert (body["stdout_bytes"], body["stderr_bytes"]) == (0, 0)
        if model.stop is not None:
            name, grace = model.stop
            # With no grace, the KILL that follows may overtake the first signal.
            allowed = {SIGNALS[name]} if grace != 0 else {SIGNALS[name], signals.SIGKILL}
            assert body["stop_reason"] == "user", body
            assert body["signal"] in allowed, body
        else:
            assert (body["stop_reason"], body["signal"]) == ("timeout", signals.SIGTERM), body

    def answer_404(self, path: str, method: str = "GET", role: Role = "admin") -> None:
        body = {} if method in ("POST", "PUT") else _NO_BODY
        self.api.call(method, path, role=role, body=body).problem(404)

    # --- commands -----------------------------------------------------------------------

    @initialize(body=command_bodies)
    def a_first_command(self, body: dict[str, Any]) -> None:
        self.create_command(body)  # most rules need one: do not wait for it

    @rule(body=command_bodies)
    def create_command(self, body: dict[str, Any]) -> None:
        reply = self.api.call("POST", "/api/v1/commands", body=_sent(body))
        assert reply.status == 201, reply
        created = reply.json()
        model = CommandModel(id=created["id"], versions=[body], body=created)
        assert reply.headers["Location"] == f"/api/v1/commands/{model.id}"
        assert model.id not in self.commands
        self.check_command_body(created, model)
        assert created["created_at"] == created["updated_at"]
        self.commands[model.id] = model

    @precondition(lambda self: self.commands)
    @rule(data=st.data(), body=command_bodies)
    def replace_command(self, data: st.DataObject, body: dict[str, Any]) -> None:
        model = data.draw(st.sampled_from(list(self.commands.values())))
        reply = self.api.call("PUT", f"/api/v1/commands/{model.id}", body=_sent(body))
        if model.deleted:
            reply.problem(404)
            return
        assert reply.status == 200, reply
        before = model.body
        model.versions.append(body)
        model.body = reply.json()
        self.check_command_body(model.body, model)
        assert model.body["created_at"] == before["created_at"]
        assert utc(model.body["updated_at"]) >= utc(before["updated_at"])

    @precondition(lambda self: self.commands)
    @rule(data=st.data(), twice=st.booleans())
    def delete_command(self, data: st.DataObject, twice: bool) -> None:
        model = data.draw(st.sampled_from(list(self.commands.values())))
        for _ in range(2 if twice else 1):
            reply = self.api.call("DELETE", f"/api/v1/commands/{model.id}")
            assert (reply.status, reply.body) == (204, b""), reply
        model.deleted = True

    @rule(data=st.data(), limit=st.integers(1, 4))
    def read_commands(self, data: st.DataObject, limit: int) -> None:
        """The list, page by page; then one command, and its versions page by page."""
        listed = self.pages("/api/v1/commands", limit)
        assert listed == newest_first([c.body for c in self.live_commands()])
        if not self.commands:
            return
        model = data.draw(st.sampled_from(list(self.commands.values())))
        path = f"/api/v1/commands/{model.id}"
        if model.deleted:
            for method in ("GET", "PUT"):
                self.answer_404(path, method)
            self.answer_404(path + "/versions")
            self.api.call(
                "POST", "/api/v1/processes", role="operator", body={"command_id": model.id}
            ).problem(404)
            return
        reply = self.api.call("GET", path, role="viewer")
        assert reply.status == 200, reply
        assert reply.json() == model.body
        versions = self.pages(f"{path}/versions", limit)
        assert [v["version"] for v in versions] == list(range(len(model.versions), 0, -1))
        for item, sent in zip(versions, reversed(model.versions), strict=True):
            assert set(item) == VERSION_FIELDS, item
            assert (item["name"], item["script"], item["env"]) == (
                sent["name"],
                sent["script"].text,
                sent.get("env", {}),
            )
            assert item["description"] == sent.get("description")
            assert item["timeout_seconds"] == sent.get("timeout_seconds")
        assert versions[0]["created_at"] == model.body["updated_at"]
        assert versions[-1]["created_at"] == model.body["created_at"]

    # --- processes ----------------------------------------------------------------------

    def sleeping_count(self) -> int:
        return sum(p.sleeping for p in self.processes.values())

    @precondition(lambda self: self.live_commands())
    @rule(
        data=st.data(),
        args=st.lists(texts, max_size=4),
        env=st.none() | envs,
        keyed=st.booleans(),
        # Applies to sleeping runs only; most of them are left to be stopped or deleted.
        timeout=st.sampled_from([None, None, None, 0.3]),
    )
    def start_run(
        self,
        data: st.DataObject,
        args: list[str],
        env: dict[str, str] | None,
        keyed: bool,
        timeout: float | None,
    ) -> None:
        command = data.draw(st.sampled_from(self.live_commands()))  # deleted: read_commands
        if command.script.kind != "sleep":
            timeout = None
        elif timeout is None and self.sleeping_count() >= MAX_SLEEPING:
            timeout = 0.3  # enough runs sleep already: this one times out
        self.start(command, args, env, keyed, timeout)

    @precondition(
        lambda self: (
            self.sleeping_count() < MAX_SLEEPING
            and any(c.script.kind == "sleep" for c in self.live_commands())
        )
    )
    @rule(data=st.data(), env=st.none() | envs, keyed=st.booleans())
    def start_a_sleeping_run(
        self, data: st.DataObject, env: dict[str, str] | None, keyed: bool
    ) -> None:
        """A run to stop, delete or read while it runs (the other rule makes few)."""
        sleepers = [c for c in self.live_commands() if c.script.kind == "sleep"]
        self.start(data.draw(st.sampled_from(sleepers)), [], env, keyed, None)

    def start(
        self,
        command: CommandModel,
        args: list[str],
        env: dict[str, str] | None,
        keyed: bool,
        timeout: float | None,
    ) -> None:
        body: dict[str, Any] = {"command_id": command.id, "args": args}
        if env is not None:
            body["env"] = env
        if timeout is not None:
            body["timeout_seconds"] = timeout
        key = None
        headers = {}
        if keyed:
            self.keys += 1
            key = f"{self.prefix}-{self.keys}"
            headers["Idempotency-Key"] = key
        reply = self.api.call(
            "POST", "/api/v1/processes", role="operator", body=body, headers=headers
        )
        assert reply.status == 201, reply
        started = reply.json()
        assert reply.headers["Location"] == f"/api/v1/processes/{started['id']}"
        assert started["id"] not in self.processes
        assert started["status"] in ("queued", "running"), started
        model = ProcessModel(
            id=started["id"],
            command_id=command.id,
            command_version=len(command.versions),
            script=command.script,
            args=args,
            env={**command.versions[-1].get("env", {}), **(env or {})},
            timeout=timeout,
            key=key,
            created_at=utc(started["created_at"]),
            request=body,
        )
        self.check_process_body(started, model)
        self.processes[model.id] = model

    @precondition(lambda self: any(p.key for p in self.processes.values()))
    @rule(data=st.data(), same=st.booleans())
    def start_again_with_the_same_key(self, data: st.DataObject, same: bool) -> None:
        """The same Idempotency-Key with the same request answers 200 with the same process;
        with another request (here: another command), 422."""
        keyed = [p for p in self.processes.values() if p.key]
        model = data.draw(st.sampled_from(keyed))
        assert model.key is not None
        body = model.request if same else {**model.request, "command_id": str(uuid.uuid4())}
        reply = self.api.call(
            "POST",
            "/api/v1/processes",
            role="operator",
            body=body,
            headers={"Idempotency-Key": model.key},
        )
        if not same:
            reply.problem(422)
            return
        if model.deleted:
            reply.problem(409)  # the key stays taken; the process is gone
            return
        assert reply.status == 200, reply
        self.check_process_body(reply.json(), model)

    @precondition(lambda self: any(p.ends and p.final is None for p in self.live_processes()))
    @rule(data=st.data())
    def wait_for_the_end(self, data: st.DataObject) -> None:
        """Follow the run's SSE stream to its end: the run ends as the model says."""
        ending = [p for p in self.live_processes() if p.ends and p.final is None]
        model = data.draw(st.sampled_from(ending))
        items = self.api.follow(model.id)
        versions = [i["version"] for i in items]
        assert versions == list(range(1, len(versions) + 1)), versions
        assert items[-1]["type"] in TERMINAL_EVENTS, items[-1]
        queued = items[0]
        assert queued["type"] == "Queued"
        assert (queued["data"]["command_id"], queued["data"]["command_version"]) == (
            model.command_id,
            model.command_version,
        )
        assert queued["data"]["args"] == model.args
        # The script that ran is the version's: its hash says so.
        assert queued["data"]["script_sha256"] == sha256(model.script.text.encode()).hexdigest()
        # The log names the run's variables and never holds their values.
        assert queued["data"]["env_names"] == sorted(model.env)
        assert "env" not in queued["data"]
        reply = self.api.call("GET", f"/api/v1/processes/{model.id}", role="viewer")
        assert reply.status == 200, reply
        body = reply.json()
        self.check_process_body(body, model)
        assert body["version"] == versions[-1]
        self.expect_final(body, model)
        model.final, model.events = body, items

    @precondition(lambda self: any(p.sleeping for p in self.processes.values()))
    @rule(
        data=st.data(),
        signal=st.none() | signal_names,
        grace=st.none() | st.sampled_from([0.0, 5.0]),
    )
    def stop_a_sleeping_run(
        self, data: st.DataObject, signal: str | None, grace: float | None
    ) -> None:
        sleeping = [p for p in self.processes.values() if p.sleeping]
        model = data.draw(st.sampled_from(sleeping))
        body: dict[str, Any] = {}
        if signal is not None:
            body["signal"] = signal
        if grace is not None:
            body["grace_seconds"] = grace
        reply = self.api.call(
            "POST", f"/api/v1/processes/{model.id}/stop", role="operator", body=body
        )
        assert reply.status == 202, reply
        stopping = reply.json()
        assert stopping["status"] in ("queued", "running", "killed"), stopping
        self.check_process_body(stopping, model)
        model.stop = (signal or "TERM", grace)

    @precondition(lambda self: any(p.final for p in self.live_processes()))
    @rule(data=st.data(), signal=signal_names)
    def stop_an_ended_run(self, data: st.DataObject, signal: str) -> None:
        ended = [p for p in self.live_processes() if p.final]
        model = data.draw(st.sampled_from(ended))
        reply = self.api.call(
            "POST",
            f"/api/v1/processes/{model.id}/stop",
            role="operator",
            body={"signal": signal},
        )
        reply.problem(409)
        after = self.api.call("GET", f"/api/v1/processes/{model.id}", role="viewer")
        assert after.status == 200
        assert after.json() == model.final

    @precondition(lambda self: self.processes)
    @rule(data=st.data(), twice=st.booleans())
    def delete_run(self, data: st.DataObject, twice: bool) -> None:
        model = data.draw(st.sampled_from(list(self.processes.values())))
        for _ in range(2 if twice else 1):
            reply = self.api.call("DELETE", f"/api/v1/processes/{model.id}")
            assert (reply.status, reply.body) == (204, b""), reply
        model.deleted = True

    @precondition(lambda self: self.processes)
    @rule(data=st.data())
    def read_a_deleted_or_running_run(self, data: st.DataObject) -> None:
        """A deleted run is 404 everywhere; a sleeping one reads as running, with no output."""
        model = data.draw(st.sampled_from(list(self.processes.values())))
        path = f"/api/v1/processes/{model.id}"
        if model.deleted:
            for sub in ("", "/events", "/output", "/audit", "/replay"):
                self.answer_404(path + sub, role="viewer")
            self.answer_404(path + "/stop", "POST", role="operator")
            return
        reply = self.api.call("GET", path, role="viewer")
        assert reply.status == 200, reply
        self.check_process_body(reply.json(), model)
        if model.sleeping:
            assert reply.json()["status"] in ("queued", "running")
            output = self.api.call("GET", f"{path}/output", role="viewer")
            assert (output.status, output.body, output.headers["X-Next-Offset"]) == (200, b"", "0")
            events = self.api.call("GET", f"{path}/events", role="viewer")
            assert events.status == 200
            assert events.json()["items"][0]["type"] == "Queued"
            assert events.json()["items"][-1]["type"] not in TERMINAL_EVENTS

    @precondition(lambda self: any(p.final for p in self.live_processes()))
    @rule(
        data=st.data(),
        stream=st.sampled_from(["stdout", "stderr"]),
        offset=st.none() | st.integers(0, 300),
        limit=st.none() | st.integers(1, 300),
    )
    def read_output(
        self, data: st.DataObject, stream: str, offset: int | None, limit: int | None
    ) -> None:
        ended = [p for p in self.live_processes() if p.final]
        model = data.draw(st.sampled_from(ended))
        stdout, stderr = (
            model.script.outcome(model.args, model.env)[:2]
            if model.script.kind != "sleep"
            else (b"", b"")
        )
        whole = stdout if stream == "stdout" else stderr
        params = {"stream": stream}
        if offset is not None:
            params["offset"] = str(offset)
        if limit is not None:
            params["limit"] = str(limit)
        reply = self.api.call(
            "GET", f"/api/v1/processes/{model.id}/output", role="viewer", params=params
        )
        assert reply.status == 200, reply
        assert reply.headers.get_content_type() == "application/octet-stream"
        start = offset or 0
        expected = whole[start : start + limit if limit is not None else None]
        assert reply.body == expected
        assert reply.headers["X-Next-Offset"] == str(start + len(expected))
        if stream == "stdout" and offset is None and limit is None:
            followed = self.api.call(
                "GET",
                f"/api/v1/processes/{model.id}/output",
                role="viewer",
                params={"follow": "true"},
            )
            assert (followed.status, followed.body) == (200, whole)
            replay = sse_messages(self.api.stream(f"/api/v1/processes/{model.id}/replay?speed=0"))
            assert [m["event"] for m in replay] == ["output"] * (len(replay) - 1) + ["end"]
            replayed = b"".join(
                base64.b64decode(chunk["data_base64"])
                for m in replay[:-1]
                if (chunk := json.loads(m["data"]))["stream"] == stream
            )
            assert replayed == whole
            assert json.loads(replay[-1]["data"]) == {
                "type": model.events[-1]["type"],
                "version": model.events[-1]["version"],
            }

    @precondition(lambda self: any(p.final for p in self.live_processes()))
    @rule(data=st.data(), limit=st.integers(1, 4), pick=st.integers(0, 100))
    def read_events_and_history(self, data: st.DataObject, limit: int, pick: int) -> None:
        """Event pages, chunks that tile the output, the audit and every earlier state."""
        ended = [p for p in self.live_processes() if p.final]
        model = data.draw(st.sampled_from(ended))
        assert model.final is not None
        path = f"/api/v1/processes/{model.id}"
        items: list[dict[str, Any]] = []
        after = 0
        for _ in range(1000):
            reply = self.api.call(
                "GET",
                f"{path}/events",
                role="viewer",
                params={"after": str(after), "limit": str(limit)},
            )
            assert reply.status == 200, reply
            page = reply.json()
            assert set(page) == {"items", "next_after"}
            items.extend(page["items"])
            if page["next_after"] is None:
                break
            assert page["next_after"] == page["items"][-1]["version"]
            after = page["next_after"]
        assert items == model.events  # the JSON pages and the SSE stream agree
        assert [e["version"] for e in items] == list(range(1, model.final["version"] + 1))
        streams: dict[str, bytes] = {"stdout": b"", "stderr": b""}
        for event in items:
            assert set(event) == {"version", "type", "recorded_at", "hash", "data"}
            if event["type"] == "OutputChunk":
                chunk = event["data"]
                payload = base64.b64decode(chunk["data_base64"])
                assert chunk["offset"] == len(streams[chunk["stream"]])
                assert chunk["length"] == len(payload)
                streams[chunk["stream"]] += payload
        if model.script.kind != "sleep":
            stdout, stderr, _ = model.script.outcome(model.args, model.env)
            assert (streams["stdout"], streams["stderr"]) == (stdout, stderr)
        resume = pick % (len(items) + 1)
        assert self.api.follow(model.id, last_id=resume) == items[resume:]
        audit = self.api.call("GET", f"{path}/audit", role="viewer")
        assert audit.status == 200
        assert audit.json() == {
            "verified": True,
            "events": len(items),
            "head_hash": items[-1]["hash"],
            "first_bad_version": None,
        }
        at = 1 + pick % (len(items) + 1)  # drawn before the calls: replays draw alike
        reply = self.api.call("GET", path, role="viewer", params={"at_version": str(at)})
        if at > len(items):
            reply.problem(400)
            return
        assert reply.status == 200, reply
        then = reply.json()
        assert then["version"] == at
        if at == len(items):
            assert then == model.final  # the fold of the log equals the projection
        elif at == 1:
            assert (then["status"], then["pid"]) == ("queued", None)

    @rule(
        limit=st.integers(1, 4),
        status=st.none() | st.sampled_from(sorted(TERMINAL | {"queued", "running"})),
        by_command=st.booleans(),
        data=st.data(),
    )
    def list_runs(
        self, limit: int, status: str | None, by_command: bool, data: st.DataObject
    ) -> None:
        params: dict[str, str] = {}
        live = sorted(  # newest first, as lists are (see newest_first)
            self.live_processes(), key=lambda p: (p.created_at, uuid.UUID(p.id)), reverse=True
        )
        if status is not None:
            params["status"] = status
        if by_command and self.commands:
            command = data.draw(st.sampled_from(list(self.commands)))
            params["command_id"] = command
            live = [p for p in live if p.command_id == command]
        listed = self.pages("/api/v1/processes", limit, params)
        if status is None:
            assert [p["id"] for p in listed] == [p.id for p in live]
        else:
            # A run the model has not yet seen end may have ended: it must be one we know.
            order = [p.id for p in live]
            ids = [p["id"] for p in listed]
            assert set(ids) <= set(order), (ids, order)
            assert ids == [i for i in order if i in ids]
            assert all(p["status"] == status for p in listed)
            assert {p.id for p in live if p.final and p.final["status"] == status} <= set(ids)
        for item in listed:
            self.check_process_body(item, self.processes[item["id"]])

    # --- what must change nothing -------------------------------------------------------

    @rule(
        data=st.data(),
        kind=st.sampled_from(
            ["bad start", "bad command", "not an object", "not JSON", "role", "unknown id"]
        ),
    )
    def send_bad_input(self, data: st.DataObject, kind: str) -> None:
        """Bad bodies, too low a role, unknown ids: a clear problem, and nothing changes.

        One rule for all of them, so that they take their share of the steps and no more;
        the list and read rules then show that nothing changed.
        """
        command = data.draw(st.sampled_from([*self.commands, str(uuid.uuid4())]))
        process = data.draw(st.sampled_from([*self.processes, str(uuid.uuid4())]))
        match kind:
            case "bad start":
                extra, field_name = data.draw(st.sampled_from(BAD_START_BODIES))
                start = {"command_id": command, **extra}
                reply = self.api.call("POST", "/api/v1/processes", role="operator", body=start)
                problem = reply.problem(422)
                assert field_name in [e["field"] for e in problem["errors"]], problem
            case "bad command":
                stored, field_name = data.draw(st.sampled_from(BAD_COMMAND_BODIES))
                path = data.draw(st.sampled_from(["", f"/{command}"]))
                method = "PUT" if path else "POST"
                reply = self.api.call(method, f"/api/v1/commands{path}", body=stored)
                if method == "PUT" and command not in [c.id for c in self.live_commands()]:
                    reply.problem(404)  # the id is looked at before the body
                    return
                problem = reply.problem(422)
                assert field_name in [e["field"] for e in problem["errors"]], problem
            case "not an object" | "not JSON":
                raw, status = data.draw(
                    st.sampled_from([(b"[]", 422), (b"null", 422), (b'"text"', 422), (b"7", 422)])
                    if kind == "not an object"
                    else st.sampled_from([(b"{not json", 400), (b"", 400), (b"{}}", 400)])
                )
                path = data.draw(st.sampled_from(["/api/v1/commands", "/api/v1/processes"]))
                json_type = {"Content-Type": "application/json"}
                self.api.call("POST", path, raw=raw, headers=json_type).problem(status)
                text = {"Content-Type": "text/plain"}
                self.api.call("POST", path, raw=b"{}", headers=text).problem(415)
            case "role":
                valid = {"name": "x", "script": "true"}
                attempts: list[tuple[str, str, Role, Any]] = [
                    ("POST", "/api/v1/commands", "operator", valid),
                    ("PUT", f"/api/v1/commands/{command}", "operator", valid),
                    ("DELETE", f"/api/v1/commands/{command}", "operator", _NO_BODY),
                    ("POST", "/api/v1/processes", "viewer", {"command_id": command}),
                    ("POST", f"/api/v1/processes/{process}/stop", "viewer", {}),
                    ("DELETE", f"/api/v1/processes/{process}", "operator", _NO_BODY),
                ]
                method, path, role, body = data.draw(st.sampled_from(attempts))
                self.api.call(method, path, role=role, body=body).problem(403)
            case "unknown id":
                method, path = data.draw(
                    st.sampled_from(
                        [
                            *[("GET", f"commands/{{}}{sub}") for sub in ("", "/versions")],
                            ("PUT", "commands/{}"),
                            ("DELETE", "commands/{}"),
                            *[
                                ("GET", f"processes/{{}}{sub}")
                                for sub in ("", "/events", "/output", "/audit", "/replay")
                            ],
                            ("POST", "processes/{}/stop"),
                            ("DELETE", "processes/{}"),
                        ]
                    )
                )
                self.answer_404("/api/v1/" + path.format(uuid.uuid4()), method)

    def teardown(self) -> None:
        """Delete what this example made (running runs too): the next starts empty.

        What the server lists is deleted too: a failed step may have made something the
        model never learnt of, and the examples that shrink the failure must start empty.
        """
        for process in self.live_processes():
            reply = self.api.call("DELETE", f"/api/v1/processes/{process.id}")
            assert reply.status == 204, reply
        for command in self.live_commands():
            reply = self.api.call("DELETE", f"/api/v1/commands/{command.id}")
            assert reply.status == 204, reply
        for kind in ("processes", "commands"):
            for item in self.pages(f"/api/v1/{kind}", 500):
                self.api.call("DELETE", f"/api/v1/{kind}/{item['id']}")


def test_random_api_sessions_agree_with_the_model(live_server: str) -> None:
    """Random sequences of calls: every answer is what the model of the API predicts."""
    ApiMachine.api = Api(live_server)
    run_state_machine_as_test(
        ApiMachine,
        settings=settings(
            max_examples=EXAMPLES,
            stateful_step_count=STEPS,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            database=None,
        ),
    )
