"""The shared script files: written once per script, kept while used, a few kept idle."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from shelltrail.actors.scripts import RUN_BASH_ENV, ScriptFiles


def test_runs_of_one_script_share_a_read_only_file(tmp_path: Path) -> None:
    scripts = ScriptFiles(tmp_path / "scripts")
    scripts.reset()
    first, second = scripts.acquire("echo one"), scripts.acquire("echo one")
    other = scripts.acquire("echo two")
    assert first == second != other
    assert (first.read_text(), other.read_text()) == ("echo one", "echo two")
    assert stat.S_IMODE(first.stat().st_mode) == 0o400
    assert stat.S_IMODE((tmp_path / "scripts").stat().st_mode) == 0o700


def test_a_file_in_use_is_kept_and_only_the_most_recent_idle_ones_stay(tmp_path: Path) -> None:
    scripts = ScriptFiles(tmp_path / "scripts", keep_idle=2)
    scripts.reset()
    used = scripts.acquire("echo used")
    idle = [scripts.acquire(f"echo {n}") for n in range(3)]
    for path in idle:
        scripts.release(path)
    assert [path.exists() for path in idle] == [False, True, True]
    assert used.exists()
    again = scripts.acquire("echo 1")  # taken back from the idle ones, not rewritten
    assert again == idle[1]
    scripts.release(used)
    scripts.release(again)
    # Idle, least recent first: "echo 2", used, "echo 1"; the first one goes.
    assert sorted(p.name for p in (tmp_path / "scripts").iterdir()) == sorted(
        [used.name, again.name]
    )


def test_reset_empties_the_directory(tmp_path: Path) -> None:
    directory = tmp_path / "scripts"
    directory.mkdir()
    (directory / "left-by-a-crash.sh").write_text("echo half")
    scripts = ScriptFiles(directory)
    scripts.reset()
    assert list(directory.iterdir()) == []


def test_a_script_that_could_not_be_written_leaves_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scripts = ScriptFiles(tmp_path / "scripts")
    scripts.reset()
    real_write = os.write

    def disk_full(fd: int, data: Any) -> int:
        if len(data) < 4:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data[: len(data) // 2])

    monkeypatch.setattr(os, "write", disk_full)
    with pytest.raises(OSError, match="No space"):
        scripts.acquire("echo half")
    assert list((tmp_path / "scripts").iterdir()) == []
    monkeypatch.undo()
    assert scripts.acquire("echo half").read_text() == "echo half"


def test_the_prelude_takes_bash_env_and_gives_the_run_its_own(tmp_path: Path) -> None:
    scripts = ScriptFiles(tmp_path / "scripts", open_files_limit=256)
    scripts.reset()
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


def test_without_a_limit_to_give_back_there_is_no_prelude(tmp_path: Path) -> None:
    scripts = ScriptFiles(tmp_path / "scripts")
    scripts.reset()
    assert list((tmp_path / "scripts").iterdir()) == []
    assert scripts.environment({"BASH_ENV": "mine.sh"}) == {"BASH_ENV": "mine.sh"}
