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
    editor.on_event(events.Progress(old, "synthesize", 0.5))
    editor.on_event(events.ResultReady(old, result()))
    assert canvas.named("show_preview") == [] and view.named("set_status") == []
    editor.on_event(events.Progress(new, "synthesize", 0.5))
    editor.on_event(events.ResultReady(new, result(size=128)))
    assert len(canvas.named("show_preview")) == 1 and canvas.named("show_preview")[0][2] is True
    assert "128 px" in view.named("set_status")[-1][1]


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
    missing = {"state": "missing", "models": {"fetch": "ffclip-engine models fetch"}}
    assert live.engine_state(missing) == (
        "The FFCLIP engine has no model weights yet: run ffclip-engine models fetch",
        False,
    )


def test_a_preview_asked_while_the_engine_was_away_is_asked_again(setup):
    editor, clock, engine, _, view = setup
    starts = []
    editor.start_engine = lambda: starts.append(1)
    editor.input_changed([("smiling", 1.0)])
    run_for(editor, clock, 0.5)
    first = engine.submitted[-1][0]
    editor.on_event(events.JobFailed(first, ConnectionFailed("cannot reach the FFCLIP engine")))
    assert starts == [1]  # autostart, once
    editor.on_event(events.JobFailed(first, ConnectionFailed("cannot reach the FFCLIP engine")))
    assert starts == [1]
    editor.on_event(events.StatusChanged({"state": "ready", "device": "cpu"}))
    run_for(editor, clock, 0.1)
    assert len(engine.submitted) == 2 and engine.submitted[-1][1].prompts == ("smiling",)


def test_several_faces_fill_the_chooser(setup):
    editor, clock, engine, _, view = setup
    editor.input_changed([("smiling", 1.0)])
    run_for(editor, clock, 0.5)
    faces = [{"index": 0, "box": [700, 100, 150, 150]}, {"index": 1, "box": [100, 120, 90, 90]}]
    editor.on_event(events.ResultReady(engine.submitted[-1][0], result(faces=faces)))
    assert view.named("set_faces") == [
        ("set_faces", [(0, "Face 1: right, 150 px wide"), (1, "Face 2: left, 90 px wide")])
    ]
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
