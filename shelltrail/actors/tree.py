"""Finding, killing and reaping every process a run left behind.

Each run's processes carry ``SHELLTRAIL_PROCESS_ID=<id>`` in their environment (as build
servers mark their jobs), so descendants that left the run's process group (``setsid``,
double fork) are still found in ``/proc``.

The server makes itself a *child subreaper*: orphans of a run are re-parented to it instead
of to PID 1 (which, in containers and sandboxes, may never reap them), and
:class:`OrphanReaper` reaps them. So once a run's main process has ended, whatever it left
alive is below an orphan the server adopted, and only that part of ``/proc`` is searched;
the whole of it only where the server could not become a subreaper, and at start for the
runs of a crashed server. Processes the actors spawned themselves are reaped by
their actor (with their exit status and resource use); the reaper leaves those alone.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import queue
import signal
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator
from typing import Final, Generic, TypeVar

import structlog

log = structlog.get_logger(__name__)

T = TypeVar("T")

MARKER: Final = "SHELLTRAIL_PROCESS_ID"
_PR_GET_DUMPABLE: Final = 3
_PR_SET_DUMPABLE: Final = 4
_PR_SET_CHILD_SUBREAPER: Final = 36


def _prctl(option: int, value: int = 0) -> int | None:
    """prctl(2) through libc: its result, or None where it cannot be called."""
    try:
        return int(ctypes.CDLL(None, use_errno=True).prctl(option, value, 0, 0, 0))
    except (OSError, AttributeError):
        return None


def become_subreaper() -> bool:
    """Adopt orphaned descendants (Linux). Returns whether it worked."""
    return _prctl(_PR_SET_CHILD_SUBREAPER, 1) == 0


def hide_from_scripts() -> bool:
    """Keep the server's memory and environment from its scripts (Linux). Returns whether
    it worked.

    The scripts run as the server's user, so by default they may read
    ``/proc/<server pid>/environ`` (the database URL, the tokens) and attach to it with
    ptrace. A process that is not *dumpable* has its ``/proc`` entries owned by root and
    refuses ptrace from anyone without ``CAP_SYS_PTRACE``. The setting is not inherited
    across ``execve``, so the scripts themselves are unaffected. (It also means no core
    dump, and profilers need root to attach.)
    """
    return _prctl(_PR_SET_DUMPABLE, 0) == 0 and _prctl(_PR_GET_DUMPABLE) == 0


def _read_proc(path: str) -> bytes:
    """The whole of a ``/proc`` file, read with ``os.read``.

    ``open()`` would add four system calls for its file object (``fstat`` twice, ``isatty``,
    ``lseek``); an actor thread makes each one it does not need a wait for the GIL when
    many actors are busy.
    """
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _read_marker(pid: str) -> str | None:
    try:
        environ = _read_proc(f"/proc/{pid}/environ")
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


def find_marked(markers: Collection[str], *, among: Iterable[int] | None = None) -> dict[int, str]:
    """Live processes whose marker is one of ``markers``: pid → marker.

    Looks at every process of the machine, or only at the pids ``among``.
    """
    found: dict[int, str] = {}
    if not markers:
        return found
    own = os.getpid()
    pids = (
        (int(e.name) for e in os.scandir("/proc") if e.name.isdigit()) if among is None else among
    )
    for pid in pids:
        if pid == own:
            continue
        marker = _read_marker(str(pid))
        if marker is not None and marker in markers:
            found[pid] = marker
    return found


def kill_marked(
    markers: Collection[str],
    *,
    among: Callable[[], Iterable[int]] | None = None,
    rounds: int = 10,
) -> int:
    """SIGKILL every live process carrying one of ``markers``; return how many were killed.

    ``among`` limits the search to the pids it returns (asked again each round); without
    it, every process of the machine is looked at. Repeats until a look finds none, so a
    process forking while being killed is caught too.
    """
    killed = 0
    for _ in range(rounds):
        found = find_marked(markers, among=among() if among is not None else None)
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
        adopted = adopted_children()
        # waitpid(WNOHANG) on an adopted orphan reaps it if it has died and does nothing
        # otherwise: one system call each, where reading its state would take three.
        candidates = adopted if adopted is not None else _zombie_children()
        if not candidates:
            return 0
        reaped = 0
        with self._cond:
            while self._spawning:
                self._cond.wait()
            self._reaping = True
        try:
            for pid in candidates:
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


def adopted_children() -> list[int] | None:
    """Children of the main thread: as subreaper, that is where orphans are re-parented.

    Actor threads spawn the runs' main processes, so those are children of their threads,
    not of this list. ``None`` when the kernel does not tell (no CONFIG_PROC_CHILDREN).
    """
    pid = os.getpid()
    try:
        return [int(p) for p in _read_proc(f"/proc/{pid}/task/{pid}/children").split()]
    except OSError:
        return None


def descendants(roots: Iterable[int]) -> list[int]:
    """``roots`` and every process below them, from ``/proc/<pid>/task/*/children``.

    A process that has gone meanwhile simply has no children.
    """
    found: list[int] = []
    seen: set[int] = set()
    todo = list(roots)
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        found.append(pid)
        try:
            tasks = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                todo.extend(int(c) for c in _read_proc(f"/proc/{pid}/task/{task}/children").split())
            except OSError:
                continue
    return found


def _adopted_and_below() -> list[int]:
    return descendants(adopted_children() or [])


def _zombie_children() -> list[int]:
    own = os.getpid()
    candidates = adopted_children()
    names = (
        [str(p) for p in candidates]
        if candidates is not None
        else [e.name for e in os.scandir("/proc") if e.name.isdigit()]
    )
    zombies = []
    for name in names:
        try:
            stat = _read_proc(f"/proc/{name}/stat")
        except OSError:
            continue
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
        fields = stat[stat.rfind(b")") + 2 :].split(b" ", 2)
        if fields[0] == b"Z" and int(fields[1]) == own:
            zombies.append(int(name))
    return zombies


class SharedReading(Generic[T]):
    """A reading (of ``/proc``) shared by callers who asked while another was being taken.

    Each caller gets the result of a reading that began after it called, never an older
    one, but callers who arrive while a reading is under way share the next one instead
    of each taking their own. Thread-safe.
    """

    def __init__(self, read: Callable[[], T]) -> None:
        self._read = read
        self._lock = threading.Lock()
        self._begun = 0  # readings begun so far; each begins under the lock
        self._last_number = 0  # the number of the last reading that succeeded
        self._last: T | None = None

    def __call__(self) -> T:
        arrived = self._begun
        with self._lock:
            if self._last_number > arrived:
                # The last good reading began after this call (it is numbered past the
                # count seen on arrival) and has finished, since the lock is ours.
                return self._last  # type: ignore[return-value]
            self._begun += 1
            number = self._begun
            value = self._read()  # if it raises, nothing is kept for others
            self._last, self._last_number = value, number
            return value


class Sweeper:
    """Kills what runs left behind and reaps it, sharing one search among many runs.

    A search reaps the adopted orphans that have died, then reads the marker of every live
    process below the adopted ones. With hundreds of runs ending per second, one thread
    searches at most every ``min_interval`` seconds for every request that arrived meanwhile,
    and wakes each requester alone. :meth:`sweep` is thread-safe and blocks its caller (an
    actor thread) until a scan that began after the request has finished.
    """

    def __init__(
        self, reaper: OrphanReaper, *, subreaper: bool, min_interval: float = 0.01
    ) -> None:
        self._reaper = reaper
        self._subreaper = subreaper
        self._min_interval = min_interval
        # With many runs ending at once, each one reading the list of adopted orphans
        # (which the kernel builds by walking them all) cost about a quarter of a
        # millisecond per run in a mass stop of 1,000.
        self._adopted = SharedReading(adopted_children)
        self._requests: queue.SimpleQueue[tuple[str, threading.Event] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name="sweeper", daemon=True)
        self._thread.start()

    def sweep(self, marker: str) -> None:
        """Return once no process marked ``marker`` is alive (and orphans are reaped).

        Call it after the run's main process has ended and been reaped.
        """
        if self._subreaper and self._adopted() == []:
            return  # nothing was adopted, so nothing of any ended run lives on
        done = threading.Event()
        self._requests.put((marker, done))
        done.wait()

    def close(self) -> None:
        self._requests.put(None)
        self._thread.join()

    def _serve(self) -> None:  # runs in the sweeper thread
        last_scan = 0.0
        while True:
            first = self._requests.get()
            if first is None:
                return
            pause = last_scan + self._min_interval - time.monotonic()
            if pause > 0:  # let more requests join this scan
                time.sleep(pause)
            batch = [first]
            closing = False
            while True:
                try:
                    request = self._requests.get_nowait()
                except queue.Empty:
                    break
                if request is None:
                    closing = True
                    break
                batch.append(request)
            last_scan = time.monotonic()
            try:
                killed = self._kill_leftovers({marker for marker, _ in batch})
                if killed:
                    # They were orphans, re-parented to us: reap them now. Orphans that
                    # ended on their own are reaped by the periodic reap.
                    self._reaper.reap()
                    log.info("killed processes that outlived their run", count=killed)
            except Exception:
                log.exception("sweeping leftover processes failed")
            for _, done in batch:
                done.set()
            if closing:
                return

    def _kill_leftovers(self, markers: set[str]) -> int:
        """Kill what the runs ``markers`` left alive; return how many processes."""
        if not self._subreaper:
            return kill_marked(markers)  # orphans went elsewhere: look at every process
        adopted = adopted_children()
        if adopted is None:  # the kernel does not list children
            return kill_marked(markers)
        if adopted:
            # Orphans that have died are reaped first; a mass stop leaves many of them.
            self._reaper.reap()
        # The run's main process is gone, so whatever it left alive was re-parented to
        # this process (the subreaper) or descends from something that was: look below
        # the adopted orphans only, not at every process of the machine.
        return kill_marked(markers, among=_adopted_and_below)
