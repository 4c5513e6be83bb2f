"""Hypothesis strategies for valid event histories."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from hypothesis import strategies as st

from shelltrail.domain import (
    CommandCreated,
    CommandDeleted,
    CommandEvent,
    CommandUpdated,
    Deleted,
    Exited,
    Killed,
    Lost,
    OutputChunk,
    OutputTruncated,
    ProcessEvent,
    Queued,
    Started,
    StopRequested,
)
from shelltrail.domain.events import OUTPUT_STREAMS, STOP_REASONS, StopReason

T0 = datetime(2026, 1, 1, tzinfo=UTC)
times = st.integers(min_value=0, max_value=10**9).map(lambda us: T0 + timedelta(microseconds=us))
texts = st.text(
    alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"), max_size=20
)
env_names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}", fullmatch=True)
stop_reasons: st.SearchStrategy[StopReason] = st.sampled_from(STOP_REASONS)


@st.composite
def process_histories(draw: st.DrawFn) -> list[ProcessEvent]:
    """A history the status machine accepts: Queued, maybe Started, output, maybe an end."""
    events: list[ProcessEvent] = [
        Queued(
            command_id=draw(st.uuids()),
            command_version=draw(st.integers(1, 5)),
            script_sha256="0" * 64,
            args=tuple(draw(st.lists(texts, max_size=3))),
            env_names=tuple(draw(st.lists(env_names, max_size=3, unique=True))),
            timeout_seconds=draw(st.none() | st.floats(0.1, 1e6)),
            requested_by=draw(st.none() | texts),
        )
    ]
    started = draw(st.booleans())
    if started:
        events.append(
            Started(
                pid=draw(st.integers(2, 10**6)),
                pgid=draw(st.integers(2, 10**6)),
                node="node-a",
                started_at=draw(times),
            )
        )
        offsets = {"stdout": 0, "stderr": 0}
        for _ in range(draw(st.integers(0, 12))):
            kind = draw(st.sampled_from(["output", "truncated", "stop"]))
            if kind == "output":
                stream = draw(st.sampled_from(OUTPUT_STREAMS))
                data = draw(st.binary(max_size=64))
                events.append(
                    OutputChunk(
                        stream=stream,
                        offset=offsets[stream],
                        length=len(data),
                        captured_at=draw(times),
                        data=data,
                    )
                )
                offsets[stream] += len(data)
            elif kind == "truncated":
                events.append(
                    OutputTruncated(
                        limit_bytes=draw(st.integers(0, 10**6)),
                        dropped_bytes=draw(st.integers(0, 10**6)),
                        policy=draw(st.sampled_from(["truncate", "kill"])),
                    )
                )
            else:
                events.append(
                    StopRequested(
                        reason=draw(stop_reasons), signal=15, grace_seconds=draw(st.floats(0, 60))
                    )
                )
    end = draw(
        st.sampled_from(
            ["none", "exited", "killed", "lost"] if started else ["none", "killed", "lost"]
        )
    )
    if end == "exited":
        code, sig = draw(
            st.one_of(
                st.tuples(st.integers(0, 255), st.none()), st.tuples(st.none(), st.integers(1, 64))
            )
        )
        events.append(
            Exited(
                exit_code=code,
                signal=sig,
                finished_at=draw(times),
                cpu_user_seconds=draw(st.floats(0, 100)),
                max_rss_kib=draw(st.integers(0, 10**6)),
            )
        )
    elif end == "killed":
        events.append(
            Killed(
                signal=draw(st.sampled_from([9, 15])),
                reason=draw(stop_reasons),
                finished_at=draw(times),
            )
        )
    elif end == "lost":
        events.append(Lost(node="node-a", last_status="running", detected_at=draw(times)))
    if end != "none" and draw(st.booleans()):
        events.append(Deleted(requested_by=draw(st.none() | texts)))
    return events


@st.composite
def command_histories(draw: st.DrawFn) -> list[CommandEvent]:
    def fields() -> dict[str, object]:
        return {
            "name": draw(texts.filter(bool) | st.just("job")),
            "script": draw(texts) or "true",
            "description": draw(st.none() | texts),
            "timeout_seconds": draw(st.none() | st.floats(0.1, 1e6)),
            "env": draw(st.dictionaries(env_names, texts, max_size=3)),
        }

    events: list[CommandEvent] = [CommandCreated(**fields())]  # type: ignore[arg-type]
    for _ in range(draw(st.integers(0, 4))):
        events.append(CommandUpdated(**fields()))  # type: ignore[arg-type]
    if draw(st.booleans()):
        events.append(CommandDeleted())
    return events


def new_id() -> uuid.UUID:
    return uuid.uuid4()


def sample_process_history(chunks: int = 3) -> list[ProcessEvent]:
    """A fixed, realistic run: output on both streams, a stop request, a kill."""
    events: list[ProcessEvent] = [
        Queued(command_id=uuid.uuid4(), command_version=1, script_sha256="0" * 64, args=("a",)),
        Started(pid=4242, pgid=4242, node="node-a", started_at=T0),
    ]
    for i in range(chunks):
        events.append(
            OutputChunk(stream="stdout", offset=2 * i, length=2, captured_at=T0, data=b"o\n")
        )
        events.append(
            OutputChunk(stream="stderr", offset=3 * i, length=3, captured_at=T0, data=b"\x00e\n")
        )
    events.append(StopRequested(reason="user", signal=15, grace_seconds=10.0))
    events.append(Killed(signal=15, reason="user", finished_at=T0 + timedelta(seconds=3)))
    return events


def sample_command_history() -> list[CommandEvent]:
    return [
        CommandCreated(name="backup", script="echo one", env={"A": "1"}),
        CommandUpdated(name="backup", script="echo two", timeout_seconds=30.0),
    ]
