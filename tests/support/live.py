"""Stand-ins for what the live dialog's logic (gimp/live.py) talks to: a clock the test moves, a session that records
requests (`RecordingSession`: like the daemon, a superseding request cancels what has not ended), and a canvas/view
that records every call."""

from __future__ import annotations

from ffclip.gimp import live
from ffclip.plugin.protocol import EditParams, EditResult


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class RecordingSession:
    """Records requests; like the daemon, a superseding request cancels what has not ended."""

    def __init__(self) -> None:
        self.submitted: list[tuple[str, EditParams]] = []
        self.cancelled: list[str] = []
        self.status_requests = 0
        self.outstanding: list[str] = []
        self.most_outstanding = 0

    def submit(self, params: EditParams) -> str:
        job = f"job{len(self.submitted)}"
        if params.supersede:
            self.outstanding.clear()
        self.outstanding.append(job)
        self.most_outstanding = max(self.most_outstanding, len(self.outstanding))
        self.submitted.append((job, params))
        return job

    def cancel(self, job_id: str) -> None:
        self.cancelled.append(job_id)

    def request_status(self) -> None:
        self.status_requests += 1


class Recorder:
    """Canvas and view at once: every call, in order."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def __getattr__(self, name):
        return lambda *args, **kwargs: self.calls.append((name, *args, *kwargs.values()))

    def named(self, name: str) -> list[tuple]:
        return [c for c in self.calls if c[0] == name]


def run_for(editor: live.LiveEditor, clock: Clock, seconds: float, step: float = 0.05) -> None:
    end = clock.now + seconds
    while clock.now < end:
        clock.now += step
        editor.tick()


def result(region=(10, 20, 30, 40), faces=None, size=128) -> EditResult:
    faces = faces if faces is not None else [{"index": 0, "box": [10, 20, 30, 40]}]
    return EditResult(region, bytes(region[2] * region[3] * 4), faces, size=size, preview=True)
