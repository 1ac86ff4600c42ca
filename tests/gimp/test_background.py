"""The set-up run in a thread for the dialog (gimp/background.py): its events, then its ending."""

from __future__ import annotations

import threading

from ffclip.gimp.background import BackgroundRun
from tests.support.waiting import until


class Slow:
    def __init__(self, on_event, outcome):
        self.on_event, self.outcome = on_event, outcome
        self.go, self.cancelled = threading.Event(), threading.Event()

    def run(self):
        self.on_event("step 1")
        self.go.wait(20)
        if self.cancelled.is_set():
            raise RuntimeError("cancelled")
        self.on_event("step 2")
        if isinstance(self.outcome, BaseException):
            raise self.outcome
        return self.outcome

    def cancel(self):
        self.cancelled.set()
        self.go.set()


def collect(run: BackgroundRun, n: int) -> list:
    seen: list = []
    until(lambda: seen.extend(run.poll()) or len(seen) >= n)
    return seen


def test_events_then_the_result_in_order():
    run = BackgroundRun(lambda on_event: Slow(on_event, "done"))
    assert collect(run, 1) == ["step 1"]
    assert run.poll() == []  # nothing twice
    run.setup.go.set()
    assert collect(run, 2) == ["step 2", "done"]


def test_a_failure_and_a_cancel_arrive_as_exceptions():
    error = ValueError("no python")
    run = BackgroundRun(lambda on_event: Slow(on_event, error))
    run.setup.go.set()
    assert collect(run, 3)[-1] is error
    run = BackgroundRun(lambda on_event: Slow(on_event, "done"))
    run.cancel()
    ending = collect(run, 2)[-1]
    assert isinstance(ending, RuntimeError) and str(ending) == "cancelled"
