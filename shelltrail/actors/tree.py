"""Finding, killing and reaping every process a run left behind.

Each run's processes carry ``SHELLTRAIL_PROCESS_ID=<id>`` in their environment (as build
servers mark their jobs), so descendants that left the run's process group (``setsid``,
double fork) are still found by scanning ``/proc``.

The server makes itself a *child subreaper*: orphans of a run are re-parented to it instead
of to PID 1 (which, in containers and sandboxes, may never reap them), and
:class:`OrphanReaper` reaps them. Processes the actors spawned themselves are reaped by
their actor (with their exit status and resource use); the reaper leaves those alone.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import threading
import time
from collections.abc import Collection, Iterator
from typing import Final

import structlog

log = structlog.get_logger(__name__)

MARKER: Final = "SHELLTRAIL_PROCESS_ID"
_PR_SET_CHILD_SUBREAPER: Final = 36


def become_subreaper() -> bool:
    """Adopt orphaned descendants (Linux). Returns whether it worked."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def _read_marker(pid: str) -> str | None:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            environ = f.read()
    except OSError:  # gone, a zombie, or not ours to read
        return None
    prefix = MARKER.encode() + b"="
    start = environ.find(prefix)
    # The variable must start an entry: at the beginning or right after a NUL.
    while start > 0 and environ[start - 1] != 0:
        start = environ.find(prefix, start + 1)
    if start < 0:
        return None
    end = environ.find(b"\0", start)
    value = environ[start + len(prefix) : end if end >= 0 else None]
    return value.decode(errors="replace")


def find_marked(markers: Collection[str]) -> dict[int, str]:
    """Live processes whose marker is one of ``markers``: pid → marker."""
    found: dict[int, str] = {}
    if not markers:
        return found
    own = os.getpid()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == own:
            continue
        marker = _read_marker(entry.name)
        if marker is not None and marker in markers:
            found[int(entry.name)] = marker
    return found


def kill_marked(markers: Collection[str], *, rounds: int = 10) -> int:
    """SIGKILL every live process carrying one of ``markers``; return how many were killed.

    Repeats until a scan finds none, so a process forking while being killed is caught too.
    """
    killed = 0
    for _ in range(rounds):
        found = find_marked(markers)
        if not found:
            break
        for pid in found:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
                killed += 1
        time.sleep(0.005)  # let them die before the next look
    return killed


def signal_group(pgid: int, sig: int) -> bool:
    """Send ``sig`` to a process group; False when the group no longer exists."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False
    return True


class OrphanReaper:
    """Reaps zombies re-parented to this process, without stealing the actors' children.

    An actor spawns inside :meth:`spawning` and registers its child's pid before leaving it;
    the reaper reaps only while no spawn is in progress, and only pids nobody registered.
    Thread-safe.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._spawning = 0
        self._reaping = False
        self._owned: set[int] = set()

    @contextlib.contextmanager
    def spawning(self) -> Iterator[None]:
        with self._cond:
            while self._reaping:
                self._cond.wait()
            self._spawning += 1
        try:
            yield
        finally:
            with self._cond:
                self._spawning -= 1
                self._cond.notify_all()

    def own(self, pid: int) -> None:
        """Register a child spawned inside :meth:`spawning`; its spawner will reap it."""
        with self._cond:
            self._owned.add(pid)

    def release(self, pid: int) -> None:
        """The spawner has reaped ``pid``."""
        with self._cond:
            self._owned.discard(pid)

    def reap(self) -> int:
        """Reap every unowned zombie child; return how many."""
        zombies = _zombie_children()
        if not zombies:
            return 0
        reaped = 0
        with self._cond:
            while self._spawning:
                self._cond.wait()
            self._reaping = True
        try:
            for pid in zombies:
                if pid in self._owned:
                    continue
                with contextlib.suppress(ChildProcessError):
                    if os.waitpid(pid, os.WNOHANG)[0] == pid:
                        reaped += 1
        finally:
            with self._cond:
                self._reaping = False
                self._cond.notify_all()
        return reaped


def _zombie_children() -> list[int]:
    own = os.getpid()
    zombies = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
        fields = stat[stat.rfind(b")") + 2 :].split(b" ", 2)
        if fields[0] == b"Z" and int(fields[1]) == own:
            zombies.append(int(entry.name))
    return zombies


class Sweeper:
    """Kills what runs left behind and reaps it, sharing one ``/proc`` scan among many runs.

    A scan costs about a millisecond; with hundreds of runs ending per second, each caller
    waits for the next scan that starts after its request instead of scanning alone.
    Thread-safe; :meth:`sweep` blocks its caller (an actor thread) briefly.
    """

    def __init__(self, reaper: OrphanReaper) -> None:
        self._reaper = reaper
        self._cond = threading.Condition()
        self._pending: set[str] = set()
        self._started = 0
        self._completed = 0
        self._scanning = False

    def sweep(self, marker: str) -> None:
        """Return once no process marked ``marker`` is alive and orphans are reaped."""
        with self._cond:
            self._pending.add(marker)
            needed = self._started + 1  # a scan that starts after this request
            while self._completed < needed:
                if self._scanning:
                    self._cond.wait()
                    continue
                self._scanning = True
                self._started += 1
                generation, markers, self._pending = self._started, self._pending, set()
                self._cond.release()
                try:
                    killed = kill_marked(markers)
                    self._reaper.reap()
                    if killed:
                        log.info("killed processes that outlived their run", count=killed)
                finally:
                    self._cond.acquire()
                    self._scanning = False
                    self._completed = generation
                    self._cond.notify_all()
