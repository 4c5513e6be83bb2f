"""Removing a run's directory, whatever its script left in it.

The standard library only: a test runs this module alone, as another user.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path


def remove_rundir(rundir: Path) -> OSError | None:
    """Remove ``rundir`` and all in it; the error if some of it could not be removed.

    The scripts run as the server's user and may leave directories it cannot write to
    (Go's module cache, under ``$HOME``, which is the run's directory, is read-only), and
    ``rmtree`` then fails half-way. Their permissions are given back, and it tries again.
    """
    try:  # cheaply, when the script left nothing behind
        os.rmdir(rundir)
    except OSError:
        pass
    else:
        return None
    if _rmtree(rundir) is None:
        return None
    _make_writable(rundir)
    return _rmtree(rundir)


def _rmtree(top: Path) -> OSError | None:
    """Remove ``top``; the error if some of it stayed (none if it was already gone)."""
    try:
        shutil.rmtree(top)
    except FileNotFoundError:
        return None
    except OSError as exc:
        return exc
    return None


def _make_writable(top: Path) -> None:
    """Give every directory under ``top`` (not following links) back to its owner."""
    if os.path.islink(top):  # a run's directory replaced by a link: touch nothing
        return
    with contextlib.suppress(OSError):
        os.chmod(top, 0o700)
    for path, dirs, _files in os.walk(top):
        for name in dirs:
            child = os.path.join(path, name)
            if not os.path.islink(child):
                with contextlib.suppress(OSError):
                    os.chmod(child, 0o700)
