"""The scripts' files: one per script, linked for each run, checked before reuse; the
prelude that gives scripts the server's original limit on open files."""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import stat
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest

from shelltrail.actors.scripts import RUN_BASH_ENV, ScriptFiles


def files(tmp_path: Path, **kwargs: Any) -> ScriptFiles:
    scripts = ScriptFiles(tmp_path / "scripts", **kwargs)
    scripts.reset()
    return scripts


def test_runs_of_one_script_share_its_inode_under_names_of_their_own(tmp_path: Path) -> None:
    scripts = files(tmp_path)
    first, second = uuid.uuid4(), uuid.uuid4()
    a, b = scripts.acquire("echo one", first), scripts.acquire("echo one", second)
    other = scripts.acquire("echo two", uuid.uuid4())
    assert (a.name, b.name) == (f"{first}.sh", f"{second}.sh")
    assert a.stat().st_ino == b.stat().st_ino != other.stat().st_ino
    assert (a.read_text(), other.read_text()) == ("echo one", "echo two")
    assert stat.S_IMODE(a.stat().st_mode) == 0o400
    assert stat.S_IMODE((tmp_path / "scripts").stat().st_mode) == 0o700
    scripts.release(a)
    scripts.release(a)  # a script may have removed its own file already
    assert not a.exists()
    assert b.read_text() == "echo one"


def test_a_shared_file_removed_or_changed_since_it_was_written_is_written_again(
    tmp_path: Path,
) -> None:
    scripts = files(tmp_path)
    shared = tmp_path / "scripts" / f"{hashlib.sha256(b'echo one').hexdigest()}.sh"
    first = scripts.acquire("echo one", uuid.uuid4())
    assert first.samefile(shared)
    first.chmod(0o600)  # the same inode: `chmod u+w "$0"; echo … > "$0"`
    first.write_text("echo changed")
    second = scripts.acquire("echo one", uuid.uuid4())
    assert (second.read_text(), first.read_text()) == ("echo one", "echo changed")
    shared.unlink()  # removed by hand
    assert scripts.acquire("echo one", uuid.uuid4()).read_text() == "echo one"


def test_a_directory_a_script_removed_is_made_again(tmp_path: Path) -> None:
    scripts = files(tmp_path, open_files_limit=100)
    own = scripts.acquire("echo one", uuid.uuid4())
    shutil.rmtree(own.parent)  # `rm -rf "$(dirname "$0")"`
    assert scripts.acquire("echo one", uuid.uuid4()).read_text() == "echo one"
    assert "ulimit -S -n 100" in (own.parent / "prelude.sh").read_text()


def test_only_the_most_recent_shared_files_stay_and_runs_keep_theirs(tmp_path: Path) -> None:
    scripts = files(tmp_path, keep_idle=2)
    own = [scripts.acquire(f"echo {n}", uuid.uuid4()) for n in range(3)]
    shared = sorted(p.stem for p in (tmp_path / "scripts").iterdir() if len(p.stem) == 64)
    assert len(shared) == 2  # "echo 0" was dropped, the oldest
    assert [p.read_text() for p in own] == ["echo 0", "echo 1", "echo 2"]


def test_reset_empties_the_directory(tmp_path: Path) -> None:
    directory = tmp_path / "scripts"
    (directory / "tree").mkdir(parents=True)
    (directory / "left-by-a-crash.sh").write_text("echo half")
    (directory / "tree").chmod(0o500)
    ScriptFiles(directory).reset()
    assert list(directory.iterdir()) == []


def test_a_script_that_could_not_be_written_leaves_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scripts = files(tmp_path)
    real_write = os.write

    def disk_full(fd: int, data: Any) -> int:
        if len(data) < 4:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data[: len(data) // 2])

    monkeypatch.setattr(os, "write", disk_full)
    with pytest.raises(OSError, match="No space"):
        scripts.acquire("echo half", uuid.uuid4())
    assert list((tmp_path / "scripts").iterdir()) == []
    monkeypatch.undo()
    assert scripts.acquire("echo half", uuid.uuid4()).read_text() == "echo half"


def test_the_prelude_takes_bash_env_and_gives_the_run_its_own(tmp_path: Path) -> None:
    scripts = files(tmp_path, open_files_limit=256)
    prelude = str(tmp_path / "scripts" / "prelude.sh")
    assert "ulimit -S -n 256" in Path(prelude).read_text()
    assert scripts.environment({"PATH": "/bin", RUN_BASH_ENV: "given"}) == {
        "PATH": "/bin",
        "BASH_ENV": prelude,
    }
    assert scripts.environment({"BASH_ENV": "mine.sh"}) == {
        "BASH_ENV": prelude,
        RUN_BASH_ENV: "mine.sh",
    }
    for posix in ({"POSIXLY_CORRECT": "1"}, {"SHELLOPTS": "braceexpand:posix"}):
        assert scripts.environment(posix) == posix  # bash would not read the prelude


def test_without_a_limit_to_give_back_there_is_no_prelude(tmp_path: Path) -> None:
    scripts = files(tmp_path)
    assert list((tmp_path / "scripts").iterdir()) == []
    env = {"BASH_ENV": "mine.sh", RUN_BASH_ENV: "kept"}
    assert scripts.environment(env) == env


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, "limit=100 own=no BASH_ENV=unset"),
        ({"SHELLOPTS": "xtrace"}, "limit=100 own=no BASH_ENV=unset"),  # nothing traced
        ({"BASH_ENV": "own.sh"}, "limit=100 own=yes BASH_ENV=own.sh"),  # not from PATH
        ({"BASH_ENV": "/missing"}, "limit=100 own=no BASH_ENV=/missing"),  # silently
        ({"BASH_ENV": ""}, "limit=100 own=no BASH_ENV="),
        (
            {"SHELLOPTS": "nounset:errexit", "BASH_ENV": "own.sh"},
            "limit=100 own=yes BASH_ENV=own.sh",
        ),
    ],
)
def test_the_prelude_is_read_as_bash_reads_bash_env(
    tmp_path: Path, env: dict[str, str], expected: str
) -> None:
    scripts = files(tmp_path, open_files_limit=100)
    workdir = tmp_path / "work"
    workdir.mkdir()
    (workdir / "own.sh").write_text("OWN=yes\n")
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "own.sh").write_text("OWN=from-path\n")
    script = 'echo "limit=$(ulimit -Sn) own=${OWN-no} BASH_ENV=${BASH_ENV-unset}"'
    path = scripts.acquire(script, uuid.uuid4())
    result = subprocess.run(
        ["bash", "--noprofile", "--norc", str(path)],
        env=scripts.environment({"PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin", **env}),
        cwd=workdir,
        capture_output=True,
        text=True,
        check=False,
    )
    # Under xtrace only the script's own commands are traced.
    traced = f"++ ulimit -Sn\n+ echo '{expected}'\n" if "xtrace" in str(env) else ""
    assert (result.returncode, result.stdout.strip(), result.stderr) == (0, expected, traced)
