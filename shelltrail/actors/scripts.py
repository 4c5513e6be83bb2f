"""The files runs execute: one read-only file per distinct script, shared by its runs.

A run's working directory is the only file-system object made for it. The script ``bash``
reads lives in ``<runs dir>/.scripts/<sha256>.sh``, written when the first run of that
script starts and kept while runs use it, then among the ``keep_idle`` most recently used,
so a command run over and over writes its script once. Making and removing inodes is a
large share of what a short run costs where the file system scans recently deleted inodes
on every allocation (ext4 without a journal does), and each run used to make three.

The directory is emptied when the supervisor starts: a file written just before a crash
may not have reached the disk whole. Thread-safe; the actors call it from their threads.

The server raises its own limit on open files (a run holds several descriptors); the
scripts get the limit it started with back from a prelude, ``prelude.sh``, which ``bash``
reads before the script (``BASH_ENV``) and which then puts the run's own ``BASH_ENV``, if it
has one, back in place. A limit set in the child before ``exec`` would need a
``preexec_fn``, and a program such as ``prlimit`` would cost one more ``exec`` per run.
"""

from __future__ import annotations

import collections
import hashlib
import os
import shutil
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Final

#: Scripts no run uses any more that keep their file, most recently used first.
KEEP_IDLE: Final = 64
#: Holds the run's own ``BASH_ENV`` while the prelude runs.
RUN_BASH_ENV: Final = "SHELLTRAIL_BASH_ENV"
_PRELUDE: Final = f"""\
# shelltrail: bash reads this (BASH_ENV) before the run's script.
ulimit -S -n {{open_files}} 2>/dev/null
if [[ -v {RUN_BASH_ENV} ]]; then
    BASH_ENV=${RUN_BASH_ENV}
    unset {RUN_BASH_ENV}
    . "$BASH_ENV"
else
    unset BASH_ENV
fi
"""


class ScriptFiles:
    def __init__(
        self, directory: Path, *, open_files_limit: int | None = None, keep_idle: int = KEEP_IDLE
    ) -> None:
        self._directory = directory
        self._open_files_limit = open_files_limit
        self._keep_idle = keep_idle
        self._lock = threading.Lock()
        #: Runs using each script (by sha256) whose file exists.
        self._users: dict[str, int] = {}
        #: Scripts with a file and no run using it, least recently used first.
        self._idle: collections.OrderedDict[str, None] = collections.OrderedDict()

    def reset(self) -> None:
        """Start from an empty, private directory (call before any run starts)."""
        with self._lock:
            shutil.rmtree(self._directory, ignore_errors=True)
            self._directory.mkdir(mode=0o700, parents=True)
            self._users.clear()
            self._idle.clear()
            if self._open_files_limit is not None:
                prelude = _PRELUDE.format(open_files=self._open_files_limit)
                _write_read_only(self._prelude_path(), prelude)

    def environment(self, env: Mapping[str, str]) -> dict[str, str]:
        """``env`` as the script's ``bash`` is given it: with the prelude, if there is one."""
        env = dict(env)
        env.pop(RUN_BASH_ENV, None)
        if self._open_files_limit is None:
            return env
        if "BASH_ENV" in env:
            env[RUN_BASH_ENV] = env["BASH_ENV"]
        env["BASH_ENV"] = str(self._prelude_path())
        return env

    def acquire(self, script: str) -> Path:
        """The file holding ``script``, written if need be.

        Each call must be paired with a :meth:`release` of the path once the run no longer
        needs the file.
        """
        sha256 = hashlib.sha256(script.encode()).hexdigest()
        path = self._path(sha256)
        with self._lock:
            if sha256 in self._users:
                self._users[sha256] += 1
                return path
            if sha256 in self._idle:
                del self._idle[sha256]
            else:
                _write_read_only(path, script)
            self._users[sha256] = 1
            return path

    def release(self, path: Path) -> None:
        sha256 = path.stem
        with self._lock:
            users = self._users[sha256] - 1
            if users:
                self._users[sha256] = users
                return
            del self._users[sha256]
            self._idle[sha256] = None
            while len(self._idle) > self._keep_idle:
                oldest, _ = self._idle.popitem(last=False)
                self._path(oldest).unlink(missing_ok=True)

    def _path(self, sha256: str) -> Path:
        return self._directory / f"{sha256}.sh"

    def _prelude_path(self) -> Path:
        return self._directory / "prelude.sh"


def _write_read_only(path: Path, script: str) -> None:
    data = memoryview(script.encode())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o400)
    try:
        while data:
            data = data[os.write(fd, data) :]
    except BaseException:
        path.unlink(missing_ok=True)  # no half-written script for the next run
        raise
    finally:
        os.close(fd)
