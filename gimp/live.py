"""The live dialog's logic, without GTK: what to ask the engine, when, and what to show.

`LiveEditor` takes the user's input (attribute rows, the face choice, the before/after toggle,
Apply, Cancel), the engine's events (`ffclip.plugin.session`) and the clock, and drives three
ports: the engine (submit, cancel, status), the canvas (the preview layer, the final layer) and the
view (status line, progress, face chooser). The GTK dialog (gimp/dialog.py) only binds widgets to
it, so every decision here is tested with plain Python and a fake clock.

- A preview is asked for once the input has been still for DEBOUNCE_S; each request supersedes the
  one before (the engine cancels it), so typing a prompt queues at most one preview.
- Only the newest request's answer is shown; a stale one is dropped.
- Apply asks for the full resolution with the same parameters (the engine has their Δw cached)
  and ends the dialog with the result; Cancel cancels what runs and removes the preview.
- The domain (faces, a car, a church) goes into every request; the engine's readiness is judged
  per domain (a car's networks may be loading, or missing, while faces are ready).
Standard library only.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Protocol

from ffclip.plugin import session as events
from ffclip.plugin.protocol import MAX_EDITS, Attribute, BadRequest, EditParams, EditResult, EngineError, EngineState

from .edit import STRENGTH_DEFAULT, download_text, error_message, overall_progress, stage_text

DEBOUNCE_S = 0.3  # how long the input must be still before a preview is asked for
STATUS_POLL_S = 1.0  # how often the engine's state is asked while it is not ready
ROWS_MAX = MAX_EDITS
RECENT_MAX = 20  # recent prompts kept for completion


class Engine(Protocol):
    def submit(self, params: EditParams) -> str: ...

    def cancel(self, job_id: str) -> None: ...

    def request_status(self) -> None: ...


class Canvas(Protocol):
    def show_preview(self, result: EditResult, visible: bool) -> None: ...

    def set_preview_visible(self, visible: bool) -> None: ...

    def remove_preview(self) -> None: ...

    def place_result(self, result: EditResult, params: EditParams) -> None: ...


class View(Protocol):
    def set_status(self, text: str, fraction: float | None = None) -> None: ...

    def set_engine(self, text: str, ready: bool) -> None: ...

    def set_faces(self, labels: list[tuple[int, str]]) -> None: ...

    def set_busy(self, busy: bool) -> None: ...

    def close(self, applied: bool) -> None: ...


class LiveEditor:
    def __init__(
        self,
        engine: Engine,
        canvas: Canvas,
        view: View,
        width: int,
        clock: Callable[[], float] = time.monotonic,
        debounce: float = DEBOUNCE_S,
        start_engine: Callable[[], None] | None = None,
    ) -> None:
        """`start_engine`: starts the daemon when it cannot be reached (the plug-in's autostart)."""
        self.engine, self.canvas, self.view = engine, canvas, view
        self.start_engine = start_engine
        self.width = width  # of the layer, to describe where each face is
        self.clock, self.debounce = clock, debounce
        self.rows: list[tuple[str, float]] = [("", STRENGTH_DEFAULT)]
        self.faces: str | tuple[int, ...] = "all"
        self.domain = "face"
        self.show_before = False
        self.due: float | None = None  # when the next preview is to be asked for
        self.latest: str | None = None  # the newest preview request
        self.requested: EditParams | None = None  # ... and what it asked for
        self.shown: EditParams | None = None  # the preview on the canvas
        self.applying: str | None = None
        self.applied_params: EditParams | None = None
        self.closed = False
        self.engine_ready = False
        self.last_poll = float("-inf")
        self.known_faces: list[dict] = []
        self.last_status: dict = {}

    # ------------------------------------------------------------------ user input

    def input_changed(
        self, rows: Sequence[tuple[str, float]], faces: str | tuple[int, ...] | None = None, domain: str | None = None
    ) -> None:
        """The attribute rows (prompt, strength), the face choice or the domain changed: preview after
        a pause."""
        if self.applying or self.closed:
            return
        self.rows = [(str(p), float(s)) for p, s in rows][:ROWS_MAX]
        if faces is not None:
            self.faces = faces
        if domain is not None and domain != self.domain:
            self.domain = domain
            if self.last_status:  # is the new domain ready? (its networks load on first use)
                self._engine_status(self.last_status)
        self.due = self.clock() + self.debounce

    def toggle_before(self, show_before: bool) -> None:
        self.show_before = show_before
        if self.shown is not None:
            self.canvas.set_preview_visible(not show_before)

    def apply(self) -> None:
        """Render at full resolution; the dialog closes with the result."""
        if self.applying or self.closed:
            return
        params = self.params(preview=False)
        if params is None:
            self.view.set_status("Type a prompt describing the edit, for example \u201csmiling\u201d.")
            return
        self.due = None
        self.applied_params = params
        self.applying = self.engine.submit(params)
        self.view.set_busy(True)
        self.view.set_status("Rendering the faces at full resolution\u2026", 0.0)

    def cancel(self) -> None:
        """Close without changing the image: what runs is cancelled, the preview removed."""
        if self.closed:
            return
        for job in (self.latest, self.applying):
            if job is not None:
                self.engine.cancel(job)
        self.canvas.remove_preview()
        self._close(applied=False)

    # ------------------------------------------------------------------ time

    def tick(self) -> None:
        """Called often (every ~50 ms) by the dialog's main loop."""
        if self.closed:
            return
        now = self.clock()
        if not self.engine_ready and now - self.last_poll >= STATUS_POLL_S:
            self.last_poll = now
            self.engine.request_status()
        if self.due is not None and now >= self.due and not self.applying:
            self.due = None
            self._preview()

    def _preview(self) -> None:
        params = self.params(preview=True)
        if params is None:
            self.view.set_status("Type a prompt describing the edit, for example \u201csmiling\u201d.")
            return
        if params == self.requested:
            return  # the same request is on its way or shown
        self.requested = params
        self.latest = self.engine.submit(params)

    def params(self, preview: bool) -> EditParams | None:
        """The edit the rows describe (rows without words left out); None when there is nothing to edit."""
        attributes = [Attribute(p, s) for p, s in self.rows if " ".join(p.split())]
        if not attributes:
            return None
        faces = self.faces if self.domain == "face" else "all"
        try:
            return EditParams(tuple(attributes), faces, preview=preview, supersede=True, domain=self.domain)
        except BadRequest as exc:
            self.view.set_status(f"This edit cannot be sent: {exc.message}.")
            return None

    # ------------------------------------------------------------------ engine events

    def on_event(self, event: events.Event) -> None:
        if self.closed:
            return
        if isinstance(event, events.StatusChanged):
            self._engine_status(event.status)
        elif isinstance(event, events.Progress | events.Queued):
            self._progress(event)
        elif isinstance(event, events.ResultReady):
            self._result(event.job_id, event.result)
        elif isinstance(event, events.JobFailed):
            self._failed(event.job_id, event.error)
        elif isinstance(event, events.JobCancelled) and event.job_id == self.applying:
            self.applying = None
            self.view.set_busy(False)
        elif isinstance(event, events.Disconnected):
            self.engine_ready = False
            self.view.set_engine(error_message(event.error), False)

    def _engine_status(self, status: dict) -> None:
        self.last_status = status
        was_ready = self.engine_ready
        text, self.engine_ready = engine_state(status, self.domain)
        self.view.set_engine(text, self.engine_ready)
        if self.engine_ready and not was_ready and self.shown is None and not self.applying:
            self.requested, self.due = None, self.clock()  # (again) now that it can edit

    def _progress(self, event: events.Progress | events.Queued) -> None:
        if event.job_id not in (self.latest, self.applying):
            return
        if isinstance(event, events.Queued):
            self.view.set_status(stage_text("queued", event.position))
        else:
            self.view.set_status(
                stage_text(event.stage, domain=self.domain), overall_progress(event.stage, event.value)
            )

    def _result(self, job_id: str, result: EditResult) -> None:
        if job_id == self.applying:
            self.canvas.remove_preview()
            self.canvas.place_result(result, self.applied_params)
            self._close(applied=True)
        elif job_id == self.latest:
            self.shown = self.requested
            self.canvas.show_preview(result, visible=not self.show_before)
            if self.domain == "face" and self.faces == "all" and len(result.faces) > 1 and not self.known_faces:
                self.known_faces = result.faces
                self.view.set_faces(face_labels(result.faces, self.width))
            self.view.set_status(preview_note(result), 1.0)

    def _failed(self, job_id: str | None, error: EngineError) -> None:
        if job_id is not None and job_id not in (self.latest, self.applying):
            return  # an old preview's failure does not matter any more
        if job_id is not None and job_id == self.applying:
            self.applying = None
            self.view.set_busy(False)
        if job_id == self.latest:
            self.requested = None  # asking again is worth it (the engine may be back)
        if error.code == "connection_failed" and self.start_engine is not None:
            start, self.start_engine = self.start_engine, None  # once
            start()
            self.view.set_engine(stage_text("start"), False)
            return
        self.view.set_status(error_message(error))

    def _close(self, applied: bool) -> None:
        self.closed = True
        self.view.close(applied)


# --------------------------------------------------------------------------- words for the view


def engine_state(status: dict, domain: str = "face") -> tuple[str, bool]:
    """(a line about the engine's state, whether it can edit `domain` now)."""
    state = status.get("state", EngineState.READY)
    models = status.get("models") or {}
    if domain != "face" and state not in EngineState.WAITING:
        return _domain_state(status, domain)
    if state == EngineState.LOADING:
        return "The FFCLIP engine is loading its models\u2026", False
    if state == EngineState.DOWNLOADING:
        return f"The FFCLIP engine is fetching its models: {download_text(status) or 'downloading'}", False
    if state == EngineState.MISSING:
        fetch = models.get("fetch") or "ffclip-engine models fetch"
        return f"The FFCLIP engine has no model weights yet: run {fetch}", False
    if state == EngineState.FAILED:
        return "The FFCLIP engine could not load its models; see its log (engine.log).", False
    device = status.get("device", "?")
    if status.get("untrained"):
        return f"Engine ready on {device}: tiny profile, untrained networks \u2014 the edits are noise.", True
    return f"Engine ready on {device}.", True


def _domain_state(status: dict, domain: str) -> tuple[str, bool]:
    """A car's or church's readiness: its networks load on the first edit (or may be missing)."""
    info = (status.get("domains") or {}).get(domain)
    if info is None:
        return f"This FFCLIP engine edits faces only; update it to edit a {domain}.", False
    state = info.get("state")
    if state == EngineState.MISSING:
        fetch = info.get("fetch") or f"ffclip-engine models fetch {domain}"
        return f"The FFCLIP engine has no {domain} model weights yet: run {fetch}", False
    if state == EngineState.FAILED:
        return f"The FFCLIP engine could not load its {domain} models; see its log (engine.log).", False
    untrained = " tiny profile, untrained networks — the edits are noise." if status.get("untrained") else ""
    if state == EngineState.LOADING:
        return f"Loading the {domain} models…{untrained}", True  # the edit waits for them
    device = status.get("device", "?")
    first = " (its models load with the first preview)" if state == EngineState.AVAILABLE else ""
    return f"Engine ready on {device} for a {domain}{first}.{untrained}", True


def preview_note(result: EditResult) -> str:
    size = f"{result.size} px" if result.size else "low resolution"
    if result.domain != "face":
        return f"Preview: the {result.domain} drawn at {size}; Apply renders it at full resolution."
    return f"Preview: faces drawn at {size}; Apply renders them at full resolution."


def face_labels(faces: Iterable[dict], width: int) -> list[tuple[int, str]]:
    """(index, "Face 1: left, 140 px wide") for a face chooser, numbered from 1 as users count."""
    labels = []
    for face in faces:
        x, _, w, _ = face.get("box") or (0, 0, 0, 0)
        centre = (x + w / 2) / max(width, 1)
        where = "left" if centre < 0.36 else "right" if centre > 0.64 else "middle"
        labels.append((int(face["index"]), f"Face {int(face['index']) + 1}: {where}, {int(w)} px wide"))
    return labels


# --------------------------------------------------------------------------- prompt completion


def training_prompts(path: Path | None = None) -> list[str]:
    """FFCLIP's training prompts (engine/data/prompts.txt, shipped with the plug-in as prompts.txt),
    each once, in order."""
    if path is None:
        here = Path(__file__).resolve().parent
        candidates = [here / "prompts.txt", here.parent / "engine" / "data" / "prompts.txt"]
        path = next((p for p in candidates if p.is_file()), None)
    if path is None:
        return []
    lines = (line.strip() for line in path.read_text(encoding="utf-8").splitlines())
    return list(dict.fromkeys(line for line in lines if line and not line.startswith(("#", "["))))


def suggestions(recent: Sequence[str], training: Sequence[str]) -> list[str]:
    """What the prompt fields complete from: the user's recent prompts first, then the training ones."""
    return list(dict.fromkeys([*recent, *training]))


def remember_prompts(recent: Sequence[str], used: Iterable[str], limit: int = RECENT_MAX) -> list[str]:
    """The recent-prompt list after an Apply with `used` (most recent first, no repeats)."""
    return list(dict.fromkeys([*used, *recent]))[:limit]
