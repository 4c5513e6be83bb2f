"""A run's directory goes, whatever permissions its script left in it."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

import shelltrail.actors.rundirs

MODULE = Path(shelltrail.actors.rundirs.__file__)
NOBODY = 65534
#: Runs as the user of the test, or as nobody when that is root (root ignores permissions,
#: so the case could not happen). Loads the module alone: nobody cannot read the virtualenv.
_AS_A_USER = f"""
import importlib.util, sys
from pathlib import Path
spec = importlib.util.spec_from_file_location("rundirs", {str(MODULE)!r})
rundirs = importlib.util.module_from_spec(spec)
spec.loader.exec_module(rundirs)
if sys.argv[1] == "plain":
    import shutil
    try:
        shutil.rmtree(sys.argv[2])
    except OSError as exc:
        print("failed", type(exc).__name__)
    else:
        print("removed")
else:
    print("error", rundirs.remove_rundir(Path(sys.argv[2])))
"""


@pytest.fixture
def as_a_user() -> Iterator[tuple[list[str], int]]:
    """The command line that runs Python as an unprivileged user, and that user's id."""
    if os.geteuid() != 0:
        yield [shutil.which("python3") or "python3"], os.geteuid()
        return
    python = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else "python3"
    yield ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", python], NOBODY


def _left_like_go_does(owner: int) -> Path:
    """A run's directory with a read-only tree in it, as `go mod download` leaves one."""
    rundir = Path(tempfile.mkdtemp(prefix="shelltrail-rundir-test-"))
    cache = rundir / "go" / "pkg" / "mod" / "example.com" / "m@v1.0.0"
    cache.mkdir(parents=True)
    (cache / "go.mod").write_text("module example.com/m\n")
    if os.geteuid() == 0:
        for path in [rundir, *rundir.rglob("*")]:
            os.chown(path, owner, owner)
    for directory in sorted(rundir.rglob("*"), reverse=True):
        if directory.is_dir() and "go" in directory.parts:
            directory.chmod(0o555)
    return rundir


def test_read_only_directories_left_by_a_script_are_removed(
    as_a_user: tuple[list[str], int],
) -> None:
    python, owner = as_a_user
    plain = _left_like_go_does(owner)
    ours = _left_like_go_does(owner)
    try:
        run = [*python, "-c", _AS_A_USER]
        # The case is real: rmtree alone fails on it.
        assert subprocess.run(
            [*run, "plain", str(plain)], capture_output=True, text=True, check=True
        ).stdout.split() == ["failed", "PermissionError"]
        result = subprocess.run(
            [*run, "ours", str(ours)], capture_output=True, text=True, check=True
        )
        assert result.stdout.split() == ["error", "None"]
        assert not ours.exists()
    finally:
        for rundir in (plain, ours):
            if rundir.exists():
                subprocess.run(["chmod", "-R", "u+rwx", str(rundir)], check=False)
                shutil.rmtree(rundir)


def test_a_run_directory_replaced_by_a_link_is_not_followed(tmp_path: Path) -> None:
    """A script swapped its run's directory for a link to one of its user's: the removal
    fails and says so, and the linked directory keeps its permissions and content."""
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "inner").mkdir(parents=True)
    elsewhere.chmod(0o555)
    rundir = tmp_path / "runs" / "a-run"
    rundir.parent.mkdir()
    rundir.symlink_to(elsewhere, target_is_directory=True)
    try:
        assert shelltrail.actors.rundirs.remove_rundir(rundir) is not None
        assert elsewhere.stat().st_mode & 0o777 == 0o555
        assert (elsewhere / "inner").is_dir()
    finally:
        elsewhere.chmod(0o755)
