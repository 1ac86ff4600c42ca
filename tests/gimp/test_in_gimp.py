"""FFCLIP Edit inside a real GIMP 3, with the engine daemon on the tiny profile.

GIMP is the system's gimp-console-3.0 (Debian 13: apt) or the trixie chroot that
`bash .ci/setup-gimp.sh` builds on Debian 12 (/opt/gimp3-root; FFCLIP_GIMP_ROOT overrides). Without
GIMP these tests skip, or fail when CI is set. Each module run uses a fresh GIMP profile (HOME), installs
the plug-in with `ffclip-engine install-gimp-plugin` and starts `ffclip-engine serve --profile tiny`.
FFCLIP_UPDATE_SCREENSHOT=1 also copies the dialog screenshot to docs/gimp-dialog.png.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ffclip.app import gimp_console
from tests.support.engine_server import FakeEngineServer
from tests.support.gimp import need, result_lines
from tests.support.net import free_port
from tests.support.paths import REPO

pytestmark = pytest.mark.gimp

ASTRONAUT = "astronaut.png"
OBAMA = "obama.jpg"


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def photos(console, photos_dir):
    """The shared photos, copied where GIMP can read them; name -> path as GIMP sees it."""
    scratch = console.scratch()
    out = {}
    for name in (ASTRONAUT, OBAMA):
        shutil.copyfile(photos_dir / name, scratch / name)
        out[name] = console.inside(scratch / name)
    yield out
    shutil.rmtree(scratch, ignore_errors=True)


# --------------------------------------------------------------------------- GIMP-side code

SESSION = r"""
import json, traceback
import gi
gi.require_version("Gimp", "3.0")
gi.require_version("Gegl", "0.4")
from gi.repository import Gimp, Gio, Gegl

JOB = json.loads(__JOB__)
FMT = "R'G'B'A u8"
pdb = Gimp.get_pdb()


def emit(name, data):
    print("RESULT " + json.dumps(dict(data, scenario=name)), flush=True)


def registration():
    out = {}
    for name in ("python-fu-ffclip-edit", "python-fu-ffclip-cancel"):
        p = pdb.lookup_procedure(name)
        out[name] = None if p is None else {
            "label": p.get_menu_label(), "paths": list(p.get_menu_paths()),
            "args": [a.name for a in p.get_arguments()], "returns": [a.name for a in p.get_return_values()],
        }
    return out


def pixels(drawable, x, y, w, h, fmt=FMT):
    return bytes(drawable.get_buffer().get(Gegl.Rectangle.new(x, y, w, h), 1.0, fmt, Gegl.AbyssPolicy.NONE))


def scenario(s):
    image = Gimp.file_load(Gimp.RunMode.NONINTERACTIVE, Gio.File.new_for_path(s["photo"]))
    try:
        src = image.get_layers()[0]
        ox, oy = s.get("offsets", [0, 0])
        image.resize(image.get_width() + ox + 16, image.get_height() + oy + 16, 0, 0)
        src.set_offsets(ox, oy)
        if s.get("precision"):
            image.convert_precision(getattr(Gimp.Precision, s["precision"]))
        if s.get("mode") == "gray":
            image.convert_grayscale()
        if s.get("selection"):
            x, y, w, h = s["selection"]
            image.select_rectangle(Gimp.ChannelOps.REPLACE, ox + x, oy + y, w, h)
        lw, lh = src.get_width(), src.get_height()
        before = pixels(src, 0, 0, lw, lh)
        n_before = len(image.get_layers())
        proc = pdb.lookup_procedure("python-fu-ffclip-edit")
        cfg = proc.create_config()
        cfg.set_property("run-mode", Gimp.RunMode.NONINTERACTIVE)
        cfg.set_property("image", image)
        cfg.set_core_object_array("drawables", [src])
        for k, v in s["args"].items():
            cfg.set_property(k, v)
        result = proc.run(cfg)
        status = result.index(0)
        out = {"status": status.value_nick}
        if status != Gimp.PDBStatusType.SUCCESS:
            out["error"] = str(result.index(1)) if result.length() > 1 else ""
            out["n_layers"] = [n_before, len(image.get_layers())]
            return out
        new = result.index(1)
        layers = image.get_layers()
        _, nx, ny = new.get_offsets()
        rw, rh = new.get_width(), new.get_height()
        mask = new.get_mask()
        out.update(
            n_layers=[n_before, len(layers)],
            returned_is_new=new.get_id() == layers[image.get_item_position(src) - 1].get_id(),
            above_source=image.get_item_position(new) + 1 == image.get_item_position(src),
            name=new.get_name(), offsets=[nx, ny], source_offsets=[ox, oy], size=[rw, rh],
            has_mask=mask is not None, layer_w_h=[lw, lh],
        )
        parasite = new.get_parasite("ffclip-edit/recipe")
        if parasite is not None:
            out["recipe"] = json.loads(bytes(parasite.get_data()).decode("utf-8"))
        m = pixels(mask, 0, 0, rw, rh, "Y u8") if mask is not None else pixels(new, 0, 0, rw, rh)[3::4]
        dup = image.duplicate()
        merged = dup.merge_visible_layers(Gimp.MergeType.CLIP_TO_IMAGE)
        _, mx, my = merged.get_offsets()
        comp = pixels(merged, ox - mx, oy - my, lw, lh)
        dup.delete()
        rx, ry, stride = nx - ox, ny - oy, lw * 4
        outside_diff = inside_changed = full = 0
        for y in range(lh):
            row_c, row_b = comp[y * stride:(y + 1) * stride], before[y * stride:(y + 1) * stride]
            if not ry <= y < ry + rh:
                outside_diff += row_c != row_b
                continue
            if row_c[:rx * 4] != row_b[:rx * 4] or row_c[(rx + rw) * 4:] != row_b[(rx + rw) * 4:]:
                outside_diff += 1
            mrow = m[(y - ry) * rw:(y - ry + 1) * rw]
            for i, mv in enumerate(mrow):
                a = (rx + i) * 4
                if mv == 0 and row_c[a:a + 4] != row_b[a:a + 4]:
                    outside_diff += 1
                elif mv == 255:
                    full += 1
                    inside_changed += row_c[a:a + 3] != row_b[a:a + 3]
        if s.get("selection"):
            x, y, w, h = s["selection"]
            out["mask_outside_selection"] = sum(
                1 for j in range(rh) for i in range(rw)
                if m[j * rw + i] and not (x <= rx + i < x + w and y <= ry + j < y + h))
        out.update(outside_diff=outside_diff, mask_zero=m.count(0), mask_full=full, changed_in_full_mask=inside_changed)
        return out
    finally:
        image.delete()


if JOB.get("registration"):
    emit("registration", registration())
for s in JOB.get("scenarios", []):
    try:
        emit(s["name"], scenario(s))
    except Exception:
        emit(s["name"], {"exception": traceback.format_exc()})
"""


def run_session(console, job: dict, timeout: float = 600) -> tuple[dict, subprocess.CompletedProcess]:
    code = SESSION.replace("__JOB__", repr(json.dumps(job)))
    proc = console.run_python(code, timeout=timeout)
    results = {r.pop("scenario"): r for r in result_lines(proc)}
    return results, proc


@pytest.fixture(scope="module")
def session(console, installed, engine, photos):
    """One GIMP run: registration and every non-interactive scenario."""
    dead = f"ws://127.0.0.1:{free_port()}/"
    job = {
        "registration": True,
        "scenarios": [
            {"name": "photo", "photo": photos[ASTRONAUT], "offsets": [23, 11], "args": {"prompt": "smiling"}},
            {
                "name": "selection",
                "photo": photos[ASTRONAUT],
                "offsets": [5, 7],
                "selection": [180, 60, 90, 110],
                "precision": "FLOAT_LINEAR",
                "args": {"prompt": "blond hair", "output": "layer", "strength": 1.5, "faces": "largest"},
            },
            {"name": "high", "photo": photos[ASTRONAUT], "args": {"prompt": "smiling", "fidelity": "high"}},
            {"name": "unreachable", "photo": photos[ASTRONAUT], "args": {"prompt": "smiling", "engine-url": dead}},
            {"name": "no-prompt", "photo": photos[ASTRONAUT], "args": {"prompt": "  "}},
        ],
    }
    started = time.monotonic()
    results, proc = run_session(console, job)
    results["_log"] = gimp_console.clean_log(proc.stdout + proc.stderr)
    results["_seconds"] = time.monotonic() - started
    results["_dead_url"] = dead
    return results


def scenario(session, name):
    assert name in session, f"GIMP gave no result for {name}:\n{session['_log'][-4000:]}"
    result = session[name]
    assert "exception" not in result, result["exception"]
    return result


# --------------------------------------------------------------------------- tests


def test_a_high_fidelity_edit_makes_the_masked_layer_and_remembers_its_fidelity(session):
    """fidelity high (HyperStyle; the tiny profile's seeded one) through the procedure (issue 29)."""
    r = scenario(session, "high")
    assert r["status"] == "success", r
    assert r["name"] == "FFCLIP: smiling 1" and r["has_mask"] and r["outside_diff"] == 0
    assert r["recipe"]["fidelity"] == "high"  # a reopened edit is made at high fidelity again
    assert "fidelity" not in scenario(session, "photo")["recipe"]  # a standard edit's recipe as before


def test_installer_registers_menu_entries(session, installed):
    entry = installed / "ffclip-edit.py"
    assert entry.is_file() and os.access(entry, os.X_OK)
    reg = scenario(session, "registration")
    edit, cancel = reg["python-fu-ffclip-edit"], reg["python-fu-ffclip-cancel"]
    assert edit is not None, "python-fu-ffclip-edit is not registered:\n" + session["_log"][-3000:]
    assert edit["paths"] == ["<Image>/Filters"] and edit["label"] == "FFCLIP Edit\u2026"
    args = ["prompt", "strength", "faces", "face-index", "output", "engine-url", "more-edits", "domain", "fidelity"]
    assert edit["args"][3:] == args
    assert edit["returns"] == ["layer"]
    assert cancel is not None and cancel["paths"] == ["<Image>/Filters"] and cancel["label"] == "FFCLIP Cancel"


def test_edit_makes_masked_layer_above_source(session):
    r = scenario(session, "photo")
    assert r["status"] == "success", r
    assert r["n_layers"] == [1, 2] and r["returned_is_new"] and r["above_source"]
    assert r["name"] == "FFCLIP: smiling 1"
    assert r["has_mask"]
    ox, oy = r["source_offsets"]
    x, y = r["offsets"][0] - ox, r["offsets"][1] - oy
    w, h = r["size"]
    lw, lh = r["layer_w_h"]
    # the region: inside the source layer, smaller than it, placed at the source's offsets + region
    assert x >= 0 and y >= 0 and x + w <= lw and y + h <= lh and w * h < lw * lh
    assert r["outside_diff"] == 0, "pixels outside the blend mask changed"
    assert r["mask_zero"] > 0 and r["mask_full"] > 0
    assert r["changed_in_full_mask"] > 0.5 * r["mask_full"], "the edit changed nothing inside the mask"


def test_selection_limits_the_edit_and_layer_without_mask(session):
    r = scenario(session, "selection")
    assert r["status"] == "success", r
    assert not r["has_mask"] and r["name"] == "FFCLIP: blond hair 1.5"
    assert r["mask_outside_selection"] == 0
    assert r["outside_diff"] == 0


def test_unreachable_engine_is_a_clean_error(session):
    r = scenario(session, "unreachable")
    assert r["status"] == "execution-error"
    assert f"not running at {session['_dead_url']}" in r["error"] and "ffclip-engine serve" in r["error"]
    assert r["n_layers"] == [1, 1]
    assert "Traceback" not in session["_log"]


def test_empty_prompt_is_refused(session):
    r = scenario(session, "no-prompt")
    assert r["status"] == "execution-error" and "prompt" in r["error"]


CANCELLER = r"""
import json, os, sys, time
import gi
gi.require_version("Gimp", "3.0")
from gi.repository import Gimp
sys.path.insert(0, __PLUGIN_DIR__)
from ffclip.gimp import settings as gimp_settings
deadline = time.time() + 120
while gimp_settings.read_job_state() is None and time.time() < deadline:
    time.sleep(0.1)
state = gimp_settings.read_job_state()
proc = Gimp.get_pdb().lookup_procedure("python-fu-ffclip-cancel")
cfg = proc.create_config()
cfg.set_property("run-mode", Gimp.RunMode.NONINTERACTIVE)
r = proc.run(cfg)
print("CANCEL " + json.dumps({"state": state, "status": r.index(0).value_nick}), flush=True)
"""


def test_cancel_procedure_stops_running_edit(console, installed, photos, tmp_path):
    """Edit in one GIMP, Filters > FFCLIP Cancel in another: the edit ends as cancelled, with no layer."""
    with FakeEngineServer() as fake:
        job = {
            "scenarios": [
                {"name": "slow", "photo": photos[ASTRONAUT], "args": {"prompt": "slow", "engine-url": fake.url}}
            ]
        }
        code = SESSION.replace("__JOB__", repr(json.dumps(job)))
        argv, env = console.argv("-i", "-n", "-d", "--batch-interpreter", "python-fu-eval", "-b", "-", "--quit")
        driver = tmp_path / "slow.py"
        driver.write_text(code)
        with open(driver) as stdin:
            editor = subprocess.Popen(
                argv, env=env, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
            )
            canceller = console.run_python(
                CANCELLER.replace("__PLUGIN_DIR__", repr(console.inside(installed))), timeout=180
            )
            out, _ = editor.communicate(timeout=180)
    cancel = result_lines(canceller, "CANCEL ")
    assert cancel, canceller.stdout + canceller.stderr
    assert cancel[0]["state"] is not None and cancel[0]["status"] == "success"
    assert cancel[0]["state"]["id"] in fake.cancelled
    result = {r["scenario"]: r for r in (json.loads(x[7:]) for x in out.splitlines() if x.startswith("RESULT "))}
    assert result["slow"]["status"] == "cancel", result
    assert result["slow"]["n_layers"] == [1, 1]


def test_batch_script_edits_folder_and_reports_failures(console, installed, engine, photos_dir, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    shutil.copyfile(photos_dir / ASTRONAUT, folder / ASTRONAUT)
    shutil.copyfile(photos_dir / OBAMA, folder / OBAMA)
    (folder / "notes.txt").write_text("not a photo\n")
    out_dir = tmp_path / "edited"
    env = dict(os.environ, **console.environment())
    cmd = [
        sys.executable,
        str(REPO / "app" / "batch_edit.py"),
        str(folder),
        "smiling",
        "-o",
        str(out_dir),
        "--url",
        engine,
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    rows = [line.split("\t") for line in (out_dir / "status.tsv").read_text().splitlines()[1:]]
    status = {r[0]: r for r in rows}
    assert status[ASTRONAUT][1] == "ok" and status[OBAMA][1] == "ok", proc.stdout
    assert status["notes.txt"][1] == "error" and "cannot open" in status["notes.txt"][3]
    from PIL import Image

    for name, out in ((ASTRONAUT, "astronaut.png"), (OBAMA, "obama.png")):
        with Image.open(out_dir / out) as edited, Image.open(folder / name) as source:
            assert edited.size == source.size
    assert json.loads((out_dir / "status.json").read_text())[0]["file"] == ASTRONAUT
    assert "2 edited, 1 failed" in proc.stdout


SHOT = r"""
import subprocess, sys, time
import gi
gi.require_version("Gdk", "3.0")
from gi.repository import Gdk
out, title = sys.argv[1], sys.argv[2]
deadline, wid = time.time() + 90, None
while time.time() < deadline and wid is None:
    ids = subprocess.run(["xdotool", "search", "--onlyvisible", "--name", title], capture_output=True,
                         text=True).stdout.split()
    wid = ids[-1] if ids else None
    time.sleep(0.3)
if wid is None:
    sys.exit("no dialog window")
time.sleep(1.5)
geo = subprocess.run(["xdotool", "getwindowgeometry", "--shell", wid], capture_output=True, text=True).stdout
g = dict(line.split("=", 1) for line in geo.split())
x, y, w, h = (int(g[k]) for k in ("X", "Y", "WIDTH", "HEIGHT"))
Gdk.pixbuf_get_from_window(Gdk.get_default_root_window(), x, y, w, h).savev(out, "png", [], [])
print("SHOT", w, h, flush=True)
subprocess.run(["xdotool", "windowfocus", "--sync", wid])
subprocess.run(["xdotool", "key", "Escape"])
"""

DIALOG = r"""
import gi
gi.require_version("Gimp", "3.0")
from gi.repository import Gimp, Gio
image = Gimp.file_load(Gimp.RunMode.NONINTERACTIVE, Gio.File.new_for_path(__PHOTO__))
proc = Gimp.get_pdb().lookup_procedure("python-fu-ffclip-edit")
cfg = proc.create_config()
cfg.set_property("run-mode", Gimp.RunMode.INTERACTIVE)
cfg.set_property("image", image)
cfg.set_core_object_array("drawables", [image.get_layers()[0]])
cfg.set_property("prompt", "smiling, blond hair")
cfg.set_property("engine-url", "ws://127.0.0.1:8765/")
r = proc.run(cfg)
print("DIALOG " + r.index(0).value_nick, flush=True)
image.delete()
"""


def test_dialog_under_xvfb(console, installed, photos, tmp_path):
    have = (lambda p: (console.host(p)).exists()) if console.root is not None else shutil.which
    need(bool(have("/usr/bin/xvfb-run") and have("/usr/bin/xdotool")), "xvfb-run and xdotool are needed")
    scratch = console.scratch()
    try:
        (scratch / "shot.py").write_text(SHOT)
        (scratch / "dialog.py").write_text(DIALOG.replace("__PHOTO__", repr(photos[ASTRONAUT])))
        shot = console.inside(scratch / "dialog.png")
        gimp = " ".join(console.command)
        (scratch / "run.sh").write_text(
            f"/usr/bin/python3 {console.inside(scratch / 'shot.py')} {shot} 'FFCLIP Edit' &\n"
            f"{gimp} -i -n -d --batch-interpreter python-fu-eval -b - --quit"
            f" < {console.inside(scratch / 'dialog.py')}\n"
            "wait\n"
        )
        argv, env = console.wrap(
            ["xvfb-run", "-a", "-s", "-screen 0 1280x800x24", "sh", console.inside(scratch / "run.sh")]
        )
        proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=240)
        log = proc.stdout + proc.stderr
        assert "SHOT" in proc.stdout, log
        assert "DIALOG cancel" in proc.stdout, log
        png = scratch / "dialog.png"
        assert png.stat().st_size > 5000
        shutil.copyfile(png, tmp_path / "gimp-dialog.png")
        if os.environ.get("FFCLIP_UPDATE_SCREENSHOT"):
            shutil.copyfile(png, REPO / "docs" / "gimp-dialog.png")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


# --------------------------------------------------------------------------- the live dialog in GIMP's window

LIVE = r"""
import hashlib, json, os, time
import gi
gi.require_version("Gimp", "3.0")
gi.require_version("Gegl", "0.4")
from gi.repository import Gimp, Gio, Gegl

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

image = Gimp.file_load(Gimp.RunMode.NONINTERACTIVE, Gio.File.new_for_path(__PHOTO__))
image.undo_disable()  # an image loaded by a script keeps its layer's creation as an undo step:
image.undo_enable()  # start from an empty history, as an opened file has
image.clean_all()
Gimp.Display.new(image)
Gimp.displays_flush()
time.sleep(1.0)
out = {"before": state(image)}
proc = Gimp.get_pdb().lookup_procedure("python-fu-ffclip-edit")
cfg = proc.create_config()
cfg.set_property("run-mode", Gimp.RunMode.INTERACTIVE)
cfg.set_property("image", image)
cfg.set_core_object_array("drawables", [image.get_layers()[0]])
out["status"] = proc.run(cfg).index(0).value_nick
out["after"] = state(image)
for n in (1, 2):  # the user presses ctrl+z in GIMP's window, twice
    open(__SCRATCH__ + f"/undo{n}.ready", "w").close()
    wait_for(__SCRATCH__ + f"/undo{n}.done")
    out[f"undo{n}"] = state(image)
print("LIVE " + json.dumps(out), flush=True)
"""

UNDO_KEYS = """
( for n in 1 2; do
    while [ ! -f {s}/undo$n.ready ]; do sleep 0.2; done
    sleep 1; xdotool key ctrl+z; sleep 1.5; touch {s}/undo$n.done
  done ) &
"""


def run_live_dialog(console, photo: str, steps: list[dict], tmp_path: Path) -> tuple[dict, list[dict], Path]:
    """GIMP's window under Xvfb with the photo, FFCLIP Edit opened and driven by `steps` (the
    dialog's scripted user), then ctrl+z pressed twice; returns (image states, dialog log, scratch)."""
    have = (lambda p: (console.host(p)).exists()) if console.root is not None else shutil.which
    need(bool(have("/usr/bin/xvfb-run") and have("/usr/bin/xdotool")), "xvfb-run and xdotool are needed")
    gui = [c.replace("gimp-console", "gimp") for c in console.command]
    profile = console.home_dir() / ".config" / "GIMP" / "3.0"
    profile.mkdir(parents=True, exist_ok=True)
    (profile / "gimprc").write_text("(show-welcome-dialog no)\n(show-tips no)\n")
    scratch = console.scratch()
    s = console.inside(scratch)
    (scratch / "steps.json").write_text(json.dumps(steps))
    (scratch / "live.py").write_text(LIVE.replace("__PHOTO__", repr(photo)).replace("__SCRATCH__", repr(s)))
    (scratch / "run.sh").write_text(
        UNDO_KEYS.format(s=s)
        + f"{' '.join(gui)} -n --no-splash --batch-interpreter python-fu-eval -b - --quit < {s}/live.py\nwait\n"
    )
    gimp = gimp_console.GimpConsole(console.command, console.root, console.home)
    gimp.extra_env.update({"FFCLIP_DIALOG_SCRIPT": f"{s}/steps.json", "FFCLIP_DIALOG_LOG": f"{s}/dialog.log"})
    argv, env = gimp.wrap(["xvfb-run", "-a", "-s", "-screen 0 1600x1000x24", "sh", f"{s}/run.sh"])
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
    lines = result_lines(proc, "LIVE ")
    assert lines, proc.stdout[-3000:] + proc.stderr[-3000:]
    log = scratch / "dialog.log"
    records = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return lines[0], records, scratch


def _live_steps(scratch_inside: str | None, ending: dict) -> list[dict]:
    area = [0, 0, 1430, 665]  # GIMP's window and the dialog beside it
    shot = (lambda name: [{"shot": f"{scratch_inside}/{name}", "area": area}]) if scratch_inside else (lambda n: [])
    return [
        {"move": [860, 40]},
        {"note": "opened"},
        {"type": "a smiling face", "row": 0, "key_s": 0.06},  # a key at a time, as typed
        {"wait_preview": True},
        {"note": "typed"},
        {"slider": 1.6, "row": 0},
        {"wait_preview": True},
        {"note": "slider"},
        {"add_row": True},
        {"type": "grey hair", "row": 1},
        {"wait_preview": True},
        {"note": "two attributes"},
        *shot("live.png"),
        {"before": True},
        {"note": "before"},
        *shot("before.png"),
        {"before": False},
        {"note": "after"},
        ending,
        {"sleep": 60},  # Apply's answer arrives meanwhile and closes the dialog
    ]


def _previews(records: list[dict]) -> dict[str, dict]:
    return {r["label"]: r for r in records if r.get("step") == "note"}


def test_live_dialog_apply_leaves_one_masked_layer_in_one_undo_step(console, installed, photos, tmp_path):
    scratch_hint = console.scratch()  # where the screenshots go (GIMP's side of the chroot)
    steps = _live_steps(console.inside(scratch_hint), {"apply": True})
    out, records, _ = run_live_dialog(console, photos[ASTRONAUT], steps, tmp_path)
    notes = _previews(records)
    assert notes["opened"]["preview"] is None
    typed, slider, two = notes["typed"]["preview"], notes["slider"]["preview"], notes["two attributes"]["preview"]
    assert typed and slider and two and len({typed["sha1"], slider["sha1"], two["sha1"]}) == 3  # it changes
    assert notes["typed"]["layers"] == ["FFCLIP preview (temporary)", "Background"] and typed["visible"]
    assert notes["typed"]["selected"] == ["Background"] and typed["locked"]  # never the user's target
    assert notes["before"]["preview"]["visible"] is False and notes["after"]["preview"]["visible"] is True
    # the undo stays on for the user, and the previews neither reach it nor mark the saved image changed
    assert notes["typed"]["undo_enabled"] is True and notes["two attributes"]["dirty"] is False
    assert "untrained" in notes["typed"]["engine"]
    assert out["status"] == "success"
    assert out["after"]["layers"] == ["FFCLIP: a smiling face 1.6 + grey hair 1", "Background"]
    assert out["after"]["masks"] == [True, False] and out["after"]["source"] == out["before"]["source"]
    assert out["after"]["selected"] == ["FFCLIP: a smiling face 1.6 + grey hair 1"] and not out["after"]["mask_active"]
    assert out["undo1"]["layers"] == ["Background"]  # one ctrl+z takes the edit away...
    assert out["undo1"]["dirty"] is False  # ... and the image is as saved again
    assert out["undo2"] == out["undo1"]  # ... and there is nothing else to undo
    for name in ("live.png", "before.png"):
        shot = scratch_hint / name
        assert shot.stat().st_size > 20000, name
        shutil.copyfile(shot, tmp_path / name)
        if os.environ.get("FFCLIP_UPDATE_SCREENSHOT"):
            shutil.copyfile(shot, REPO / "docs" / f"gimp-{name}")
    shutil.rmtree(scratch_hint, ignore_errors=True)


def test_live_dialog_cancel_leaves_the_image_as_it_was(console, installed, photos, tmp_path):
    out, records, _ = run_live_dialog(console, photos[ASTRONAUT], _live_steps(None, {"cancel": True}), tmp_path)
    assert _previews(records)["two attributes"]["layers"] == ["FFCLIP preview (temporary)", "Background"]
    assert out["status"] == "cancel"
    assert out["after"] == out["before"]  # the same layers and pixels, still unmodified
    assert out["undo1"] == out["before"]  # and nothing was added to the history


def test_a_stroke_painted_while_the_dialog_is_open_survives_cancel_and_can_be_undone(
    console, installed, photos, tmp_path
):
    """Issue 25, point 1: open the dialog, type, paint on the photo meanwhile, Cancel."""
    steps = [
        {"reset": True},  # the dialog opens with the last values of an earlier test's Apply
        {"type": "smiling", "row": 0, "key_s": 0.03},
        {"wait_preview": True},
        {"paint": True},  # the user's brush, on the photo layer
        {"note": "painted"},
        {"preset_save": "happy"},
        {"reset": True},
        {"sleep": 1},
        {"note": "reset"},
        {"preset": "happy"},
        {"note": "preset"},
        {"cancel": True},
    ]
    out, records, _ = run_live_dialog(console, photos[ASTRONAUT], steps, tmp_path)
    painted = _previews(records)["painted"]
    assert painted["dirty"] is True and painted["undo_enabled"] is True
    assert out["status"] == "cancel"
    assert out["after"]["layers"] == ["Background"]  # the preview went...
    assert out["after"]["source"] != out["before"]["source"]  # ... the stroke stayed
    assert out["after"]["dirty"] is True  # and the image says it was changed
    assert out["undo1"]["source"] == out["before"]["source"]  # the stroke is one ctrl+z
    reset, preset = _previews(records)["reset"], _previews(records)["preset"]
    assert reset["rows"] == [["", 1.0]] and reset["preview"] is None  # Reset: the defaults, no preview
    assert preset["rows"] == [["smiling", 1.0]]  # the preset saved before Reset brings the rows back
    assert painted["completion_popup"] is False  # completion inline only: no pop-up to swallow a click
