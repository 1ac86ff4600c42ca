"""The live dialog's logic, without GTK: what to ask the engine, when, and what to show.

`LiveEditor` takes the user's input (attribute rows, the face choice, Enter, the before/after
toggle, Start, Apply, Cancel), the engine's events (`ffclip.plugin.session`) and the clock, and
drives four ports: the engine (submit, cancel, status), the canvas (the preview, the final layer),
the view (engine line, status line, face chooser) and the starter (the engine's process). The GTK
dialog (gimp/dialog.py) only binds widgets to it, so every decision here is tested with plain
Python and a fake clock.

- A preview is asked for once the input has been still for DEBOUNCE_S (Enter: at once); each
  request supersedes the one before (the engine cancels it), so typing queues at most one preview.
  Only the newest request's answer is shown; an empty prompt takes the preview away.
- The engine's state is known within a poll or two of opening: connecting, not running (with Start
  where the plug-in can start it), starting (and why a start failed), loading, downloading,
  missing models, ready, lost. Each is one short line; when the engine is back after being away,
  the current input is previewed again without the user doing anything.
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
from ffclip.plugin.protocol import (
    MAX_EDITS,
    Attribute,
    BadRequest,
    EditParams,
    EditResult,
    EngineError,
    EngineState,
    StatusMessage,
)

from .edit import STAGE_TEXT, STRENGTH_DEFAULT, PluginError, download_text, error_message, overall_progress, stage_text

DEBOUNCE_S = 0.3  # how long the input must be still before a preview is asked for
STATUS_POLL_S = 1.0  # how often the engine's state is asked while it is not ready
START_TIMEOUT_S = 120.0  # how long a started engine may take to answer
ROWS_MAX = MAX_EDITS
RECENT_MAX = 20  # recent prompts kept for completion
IDLE = 0.0  # the status line's fraction when nothing runs (None: busy, no known fraction)
SETUP_STEP_TEXT = {  # gimp/setup.py's step names, as the engine line says them
    "python": "finding Python",
    "environment": "making its own Python environment",
    "pip": "installing pip",
    "torch": "installing PyTorch",
    "engine": "installing the engine",
    "service": "registering it to start with your session",
    "start": "starting it",
}
TYPE_A_PROMPT = "Type a prompt describing the edit, for example \u201csmiling\u201d, and press Enter."


class Engine(Protocol):
    def submit(self, params: EditParams) -> str: ...

    def cancel(self, job_id: str) -> None: ...

    def request_status(self) -> None: ...


class Canvas(Protocol):
    def show_preview(self, result: EditResult, visible: bool, badges: list[tuple[int, list]]) -> None: ...

    def set_preview_visible(self, visible: bool) -> None: ...

    def remove_preview(self) -> None: ...

    def place_result(self, result: EditResult, params: EditParams) -> None: ...


class View(Protocol):
    def set_status(self, text: str, fraction: float | None = IDLE) -> None: ...

    def set_engine(self, text: str, ready: bool, can_start: bool = False) -> None: ...

    def set_faces(self, labels: list[tuple[int, str]]) -> None: ...

    def set_busy(self, busy: bool) -> None: ...

    def set_actions(self, setup: bool, setup_running: bool, diagnose: bool) -> None:
        """The engine row's buttons: "Set up the engine on this computer", "Cancel the set-up", "Diagnose"."""

    def setup_finished(self, result) -> None:
        """The set-up ended well: its settings (start command, autostart) are to be taken up."""

    def setup_failed(self, error: BaseException) -> None:
        """The set-up failed: its details (log lines, how to retry) for the user."""

    def close(self, applied: bool) -> None: ...


class StartedEngine(Protocol):
    def exited(self) -> str | None:
        """None while the process runs; once it has ended, why (its exit status and last log lines)."""


class Starter(Protocol):
    def start(self) -> StartedEngine:
        """Start the engine's process; PluginError (a sentence) when it cannot be started at all."""


class SetupRun(Protocol):
    """A set-up of the engine running in the background (gimp/background.py)."""

    def poll(self) -> list:
        """What happened since the last call: SetupEvent-like objects (step, steps, name, text,
        fraction), then at the end one SetupResult, or an exception (a SetupError: step, message,
        retry; SetupCancelled for a cancelled one)."""

    def cancel(self) -> None: ...


class Installer(Protocol):
    def start(self, profile: str) -> SetupRun:
        """Set up the engine on this computer (`profile`: "" for the real models, "tiny" for the trial)."""


class LiveEditor:
    def __init__(
        self,
        engine: Engine,
        canvas: Canvas,
        view: View,
        width: int,
        clock: Callable[[], float] = time.monotonic,
        debounce: float = DEBOUNCE_S,
        starter: Starter | None = None,
        autostart: bool = False,
        url: str = "",
        start_timeout: float = START_TIMEOUT_S,
        installer: Installer | None = None,
    ) -> None:
        """`starter`: how to start the engine here (None: it cannot be, e.g. a remote URL);
        `autostart`: start it as soon as it is found not running; `installer`: how to set the engine
        up on this computer when none is (None: not offered, e.g. for a remote URL)."""
        self.engine, self.canvas, self.view = engine, canvas, view
        self.starter, self.autostart, self.url = starter, autostart, url
        self.installer = installer
        self.setup_run: SetupRun | None = None
        self.start_failed = False  # the last start failed: the set-up is offered (again)
        self.setup_error: BaseException | None = None  # the last set-up's failure: Diagnose is offered
        self.offered: tuple[bool, bool, bool] | None = None  # (set-up, set-up running, diagnose) shown
        self.start_timeout = start_timeout
        self.width = width  # of the layer, to describe where each face is
        self.clock, self.debounce = clock, debounce
        self.rows: list[tuple[str, float]] = [("", STRENGTH_DEFAULT)]
        self.faces: str | tuple[int, ...] = "all"
        self.domain = "face"
        self.fidelity = "standard"  # or "high": HyperStyle's inversion ("Keep the person (slower)")
        self.show_before = False
        self.due: float | None = None  # when the next preview is to be asked for
        self.latest: str | None = None  # the newest preview request
        self.requested: EditParams | None = None  # ... and what it asked for
        self.shown: EditParams | None = None  # the preview on the canvas
        self.applying: str | None = None
        self.applied_params: EditParams | None = None
        self.closed = False
        self.engine_ready = False
        self.connection = "connecting"  # connecting | absent | starting | connected | lost
        self.started: StartedEngine | None = None
        self.start_time = 0.0
        self.tried_autostart = False
        self.last_poll = float("-inf")
        self.known_faces: list[dict] = []
        self.last_status: dict = {}
        self.view.set_engine(STAGE_TEXT["connect"] + "\u2026", False)
        self.view.set_status(TYPE_A_PROMPT, IDLE)

    # ------------------------------------------------------------------ user input

    def input_changed(
        self,
        rows: Sequence[tuple[str, float]],
        faces: str | tuple[int, ...] | None = None,
        domain: str | None = None,
        fidelity: str | None = None,
    ) -> None:
        """The attribute rows (prompt, strength), the face choice, the domain or the fidelity changed:
        preview after a pause. `fidelity` "high" only where the engine takes it
        (`StatusMessage.fidelities`); an engine without HyperStyle's files answers models_missing."""
        if self.applying or self.closed:
            return
        self.rows = [(str(p), float(s)) for p, s in rows][:ROWS_MAX]
        if faces is not None:
            self.faces = faces
        if fidelity is not None:
            self.fidelity = fidelity
        if domain is not None and domain != self.domain:
            self.domain = domain
            if self.last_status:  # is the new domain ready? (its networks load on first use)
                self._engine_status(self.last_status)
        self.due = self.clock() + self.debounce

    def preview_now(self) -> None:
        """Enter in a prompt field: the preview is asked for at once, without the pause."""
        if not self.applying and not self.closed:
            self.due = self.clock()

    def toggle_before(self, show_before: bool) -> None:
        self.show_before = show_before
        if self.shown is not None:
            self.canvas.set_preview_visible(not show_before)

    def start(self) -> None:
        """Start the engine (the Start button, or autostart when it is found not running)."""
        if self.starter is None or self.connection in ("starting", "connected") or self.closed:
            return
        try:
            self.started = self.starter.start()
        except PluginError as exc:
            self.start_failed = True
            self.view.set_engine(first_line(str(exc)), False, can_start=True)
            self._offer()
            return
        self.connection, self.start_time = "starting", self.clock()
        self.last_poll = self.start_time  # give it a moment before asking
        self.view.set_engine(STAGE_TEXT["start"] + "\u2026", False)

    def apply(self) -> None:
        """Render at full resolution; the dialog closes with the result."""
        if self.applying or self.closed:
            return
        params = self.params(preview=False)
        if params is None:
            self.view.set_status(TYPE_A_PROMPT, IDLE)
            return
        self.due = None
        self.applied_params = params
        self.applying = self.engine.submit(params)
        self.view.set_busy(True)
        self.view.set_status("Rendering at full resolution\u2026", 0.0)

    def cancel(self) -> None:
        """Close without changing the image: what runs is cancelled, the preview removed."""
        if self.closed:
            return
        for job in (self.latest, self.applying):
            if job is not None:
                self.engine.cancel(job)
        if self.setup_run is not None:  # it resumes where it stopped when run again
            self.setup_run.cancel()
            self.setup_run = None
        self.canvas.remove_preview()
        self._close(applied=False)

    # ------------------------------------------------------------------ time

    def tick(self) -> None:
        """Called often (every ~50 ms) by the dialog's main loop."""
        if self.closed:
            return
        now = self.clock()
        if self.setup_run is not None:
            self._watch_setup()
        if self.connection == "starting":
            self._watch_start(now)
        if not self.engine_ready and now - self.last_poll >= STATUS_POLL_S:
            self.last_poll = now
            self.engine.request_status()
        if self.due is not None and now >= self.due and not self.applying:
            self.due = None
            self._preview()

    def _watch_start(self, now: float) -> None:
        reason = self.started.exited() if self.started is not None else None
        if reason is None and now - self.start_time < self.start_timeout:
            return
        self.connection, self.started = "absent", None
        if reason is None:
            reason = f"it did not answer within {self.start_timeout:g} s"
        self.start_failed = True
        self.view.set_engine(f"The FFCLIP engine could not start: {reason}", False, can_start=True)
        self._offer()

    def _preview(self) -> None:
        params = self.params(preview=True)
        if params is None:
            self._clear_preview()
            return
        if params == self.requested:
            return  # the same request is on its way or shown
        self.requested = params
        self.latest = self.engine.submit(params)

    def _clear_preview(self) -> None:
        """No words in any row: no preview on the canvas, nothing on its way."""
        if self.latest is not None:
            self.engine.cancel(self.latest)
        if self.shown is not None:
            self.canvas.remove_preview()
        self.latest = self.requested = self.shown = None
        self.view.set_status(TYPE_A_PROMPT, IDLE)

    def params(self, preview: bool) -> EditParams | None:
        """The edit the rows describe (rows without words left out); None when there is nothing to edit."""
        attributes = [Attribute(p, s) for p, s in self.rows if " ".join(p.split())]
        if not attributes:
            return None
        faces = self.faces if self.domain == "face" else "all"
        try:
            return EditParams(
                tuple(attributes), faces, preview=preview, supersede=True, domain=self.domain, fidelity=self.fidelity
            )
        except BadRequest as exc:
            self.view.set_status(f"This edit cannot be sent: {exc.message}.", IDLE)
            return None

    # ------------------------------------------------------------------ setting the engine up

    def setup(self, profile: str = "") -> None:
        """Set the engine up on this computer (the dialog's button, after the user confirmed)."""
        if self.installer is None or self.setup_run is not None or self.closed or self.connection == "connected":
            return
        self.setup_run, self.setup_error = self.installer.start(profile), None
        self.view.set_engine("Setting up the FFCLIP engine on this computer\u2026", False)
        self._offer()

    def cancel_setup(self) -> None:
        if self.setup_run is not None:
            self.setup_run.cancel()  # its SetupCancelled arrives through poll()

    def _watch_setup(self) -> None:
        for item in self.setup_run.poll():
            if isinstance(item, BaseException):
                self._setup_failed(item)
            elif hasattr(item, "step"):
                doing = SETUP_STEP_TEXT.get(item.name, item.name)
                self.view.set_engine(f"Setting up the FFCLIP engine, step {item.step} of {item.steps}: {doing}", False)
                self.view.set_status(first_line(item.text), item.fraction)
            else:  # the SetupResult: the engine is installed, started and answering
                self.setup_run, self.start_failed = None, False
                self.connection, self.last_poll = "connecting", float("-inf")  # asked at once
                self.view.setup_finished(item)  # the dialog reloads its settings (start command, autostart)
                self.view.set_engine("The FFCLIP engine is set up; connecting\u2026", False)
                self.view.set_status(TYPE_A_PROMPT, IDLE)
                self._offer()
            if self.setup_run is None:
                return

    def _setup_failed(self, error: BaseException) -> None:
        self.setup_run = None
        cancelled = type(error).__name__ == "SetupCancelled"
        self.setup_error = None if cancelled else error
        self.connection = "absent"
        if cancelled:
            self.view.set_engine("The set-up was cancelled; set up again to go on where it stopped.", False)
        else:
            step = getattr(error, "step", "") or "?"
            message = first_line(getattr(error, "message", "") or str(error))
            self.view.set_engine(f"The set-up failed at step \u201c{step}\u201d: {message}", False)
            self.view.setup_failed(error)  # the details: the log's last lines, how to retry
        self.view.set_status(TYPE_A_PROMPT, IDLE)
        self._offer()

    def _offer(self) -> None:
        """Show the set-up button where there is no engine to start (or starting it failed), and
        Diagnose where something failed."""
        running = self.setup_run is not None
        absent = self.connection == "absent" and not self.closed
        setup = self.installer is not None and absent and not running and (self.starter is None or self.start_failed)
        state = self.last_status.get("state") if self.connection == "connected" else None
        diagnose = (absent and (self.start_failed or self.setup_error is not None)) or state == EngineState.FAILED
        offered = (setup, running, diagnose)
        if offered != self.offered:
            self.offered = offered
            self.view.set_actions(setup=setup, setup_running=running, diagnose=diagnose)

    # ------------------------------------------------------------------ engine events

    def on_event(self, event: events.Event) -> None:
        if self.closed:
            return
        if isinstance(event, events.StatusChanged):
            self._engine_status(event.status)
        elif isinstance(event, events.Progress | events.Queued | events.Resending):
            self._progress(event)
        elif isinstance(event, events.ResultReady):
            self._result(event.job_id, event.result)
        elif isinstance(event, events.JobFailed):
            self._failed(event.job_id, event.error)
        elif isinstance(event, events.JobCancelled) and event.job_id == self.applying:
            self.applying = None
            self.view.set_busy(False)
        elif isinstance(event, events.Disconnected):
            self._lost()
        elif isinstance(event, events.Unreachable):
            self._unreachable(event.error)

    def _engine_status(self, status: dict) -> None:
        self.last_status = status
        was_ready = self.engine_ready
        self.connection, self.started = "connected", None
        self.start_failed = False
        text, self.engine_ready = engine_state(status, self.domain)
        self.view.set_engine(text, self.engine_ready)
        self.view.offer_fidelity(*high_fidelity(status, self.domain))
        self._offer()
        if self.engine_ready and not was_ready and not self.applying:
            # (again) now that it can edit: the preview asked while it was away, or never asked
            self.requested = None
            if self.params(preview=True) is not None:
                self.due = self.clock()

    def _unreachable(self, error: EngineError) -> None:
        """A connection attempt failed: the engine is not running (or not reachable)."""
        if self.connection == "starting" or self.setup_run is not None:
            return  # a started engine takes a while to listen; _watch_start (_watch_setup) judges it
        self.engine_ready = False
        if self.connection == "lost":
            return  # "reconnecting" says it
        was = self.connection
        self.connection = "absent"
        if was == "absent":
            return  # said once, when it went away; the line may say why a start or a set-up failed
        self._offer()
        if error.code != "connection_failed":  # a certificate, a token: not a matter of starting it
            self.view.set_engine(first_line(error_message(error, self.url)), False)
            return
        if self.autostart and self.starter is not None and not self.tried_autostart:
            self.tried_autostart = True
            self.start()
            return
        where = f" at {self.url}" if self.url else ""
        if self.starter is None and self.installer is not None:  # nothing here knows how to start one
            self.view.set_engine(f"The FFCLIP engine is not running{where}, and none is set up to start here.", False)
            return
        self.view.set_engine(f"The FFCLIP engine is not running{where}.", False, can_start=self.starter is not None)

    def _lost(self) -> None:
        self.engine_ready = False
        self.connection = "lost"
        self.view.set_engine("Lost the FFCLIP engine; reconnecting\u2026", False)

    def _progress(self, event: events.Progress | events.Queued | events.Resending) -> None:
        if event.job_id not in (self.latest, self.applying):
            return
        if isinstance(event, events.Resending):  # its engine went away: the session sends it again
            self.latest = event.new_id if self.latest == event.job_id else self.latest
            self.applying = event.new_id if self.applying == event.job_id else self.applying
            self.view.set_status(stage_text("moved"), None)
        elif isinstance(event, events.Queued):
            self.view.set_status(stage_text("queued", event.position), None)
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
            badges: list[tuple[int, list]] = []
            if self.domain == "face" and len(result.faces) > 1:
                if not self.known_faces and self.faces == "all":
                    self.known_faces = result.faces
                    self.view.set_faces(face_labels(result.faces, self.width))
                badges = face_badges(result.faces)
            self.canvas.show_preview(result, not self.show_before, badges)
            self.view.set_status(preview_note(result), 1.0)
            if self.domain != "face":  # its networks loaded with this preview: the engine line follows
                self.engine.request_status()

    def _failed(self, job_id: str | None, error: EngineError) -> None:
        if job_id is not None and job_id not in (self.latest, self.applying):
            return  # an old preview's failure does not matter any more
        if job_id is not None and job_id == self.applying:
            self.applying = None
            self.view.set_busy(False)
        if job_id == self.latest:
            self.requested = None  # asking again is worth it (the engine may be back)
        if error.code == "connection_failed":
            return  # the engine line says it (Unreachable, Disconnected); the preview comes when it is back
        self.view.set_status(first_line(error_message(error, self.url)), IDLE)

    def _close(self, applied: bool) -> None:
        self.closed = True
        self.view.close(applied)


# --------------------------------------------------------------------------- words for the view


def first_line(text: str) -> str:
    """A message's first line: the dialog shows one short line (the long form is for the error console)."""
    return text.strip().splitlines()[0] if text.strip() else text


def engine_state(status: dict, domain: str = "face") -> tuple[str, bool]:
    """(a line about the engine's state, whether it can edit `domain` now)."""
    state = status.get("state", EngineState.READY)
    models = status.get("models") or {}
    if state == EngineState.DRAINING:  # edits are refused there and go to another engine (EngineSession)
        return "This FFCLIP engine is stopping; edits go to another engine if there is one.", True
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
    if status.get("precision"):  # the arithmetic in use, e.g. "bf16 previews, fp32 Apply"
        device = f"{device} ({status['precision']})"
    if status.get("untrained"):
        return f"Engine ready on {device}: tiny profile, untrained networks \u2014 the edits are noise.", True
    return f"Engine ready on {device}.", True


def high_fidelity(status: dict, domain: str = "face") -> tuple[bool, str]:
    """(whether this engine can edit `domain` with fidelity high now, why not in one line)."""
    if domain == "church":
        return False, "There is no HyperStyle for churches: a church is edited with the standard inversion."
    if domain == "face":
        offered, models = StatusMessage(status).fidelities, status.get("models") or {}
    else:  # a domain's own networks say it, once its engine describes them
        models = (status.get("domains") or {}).get(domain) or {}
        offered = models.get("fidelities") or ()
    if "high" in offered:
        return True, ""
    high = models.get("high_fidelity") or {}
    missing = f" ({', '.join(map(str, high['missing']))})" if high.get("missing") else ""
    fetch = f": {high['fetch']}" if high.get("fetch") else ""
    return False, f"This FFCLIP engine has no HyperStyle files for this{missing}{fetch}"


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


def faces_left_to_right(faces: Iterable[dict]) -> list[dict]:
    """The faces in the order a reader counts them: by the horizontal centre of their box."""
    return sorted(faces, key=lambda f: (f.get("box") or (0, 0, 0, 0))[0] + (f.get("box") or (0, 0, 0, 0))[2] / 2)


def face_labels(faces: Iterable[dict], width: int) -> list[tuple[int, str]]:
    """(the engine's index, "Face 1: left, 140 px wide") for the chooser, numbered from 1 left to
    right, the numbers the canvas shows beside each face (face_badges)."""
    labels = []
    for number, face in enumerate(faces_left_to_right(faces), 1):
        x, _, w, _ = face.get("box") or (0, 0, 0, 0)
        centre = (x + w / 2) / max(width, 1)
        where = "left" if centre < 0.36 else "right" if centre > 0.64 else "middle"
        labels.append((int(face["index"]), f"Face {number}: {where}, {int(w)} px wide"))
    return labels


def face_badges(faces: Iterable[dict]) -> list[tuple[int, list]]:
    """(number, box) of each face, numbered as face_labels numbers them, for the canvas."""
    return [(n, list(f.get("box") or (0, 0, 0, 0))) for n, f in enumerate(faces_left_to_right(faces), 1)]


# --------------------------------------------------------------------------- presets


def preset_names(settings: dict) -> list[str]:
    return sorted((settings.get("presets") or {}).keys(), key=str.casefold)


def preset_rows(settings: dict, name: str) -> list[tuple[str, float]]:
    """A saved preset's rows (prompt, strength); empty when there is no such preset."""
    rows = (settings.get("presets") or {}).get(name) or []
    out = []
    for row in rows[:ROWS_MAX]:
        try:
            out.append((str(row[0]), float(row[1])))
        except (IndexError, TypeError, ValueError):
            continue
    return out


def save_preset(settings: dict, name: str, rows: Sequence[tuple[str, float]]) -> bool:
    """Keep the rows with words under `name` (replacing a preset of that name); False when there is
    nothing to keep or no name."""
    name = " ".join(name.split())
    kept = [[p, round(float(s), 2)] for p, s in rows if " ".join(p.split())]
    if not name or not kept:
        return False
    presets = dict(settings.get("presets") or {})
    presets[name] = kept[:ROWS_MAX]
    settings["presets"] = presets
    return True


def delete_preset(settings: dict, name: str) -> None:
    presets = dict(settings.get("presets") or {})
    presets.pop(name, None)
    settings["presets"] = presets


def args_rows(prompt: str, strength: float, more_edits: str) -> list[tuple[str, float]]:
    """The dialog's rows for the procedure's arguments (its last values): the first row, then one per
    PROMPT=STRENGTH line of more-edits (lines that do not read are left out)."""
    rows = [(prompt or "", float(strength))]
    for line in (more_edits or "").splitlines():
        if line.strip():
            try:
                attribute = Attribute.parse(line)
            except BadRequest:
                continue
            rows.append((attribute.prompt, attribute.strength))
    return rows[:ROWS_MAX]


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
