"""The engine loads the official checkpoint layouts from a model store (real sizes, placeholder
weights): the path a user takes after `ffclip-engine models fetch`."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ffclip.engine.checkpoints import synthetic
from ffclip.engine.inference import Engine, ModelsMissing
from ffclip.engine.store import ModelStore


def test_missing_models_are_named_with_the_fetch_command(tmp_path: Path) -> None:
    with pytest.raises(ModelsMissing) as info:
        Engine.load("real", models_dir=tmp_path)
    assert {"e4e", "ffclip", "clip"} <= set(info.value.missing)
    assert "ffclip-engine models fetch" in info.value.hint


@pytest.mark.slow
def test_engine_loads_official_layouts_and_edits(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    from ffclip.engine.models.clip import build_clip

    store = ModelStore(tmp_path)
    for name, ckpt in synthetic.official_size_files(1024).items():
        synthetic.save(ckpt, store.path(name))
    clip_sd = {k: torch.zeros_like(v) for k, v in build_clip().state_dict().items()}
    save_file(clip_sd, str(store.path("clip")))
    del clip_sd

    engine = Engine.load("real", models_dir=tmp_path)
    assert not engine.untrained and engine.n_latent == 18 and engine.size == 1024
    w = engine.invert(torch.zeros(1, 3, 256, 256))
    assert w.shape == (1, 18, 512)
    w_hat = engine.map(w, engine.encode_text(["smiling"]), strength=0.5)
    assert w_hat.shape == w.shape
    assert engine.synthesize(w_hat, preview=True).shape == (1, 3, 128, 128)


@pytest.mark.slow
def test_engine_loads_every_official_file_and_edits_at_high_fidelity(tmp_path: Path) -> None:
    """The real profile end to end with every face file present at its official size and layout,
    HyperStyle's two included: `high` is offered, loads on first use with the engine's own
    generator (the decoder in hyperstyle_ffhq.pt is the same), inverts (W encoder + 5 refinements at
    1024²) and renders with the offsets of the 17 tuned layers."""
    from safetensors.torch import save_file

    from ffclip.engine.models.clip import build_clip
    from ffclip.engine.models.hyperstyle import FFHQ_LAYERS_TO_TUNE

    store = ModelStore(tmp_path)
    files = {**synthetic.official_size_files(1024), **synthetic.hyperstyle_files(1024)}
    for name, ckpt in files.items():
        synthetic.save(ckpt, store.path({"w_encoder": "hyperstyle-w-encoder"}.get(name, name)))
    del files
    save_file({k: torch.zeros_like(v) for k, v in build_clip().state_dict().items()}, str(store.path("clip")))

    engine = Engine.load("real", models_dir=tmp_path)
    assert engine.describe_fidelity() == {
        "fidelities": ["standard", "high"],
        "high_fidelity": {"loaded": False, "missing": []},
    }
    codes, offsets = engine.invert_high(torch.zeros(1, 3, 256, 256))
    assert engine.describe_fidelity()["high_fidelity"]["loaded"]
    assert engine.hyperstyle().generator is None  # the engine's generator, not a second copy
    assert codes.shape == (1, 18, 512)
    assert [j for j, d in enumerate(offsets) if d is not None] == list(FFHQ_LAYERS_TO_TUNE)
    image = engine.synthesize(codes, offsets=offsets)
    assert image.shape == (1, 3, 1024, 1024) and bool(torch.isfinite(image).all())
