"""The process's heap policy: keep freed memory for the next allocation instead of handing it back.

A CPU forward pass allocates and frees the same activation sizes (tens of MB) every layer of every batch.
glibc's malloc serves blocks above its mmap threshold with a fresh mmap and unmaps them on free, so
each allocation is paid again in page faults (zeroed pages, one fault per 4 KiB): for a ViT-B-16 forward
on CPU that is a fifth of the wall time, spent in the kernel. The threshold also moves on its own (it
rises when a large block is freed), so the same loop runs at two speeds within one process depending on
what ran before it. Fixing both thresholds high keeps the heap's pages mapped and reused, and makes the
speed a property of the code again. The cost: freed memory stays with the process (a ViT-B-16 forward
loop on CPU peaks at about a fifth more RSS), against a quarter more images per second.

Other C libraries (musl, macOS) have no mallopt: there this does nothing. Worker processes forked
after the call inherit it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's malloc.h
MMAP_THRESHOLD = 1 << 30  # blocks up to 1 GiB come from the heap
TRIM_THRESHOLD = 2**31 - 1  # free heap top kept up to 2 GiB (mallopt takes an int)


def keep_freed_memory() -> bool:
    """Set glibc's mmap and trim thresholds for this process; False where the C library has no mallopt."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
    ok = mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1 and ok
    if not ok:
        log.debug("mallopt refused the heap thresholds; malloc keeps its defaults")
    return ok
