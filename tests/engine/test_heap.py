"""engine.heap: inside `keep_freed_pages` a large block freed and allocated again comes back without
page faults (the pages stayed in the heap); outside it, and once the outermost block ends, the
same allocation faults its pages in anew (they went back to the OS). Page faults are counted with
getrusage, so these run on glibc only."""

from __future__ import annotations

import ctypes
import resource
import subprocess
import sys
from collections import Counter

import pytest
import torch

from ffclip.engine import heap
from ffclip.engine.inference import Engine

pytestmark = pytest.mark.skipif(heap._libc() is None, reason="glibc's malloc only")

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


def test_freed_pages_are_reused_inside_and_returned_after() -> None:
    libc = heap._libc()
    faults_of_a_block(libc)
    assert faults_of_a_block(libc) > PAGES // 2  # outside: mapped anew each time
    with heap.keep_freed_pages():
        faults_of_a_block(libc)  # into the heap
        assert faults_of_a_block(libc) < PAGES // 10  # the same pages again
    assert faults_of_a_block(libc) > PAGES // 2  # given back when the block ended


def test_only_the_outermost_block_gives_the_pages_back() -> None:
    libc = heap._libc()
    with heap.keep_freed_pages():
        with heap.keep_freed_pages():
            faults_of_a_block(libc)
        assert faults_of_a_block(libc) < PAGES // 10  # the inner block's end kept them
    assert faults_of_a_block(libc) > PAGES // 2


THREAD_SCRIPT = """
import threading
from ffclip.engine import heap
from tests.engine.test_heap import faults_of_a_block
assert heap.configure()
out = []
def work():
    with heap.keep_freed_pages():
        faults_of_a_block(heap._libc())
        out.append(faults_of_a_block(heap._libc()))
thread = threading.Thread(target=work)
thread.start()
thread.join()
print(out[0])
"""


@pytest.mark.process
def test_a_device_thread_reuses_pages_after_configure() -> None:
    """The daemon renders on its device threads: after `configure` (the CLI's first step) a thread's
    large blocks come from the one heap too (a thread's own arena would map them anew)."""
    run = subprocess.run([sys.executable, "-c", THREAD_SCRIPT], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert int(run.stdout) < PAGES // 10


def test_the_hyperstyle_inversion_runs_inside_the_block(monkeypatch: pytest.MonkeyPatch) -> None:
    """All of `invert_high`'s renders (the initial one and one per refinement but the last) run with
    the freed pages kept; the block ends with the inversion."""
    import contextlib

    engine = Engine.load("tiny", threads=0)
    events: Counter = Counter()
    depth = [0]

    @contextlib.contextmanager
    def recording():
        depth[0] += 1
        events["entered"] += 1
        try:
            yield
        finally:
            depth[0] -= 1

    render = engine._synthesis_with

    def counted(*args, **kwargs):
        events["render inside" if depth[0] else "render outside"] += 1
        return render(*args, **kwargs)

    monkeypatch.setattr(heap, "keep_freed_pages", recording)
    monkeypatch.setattr(engine, "_synthesis_with", counted)
    engine.invert_high(torch.zeros(1, 3, 256, 256))  # an aligned face at the encoders' input size
    n_iters = engine.hyperstyle().n_iters
    assert events == Counter({"entered": 1, "render inside": n_iters})
