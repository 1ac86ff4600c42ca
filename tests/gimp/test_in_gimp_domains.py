"""Issue 16 on the GIMP side: the live dialog's logic sends the chosen domain and judges the engine's
readiness per domain; the procedure's `domain` argument and batch_edit.py --domain reach the engine
(the last test through a real GIMP 3, as tests/gimp/test_in_gimp.py)."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys

import pytest

from ffclip.app import batch_edit
from ffclip.gimp import edit as gimp_edit
from ffclip.gimp import live
from ffclip.plugin import session as events
from ffclip.plugin.protocol import EditResult
from tests.support.live import Clock, Recorder, RecordingSession, run_for
from tests.support.paths import REPO

READY = {
    "state": "ready",
    "device": "cpu",
    "domains": {
        "face": {"state": "ready"},
        "car": {"state": "available"},
        "church": {"state": "missing", "fetch": "ffclip-engine models fetch church"},
    },
}


def test_the_live_editor_sends_the_chosen_domain_and_no_face_choice():
    clock, port, canvas, view = Clock(), RecordingSession(), Recorder(), Recorder()
    editor = live.LiveEditor(port, canvas, view, width=800, clock=clock)
    editor.on_event(events.StatusChanged(READY))
    editor.input_changed([("smiling", 1.0)], (1,))
    run_for(editor, clock, live.DEBOUNCE_S + 0.1)
    assert port.submitted[-1][1].domain == "face" and port.submitted[-1][1].faces == (1,)
    editor.input_changed([("a red sports car", 0.8)], (1,), "car")
    run_for(editor, clock, live.DEBOUNCE_S + 0.1)
    params = port.submitted[-1][1]
    assert params.domain == "car" and params.faces == "all" and params.supersede and params.preview
    text, ready = view.named("set_engine")[-1][1:]
    assert ready and "car" in text and "load with the first preview" in text
    job = port.submitted[-1][0]
    faces = [{"index": 0, "box": [0, 0, 80, 60]}, {"index": 1, "box": [90, 0, 80, 60]}]
    editor.on_event(events.ResultReady(job, EditResult((0, 0, 4, 4), bytes(64), faces, domain="car", size=64)))
    assert not view.named("set_faces")  # no face chooser for a car
    assert "the car drawn at 64 px" in view.named("set_status")[-1][1]
    editor.apply()
    assert port.submitted[-1][1].domain == "car" and not port.submitted[-1][1].preview


def test_engine_state_per_domain():
    assert live.engine_state(READY, "church") == (
        "The FFCLIP engine has no church model weights yet: run ffclip-engine models fetch church",
        False,
    )
    loading = dict(READY, domains={**READY["domains"], "car": {"state": "loading"}})
    assert live.engine_state(loading, "car") == ("Loading the car models\u2026", True)
    assert live.engine_state(READY, "face") == ("Engine ready on cpu.", True)  # faces read as before
    old_engine = {"state": "ready", "device": "cpu"}  # a daemon from before domains
    assert live.engine_state(old_engine, "car")[1] is False
    assert live.engine_state({"state": "loading"}, "car")[1] is False  # the daemon itself is loading


def test_procedure_arguments_carry_the_domain():
    args = gimp_edit.ProcedureArgs("gothic", 1.0, face_mode="index", face_index=2, domain="church")
    params = args.params(selection=True)
    assert params.domain == "church" and params.faces == "all" and params.selection
    assert gimp_edit.ProcedureArgs("smiling", face_mode="index", face_index=2).params().faces == (2,)
    with pytest.raises(gimp_edit.PluginError, match="Domain"):
        gimp_edit.ProcedureArgs("x", domain="horse").params()


def _batch_args(**kw) -> argparse.Namespace:
    base = {"strength": 1.0, "output": "layer-mask", "edit": [], "faces": "all", "domain": "face", "url": None}
    return argparse.Namespace(**{**base, **kw})


def test_batch_domain_becomes_a_procedure_argument():
    assert "domain" not in batch_edit.procedure_args(_batch_args())  # face batches unchanged
    assert batch_edit.procedure_args(_batch_args(domain="car"))["domain"] == "car"
    with pytest.raises(ValueError, match="faces"):
        batch_edit.procedure_args(_batch_args(domain="car", faces="largest"))


@pytest.mark.slow
@pytest.mark.gimp
def test_batch_edits_a_church_folder_through_gimp(console, installed, engine, tmp_path):  # noqa: F811
    from PIL import Image

    from ffclip.plugin.client import EngineClient

    folder = tmp_path / "churches"
    folder.mkdir()
    source = REPO / "tests" / "data" / "scenes" / "reims_cathedral.webp"
    shutil.copyfile(source, folder / "reims.webp")
    out_dir = tmp_path / "edited"
    env = dict(os.environ, **console.environment())
    cmd = [sys.executable, str(REPO / "app" / "batch_edit.py"), str(folder), "a gothic cathedral", "-o"]
    cmd += [str(out_dir), "--url", engine, "--domain", "church"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    with Image.open(out_dir / "reims.png") as edited, Image.open(source) as original:
        assert edited.size == original.size
    client = EngineClient(engine, timeout=30)
    status = client.connect()
    client.close()
    assert status["domains"]["church"]["state"] == "ready"  # GIMP's edit was a church edit
