"""The C heap under torch's CPU tensors (glibc's malloc; elsewhere every function here does nothing).

glibc maps each large block (a 1024² activation is 128 MB) fresh from the kernel and unmaps it when
freed, so every layer of every synthesis touches new pages: ~0.3 GB of page faults per 1024² render
on a 2-core CPU, 5–10 % of its time. Where one call renders many times (HyperStyle's inversion: five
renders and five hypernetwork passes of the same shapes), `keep_freed_pages` keeps what is freed in
the heap for the next layer to reuse, and gives it back to the OS when the call ends.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import threading
from collections.abc import Iterator

# mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -3, -4, -8
# the values glibc's own adjustment settles on for a process that frees large blocks (its maximum
# mmap threshold, 32 MB, and a trim threshold twice that), and its default count of mapped blocks
MMAP_THRESHOLD, TRIM_THRESHOLD, MMAP_MAX = 32 << 20, 64 << 20, 65536
KEEP_TRIM_THRESHOLD = 1 << 30  # inside keep_freed_pages: free memory stays unless over 1 GB at the top

_lock = threading.Lock()
_depth = 0


@functools.cache
def _libc() -> ctypes.CDLL | None:
    """glibc, opened once; None elsewhere."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt, libc.malloc_trim  # noqa: B018  (glibc: both exist)
    except (OSError, AttributeError):
        return None
    return libc


def _mallopt(param: int, value: int) -> bool:
    libc = _libc()
    return libc is not None and libc.mallopt(param, ctypes.c_int(value)) == 1


def configure() -> bool:
    """Once, at the start of a process, before it starts threads: one heap (arena) for every thread,
    so that blocks a device thread frees can be kept for its next layer (a thread's own arena maps
    every block over 64 MB anew whatever the settings), and the thresholds fixed at the values
    glibc would reach by itself. False where this is not glibc."""
    return all(
        _mallopt(param, value)
        for param, value in ((M_ARENA_MAX, 1), (M_MMAP_THRESHOLD, MMAP_THRESHOLD), (M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    )


@contextlib.contextmanager
def keep_freed_pages() -> Iterator[None]:
    """During the block, large blocks come from the heap and what is freed stays there for reuse
    (no mapping, no trimming); when the outermost such block ends, the mapping thresholds are set
    back and the freed pages go back to the OS. Process-wide: nested and concurrent blocks count."""
    global _depth
    with _lock:
        _depth += 1
        if _depth == 1:
            _mallopt(M_MMAP_MAX, 0)
            _mallopt(M_TRIM_THRESHOLD, KEEP_TRIM_THRESHOLD)
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                _mallopt(M_MMAP_MAX, MMAP_MAX)
                _mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
                release_freed_memory()


def release_freed_memory() -> None:
    """Return the C heap's freed pages to the OS. Building or loading the networks leaves ~0.3 GB of
    freed small blocks in the heap, which would stay resident for the daemon's lifetime and add to
    every later peak."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)
