"""GIMP's own window under Xvfb, for the dialog's tests: a photo opened and displayed, then FFCLIP
Edit run one or more times (interactively, with its scripted user, or as Filters > Repeat would),
the image's state recorded after each run, and ctrl+z pressed in GIMP's window by xdotool when a
run asks for it. The dialog's steps are gimp/dialog.py's `_Replay` steps; a step {"touch": NAME}
lets the test act on the host meanwhile (start or stop an engine), see `Watcher`.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

from ffclip.app import gimp_console
from tests.support.gimp import need, result_lines

GUI = r"""
import hashlib, json, os, time
import gi
gi.require_version("Gimp", "3.0")
gi.require_version("Gegl", "0.4")
from gi.repository import Gimp, Gio, Gegl

JOB = json.loads(__JOB__)
S = JOB["scratch"]

def sha(layer):
    r = Gegl.Rectangle.new(0, 0, layer.get_width(), layer.get_height())
    return hashlib.sha1(bytes(layer.get_buffer().get(r, 1.0, "R'G'B'A u16", Gegl.AbyssPolicy.CLAMP))).hexdigest()

def state(image):
    layers = image.get_layers()
    drawables = image.get_selected_drawables()
    return {"layers": [l.get_name() for l in layers], "masks": [l.get_mask() is not None for l in layers],
            "source": sha(layers[-1]), "dirty": image.is_dirty(),
            "selected": [d.get_name() for d in drawables if not isinstance(d, Gimp.LayerMask)],
            "mask_active": any(isinstance(d, Gimp.LayerMask) for d in drawables)}

def wait_for(path):
    for _ in range(600):
        if os.path.exists(path):
            return
        time.sleep(0.1)

image = Gimp.file_load(Gimp.RunMode.NONINTERACTIVE, Gio.File.new_for_path(JOB["photo"]))
image.undo_disable()  # an image loaded by a script keeps its layer's creation as an undo step:
image.undo_enable()  # start from an empty history, as an opened file has
image.clean_all()
Gimp.Display.new(image)
Gimp.displays_flush()
time.sleep(1.0)
out = {"before": state(image)}
proc = Gimp.get_pdb().lookup_procedure("python-fu-ffclip-edit")
undone = 0
for i, run in enumerate(JOB["runs"]):
    with open(S + "/steps.json", "w") as f:
        json.dump(run.get("steps", []), f)
    layers = image.get_layers()
    drawable = layers[-1] if run.get("drawable") == "bottom" else layers[0]
    cfg = proc.create_config()
    cfg.set_property("run-mode", getattr(Gimp.RunMode, run.get("mode", "INTERACTIVE")))
    cfg.set_property("image", image)
    cfg.set_core_object_array("drawables", [drawable])
    for k, v in run.get("args", {}).items():
        cfg.set_property(k, v)
    r = proc.run(cfg)
    record = {"status": r.index(0).value_nick}
    if r.index(0) != Gimp.PDBStatusType.SUCCESS and r.length() > 1:
        record["error"] = str(r.index(1))
    record.update(state(image))
    out[f"run{i}"] = record
    for n in range(run.get("undo", 0)):  # the user presses ctrl+z in GIMP's window
        undone += 1
        open(S + f"/undo{undone}.ready", "w").close()
        wait_for(S + f"/undo{undone}.done")
        out[f"run{i}.undo{n + 1}"] = state(image)
print("GUI " + json.dumps(out), flush=True)
"""

UNDO_KEYS = """
( n=1; while [ $n -le {count} ]; do
    while [ ! -f {s}/undo$n.ready ]; do sleep 0.2; done
    sleep 1; xdotool key ctrl+z; sleep 1.5; touch {s}/undo$n.done; n=$((n+1))
  done ) &
"""


class Watcher(threading.Thread):
    """Acts on the host when the dialog's scripted user touches a file in the scratch folder:
    `actions` maps the file's name to what to do (start or kill an engine)."""

    def __init__(self, scratch: Path, actions: dict[str, Callable[[], None]]) -> None:
        super().__init__(daemon=True)
        self.scratch, self.actions = scratch, actions
        self.done: set[str] = set()
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            for name, action in self.actions.items():
                if name not in self.done and (self.scratch / name).exists():
                    self.done.add(name)
                    action()
            time.sleep(0.1)


def run_gui(console, photo: str, runs: list[dict], *, actions: dict | None = None, timeout: float = 600, scratch=None):
    """Runs (see GUI) on `photo` in GIMP's window; returns (the image's states, the dialog's log
    records, the scratch folder on this machine: `scratch`, or a new one)."""
    have = (lambda p: (console.host(p)).exists()) if console.root is not None else shutil.which
    need(bool(have("/usr/bin/xvfb-run") and have("/usr/bin/xdotool")), "xvfb-run and xdotool are needed")
    gui = [c.replace("gimp-console", "gimp") for c in console.command]
    profile = console.home_dir() / ".config" / "GIMP" / "3.0"
    profile.mkdir(parents=True, exist_ok=True)
    (profile / "gimprc").write_text("(show-welcome-dialog no)\n(show-tips no)\n")
    scratch = scratch or console.scratch()
    s = console.inside(scratch)
    runs = [{**run, "steps": [_inside(s, step) for step in run.get("steps", [])]} for run in runs]
    job = {"photo": photo, "scratch": s, "runs": runs}
    (scratch / "gui.py").write_text(GUI.replace("__JOB__", repr(json.dumps(job))))
    undos = sum(run.get("undo", 0) for run in runs)
    (scratch / "run.sh").write_text(
        UNDO_KEYS.format(s=s, count=undos)
        + f"{' '.join(gui)} -n --no-splash --batch-interpreter python-fu-eval -b - --quit < {s}/gui.py\nwait\n"
    )
    gimp = gimp_console.GimpConsole(console.command, console.root, console.home, dict(console.extra_env))
    gimp.extra_env.update({"FFCLIP_DIALOG_SCRIPT": f"{s}/steps.json", "FFCLIP_DIALOG_LOG": f"{s}/dialog.log"})
    argv, env = gimp.wrap(["xvfb-run", "-a", "-s", "-screen 0 1600x1000x24", "sh", f"{s}/run.sh"])
    watcher = Watcher(scratch, actions or {})
    watcher.start()
    try:
        proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout)
    finally:
        watcher.stopped.set()
    lines = result_lines(proc, "GUI ")
    assert lines, proc.stdout[-3000:] + proc.stderr[-3000:]
    log = scratch / "dialog.log"
    records = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return lines[0], records, scratch


def _inside(scratch: str, step: dict) -> dict:
    """A step's names in the scratch folder made paths as GIMP's side sees them (`touch`, `shot`)."""
    for key in ("touch", "shot"):
        if key in step and not step[key].startswith("/"):
            step = {**step, key: f"{scratch}/{step[key]}"}
    return step


def notes(records: list[dict]) -> dict[str, dict]:
    return {r["label"]: r for r in records if r.get("step") == "note"}
