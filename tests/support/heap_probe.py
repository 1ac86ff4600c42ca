"""Page faults of a large block in a fresh process (`python -m tests.support.heap_probe SCENARIO`):
a process that has run other tests holds free heap chunks whose pages may still be resident (in the
full suite a 96 MB block outside the scope came back with no fault at all), so whether a block is
faulted in anew says nothing there. Prints one JSON object."""

from __future__ import annotations

import ctypes
import json
import resource
import sys
import threading

from ffclip.engine import heap

SIZE = 96 << 20  # over glibc's largest mapping threshold (32 MB) and a thread heap (64 MB)
PAGES = SIZE // resource.getpagesize()


def faults_of_a_block(libc: ctypes.CDLL) -> int:
    """Minor page faults of allocating SIZE bytes, writing them all and freeing them."""
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = libc.malloc(SIZE)
    ctypes.memset(block, 1, SIZE)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    libc.free(block)
    return after - before


def refaults(libc: ctypes.CDLL) -> int:
    """Page faults of the second of two such blocks: none where the first one's pages were kept."""
    faults_of_a_block(libc)
    return faults_of_a_block(libc)


def reuse(libc: ctypes.CDLL) -> dict[str, int]:
    out = {"outside": refaults(libc)}
    with heap.keep_freed_pages():
        out["inside"] = refaults(libc)
    out["after"] = faults_of_a_block(libc)
    return out


def nested(libc: ctypes.CDLL) -> dict[str, int]:
    with heap.keep_freed_pages():
        with heap.keep_freed_pages():
            faults_of_a_block(libc)
        out = {"after_inner": faults_of_a_block(libc)}
    out["after_outer"] = faults_of_a_block(libc)
    return out


def thread(libc: ctypes.CDLL) -> dict[str, int]:
    """As a daemon's device thread, after `configure` (the CLI's first step)."""
    assert heap.configure()
    out: dict[str, int] = {}

    def work() -> None:
        with heap.keep_freed_pages():
            out["inside"] = refaults(libc)

    worker = threading.Thread(target=work)
    worker.start()
    worker.join()
    return out


if __name__ == "__main__":
    scenario = {"reuse": reuse, "nested": nested, "thread": thread}[sys.argv[1]]
    print(json.dumps({"pages": PAGES, **scenario(heap._libc())}))
