"""The recipe an FFCLIP layer carries (gimp/recipe.py): what it keeps, what it refuses, and the
source check that keeps a reopened edit from silently editing something else (issue 25)."""

from __future__ import annotations

import json

import pytest

from ffclip.gimp.recipe import PARASITE, Recipe, RecipeError, SourceRef, check_source, pixels_digest
from ffclip.plugin.protocol import Attribute, EditParams

SOURCE = SourceRef(7, "Background", pixels_digest(b"\x01\x02\x03\x04" * 16))
MODELS = {
    "profile": "real",
    "domain": "face",
    "untrained": False,
    "size": 1024,
    "sources": {"ffclip": "sha256:ab"},
    "device": "cuda:0",
    "paths": "/home/x/models",
}


def test_a_recipe_keeps_the_edit_the_source_and_the_models_in_utf8_json():
    params = EditParams((Attribute("sourire éclatant", 0.8), Attribute("grey hair", 1.2)), (1,), domain="face")
    recipe = Recipe.of(params, SOURCE, "layer-mask", MODELS)
    data = recipe.to_bytes()
    doc = json.loads(data.decode("utf-8"))
    assert PARASITE == "ffclip-edit/recipe"
    assert doc["edits"] == [{"prompt": "sourire éclatant", "strength": 0.8}, {"prompt": "grey hair", "strength": 1.2}]
    assert doc["faces"] == [1] and doc["domain"] == "face" and doc["output"] == "layer-mask"
    assert doc["source"] == {"tattoo": 7, "name": "Background", "sha256": SOURCE.sha256}
    assert doc["models"] == {
        "profile": "real",
        "domain": "face",
        "untrained": False,
        "size": 1024,
        "sources": {"ffclip": "sha256:ab"},
    }  # identities only: no device, no path
    again = Recipe.from_bytes(data)
    assert again == recipe and again.params() == EditParams(params.edits, (1,))


def test_a_new_edit_keeps_the_recipes_source():
    recipe = Recipe.of(EditParams.single("smiling"), SOURCE, "layer", MODELS)
    changed = recipe.with_edits(EditParams.single("bald", strength=1.5, faces="largest"))
    assert changed.source == SOURCE and changed.output == "layer"
    assert changed.edits == (Attribute("bald", 1.5),) and changed.faces == "largest"


def test_a_high_fidelity_edit_is_reopened_with_high_fidelity():
    params = EditParams.single("smiling", fidelity="high")
    recipe = Recipe.from_bytes(Recipe.of(params, SOURCE, "layer-mask", MODELS).to_bytes())
    assert recipe.fidelity == "high" and recipe.params(preview=True).fidelity == "high"
    assert recipe.with_edits(EditParams.single("bald")).fidelity == "standard"  # the new edit's own
    standard = Recipe.of(EditParams.single("smiling"), SOURCE, "layer-mask", MODELS).to_bytes()
    assert b"fidelity" not in standard  # a standard edit's recipe reads as before issue 29


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xff\xfe",
        b"[1, 2]",
        b'{"version": 2, "edits": [], "source": {}}',
        b'{"version": 1, "edits": [], "source": {"tattoo": 1, "name": "a", "sha256": "b"}}',
        b'{"version": 1, "edits": [{"prompt": "x"}]}',
        b'{"version": 1, "edits": [{"prompt": "x"}], "source": {"tattoo": 1, "name": "a", "sha256": "b"}, '
        b'"domain": "boat"}',
        b'{"version": 1, "edits": [{"prompt": "x", "strength": 99}], "source": {"tattoo": 1, "name": "a", '
        b'"sha256": "b"}}',
        b" " * 70000,
        b'{"version": 1, "edits": [{"prompt": "x"}], "source": {"tattoo": 1, "name": "a", "sha256": "b"}, '
        b'"fidelity": "ultra"}',
    ],
)
def test_what_is_not_a_recipe_is_refused_by_name(data):
    with pytest.raises(RecipeError):
        Recipe.from_bytes(data)


def test_a_deleted_or_changed_source_is_named_and_an_unchanged_one_passes():
    recipe = Recipe.of(EditParams.single("smiling"), SOURCE, "layer-mask")
    assert check_source(recipe, True, SOURCE.sha256) is None
    assert "has been deleted" in check_source(recipe, False, None)
    changed = check_source(recipe, True, pixels_digest(b"\x00" * 64))
    assert "has changed since the edit" in changed and "Background" in changed
