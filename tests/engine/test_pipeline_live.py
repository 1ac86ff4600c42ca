"""The live-editing side of the pipeline: several attributes at once (ŵ = w + Σ αᵢ·Δwᵢ), Δw cached
per (photo, face, prompt) so that new strengths only synthesize and blend, previews at the engine's
resolution, and a cancel honoured inside the synthesis."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ffclip.engine.inference import Engine
from ffclip.engine.pipeline import Pipeline
from ffclip.plugin.protocol import Attribute, BadRequest, EditParams, EngineError
from tests.support.edit_engine import ImageSpaceEngine

PROMPT_CODES = {"smiling": 1.0, "grey hair": -2.0, "beard": 0.5}


class PromptEngine(ImageSpaceEngine):
    """Δw depends on the prompt (through its embedding), and every ŵ synthesized is recorded."""

    def __init__(self) -> None:
        super().__init__()
        self.encoded: list[list[str]] = []
        self.inverted: list[torch.Tensor] = []
        self.synthesized: list[torch.Tensor] = []

    def invert(self, x: torch.Tensor) -> torch.Tensor:
        self.inverted.append(super().invert(x))
        return self.inverted[-1]

    def encode_text(self, prompts: list[str]) -> torch.Tensor:
        self.encoded.append(list(prompts))
        return torch.tensor([PROMPT_CODES[p] for p in prompts]).view(-1, 1, 1).expand(-1, 1, 4)

    def delta(self, w: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        self.calls["map"] += 1
        code = float(e.flatten()[0])
        delta = torch.zeros_like(w)
        delta[:, :, : int(0.3 * w.shape[2]), :] = 0.1 * code
        return delta + 0.01 * code * w  # depends on w too, as the mapper does

    def synthesize_levels(self, w, sizes, between_levels=None, preview=False):
        if max(sizes) > 256:  # the edit, not the 256² reconstruction
            self.synthesized.append(w.clone())
        return super().synthesize_levels(w, sizes, between_levels, preview)


@pytest.fixture(scope="module")
def photo(photos_dir) -> np.ndarray:
    import cv2

    from ffclip.engine.imageio import load_image

    return cv2.resize(load_image(photos_dir / "obama.jpg"), None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA)


def two(a: float, b: float) -> EditParams:
    return EditParams((Attribute("smiling", a), Attribute("grey hair", b)))


def test_several_attributes_sum_their_deltas(photo: np.ndarray) -> None:
    engine = PromptEngine()
    Pipeline(engine).edit(two(0.8, 1.2), photo)
    w = engine.inverted[-1]
    code = {p: torch.full((1, 1, 4), c) for p, c in PROMPT_CODES.items()}
    expected = w + 0.8 * engine.delta(w, code["smiling"]) + 1.2 * engine.delta(w, code["grey hair"])
    assert torch.allclose(engine.synthesized[-1], expected, rtol=0, atol=1e-6)
    assert engine.encoded == [["smiling", "grey hair"]]  # one CLIP batch for both prompts


def test_new_strengths_only_synthesize_and_blend(photo: np.ndarray) -> None:
    engine = PromptEngine()
    pipeline = Pipeline(engine)
    pipeline.edit(two(0.8, 1.2), photo)
    calls = dict(engine.calls)
    again = pipeline.edit(two(0.3, -0.5), photo)
    assert again.stages == ["synthesize", "blend"]
    assert engine.calls["map"] == calls["map"] and len(engine.encoded) == 1  # neither CLIP nor the mapper
    fresh_engine = PromptEngine()
    fresh = Pipeline(fresh_engine).edit(two(0.3, -0.5), photo)
    assert torch.equal(engine.synthesized[-1], fresh_engine.synthesized[-1])  # the cache changes nothing
    assert np.array_equal(again.image, fresh.image) and np.array_equal(again.mask, fresh.mask)


def test_a_new_prompt_runs_clip_and_the_mapper_for_it_alone(photo: np.ndarray) -> None:
    engine = PromptEngine()
    pipeline = Pipeline(engine)
    pipeline.edit(two(0.8, 1.2), photo)
    result = pipeline.edit(EditParams((Attribute("smiling", 0.8), Attribute("beard", 1.0))), photo)
    assert result.stages == ["encode_text", "map", "synthesize", "blend"]
    assert engine.encoded[-1] == ["beard"]


def test_one_attribute_is_the_papers_edit_bit_for_bit(photo: np.ndarray) -> None:
    """Through the Δw cache or not, one prompt gives exactly Engine.map's w + α·Δw."""
    engine = Engine.load(profile="tiny")
    seen: list[torch.Tensor] = []
    synthesize_levels = engine.synthesize_levels

    def record(w, sizes, between_levels=None, preview=False):
        if max(sizes) == engine.size:
            seen.append(w.clone())
        return synthesize_levels(w, sizes, between_levels, preview)

    inverted: list[torch.Tensor] = []
    invert = engine.invert
    engine.invert = lambda x: inverted.append(invert(x)) or inverted[-1]
    engine.synthesize_levels = record
    pipeline = Pipeline(engine)
    pipeline.edit(EditParams.single("a smiling face", 0.7, faces="largest"), photo)
    pipeline.edit(EditParams.single("a smiling face", 1.3, faces="largest"), photo)  # Δw from the cache
    e = engine.encode_text(["a smiling face"])
    edit, reconstruction, re_edit = seen  # the tiny generator's size is the comparison size too
    assert torch.equal(reconstruction, inverted[0])
    assert torch.equal(edit, engine.map(inverted[0], e, 0.7))
    assert torch.equal(re_edit, engine.map(inverted[0], e, 1.3))


def test_preview_reports_the_engines_preview_resolution(photo: np.ndarray) -> None:
    engine = PromptEngine()
    pipeline = Pipeline(engine)
    assert pipeline.edit(EditParams.single("smiling", preview=True), photo).size == engine.preview_size
    params = EditParams.single("smiling")
    full = pipeline.edit(params, photo)
    assert full.size == engine.size
    result = full.result(params)
    assert result.size == engine.size and result.edits == params.edits and result.stages == full.stages


def test_a_cancel_stops_the_synthesis_between_levels(photo: np.ndarray) -> None:
    engine = Engine.load(profile="tiny")
    pipeline = Pipeline(engine)
    params = EditParams.single("a smiling face", faces="largest")
    pipeline.edit(EditParams.single("a smiling face", preview=True, faces="largest"), photo)  # cache the face
    checks = {"n": 0}
    before_synthesis = 6  # detect, align, invert, encode_text, map skipped (all cached), synthesize begins
    assert engine.size >= 32  # at least three resolutions after 4²: the cancel lands inside

    def cancel_two_levels_in() -> bool:
        checks["n"] += 1
        return checks["n"] == before_synthesis + 2

    with pytest.raises(EngineError) as info:
        pipeline.edit(params, photo, should_cancel=cancel_two_levels_in)
    assert info.value.code == "cancelled"
    assert checks["n"] == before_synthesis + 2  # nothing ran after the cancel


def test_edit_command_takes_several_attributes(tmp_path, photos_dir, capsys) -> None:
    from ffclip.app.cli import main

    assert Attribute.parse("grey hair=1.2") == Attribute("grey hair", 1.2)
    assert Attribute.parse("smiling") == Attribute("smiling", 1.0)
    assert Attribute.parse("e=mc2") == Attribute("e=mc2", 1.0)  # an "=" that belongs to the words
    with pytest.raises(BadRequest):
        Attribute.parse("smiling=nan")
    out = tmp_path / "out.png"
    argv = ["edit", str(photos_dir / "astronaut.png"), "-o", str(out), "--profile", "tiny", "--faces", "largest"]
    assert main([*argv, "--edit", "a smiling face=0.8", "--edit", "grey hair=-1.5"]) == 0
    assert out.is_file()
    assert main(argv) == 2  # no PROMPT and no --edit
    assert "give a PROMPT" in capsys.readouterr().err
    assert main([*argv, "--edit", "a=1", "--edit", "b", "--edit", "c", "--edit", "d", "--edit", "e"]) == 2
