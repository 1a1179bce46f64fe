"""Hand freed heap memory back to the operating system (glibc's `malloc_trim`).

A long-lived server frees most of what a closed peer held (frames, codec buffers, per-stream
state), but glibc keeps freed chunks inside its arenas, one per thread that allocated, for reuse:
a server whose peers come and go then keeps the high-water mark of its busiest moment for good,
and with a dozen threads allocating that mark creeps up as peers churn. `malloc_trim(0)` returns
every whole free page of every arena. Elsewhere (musl, macOS, Windows) this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys


@functools.cache
def _malloc_trim():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


def release_freed_memory() -> bool:
    """Return free heap pages to the OS; True when some were (False where it cannot)."""
    trim = _malloc_trim()
    return bool(trim(0)) if trim is not None else False
