"""The files runs execute: one per distinct script, linked once more for each run.

A run's working directory is the only inode made for it. The script ``bash`` reads is
``<scripts dir>/<process id>.sh``, a hard link (a directory entry, not a new inode) to
``<scripts dir>/<sha256>.sh``, which is written when a run of that script first needs it and
kept among the ``keep_idle`` most recently used. Making and removing inodes is a large share
of what a short run costs where the file system scans recently deleted inodes on every
allocation (ext4 without a journal does), and each run used to make three.

Each run has a name of its own, so a script that removes or replaces its ``$0`` (``rm -f
"$0"``, ``sed -i``) touches no other run; a shared file found changed since it was written
(size, time, inode, mode) is written again before it is linked. The scripts directory is
per node (two servers may share a data directory) and emptied when the supervisor starts:
a file written just before a crash may not have reached the disk whole. Thread-safe.

The server raises its own limit on open files (a run holds several descriptors); the
scripts get the limit it started with back from a prelude, ``prelude.sh``, which ``bash``
reads before the script (``BASH_ENV``) and which then reads the run's own ``BASH_ENV``, if
it has one. A limit set in the child before ``exec`` would need a ``preexec_fn``, and a
program such as ``prlimit`` would cost one more ``exec`` per run.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import os
import stat
import threading
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Final

import structlog

from shelltrail.actors.rundirs import remove_rundir
from shelltrail.domain import script_sha256

log = structlog.get_logger(__name__)

#: Scripts whose shared file is kept, the most recently used ones.
KEEP_IDLE: Final = 64
#: Holds the run's own ``BASH_ENV`` until the prelude puts it back.
RUN_BASH_ENV: Final = "SHELLTRAIL_BASH_ENV"
#: Read by bash before the script. Its own commands are silent under ``SHELLOPTS=xtrace``,
#: but for the line reading the run's ``BASH_ENV``, which is read as bash would: skipped
#: when empty or missing, a name without a slash taken from the working directory, not
#: from ``PATH``. Unlike bash, the prelude does not expand ``$`` or backquotes in it.
_PRELUDE: Final = """\
# shelltrail: bash reads this (BASH_ENV) before the run's script.
{ ulimit -S -n OPEN_FILES || :
  if [[ -v SHELLTRAIL_BASH_ENV ]]; then
      BASH_ENV=$SHELLTRAIL_BASH_ENV
      unset SHELLTRAIL_BASH_ENV
  else
      unset BASH_ENV
  fi
  [[ -n ${BASH_ENV-} && -f $BASH_ENV ]] || return 0; } 2>/dev/null
case $BASH_ENV in */*) . "$BASH_ENV" ;; *) . "./$BASH_ENV" ;; esac
"""

#: What a shared file looked like when written: (inode, size, mtime_ns, mode).
_Written = tuple[int, int, int, int]


class ScriptFiles:
    def __init__(
        self,
        directory: Path,
        *,
        open_files_limit: int | None = None,
        keep_idle: int = KEEP_IDLE,
    ) -> None:
        self._directory = directory
        self._open_files_limit = open_files_limit
        self._keep_idle = keep_idle
        self._lock = threading.Lock()
        #: Shared files written by this server, least recently used first.
        self._written: collections.OrderedDict[str, _Written] = collections.OrderedDict()

    @classmethod
    def of_node(
        cls, runs_dir: Path, node: str, *, open_files_limit: int | None = None
    ) -> ScriptFiles:
        """The scripts directory of ``node``: ``<runs dir>/.scripts/<hash of the node name>``
        (absolute, since scripts are started in their own directories)."""
        key = hashlib.sha256(node.encode()).hexdigest()[:16]
        return cls(runs_dir.absolute() / ".scripts" / key, open_files_limit=open_files_limit)

    @property
    def directory(self) -> Path:
        return self._directory

    def reset(self) -> None:
        """Start from an empty, private directory (call before any run starts).

        What cannot be removed (a read-only tree a script made here) is logged and left:
        names of this server's files are checked or unique, so it changes nothing.
        """
        with self._lock:
            error = remove_rundir(self._directory)
            if error is not None:
                log.warning("the scripts directory was not emptied", error=str(error))
            self._directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._written.clear()
            self._write_prelude()

    def environment(self, env: Mapping[str, str]) -> dict[str, str]:
        """``env`` as the script's ``bash`` is given it: with the prelude, if there is one.

        In POSIX mode bash reads no ``BASH_ENV``: such a run gets no prelude, and keeps the
        server's limit on open files.
        """
        env = dict(env)
        if self._open_files_limit is None or _posix_mode(env):
            return env
        env.pop(RUN_BASH_ENV, None)
        if "BASH_ENV" in env:
            env[RUN_BASH_ENV] = env["BASH_ENV"]
        env["BASH_ENV"] = str(self._prelude_path())
        return env

    def acquire(self, script: str, process_id: uuid.UUID) -> Path:
        """A file of the run's own holding ``script``; :meth:`release` it once the run ends."""
        sha256 = script_sha256(script)  # as the run's Queued event records it
        shared = self._directory / f"{sha256}.sh"
        own = self._directory / f"{process_id}.sh"
        with self._lock:
            written = self._written.pop(sha256, None)
            if written is None or _looks(shared) != written:
                written = self._replace(shared, script)
            self._written[sha256] = written
            try:
                os.link(shared, own)
            except OSError:  # e.g. too many links to one inode: a copy of its own
                self._replace(own, script)
            while len(self._written) > self._keep_idle:
                oldest, _ = self._written.popitem(last=False)
                with contextlib.suppress(OSError):  # its runs keep their own links
                    (self._directory / f"{oldest}.sh").unlink()
        return own

    @staticmethod
    def release(own: Path) -> None:
        """Remove the run's file (the script may have removed it already)."""
        with contextlib.suppress(FileNotFoundError):
            own.unlink()

    def _replace(self, path: Path, content: str) -> _Written:
        """Write ``content`` to a new read-only file, then move it to ``path`` at once."""
        partial = path.with_name(f".{uuid.uuid4()}.partial")
        data = memoryview(content.encode())
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        try:
            fd = os.open(partial, flags, 0o400)
        except FileNotFoundError:  # a script removed the directory: `rm -r "${0%/*}"`
            self._directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._write_prelude()
            fd = os.open(partial, flags, 0o400)
        try:
            while data:
                data = data[os.write(fd, data) :]
            written = _looks_of(os.fstat(fd))
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        finally:
            os.close(fd)
        os.replace(partial, path)
        return written

    def _write_prelude(self) -> None:
        if self._open_files_limit is not None:
            prelude = _PRELUDE.replace("OPEN_FILES", str(self._open_files_limit))
            self._replace(self._prelude_path(), prelude)

    def _prelude_path(self) -> Path:
        return self._directory / "prelude.sh"


def _looks(path: Path) -> _Written | None:
    try:
        return _looks_of(os.stat(path))
    except OSError:
        return None


def _looks_of(st: os.stat_result) -> _Written:
    return (st.st_ino, st.st_size, st.st_mtime_ns, stat.S_IMODE(st.st_mode))


def _posix_mode(env: Mapping[str, str]) -> bool:
    return "POSIXLY_CORRECT" in env or "posix" in env.get("SHELLOPTS", "").split(":")
