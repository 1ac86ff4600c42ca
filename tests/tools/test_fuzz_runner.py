"""The fuzz runner's memory verdict: a mutant that costs more than its budget is reported every time;
a peak that another thread caused while one mutant ran is not blamed on that mutant."""

from __future__ import annotations

import random
import threading
from pathlib import Path

import numpy as np
import pytest

from tools.fuzz import runner

pytestmark = pytest.mark.skipif(not runner.can_measure_memory(), reason="peak memory is measured on Linux only")

MB = 1 << 20


class Allocating:
    """Each mutant touches `cost(index, call)` bytes; the budget is 16 MB."""

    name = "allocating"
    description = "touches a block of memory"
    # measured with tracemalloc too: in a process whose heap already holds free resident pages (the
    # full suite's, after the engine tests), a new block may raise no resident size at all
    trace_memory = True

    def __init__(self, cost) -> None:
        self.cost = cost
        self.calls: dict[int, int] = {}

    def setup(self, workdir: Path, marker: Path) -> None:
        pass

    def mutant(self, rng: random.Random) -> bytes:
        return rng.randbytes(8)

    def run(self, data: bytes, path: Path) -> str:
        index = int.from_bytes(data, "little")
        call = self.calls[index] = self.calls.get(index, 0) + 1
        size = self.cost(index, call)
        if size:
            block = np.ones(size, np.uint8)  # written: resident
            del block
        return "ok"

    def sound(self) -> bytes:
        return bytes(8)

    def budget(self, data: bytes) -> int | None:
        return 16 * MB


def _indices(count: int, seed: int = 3) -> list[int]:
    """The mutants' keys (their bytes), in order."""
    name = Allocating.name
    return [int.from_bytes(runner.mutant_rng(seed, name, i).randbytes(8), "little") for i in range(count)]


def test_a_mutant_over_its_budget_is_reported(tmp_path: Path) -> None:
    greedy = _indices(6)[4]
    target = Allocating(lambda index, call: 96 * MB if index == greedy else 0)
    report = runner.run(target, 6, seed=3, workdir=tmp_path, measure=True)
    assert [index for index, _, _ in report.over_budget] == [4]
    assert report.over_budget[0][1] >= 90 * MB and report.over_budget[0][2] == 16 * MB


def test_mutants_within_their_budget_are_not_reported(tmp_path: Path) -> None:
    target = Allocating(lambda index, call: 4 * MB)
    report = runner.run(target, 6, seed=3, workdir=tmp_path, measure=True)
    assert report.over_budget == [] and 2 * MB < report.peak < 16 * MB  # measured, and under


def test_a_peak_from_another_thread_is_not_blamed_on_the_mutant_that_was_running(tmp_path: Path) -> None:
    unlucky = _indices(6)[2]

    def cost(index: int, call: int) -> int:
        if index == unlucky and call == 1:  # another thread allocates while this mutant runs, once
            worker = threading.Thread(target=lambda: np.ones(96 * MB, np.uint8))
            worker.start()
            worker.join()
        return 0

    report = runner.run(Allocating(cost), 6, seed=3, workdir=tmp_path, measure=True)
    assert report.over_budget == [] and report.outcomes["ok"] == 6
