"""What the kernel says about a server process: memory, open descriptors, threads, children.

All of it is read from ``/proc/<pid>`` (Linux), for a process of the same user: the
benchmarks and the load test read the ``shelltrail serve`` they started. The server's own
memory is its resident set (``VmRSS``) and the peak of it (``VmHWM``); its scripts are
other processes and are not counted.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

from shelltrail.actors.threads import IDLE_SECONDS

MIB: Final = 1024 * 1024

#: Kinds of open file descriptor, as :func:`open_fds` counts them.
HTTP_SOCKET: Final = "http socket"
OTHER_SOCKET: Final = "other socket"


def url_port(url: str) -> int:
    """The port a server listens on, from its base URL."""
    port = urlsplit(url).port
    if port is None:
        raise ValueError(f"{url} names no port")
    return port


def _status_kib(pid: int, name: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/{pid}/status has no {name}")


def rss_mib(pid: int) -> float:
    """Resident set of ``pid`` now (``VmRSS``), in MiB."""
    return _status_kib(pid, "VmRSS") / 1024


def peak_rss_mib(pid: int) -> float:
    """Largest resident set of ``pid`` since it started or since :func:`reset_peak_rss`."""
    return _status_kib(pid, "VmHWM") / 1024


def reset_peak_rss(pid: int) -> None:
    """Make ``VmHWM`` start again from the current resident set (``clear_refs`` 5)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def thread_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def child_pids(pid: int) -> list[int]:
    """Live children of any thread of ``pid`` (actor threads spawn the scripts)."""
    found: list[int] = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError):  # a thread that just ended
            children = Path(f"/proc/{pid}/task/{task}/children").read_text()
            found.extend(int(p) for p in children.split())
    return found


def _socket_inodes(pid: int, port: int) -> set[str]:
    """Inodes of the TCP sockets in ``pid``'s network namespace whose local port is ``port``."""
    inodes: set[str] = set()
    for table in ("tcp", "tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
                fields = line.split()
                if int(fields[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(fields[9])
    return inodes


def open_fds(pid: int, *, http_port: int) -> collections.Counter[str]:
    """The open descriptors of ``pid`` by kind.

    Kinds: ``pipe``, ``pidfd``, ``eventpoll`` (and other ``anon_inode`` names), ``file``,
    ``http socket`` (the listening socket and accepted client connections: local port
    ``http_port``) and ``other socket`` (the database connections, whose number the pools
    bound and vary within, and the event loop's wake-up socket pair).
    """
    http = _socket_inodes(pid, http_port)
    kinds: collections.Counter[str] = collections.Counter()
    fd_dir = f"/proc/{pid}/fd"
    for fd in os.listdir(fd_dir):
        try:
            target = os.readlink(f"{fd_dir}/{fd}")
        except OSError:  # closed meanwhile
            continue
        if target.startswith("socket:["):
            kinds[HTTP_SOCKET if target[8:-1] in http else OTHER_SOCKET] += 1
        elif target.startswith("pipe:"):
            kinds["pipe"] += 1
        elif target.startswith("anon_inode:"):
            kinds[target.removeprefix("anon_inode:").strip("[]")] += 1
        else:
            kinds["file"] += 1
    return kinds


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Open descriptors (by kind), threads and live children of a process at one moment."""

    fds: collections.Counter[str]
    threads: int
    children: int

    @property
    def fds_without_database(self) -> int:
        """Every descriptor but the pooled database connections (and the loop's socket pair)."""
        return sum(n for kind, n in self.fds.items() if kind != OTHER_SOCKET)

    def describe(self) -> str:
        kinds = ", ".join(f"{kind} {n}" for kind, n in sorted(self.fds.items()))
        return f"{sum(self.fds.values())} fds ({kinds}), {self.threads} threads"

    def not_above(self, baseline: Snapshot) -> bool:
        """No kind of descriptor but the database's, and no thread, more than ``baseline``."""
        return self.threads <= baseline.threads and all(
            n <= baseline.fds.get(kind, 0) for kind, n in self.fds.items() if kind != OTHER_SOCKET
        )


def snapshot(pid: int, *, http_port: int) -> Snapshot:
    return Snapshot(open_fds(pid, http_port=http_port), thread_count(pid), len(child_pids(pid)))


def is_quiet(shot: Snapshot) -> bool:
    """No script alive, no run's pipes or pidfds open, no client connection accepted."""
    return (
        shot.children == 0
        and shot.fds.get("pipe", 0) == 0
        and shot.fds.get("pidfd", 0) == 0
        and shot.fds.get(HTTP_SOCKET, 0) <= 1  # the listening socket
    )


#: How long a quiet server's snapshot must stay the same: longer than an idle actor
#: thread waits for its next run (shelltrail.actors.threads), so that none is counted.
STEADY_SECONDS: Final = IDLE_SECONDS + 1.0


async def quiet_snapshot(
    pid: int,
    *,
    http_port: int,
    deadline_seconds: float = 60.0,
    steady_seconds: float = STEADY_SECONDS,
) -> Snapshot:
    """The server's snapshot once it is quiet and has stopped changing.

    Quiet: :func:`is_quiet`; steady: the same snapshot, taken every 0.1 s, for
    ``steady_seconds``. An actor thread waits up to ``IDLE_SECONDS`` for the next run
    before it ends, so a baseline taken sooner would count the idle threads, and a
    comparison with it would miss as many leaked ones. Raises ``TimeoutError`` after
    ``deadline_seconds``.
    """
    deadline = time.monotonic() + deadline_seconds
    last: Snapshot | None = None
    since = time.monotonic()
    while True:
        shot = snapshot(pid, http_port=http_port)
        if shot != last or not is_quiet(shot):
            since = time.monotonic()
        last = shot
        if time.monotonic() - since >= steady_seconds and is_quiet(shot):
            return shot
        if time.monotonic() > deadline:
            raise TimeoutError(f"the server did not settle: {shot.describe()}")
        await asyncio.sleep(0.1)


async def back_to(
    pid: int, baseline: Snapshot, *, http_port: int, deadline_seconds: float = 60.0
) -> tuple[Snapshot, bool]:
    """Wait until the snapshot is :meth:`Snapshot.not_above` ``baseline`` and quiet.

    Returns the last snapshot and whether it got there before ``deadline_seconds``.
    """
    deadline = time.monotonic() + deadline_seconds
    while True:
        shot = snapshot(pid, http_port=http_port)
        if shot.not_above(baseline) and is_quiet(shot):
            return shot, True
        if time.monotonic() > deadline:
            return shot, False
        await asyncio.sleep(0.1)


@dataclass(slots=True)
class RssSampler:
    """Samples a process's ``VmRSS`` every ``interval`` seconds while running.

    Use as ``async with RssSampler(pid) as sampler:``; ``samples`` holds (seconds since
    start, MiB) pairs.
    """

    pid: int
    interval: float = 0.05
    samples: list[tuple[float, float]] = field(default_factory=list)
    _task: asyncio.Task[None] | None = None
    _started: float = 0.0

    async def __aenter__(self) -> RssSampler:
        self._started = time.monotonic()
        self._task = asyncio.ensure_future(self._sample())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._take()

    def _take(self) -> None:
        with contextlib.suppress(OSError):
            self.samples.append((time.monotonic() - self._started, rss_mib(self.pid)))

    async def _sample(self) -> None:
        while True:
            self._take()
            await asyncio.sleep(self.interval)

    @property
    def peak(self) -> float:
        return max(mib for _, mib in self.samples)

    def mean_between(self, start: float, end: float) -> float:
        """Mean of the samples taken from ``start`` to ``end`` seconds after the start."""
        window = [mib for t, mib in self.samples if start <= t < end]
        if not window:
            raise RuntimeError(f"no RSS sample between {start:g} s and {end:g} s")
        return sum(window) / len(window)
