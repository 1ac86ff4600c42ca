"""The engine (engine/inference.py): synthesis at a chosen size, several levels from one pass, its options."""

from __future__ import annotations

import pytest
import torch

from ffclip.engine.inference import Engine, build_tiny
from ffclip.engine.profiles import TINY
from tests.support.generators import lively_generator


def test_engine_synthesizes_at_a_chosen_size() -> None:
    engine = Engine(build_tiny(TINY), TINY, "cpu")
    w = engine.invert(torch.zeros(1, 3, 256, 256))
    assert engine.synthesize(w, size=32).shape == (1, 3, 32, 32)
    assert engine.synthesize(w, size=engine.size).shape == (1, 3, engine.size, engine.size)
    with pytest.raises(ValueError):
        engine.synthesize(w, size=100)


def test_levels_are_the_images_of_synthesis_stopped_there() -> None:
    """One pass yields the 1024² edit and its 256² copy; the copy must equal a synthesis stopped at
    256², since the pipeline compares it with a reconstruction made only up to there."""
    engine = Engine(build_tiny(TINY), TINY, "cpu")
    w = engine.invert(torch.rand(2, 3, 256, 256) * 2 - 1)
    levels = engine.synthesize_levels(w, (engine.size, 64, 16))
    assert sorted(levels) == [16, 64, engine.size]
    for size, image in levels.items():
        assert image.shape == (2, 3, size, size)
        torch.testing.assert_close(image, engine.synthesize(w, size=size), rtol=0, atol=0)
    with torch.enable_grad():  # the reference path keeps the same levels
        g = lively_generator()
        latent = torch.randn(1, g.n_latent, 32)
        ref = g.synthesis_levels(latent, g.fixed_noise(), (8, 32))
        torch.testing.assert_close(ref[8], g.synthesis(latent, g.fixed_noise(), 8))
    with pytest.raises(ValueError):
        engine.synthesize_levels(w, (48,))


def test_engine_options() -> None:
    nets = build_tiny(TINY)
    with pytest.raises(ValueError, match="for GPUs"):
        Engine(nets, TINY, "cpu", autocast=True)  # the former name of fp16
    before = torch.get_num_threads()
    try:
        engine = Engine(nets, TINY, "cpu", threads=1)
        assert torch.get_num_threads() == 1
        assert engine.describe()["precision"] == "fp32"
    finally:
        torch.set_num_threads(before)
