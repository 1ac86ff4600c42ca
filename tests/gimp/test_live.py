"""The live dialog's logic (gimp/live.py) with fake ports and a fake clock: debounce and supersede,
which answer is shown, before/after, Apply, Cancel, the engine's state, faces, completion."""

from __future__ import annotations

import pytest

from ffclip.gimp import live
from ffclip.plugin import session as events
from ffclip.plugin.protocol import Attribute, ConnectionFailed, EngineError
from tests.support.live import Clock, Recorder, RecordingSession, result, run_for


@pytest.fixture()
def setup():
    clock, engine, canvas, view = Clock(), RecordingSession(), Recorder(), Recorder()
    editor = live.LiveEditor(engine, canvas, view, width=1000, clock=clock)
    return editor, clock, engine, canvas, view


def test_typing_a_prompt_asks_for_one_preview(setup):
    editor, clock, engine, _, _ = setup
    prompt = "smiling with teeth!!"
    assert len(prompt) == 20
    for n in range(1, len(prompt) + 1):  # one key every 0.1 s, the main loop ticking meanwhile
        editor.input_changed([(prompt[:n], 1.0)])
        run_for(editor, clock, 0.1)
    assert engine.submitted == []  # never still long enough
    run_for(editor, clock, live.DEBOUNCE_S + 0.1)
    assert [p.prompts for _, p in engine.submitted] == [(prompt,)]
    params = engine.submitted[0][1]
    assert params.preview and params.supersede and params.edits == (Attribute(prompt, 1.0),)
    editor.input_changed([(prompt + " ", 1.0)])  # a slider touched and put back, a trailing space
    run_for(editor, clock, 2.0)
    assert len(engine.submitted) == 1  # the same edit: nothing more is asked


def test_a_slow_typist_never_has_more_than_one_preview_queued(setup):
    editor, clock, engine, _, _ = setup
    for n in range(1, 21):  # a key every 0.5 s: every pause asks for a preview
        editor.input_changed([("x" * n, 1.0)])
        run_for(editor, clock, 0.5)
    assert len(engine.submitted) == 20
    assert all(p.supersede for _, p in engine.submitted) and engine.most_outstanding == 1


def test_only_the_newest_answer_is_shown(setup):
    editor, clock, engine, canvas, view = setup
    editor.input_changed([("smiling", 1.0)])
    run_for(editor, clock, 0.5)
    editor.input_changed([("smiling", 1.5)])
    run_for(editor, clock, 0.5)
    old, new = (job for job, _ in engine.submitted)
    before = list(view.named("set_status"))
    editor.on_event(events.Progress(old, "synthesize", 0.5))
    editor.on_event(events.ResultReady(old, result()))
    assert canvas.named("show_preview") == [] and view.named("set_status") == before
    editor.on_event(events.Progress(new, "synthesize", 0.5))
    editor.on_event(events.ResultReady(new, result(size=128)))
    assert len(canvas.named("show_preview")) == 1 and canvas.named("show_preview")[0][2] is True
    assert "128 px" in view.named("set_status")[-1][1]


def test_a_preview_and_an_apply_that_moved_engine_arrive_under_their_new_ids(setup):
    """The session resends a job whose engine went away under a new id (issue 28): the dialog follows
    the new id, says so, and shows its result; the old id's late answer is nobody's."""
    editor, clock, engine, canvas, view = setup
    editor.input_changed([("smiling", 1.0)])
    run_for(editor, clock, 0.5)
    old = engine.submitted[-1][0]
    editor.on_event(events.Resending(old, "moved-1", ConnectionFailed("the engine went away")))
    assert view.named("set_status")[-1][1] == live.stage_text("moved")
    editor.on_event(events.ResultReady(old, result()))  # the abandoned job's answer
    assert canvas.named("show_preview") == []
    editor.on_event(events.ResultReady("moved-1", result(size=128)))
    assert len(canvas.named("show_preview")) == 1
    editor.apply()
    job = engine.submitted[-1][0]
    editor.on_event(events.Resending(job, "moved-2", ConnectionFailed("the engine is draining")))
    editor.on_event(events.ResultReady("moved-2", result(size=1024)))
    assert canvas.named("place_result") and view.named("close") == [("close", True)]


def test_before_and_after(setup):
    editor, clock, engine, canvas, _ = setup
    editor.toggle_before(True)
    assert canvas.named("set_preview_visible") == []  # nothing shown yet
    editor.input_changed([("smiling", 1.0)])
    run_for(editor, clock, 0.5)
    editor.on_event(events.ResultReady(engine.submitted[-1][0], result()))
    assert canvas.named("show_preview")[-1][2] is False  # drawn, but hidden: "before" is on
    editor.toggle_before(False)
    editor.toggle_before(True)
    assert [c[1] for c in canvas.named("set_preview_visible")] == [True, False]


def test_apply_renders_full_resolution_and_closes_with_one_layer(setup):
    editor, clock, engine, canvas, view = setup
    rows = [("smiling", 0.8), ("grey hair", 1.2), ("", 1.0)]  # an empty row is left out
    editor.input_changed(rows)
    run_for(editor, clock, 0.5)
    editor.on_event(events.ResultReady(engine.submitted[-1][0], result()))
    editor.apply()
    job, params = engine.submitted[-1]
    assert not params.preview and params.supersede
    assert params.edits == (Attribute("smiling", 0.8), Attribute("grey hair", 1.2))
    editor.input_changed([("something else", 1.0)])  # ignored while applying
    run_for(editor, clock, 1.0)
    assert engine.submitted[-1][0] == job
    editor.on_event(events.ResultReady(job, result(size=1024)))
    assert [c[0] for c in canvas.calls[-2:]] == ["remove_preview", "place_result"]
    assert canvas.calls[-1][2] == params
    assert view.named("close") == [("close", True)]
    editor.on_event(events.ResultReady(job, result()))  # nothing after closing
    assert len(canvas.named("place_result")) == 1


def test_a_failed_apply_leaves_the_dialog_open(setup):
    editor, clock, engine, canvas, view = setup
    editor.input_changed([("smiling", 1.0)])
    editor.apply()
    editor.on_event(events.JobFailed(engine.submitted[-1][0], EngineError("no_face", "no face found")))
    assert view.named("close") == [] and view.named("set_busy")[-1] == ("set_busy", False)
    assert "No face" in view.named("set_status")[-1][1]
    editor.input_changed([("smiling", 1.0)])  # editing goes on
    run_for(editor, clock, 0.5)
    assert engine.submitted[-1][1].preview


def test_cancel_stops_what_runs_and_removes_the_preview(setup):
    editor, clock, engine, canvas, view = setup
    editor.input_changed([("smiling", 1.0)])
    run_for(editor, clock, 0.5)
    editor.on_event(events.ResultReady(engine.submitted[-1][0], result()))
    editor.input_changed([("smiling", 2.0)])
    run_for(editor, clock, 0.5)
    running = engine.submitted[-1][0]
    editor.cancel()
    assert engine.cancelled == [running]
    assert canvas.named("remove_preview") and not canvas.named("place_result")
    assert view.named("close") == [("close", False)]


def test_the_engine_state_is_shown_and_polled_until_ready(setup):
    editor, clock, engine, _, view = setup
    editor.tick()
    assert engine.status_requests == 1
    editor.on_event(events.StatusChanged({"state": "loading"}))
    run_for(editor, clock, 2.1)
    assert engine.status_requests == 3  # every second while not ready
    assert view.named("set_engine")[-1] == ("set_engine", "The FFCLIP engine is loading its models\u2026", False)
    download = {"file": "e4e_ffhq_encode.pt", "done": 300e6, "total": 1200e6, "files_left": 2}
    editor.on_event(events.StatusChanged({"state": "downloading", "download": download}))
    assert "300 of 1200 MB, 2 files to go" in view.named("set_engine")[-1][1]
    editor.on_event(events.StatusChanged({"state": "ready", "device": "cpu", "untrained": True}))
    assert "untrained" in view.named("set_engine")[-1][1] and view.named("set_engine")[-1][2] is True
    run_for(editor, clock, 3.0)
    assert engine.status_requests == 3  # ready: no more polling
    ready = {"state": "ready", "device": "cpu", "precision": "bf16 previews, fp32 Apply"}
    assert live.engine_state(ready) == ("Engine ready on cpu (bf16 previews, fp32 Apply).", True)  # issue 27
    assert live.engine_state({"state": "ready", "device": "cuda:0"}) == ("Engine ready on cuda:0.", True)
    missing = {"state": "missing", "models": {"fetch": "ffclip-engine models fetch"}}
    assert live.engine_state(missing) == (
        "The FFCLIP engine has no model weights yet: run ffclip-engine models fetch",
        False,
    )


def test_a_preview_asked_while_the_engine_was_away_is_asked_again(setup):
    editor, clock, engine, _, view = setup
    editor.input_changed([("smiling", 1.0)])
    run_for(editor, clock, 0.5)
    first = engine.submitted[-1][0]
    editor.on_event(events.JobFailed(first, ConnectionFailed("cannot reach the FFCLIP engine at ws://x")))
    assert "cannot reach" not in view.named("set_status")[-1][1]  # the engine line says it, once
    editor.on_event(events.StatusChanged({"state": "ready", "device": "cpu"}))
    run_for(editor, clock, 0.1)
    assert len(engine.submitted) == 2 and engine.submitted[-1][1].prompts == ("smiling",)


def test_several_faces_fill_the_chooser(setup):
    editor, clock, engine, canvas, view = setup
    editor.input_changed([("smiling", 1.0)])
    run_for(editor, clock, 0.5)
    faces = [{"index": 0, "box": [700, 100, 150, 150]}, {"index": 1, "box": [100, 120, 90, 90]}]
    editor.on_event(events.ResultReady(engine.submitted[-1][0], result(faces=faces)))
    assert view.named("set_faces") == [  # numbered left to right, the engine's index beside each
        ("set_faces", [(1, "Face 1: left, 90 px wide"), (0, "Face 2: right, 150 px wide")])
    ]
    badges = canvas.named("show_preview")[-1][3]  # the same numbers drawn beside the faces on the canvas
    assert badges == [(1, [100, 120, 90, 90]), (2, [700, 100, 150, 150])]
    editor.input_changed([("smiling", 1.0)], faces=(1,))
    run_for(editor, clock, 0.5)
    assert engine.submitted[-1][1].faces == (1,)


def test_no_words_no_request(setup):
    editor, clock, engine, _, view = setup
    editor.input_changed([("   ", 1.0)])
    run_for(editor, clock, 0.5)
    editor.apply()
    assert engine.submitted == [] and "Type a prompt" in view.named("set_status")[-1][1]


def test_completion_lists():
    training = live.training_prompts()
    assert "happy" in training and "Sad" in training and len(training) == len(set(training)) > 20
    assert not any(p.startswith(("#", "[")) for p in training)
    recent = live.remember_prompts(["curly hair", "smiling"], ["beard", "smiling"])
    assert recent == ["beard", "smiling", "curly hair"]
    assert live.suggestions(recent, ["Sad", "beard"])[:4] == ["beard", "smiling", "curly hair", "Sad"]
    assert len(live.remember_prompts([f"p{i}" for i in range(30)], ["new"])) == live.RECENT_MAX


# --------------------------------------------------------------------------- issue 25: engine states


class FakeStarter:
    """The engine's process: started when asked; `fail` makes it exit with a reason."""

    def __init__(self) -> None:
        self.starts = 0
        self.reason: str | None = None

    def start(self):
        self.starts += 1
        return self

    def exited(self) -> str | None:
        return self.reason


def editor_with(starter=None, autostart=False, url="ws://127.0.0.1:8765/"):
    clock, engine, canvas, view = Clock(), RecordingSession(), Recorder(), Recorder()
    editor = live.LiveEditor(
        engine, canvas, view, width=1000, clock=clock, starter=starter, autostart=autostart, url=url
    )
    return editor, clock, engine, canvas, view


def not_running():
    return events.Unreachable(ConnectionFailed("cannot reach the FFCLIP engine at ws://127.0.0.1:8765/"))


def test_an_engine_that_is_not_running_is_said_within_the_first_poll_with_a_start_button():
    starter = FakeStarter()
    editor, clock, engine, _, view = editor_with(starter)
    assert view.named("set_engine")[0][1].startswith("Connecting")
    editor.tick()  # the dialog's first tick asks for the status at once
    assert engine.status_requests == 1
    editor.on_event(not_running())  # the session's answer to a refused connection
    assert view.named("set_engine")[-1] == (
        "set_engine",
        "The FFCLIP engine is not running at ws://127.0.0.1:8765/.",
        False,
        True,  # the Start button
    )
    assert starter.starts == 0  # no autostart: the user decides
    editor.start()
    assert starter.starts == 1 and view.named("set_engine")[-1][1] == "Starting the FFCLIP engine\u2026"
    editor.on_event(not_running())  # still coming up: the line stays
    assert view.named("set_engine")[-1][1] == "Starting the FFCLIP engine\u2026"
    editor.on_event(events.StatusChanged({"state": "loading"}))
    assert view.named("set_engine")[-1][1] == "The FFCLIP engine is loading its models\u2026"


def test_a_remote_engine_gets_no_start_button():
    editor, _, _, _, view = editor_with(starter=None, url="wss://gpu.lan:8765/")
    editor.on_event(not_running())
    assert view.named("set_engine")[-1] == (
        "set_engine",
        "The FFCLIP engine is not running at wss://gpu.lan:8765/.",
        False,
        False,
    )


def test_autostart_starts_the_engine_when_the_dialog_opens_not_after_typing():
    starter = FakeStarter()
    editor, clock, engine, _, view = editor_with(starter, autostart=True)
    editor.tick()
    editor.on_event(not_running())
    assert starter.starts == 1 and engine.submitted == []  # before any prompt
    assert view.named("set_engine")[-1][1] == "Starting the FFCLIP engine\u2026"


def test_a_failed_start_is_shown_with_the_start_commands_own_words_and_can_be_retried():
    starter = FakeStarter()
    editor, clock, engine, _, view = editor_with(starter, autostart=True)
    editor.on_event(not_running())
    starter.reason = "exit status 2: ffclip-engine serve: port 8765 is in use by another program"
    run_for(editor, clock, 0.2)
    assert view.named("set_engine")[-1] == (
        "set_engine",
        "The FFCLIP engine could not start: exit status 2: ffclip-engine serve: port 8765 is in use by another program",
        False,
        True,
    )
    editor.on_event(not_running())  # the next poll does not start it again by itself, nor hide why
    assert starter.starts == 1 and view.named("set_engine")[-1][1].startswith("The FFCLIP engine could not start")
    starter.reason = None
    editor.start()  # the Start button: once more
    assert starter.starts == 2


def test_a_start_that_never_answers_times_out_with_a_message():
    starter = FakeStarter()
    editor, clock, engine, _, view = editor_with(starter, autostart=True)
    editor.start_timeout = 5.0
    editor.on_event(not_running())
    run_for(editor, clock, 6.0)
    assert "did not answer within 5 s" in view.named("set_engine")[-1][1]


def test_an_engine_lost_mid_session_is_one_short_line_and_its_return_brings_the_preview_back():
    editor, clock, engine, canvas, view = editor_with()
    editor.on_event(events.StatusChanged({"state": "ready", "device": "cpu"}))
    editor.input_changed([("smiling", 1.0)])
    run_for(editor, clock, 0.5)
    editor.on_event(events.ResultReady(engine.submitted[-1][0], result()))
    statuses = len(view.named("set_status"))
    editor.on_event(events.Disconnected(ConnectionFailed("the FFCLIP engine closed the connection (1006)")))
    editor.input_changed([("smiling", 1.4)])  # the user goes on meanwhile
    run_for(editor, clock, 0.5)
    editor.on_event(events.JobFailed(engine.submitted[-1][0], ConnectionFailed("lost the engine")))
    editor.on_event(not_running())  # polling while it is away
    assert view.named("set_engine")[-1] == ("set_engine", "Lost the FFCLIP engine; reconnecting\u2026", False)
    assert all("\n" not in call[1] for call in view.named("set_engine") + view.named("set_status"))
    assert len(view.named("set_status")) == statuses  # nothing said twice in the status line
    asked = len(engine.submitted)
    editor.on_event(events.StatusChanged({"state": "ready", "device": "cpu"}))  # back
    run_for(editor, clock, 0.1)
    assert len(engine.submitted) == asked + 1 and engine.submitted[-1][1].edits[0].strength == 1.4


def test_clearing_the_prompt_takes_the_preview_away():
    editor, clock, engine, canvas, view = editor_with()
    editor.input_changed([("smiling", 1.0)])
    run_for(editor, clock, 0.5)
    editor.on_event(events.ResultReady(engine.submitted[-1][0], result()))
    assert len(canvas.named("show_preview")) == 1
    editor.input_changed([("", 1.0)])
    run_for(editor, clock, 0.5)
    assert canvas.named("remove_preview") == [("remove_preview",)]
    assert view.named("set_status")[-1] == ("set_status", live.TYPE_A_PROMPT, live.IDLE)
    editor.input_changed([("smiling", 1.0)])  # the same prompt again is asked again
    run_for(editor, clock, 0.5)
    assert len(engine.submitted) == 2


def test_a_prompt_cleared_while_its_preview_runs_never_shows_it():
    editor, clock, engine, canvas, _ = editor_with()
    editor.input_changed([("smiling", 1.0)])
    run_for(editor, clock, 0.5)
    job = engine.submitted[-1][0]
    editor.input_changed([("", 1.0)])
    run_for(editor, clock, 0.5)
    assert job in engine.cancelled
    editor.on_event(events.ResultReady(job, result()))
    assert canvas.named("show_preview") == []


def test_enter_previews_at_once():
    editor, clock, engine, _, _ = editor_with()
    editor.input_changed([("smiling", 1.0)])
    editor.preview_now()
    editor.tick()  # no pause needed
    assert [p.prompts for _, p in engine.submitted] == [("smiling",)]


def test_the_status_line_is_busy_only_while_something_runs():
    editor, clock, engine, _, view = editor_with()
    editor.input_changed([("smiling", 1.0)])
    run_for(editor, clock, 0.5)
    job = engine.submitted[-1][0]
    editor.on_event(events.Queued(job, 2))
    assert view.named("set_status")[-1][2] is None  # waiting: the bar pulses
    editor.on_event(events.Progress(job, "synthesize", 0.5))
    editor.on_event(events.ResultReady(job, result()))
    assert view.named("set_status")[-1][2] == 1.0
    idle = [c for c in view.named("set_status") if "Type a prompt" in c[1]]
    assert idle and all(c[2] == live.IDLE for c in idle)  # never pulsing while idle


def test_a_cars_engine_line_follows_its_first_preview():
    editor, clock, engine, _, view = editor_with()
    status = {"state": "ready", "device": "cpu", "domains": {"face": {"state": "ready"}, "car": {"state": "available"}}}
    editor.on_event(events.StatusChanged(status))
    editor.input_changed([("a red car", 1.0)], domain="car")
    assert "load with the first preview" in view.named("set_engine")[-1][1]
    run_for(editor, clock, 0.5)
    asked = engine.status_requests
    editor.on_event(events.ResultReady(engine.submitted[-1][0], result()))
    assert engine.status_requests == asked + 1  # asked what the car's state is now
    status["domains"]["car"] = {"state": "ready"}
    editor.on_event(events.StatusChanged(status))
    assert "first preview" not in view.named("set_engine")[-1][1]


def test_an_error_is_one_line_in_the_dialog():
    editor, clock, engine, _, view = editor_with()
    editor.input_changed([("smiling", 1.0)])
    run_for(editor, clock, 0.5)
    editor.on_event(events.JobFailed(engine.submitted[-1][0], EngineError("models_missing", "run it")))
    assert "\n" not in view.named("set_status")[-1][1] and "no model weights" in view.named("set_status")[-1][1]


# --------------------------------------------------------------------------- presets, last values


def test_presets_keep_rows_by_name():
    settings: dict = {}
    assert not live.save_preset(settings, "  ", [("smiling", 1.0)])  # no name
    assert not live.save_preset(settings, "empty", [("  ", 1.0)])  # nothing to keep
    assert live.save_preset(settings, " Happy  old ", [("smiling", 0.8), ("", 1.0), ("grey hair", 1.234)])
    assert live.preset_names(settings) == ["Happy old"]
    assert live.preset_rows(settings, "Happy old") == [("smiling", 0.8), ("grey hair", 1.23)]
    live.save_preset(settings, "bald", [("bald", 1.5)])
    assert live.preset_names(settings) == ["bald", "Happy old"]
    live.delete_preset(settings, "bald")
    assert live.preset_names(settings) == ["Happy old"] and live.preset_rows(settings, "bald") == []
    settings["presets"]["broken"] = [["ok", 1.0], ["no strength"], 7]  # a hand-edited settings file
    assert live.preset_rows(settings, "broken") == [("ok", 1.0)]


def test_the_dialog_opens_with_the_procedures_last_values():
    rows = live.args_rows("smiling", 0.8, "grey hair=1.2\n\n=1.0\ntoo strong=9\nbeard=0.5")
    assert rows == [("smiling", 0.8), ("grey hair", 1.2), ("beard", 0.5)]
    assert live.args_rows("", 1.0, "") == [("", 1.0)]


# --------------------------------------------------------------------------- issue 26: set-up from the dialog


class FakeRun:
    """A set-up in the background: the test feeds what poll() returns."""

    def __init__(self) -> None:
        self.pending: list = []
        self.cancelled = False

    def poll(self) -> list:
        out, self.pending = self.pending, []
        return out

    def cancel(self) -> None:
        self.cancelled = True


class FakeInstaller:
    def __init__(self) -> None:
        self.runs: list[tuple[str, FakeRun]] = []

    def start(self, profile: str) -> FakeRun:
        self.runs.append((profile, FakeRun()))
        return self.runs[-1][1]


class Step:  # gimp/setup.py's SetupEvent, as the dialog reads it
    def __init__(self, step, steps, name, text, fraction=None):
        self.step, self.steps, self.name, self.text, self.fraction = step, steps, name, text, fraction


class SetupError(Exception):
    def __init__(self, step, message):
        super().__init__(message)
        self.step, self.message = step, message


class SetupCancelled(SetupError):
    pass


def setup_editor(starter=None):
    installer = FakeInstaller()
    clock, engine, canvas, view = Clock(), RecordingSession(), Recorder(), Recorder()
    editor = live.LiveEditor(
        engine, canvas, view, width=1000, clock=clock, starter=starter, url="ws://127.0.0.1:8765/", installer=installer
    )
    return editor, clock, engine, view, installer


def actions(view):
    return view.named("set_actions")[-1][1:] if view.named("set_actions") else None


def test_no_engine_configured_offers_the_set_up_and_its_progress_is_the_engine_line():
    editor, clock, engine, view, installer = setup_editor()
    assert actions(view) is None  # connecting: nothing offered yet
    editor.on_event(not_running())
    assert actions(view) == (True, False, False)  # Set up…, no Cancel, no Diagnose
    assert view.named("set_engine")[-1][1] == (
        "The FFCLIP engine is not running at ws://127.0.0.1:8765/, and none is set up to start here."
    )
    editor.setup("tiny")
    profile, run = installer.runs[0]
    assert profile == "tiny" and actions(view) == (False, True, False)
    run.pending = [Step(4, 7, "torch", "Downloading torch-2.5.1 (812 MB)\nmore", 0.25)]
    run_for(editor, clock, 0.1)
    editor.on_event(not_running())  # the poll goes on meanwhile: it does not overwrite the set-up's line
    assert view.named("set_engine")[-1][1] == "Setting up the FFCLIP engine, step 4 of 7: installing PyTorch"
    assert view.named("set_status")[-1][1:] == ("Downloading torch-2.5.1 (812 MB)", 0.25)
    editor.setup("tiny")  # a second click while it runs: nothing more
    assert len(installer.runs) == 1
    result = object()
    run.pending = [Step(7, 7, "start", "Waiting for the engine"), result]
    polls = engine.status_requests
    run_for(editor, clock, 0.1)
    assert view.named("setup_finished") == [("setup_finished", result)]
    assert view.named("set_engine")[-1][1] == "The FFCLIP engine is set up; connecting\u2026"
    assert engine.status_requests > polls  # asked at once, not a second later
    assert actions(view) == (False, False, False)
    editor.on_event(events.StatusChanged({"state": "ready", "device": "cpu", "untrained": True}))
    assert view.named("set_engine")[-1][2] is True


def test_a_failed_set_up_says_where_offers_it_again_and_diagnose():
    editor, clock, _, view, installer = setup_editor()
    editor.on_event(not_running())
    editor.setup("")
    error = SetupError("engine", "no network: the package index could not be reached")
    installer.runs[0][1].pending = [Step(5, 7, "engine", "Collecting websockets"), error]
    run_for(editor, clock, 0.1)
    assert view.named("set_engine")[-1][1] == (
        "The set-up failed at step \u201cengine\u201d: no network: the package index could not be reached"
    )
    assert view.named("setup_failed") == [("setup_failed", error)]
    said = view.named("set_engine")[-1]
    editor.on_event(not_running())  # the polls go on: the failure stays on the engine line
    assert view.named("set_engine")[-1] == said
    assert actions(view) == (True, False, True)  # again, and Diagnose
    editor.setup("")
    assert len(installer.runs) == 2 and actions(view) == (False, True, False)


def test_a_cancelled_set_up_can_be_resumed_and_closing_the_dialog_cancels_it():
    editor, clock, _, view, installer = setup_editor()
    editor.on_event(not_running())
    editor.setup("")
    run = installer.runs[0][1]
    editor.cancel_setup()
    assert run.cancelled
    run.pending = [SetupCancelled("torch", "cancelled")]
    run_for(editor, clock, 0.1)
    assert "cancelled" in view.named("set_engine")[-1][1] and view.named("setup_failed") == []
    assert actions(view) == (True, False, False)  # a cancel is no failure: no Diagnose
    editor.setup("")
    editor.cancel()  # the dialog's Cancel while it runs
    assert installer.runs[1][1].cancelled and view.named("close") == [("close", False)]


def test_the_set_up_is_offered_beside_start_only_once_a_start_failed():
    starter = FakeStarter()
    editor, clock, _, view, _ = setup_editor(starter)
    editor.on_event(not_running())
    assert actions(view) == (False, False, False)  # Start is there: that comes first
    editor.start()
    starter.reason = "exit status 1: No module named ffclip"
    run_for(editor, clock, 0.2)
    assert actions(view) == (True, False, True)


def test_no_set_up_without_an_installer_or_once_connected():
    editor, _, _, view, installer = setup_editor()
    editor.on_event(events.StatusChanged({"state": "ready", "device": "cpu"}))
    editor.setup("")
    assert installer.runs == [] and actions(view) == (False, False, False)
    editor, _, _, _, view = editor_with()  # a remote URL or a plug-in without the set-up: no installer
    editor.on_event(not_running())
    assert actions(view) == (False, False, False)


# --------------------------------------------------------------------------- issue 29: "Keep the person"


def test_keep_the_person_is_offered_where_the_engine_has_hyperstyle():
    editor, _, _, _, view = editor_with()
    with_high = {"state": "ready", "models": {"fidelities": ["standard", "high"]}}
    editor.on_event(events.StatusChanged(with_high))
    assert view.named("offer_fidelity")[-1] == ("offer_fidelity", True, "")
    fetch = "ffclip-engine models fetch hyperstyle"
    without = {
        "state": "ready",
        "models": {"fidelities": ["standard"], "high_fidelity": {"missing": ["w"], "fetch": fetch}},
    }
    editor.on_event(events.StatusChanged(without))
    offered, why = view.named("offer_fidelity")[-1][1:]
    assert not offered and why.endswith(f"(w): {fetch}")
    editor.on_event(events.StatusChanged({"state": "ready"}))  # an engine from before issue 29
    assert view.named("offer_fidelity")[-1][1] is False
    assert live.high_fidelity(with_high, "church")[0] is False  # none for churches, whatever the engine
    assert live.high_fidelity({"domains": {"car": {"fidelities": ["standard", "high"]}}}, "car") == (True, "")
