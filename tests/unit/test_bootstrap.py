"""Process-wide settings the server applies to itself at start."""

from __future__ import annotations

import platform

from shelltrail import bootstrap


def test_malloc_thresholds_are_fixed_on_glibc() -> None:
    # The server relies on this to give freed memory back under steady load; on another C
    # library it reports that nothing was changed instead of failing.
    is_glibc = platform.libc_ver()[0] == "glibc"
    assert bootstrap._fix_malloc_thresholds() is is_glibc
