"""The dialog in GIMP's own window (issue 25): the engine's states as a user meets them — not
running (said within 2 s, with Start), a start that fails (in the start command's words), starting,
ready, lost and back (the preview asked again without the user doing anything) — with a screenshot
of each; a reopened edit; and the procedure's last values (Re-Show, Filters > Repeat)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys

import pytest

from tests.support.gimp_gui import notes, run_gui
from tests.support.net import free_port
from tests.support.paths import REPO

pytestmark = pytest.mark.gimp

ASTRONAUT = "astronaut.png"
START_SH = """#!/bin/sh
# the plug-in's start command in this test: the first start fails as a busy port would make it fail;
# the next one asks the test (on the host, outside GIMP's chroot) to start the engine, and waits
if [ -f {s}/fail-once ]; then
    rm {s}/fail-once
    echo "ffclip-engine serve: port {port} is in use by another program" >&2
    exit 2
fi
touch {s}/engine-start
exec sleep 600
"""


@pytest.fixture()
def photo(console, photos_dir):
    scratch = console.scratch()
    shutil.copyfile(photos_dir / ASTRONAUT, scratch / ASTRONAUT)
    yield console.inside(scratch / ASTRONAUT)
    shutil.rmtree(scratch, ignore_errors=True)


class TinyEngine:
    """`ffclip-engine serve --profile tiny` on the host, started and stopped as the dialog's steps ask."""

    def __init__(self, port: int, log) -> None:
        self.port, self.log, self.proc = port, log, None

    def start(self) -> None:
        cmd = [sys.executable, "-m", "ffclip.app", "serve", "--profile", "tiny", "--port", str(self.port)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(self.log, "ab"))  # noqa: SIM115

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)  # as a crash would: no goodbye to the clients
            self.proc.wait(10)
            self.proc = None


def _settings(installed):
    return installed / "ffclip-edit.json"


def test_the_engines_states_as_a_user_meets_them(console, installed, photo, tmp_path):
    port = free_port()
    scratch = console.scratch()
    s = console.inside(scratch)
    (scratch / "start.sh").write_text(START_SH.format(s=s, port=port))
    (scratch / "fail-once").touch()
    saved = _settings(installed).read_text()
    settings = json.loads(saved)
    settings.update(url=f"ws://127.0.0.1:{port}/", autostart=False, start_command=["/bin/sh", f"{s}/start.sh"])
    _settings(installed).write_text(json.dumps(settings))
    engine = TinyEngine(port, tmp_path / "engine.log")
    shot = lambda name: {"shot": name, "area": [0, 0, 1600, 670]}  # noqa: E731
    steps = [
        {"wait_engine": "not running", "timeout": 20},
        {"note": "absent"},
        shot("engine-not-running.png"),
        {"start": True},
        {"wait_engine": "could not start", "timeout": 30},
        {"note": "failed"},
        shot("engine-start-failed.png"),
        {"start": True},
        {"wait_engine": "Starting", "timeout": 10},
        {"note": "starting"},
        shot("engine-starting.png"),
        {"wait_engine": "ready", "timeout": 180},
        {"note": "ready"},
        {"type": "smiling", "row": 0, "key_s": 0.03},
        {"wait_preview": True},
        shot("engine-ready.png"),
        {"touch": "engine-kill"},
        {"wait_engine": "Lost", "timeout": 30},
        {"note": "lost"},
        shot("engine-lost.png"),
        {"touch": "engine-restart"},
        {"wait_preview": True, "timeout": 180},
        {"note": "back"},
        {"cancel": True},
    ]
    actions = {"engine-start": engine.start, "engine-kill": engine.kill, "engine-restart": engine.start}
    try:
        out, records, _ = run_gui(console, photo, [{"steps": steps}], actions=actions, timeout=900, scratch=scratch)
    finally:
        engine.kill()
        _settings(installed).write_text(saved)
    seen = notes(records)
    absent = seen["absent"]
    assert absent["engine"] == f"The FFCLIP engine is not running at ws://127.0.0.1:{port}/."
    assert absent["start_button"] and absent["seconds"] <= 2.5, absent  # said at once, with Start
    failed = seen["failed"]
    assert failed["engine"].startswith("The FFCLIP engine could not start: exit status 2: ")
    assert f"port {port} is in use by another program" in failed["engine"] and failed["start_button"]
    assert seen["starting"]["engine"] == "Starting the FFCLIP engine\u2026" and not seen["starting"]["start_button"]
    assert "ready" in seen["ready"]["engine"]
    assert seen["lost"]["engine"] == "Lost the FFCLIP engine; reconnecting\u2026"
    back = [r for r in records if r.get("step") == "wait_preview"][-1]
    assert back["drawn"] and "ready" in seen["back"]["engine"]  # the preview came back by itself
    assert out["run0"]["status"] == "cancel" and out["run0"]["layers"] == ["Background"]
    for name in ("engine-not-running", "engine-start-failed", "engine-starting", "engine-ready", "engine-lost"):
        png = scratch / f"{name}.png"
        assert png.stat().st_size > 20000, name
        shutil.copyfile(png, tmp_path / f"{name}.png")
        if os.environ.get("FFCLIP_UPDATE_SCREENSHOT"):
            shutil.copyfile(png, REPO / "docs" / f"gimp-{name}.png")
    shutil.rmtree(scratch, ignore_errors=True)


def test_keep_the_person_previews_at_high_fidelity(console, installed, photo, tmp_path):
    """The tiny engine has its seeded HyperStyle: the box is offered, and ticked, the previews are asked
    with fidelity high (issue 29)."""
    port = free_port()
    saved = _settings(installed).read_text()
    settings = dict(json.loads(saved), url=f"ws://127.0.0.1:{port}/", autostart=False, start_command=None)
    _settings(installed).write_text(json.dumps(settings))
    engine = TinyEngine(port, tmp_path / "engine.log")
    engine.start()
    steps = [
        {"wait_engine": "ready", "timeout": 180},
        {"note": "ready"},
        {"keep_person": True},
        {"type": "smiling", "row": 0, "key_s": 0.03},
        {"wait_preview": True, "timeout": 300},
        {"note": "high"},
        {"shot": "keep-the-person.png", "area": [0, 0, 1600, 670]},
        {"cancel": True},
    ]
    try:
        _, records, scratch = run_gui(console, photo, [{"steps": steps}], timeout=600)
    finally:
        engine.kill()
        _settings(installed).write_text(saved)
    seen = notes(records)
    assert seen["ready"]["keep_person"] == [True, False] and seen["ready"]["fidelity"] == "standard"
    high = seen["high"]
    assert high["keep_person"] == [True, True] and high["fidelity"] == "high"
    assert high["preview"] is not None and high["preview"]["visible"]
    assert high["shown_fidelity"] == "high"  # the preview on the canvas was asked at high fidelity
    png = scratch / "keep-the-person.png"
    assert png.stat().st_size > 20000
    if os.environ.get("FFCLIP_UPDATE_SCREENSHOT"):
        shutil.copyfile(png, REPO / "docs" / "gimp-keep-the-person.png")
    shutil.rmtree(scratch, ignore_errors=True)


def test_last_values_repeat_and_a_reopened_edit(console, installed, photo, tmp_path):
    """Apply in the dialog; Filters > Repeat (WITH_LAST_VALS) on the photo; Re-Show opens with the last
    values; the FFCLIP layer selected opens the dialog with its recipe, and Apply replaces that
    layer in place, in one undo step."""
    shot = {"shot": "reopened.png", "area": [0, 0, 1600, 670]}
    runs = [
        {
            "steps": [
                {"type": "smiling", "row": 0, "key_s": 0.03},
                {"slider": 0.8},
                {"wait_preview": True},
                {"apply": True},
                {"sleep": 60},
            ]
        },
        {"mode": "WITH_LAST_VALS", "drawable": "bottom"},  # Ctrl+F with the photo layer selected
        {"drawable": "bottom", "steps": [{"wait_preview": True}, {"note": "reshown"}, {"cancel": True}]},
        {
            "drawable": "top",  # the first FFCLIP layer
            "steps": [
                {"wait_preview": True},
                {"note": "reopened"},
                shot,
                {"slider": 1.5},
                {"wait_preview": True},
                {"apply": True},
                {"sleep": 60},
            ],
            "undo": 1,
        },
    ]
    scratch = console.scratch()
    out, records, _ = run_gui(console, photo, runs, scratch=scratch)
    first = out["run0"]
    assert first["status"] == "success" and first["layers"] == ["FFCLIP: smiling 0.8", "Background"]
    repeated = out["run1"]
    assert repeated["status"] == "success", repeated
    assert repeated["layers"] == ["FFCLIP: smiling 0.8", "FFCLIP: smiling 0.8 #1", "Background"]
    seen = notes(records)
    assert seen["reshown"]["rows"] == [["smiling", 0.8]]  # Re-Show: the dialog opens with the last values
    assert out["run2"]["status"] == "cancel" and out["run2"]["layers"] == repeated["layers"]
    reopened = seen["reopened"]
    assert reopened["rows"] == [["smiling", 0.8]]  # the recipe's rows
    assert reopened["layers"][0] == "FFCLIP preview (temporary)"
    assert reopened["selected"] == out["run2"]["selected"]  # the preview did not take the user's selection
    again = out["run3"]
    assert again["status"] == "success", again
    assert again["layers"] == ["FFCLIP: smiling 1.5", "FFCLIP: smiling 0.8 #1", "Background"]  # in place
    assert out["run3.undo1"]["layers"] == repeated["layers"]  # one ctrl+z brings the old edit back
    png = scratch / "reopened.png"
    assert png.stat().st_size > 20000
    shutil.copyfile(png, tmp_path / "reopened.png")
    if os.environ.get("FFCLIP_UPDATE_SCREENSHOT"):
        shutil.copyfile(png, REPO / "docs" / "gimp-reopened.png")
    shutil.rmtree(scratch, ignore_errors=True)
