"""The server hides its environment from the scripts it runs."""

from __future__ import annotations

import subprocess
import sys


def test_the_server_process_is_not_dumpable() -> None:
    """After hide_from_scripts(), the process is not dumpable: /proc/<pid>/environ and ptrace
    are closed to other processes of its user, the scripts included. (Observed from inside:
    as root, as the tests run, reading it would still work, so the flag itself is checked.)
    Its children start dumpable again after exec, so the scripts are unaffected."""
    code = (
        "import ctypes, subprocess\n"
        "from shelltrail.actors.tree import hide_from_scripts\n"
        "libc = ctypes.CDLL(None)\n"
        "before = libc.prctl(3, 0, 0, 0, 0)\n"
        "assert hide_from_scripts()\n"
        "child = subprocess.run(['grep', '-c', '', '/proc/self/environ'], capture_output=True)\n"
        "print(before, libc.prctl(3, 0, 0, 0, 0), child.returncode)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.split() == ["1", "0", "0"]
