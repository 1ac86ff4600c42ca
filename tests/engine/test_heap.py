"""engine.heap: inside `keep_freed_pages` a large block freed and allocated again comes back without
page faults (the pages stayed in the heap); outside it, and once the outermost block ends, the
same allocation faults its pages in anew (they went back to the OS). Counted with getrusage in a
fresh process each (tests/support/heap_probe.py), on glibc only."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

from ffclip.engine import heap
from ffclip.engine.inference import Engine

pytestmark = pytest.mark.skipif(heap._libc() is None, reason="glibc's malloc only")


def probe(scenario: str) -> dict[str, int]:
    run = subprocess.run(
        [sys.executable, "-m", "tests.support.heap_probe", scenario],
        cwd=Path(__file__).parents[2],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


@pytest.mark.process
def test_freed_pages_are_reused_inside_and_returned_after() -> None:
    faults = probe("reuse")
    few, many = faults["pages"] // 10, faults["pages"] // 2
    assert faults["outside"] > many  # mapped anew each time
    assert faults["inside"] < few  # the same pages again
    assert faults["after"] > many  # given back when the block ended


@pytest.mark.process
def test_only_the_outermost_block_gives_the_pages_back() -> None:
    faults = probe("nested")
    assert faults["after_inner"] < faults["pages"] // 10  # the inner block's end kept them
    assert faults["after_outer"] > faults["pages"] // 2


@pytest.mark.process
def test_a_device_thread_reuses_pages_after_configure() -> None:
    """The daemon renders on its device threads: after `configure` (the CLI's first step) a thread's
    large blocks come from the one heap too (a thread's own arena would map them anew)."""
    faults = probe("thread")
    assert faults["inside"] < faults["pages"] // 10


def test_the_hyperstyle_inversion_runs_inside_the_block(monkeypatch: pytest.MonkeyPatch) -> None:
    """All of `invert_high`'s renders (the initial one and one per refinement but the last) run with
    the freed pages kept; the block ends with the inversion."""
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
