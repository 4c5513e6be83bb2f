"""What the server tells glibc's allocator: where freed memory goes back to the system.

Output passes through the server in buffers of 64 KiB to a few MiB, allocated in the
actors' threads and freed on the event loop once committed. glibc's defaults keep much of
that memory after use; both calls here give it back. Elsewhere than glibc they do nothing.
"""

from __future__ import annotations

import ctypes
import functools
from typing import Any, Final

#: mallopt(3) parameters, from glibc's <malloc.h>.
_M_TRIM_THRESHOLD: Final = -1
_M_MMAP_THRESHOLD: Final = -3
_THRESHOLD_BYTES: Final = 128 * 1024


@functools.cache
def _glibc() -> Any | None:
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
        libc.mallopt.restype = ctypes.c_int
        libc.malloc_trim.argtypes = (ctypes.c_size_t,)
        libc.malloc_trim.restype = ctypes.c_int
    except (OSError, AttributeError):
        return None
    return libc


def fix_thresholds() -> bool:
    """Keep glibc from holding on to freed buffers; False where this is not glibc.

    By default glibc raises its mmap threshold each time a large block is freed, up to
    32 MiB, so later output buffers come from the heap instead of their own mappings; the
    heap then fragments and is not given back. Under steady load the server's RSS crept up
    by a quarter in a minute (docs/benchmarks.md, load-mixed). Fixed thresholds (glibc's
    own defaults, without the dynamic raise) keep large blocks in mappings returned on
    free, and trim the heap as it empties.
    """
    libc = _glibc()
    if libc is None:
        return False
    return bool(
        libc.mallopt(_M_MMAP_THRESHOLD, _THRESHOLD_BYTES)
        and libc.mallopt(_M_TRIM_THRESHOLD, _THRESHOLD_BYTES)
    )


def give_back_free_memory() -> None:
    """``malloc_trim(0)``: return the free pages of every glibc arena.

    The actors' threads have arenas of their own, which kept the freed pages of a flood's
    buffers (about 34 MiB, seen in ``/proc/<pid>/smaps``) until something trimmed them.
    """
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)
