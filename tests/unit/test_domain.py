"""The domain's folds and status machine, without any I/O."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shelltrail.domain import (
    CommandCreated,
    CommandUpdated,
    DomainEvent,
    EventDecodeError,
    Exited,
    InvalidTransition,
    Killed,
    OutputChunk,
    ProcessEvent,
    Queued,
    Recorded,
    Started,
    decode,
    encode,
    evolve_process,
    project_command,
    project_process,
)
from shelltrail.domain.codec import chunk_facts
from shelltrail.domain.process import fold_process
from tests.strategies import T0, command_histories, process_histories


def record(stream_id: uuid.UUID, events: Sequence[DomainEvent]) -> list[Recorded]:
    return [
        Recorded(stream_id=stream_id, version=i, recorded_at=T0 + timedelta(seconds=i), event=e)
        for i, e in enumerate(events, start=1)
    ]


@given(process_histories())
def test_valid_process_histories_fold_deterministically(events: list[ProcessEvent]) -> None:
    """Folding a valid history never fails, gives the same state twice, and counts bytes."""
    history = record(uuid.uuid4(), events)
    state = project_process(history)
    assert project_process(history) == state
    assert state.version == len(events)
    for stream in ("stdout", "stderr"):
        total = sum(e.length for e in events if isinstance(e, OutputChunk) and e.stream == stream)
        assert getattr(state, f"{stream}_bytes") == total


@given(process_histories(), st.data())
def test_state_as_of_any_version_is_the_fold_of_that_prefix(
    events: list[ProcessEvent], data: st.DataObject
) -> None:
    """`until_version` gives exactly the state after that event."""
    history = record(uuid.uuid4(), events)
    n = data.draw(st.integers(1, len(events)))
    assert project_process(history, until_version=n) == project_process(history[:n])


@given(process_histories())
def test_every_event_survives_the_codec(events: list[ProcessEvent]) -> None:
    """encode/decode round-trips every field, raw bytes included."""
    for event in events:
        assert decode(*encode(event)) == event


def test_status_follows_the_exit_code() -> None:
    """Exit 0 is succeeded, anything else failed; a kill is killed."""
    sid, cid = uuid.uuid4(), uuid.uuid4()
    base: list[ProcessEvent] = [
        Queued(command_id=cid, command_version=1, script_sha256="x"),
        Started(pid=10, pgid=10, node="n", started_at=T0),
    ]
    ok = project_process(record(sid, [*base, Exited(exit_code=0, signal=None, finished_at=T0)]))
    bad = project_process(record(sid, [*base, Exited(exit_code=3, signal=None, finished_at=T0)]))
    killed = project_process(
        record(
            sid, [*base, Killed(signal=9, reason="timeout", finished_at=T0 + timedelta(seconds=2))]
        )
    )
    assert (ok.status, bad.status, bad.exit_code) == ("succeeded", "failed", 3)
    assert (killed.status, killed.signal, killed.stop_reason) == ("killed", 9, "timeout")
    assert killed.duration_seconds == 2.0


def _chunk(offset: int = 0, stream: str = "stdout") -> OutputChunk:
    return OutputChunk(stream=stream, offset=offset, length=1, captured_at=T0, data=b"x")  # type: ignore[arg-type]


QUEUED = Queued(command_id=uuid.uuid4(), command_version=1, script_sha256="x")
STARTED = Started(pid=10, pgid=10, node="n", started_at=T0)
EXITED = Exited(exit_code=0, signal=None, finished_at=T0)


@pytest.mark.parametrize(
    ("events", "message"),
    [
        ([STARTED], "first event of a process must be Queued"),
        ([QUEUED, _chunk()], "output from a process that is queued"),
        ([QUEUED, STARTED, EXITED, _chunk()], "output from a process that is succeeded"),
        ([QUEUED, STARTED, EXITED, EXITED], "cannot exit"),
        (
            [QUEUED, STARTED, EXITED, Killed(signal=9, reason="user", finished_at=T0)],
            "cannot be killed",
        ),
        ([QUEUED, STARTED, STARTED], "cannot start"),
        ([QUEUED, QUEUED], "already queued"),
        ([QUEUED, STARTED, _chunk(offset=5)], "offset 5, expected 0"),
        ([QUEUED, STARTED, CommandCreated(name="x", script="y")], "not a process event"),
    ],
)
def test_impossible_process_histories_are_refused(events: list[DomainEvent], message: str) -> None:
    """The status machine names what is wrong with a history it refuses."""
    with pytest.raises(InvalidTransition, match=message):
        project_process(record(uuid.uuid4(), events))


def test_versions_must_follow_each_other() -> None:
    """A gap in versions is refused."""
    sid = uuid.uuid4()
    history = record(sid, [QUEUED, STARTED])
    gap = Recorded(stream_id=sid, version=5, recorded_at=T0, event=EXITED)
    with pytest.raises(InvalidTransition, match="version 5 does not follow 2"):
        project_process([*history, gap])


@given(command_histories())
def test_command_versions_count_snapshots(events: list[DomainEvent]) -> None:
    """Each create or update is one version; the current one is the last snapshot."""
    state = project_command(record(uuid.uuid4(), events))
    snapshots = [e for e in events if isinstance(e, CommandCreated | CommandUpdated)]
    assert state.version == len(snapshots) == len(state.versions)
    assert state.current.script == snapshots[-1].script
    assert [v.version for v in state.versions] == list(range(1, len(snapshots) + 1))


def test_command_created_twice_is_refused() -> None:
    with pytest.raises(InvalidTransition, match="created only once"):
        project_command(record(uuid.uuid4(), [CommandCreated(name="a", script="b")] * 2))


@pytest.mark.parametrize(
    ("type_name", "data", "payload", "message"),
    [
        ("Vanished", {}, None, "unknown event type 'Vanished'"),
        ("Started", [], None, "not a JSON object"),
        ("Started", {"pid": 1, "pgid": 1, "node": "n"}, None, "missing field 'started_at'"),
        (
            "Started",
            {"pid": "1", "pgid": 1, "node": "n", "started_at": "2026-01-01T00:00:00+00:00"},
            None,
            "Started.pid: must be an integer",
        ),
        ("CommandDeleted", {"extra": 1}, None, "unexpected fields"),
        (
            "OutputChunk",
            {
                "stream": "stdout",
                "offset": 0,
                "captured_at": "2026-01-01T00:00:00+00:00",
                "length": 3,
            },
            b"ab",
            "chunk of 2 bytes says its length is 3",
        ),
        (
            "OutputChunk",
            {
                "stream": "stdin",
                "offset": 0,
                "captured_at": "2026-01-01T00:00:00+00:00",
                "length": 0,
            },
            b"",
            "'stdin' is not one of",
        ),
        (
            "Started",
            {"pid": 1, "pgid": 1, "node": "n", "started_at": "2026-01-01T00:00:00"},
            None,
            "must carry a UTC offset",
        ),
    ],
)
def test_undecodable_rows_are_refused(
    type_name: str, data: object, payload: bytes | None, message: str
) -> None:
    """Decoding is strict and says what is wrong."""
    with pytest.raises(EventDecodeError, match=message):
        decode(type_name, data, payload)


@given(process_histories())
def test_the_chunk_fast_path_folds_like_event_by_event(events: list[ProcessEvent]) -> None:
    """fold_process (runs of chunks at once) gives exactly the state of evolve_process."""
    history = record(uuid.uuid4(), events)
    one_by_one = None
    for recorded in history:
        one_by_one = evolve_process(one_by_one, recorded)
    assert fold_process(None, history) == one_by_one


@given(process_histories())
def test_chunk_facts_agree_with_decode(events: list[ProcessEvent]) -> None:
    for event in events:
        if isinstance(event, OutputChunk):
            _, data, _ = encode(event)
            assert chunk_facts(data) == (event.stream, event.offset, event.length)


@pytest.mark.parametrize(
    "data",
    [
        {"stream": "stdin", "offset": 0, "length": 1, "captured_at": "2026-01-01T00:00:00+00:00"},
        {
            "stream": "stdout",
            "offset": "0",
            "length": 1,
            "captured_at": "2026-01-01T00:00:00+00:00",
        },
        {"stream": "stdout", "offset": 0, "length": 1, "captured_at": "yesterday"},
        {"stream": "stdout", "offset": 0, "length": 1},
    ],
)
def test_chunk_facts_refuse_what_decode_refuses(data: dict[str, object]) -> None:
    with pytest.raises(EventDecodeError):
        chunk_facts(data)


def test_a_gap_in_a_run_of_chunks_is_named() -> None:
    sid = uuid.uuid4()
    history = record(sid, [QUEUED, STARTED, _chunk(0), _chunk(1), _chunk(5)])
    with pytest.raises(InvalidTransition, match=r"version 5 .*offset 5, expected 2") as info:
        fold_process(None, history)
    assert info.value.version == 5
