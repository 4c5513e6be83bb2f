"""How the live streams group a batch of events into writes."""

from __future__ import annotations

from typing import Any

from shelltrail.http.streams import _WRITE_BYTES, _write_in_groups


class FakeResponse:
    def __init__(self) -> None:
        self.writes: list[bytes] = []

        self.end: bytes | None = None

    async def write(self, data: bytes) -> None:
        assert self.end is None, "written after the end"
        self.writes.append(bytes(data))

    async def write_eof(self, data: bytes = b"") -> None:
        self.end = bytes(data)


async def test_small_parts_go_in_one_write() -> None:
    response = FakeResponse()
    parts = [b"a" * 100, b"b" * 100, b"c" * 100]
    await _write_in_groups(response, parts)  # type: ignore[arg-type]
    assert response.writes == [b"".join(parts)]


async def test_large_batches_are_cut_into_writes_of_about_the_limit() -> None:
    """A slow client is not handed a whole batch (up to a thousand chunks) at once."""
    response = FakeResponse()
    part = bytes(range(256)) * 400  # 100 KiB
    parts = [part] * 7
    await _write_in_groups(response, parts)  # type: ignore[arg-type]
    assert b"".join(response.writes) == b"".join(parts)
    assert len(response.writes) == 3  # 300 KiB, 300 KiB, then the last 100 KiB
    assert all(len(w) < _WRITE_BYTES + len(part) for w in response.writes)


async def test_nothing_to_write_writes_nothing() -> None:
    response: Any = FakeResponse()
    await _write_in_groups(response, [])
    assert response.writes == []


async def test_with_end_the_last_group_goes_with_the_end_of_the_body() -> None:
    """A stream's last event and its end in one write, however the batch was cut."""
    response = FakeResponse()
    part = bytes(range(256)) * 400  # 100 KiB
    parts = [part] * 4
    await _write_in_groups(response, parts, end=True)  # type: ignore[arg-type]
    assert response.writes == [part * 3]
    assert response.end == part
