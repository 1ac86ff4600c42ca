"""A reopenable edit in a real GIMP 3 (issue 25, batch mode): the FFCLIP layer carries its recipe
(`ffclip-edit/recipe`), is the active layer afterwards (not its mask), Filters > Repeat's
WITH_LAST_VALS works, the recipe survives saving and loading the XCF, and running FFCLIP Edit with
that layer selected edits its source again in place — or says why it cannot."""

from __future__ import annotations

import shutil

import pytest

from tests.support.gimp import result_lines

pytestmark = pytest.mark.gimp

SCRIPT = r"""
import json, traceback
import gi
gi.require_version("Gimp", "3.0")
gi.require_version("Gegl", "0.4")
from gi.repository import Gimp, Gio, Gegl

pdb = Gimp.get_pdb()
PROC = pdb.lookup_procedure("python-fu-ffclip-edit")

def emit(name, data):
    print("RESULT " + json.dumps(dict(data, step=name)), flush=True)

def run(image, drawable, mode=Gimp.RunMode.NONINTERACTIVE, **args):
    cfg = PROC.create_config()
    cfg.set_property("run-mode", mode)
    cfg.set_property("image", image)
    cfg.set_core_object_array("drawables", [drawable])
    for k, v in args.items():
        cfg.set_property(k.replace("_", "-"), v)
    r = PROC.run(cfg)
    status = r.index(0)
    out = {"status": status.value_nick}
    if status != Gimp.PDBStatusType.SUCCESS:
        out["error"] = str(r.index(1)) if r.length() > 1 else ""
    else:
        out["layer"] = r.index(1)
    return out

def recipe(layer):
    p = layer.get_parasite("ffclip-edit/recipe")
    return None if p is None else {"flags": p.get_flags(), "doc": json.loads(bytes(p.get_data()).decode("utf-8"))}

def describe(image, layer):
    sel = image.get_selected_drawables()
    return {
        "name": layer.get_name(), "layers": [l.get_name() for l in image.get_layers()],
        "selected": [d.get_name() for d in sel], "selected_is_mask": [isinstance(d, Gimp.LayerMask) for d in sel],
        "edit_mask": layer.get_edit_mask(), "has_mask": layer.get_mask() is not None, "recipe": recipe(layer),
        "tattoo": layer.get_tattoo(),
    }

def find(image, prefix="FFCLIP: "):
    return next(l for l in image.get_layers() if l.get_name().startswith(prefix))

image = Gimp.file_load(Gimp.RunMode.NONINTERACTIVE, Gio.File.new_for_path(__PHOTO__))
src = image.get_layers()[0]
first = run(image, src, prompt="smiling", strength=0.8, more_edits="grey hair=1.2")
emit("first", dict(first, layer=None, **(describe(image, first["layer"]) if "layer" in first else {})))

again = run(image, src, mode=Gimp.RunMode.WITH_LAST_VALS)  # Filters > Repeat, on the photo layer
emit("last_vals", dict(again, layer=None, **(describe(image, again["layer"]) if "layer" in again else {})))

path = __SCRATCH__ + "/edited.xcf"
Gimp.file_save(Gimp.RunMode.NONINTERACTIVE, image, Gio.File.new_for_path(path), None)
image.delete()
image = Gimp.file_load(Gimp.RunMode.NONINTERACTIVE, Gio.File.new_for_path(path))
layer = find(image)
emit("loaded", describe(image, layer))

n = len(image.get_layers())
reopened = run(image, layer, prompt="bald", strength=1.5)  # with the FFCLIP layer selected
emit("reopened", dict(reopened, layer=None, n_before=n, same=reopened.get("layer") is not None and
     reopened["layer"].get_id() == layer.get_id(), **describe(image, layer)))

by_mask = run(image, layer.get_mask(), prompt="beard", strength=1.0)  # its mask as the drawable
emit("by_mask", dict(by_mask, layer=None, n=len(image.get_layers()), **describe(image, layer)))

source = image.get_layers()[-1]
source.invert(False)  # the photo changed since the edit (painting needs brushes, which `-d` leaves out)
changed = run(image, layer, prompt="bald")
emit("changed", dict(changed, layer=None, n=len(image.get_layers())))

image.remove_layer(source)
deleted = run(image, layer, prompt="bald")
emit("deleted", dict(deleted, layer=None, n=len(image.get_layers())))
image.delete()
"""


@pytest.fixture(scope="module")
def steps(console, installed, engine, photos_dir):
    scratch = console.scratch()
    try:
        shutil.copyfile(photos_dir / "astronaut.png", scratch / "astronaut.png")
        code = SCRIPT.replace("__PHOTO__", repr(console.inside(scratch / "astronaut.png")))
        code = code.replace("__SCRATCH__", repr(console.inside(scratch)))
        proc = console.run_python(code, timeout=600)
        out = {r.pop("step"): r for r in result_lines(proc)}
        out["_log"] = proc.stdout[-3000:] + proc.stderr[-3000:]
        yield out
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def step(steps, name):
    assert name in steps, steps["_log"]
    return steps[name]


def test_an_applied_edit_carries_its_recipe_and_is_the_active_layer_not_its_mask(steps):
    first = step(steps, "first")
    assert first["status"] == "success", first
    assert first["name"] == "FFCLIP: smiling 0.8 + grey hair 1.2"
    assert first["selected"] == [first["name"]] and first["selected_is_mask"] == [False]
    assert first["has_mask"] and first["edit_mask"] is False
    doc = first["recipe"]["doc"]
    assert first["recipe"]["flags"] & 1  # persistent: saved in the XCF
    assert doc["edits"] == [{"prompt": "smiling", "strength": 0.8}, {"prompt": "grey hair", "strength": 1.2}]
    assert doc["source"]["name"] == "Background" and len(doc["source"]["sha256"]) == 64
    assert doc["models"]["profile"] == "tiny" and doc["models"]["untrained"] is True


def test_with_last_vals_repeats_the_last_edit(steps):
    again = step(steps, "last_vals")
    assert again["status"] == "success", again
    assert again["name"].startswith("FFCLIP: smiling 0.8 + grey hair 1.2")  # GIMP numbers a second one "#1"


def test_the_recipe_survives_saving_and_loading_the_xcf(steps):
    loaded, first = step(steps, "loaded"), step(steps, "first")
    assert loaded["recipe"]["doc"] == first["recipe"]["doc"]


def test_an_ffclip_layer_selected_is_edited_again_in_place(steps):
    reopened = step(steps, "reopened")
    assert reopened["status"] == "success", reopened
    assert reopened["same"] and len(reopened["layers"]) == reopened["n_before"]  # no new layer
    assert reopened["name"] == "FFCLIP: bald 1.5"
    assert reopened["recipe"]["doc"]["edits"] == [{"prompt": "bald", "strength": 1.5}]
    assert reopened["recipe"]["doc"]["source"] == step(steps, "first")["recipe"]["doc"]["source"]
    by_mask = step(steps, "by_mask")  # the layer's mask selected: the layer is meant
    assert (
        by_mask["status"] == "success" and by_mask["n"] == reopened["n_before"] and by_mask["name"] == "FFCLIP: beard 1"
    )


def test_a_changed_or_deleted_source_is_said_never_edited_silently(steps):
    changed, deleted = step(steps, "changed"), step(steps, "deleted")
    assert changed["status"] == "execution-error" and "has changed since the edit" in changed["error"], changed
    assert deleted["status"] == "execution-error" and "has been deleted" in deleted["error"], deleted
    assert changed["n"] == deleted["n"] + 1  # nothing added by either (the source removed in between)
