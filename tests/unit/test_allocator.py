"""What the server tells glibc's allocator."""

from __future__ import annotations

import platform

from shelltrail import allocator


def test_malloc_thresholds_are_fixed_on_glibc() -> None:
    # The server relies on this to give freed memory back under steady load; on another C
    # library it reports that nothing was changed instead of failing.
    is_glibc = platform.libc_ver()[0] == "glibc"
    assert allocator.fix_thresholds() is is_glibc
    allocator.give_back_free_memory()  # does nothing harmful either way
