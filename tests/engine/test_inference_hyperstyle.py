"""Loading HyperStyle's official files into the engine (issue 29): the hypernetwork with the layers
its file tunes, the W encoder, HyperStyle's latent_avg; its generator shared with the engine's when
the weights are the same (the official files' decoder is StyleGAN2 FFHQ itself), its own otherwise.
Full-size synthetic files (zero-stride tensors; the hypernetwork is ~1.3 GB once loaded)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ffclip.engine.checkpoints import layouts as L
from ffclip.engine.checkpoints import synthetic as S
from ffclip.engine.inference import ModelsMissing, generator_from_state_dict, load_real_hyperstyle
from ffclip.engine.models.hyperstyle import FFHQ_LAYERS_TO_TUNE
from ffclip.engine.store import ModelStore


def test_missing_files_are_named_with_the_fetch_command(tmp_path: Path) -> None:
    with pytest.raises(ModelsMissing) as info:
        load_real_hyperstyle(tmp_path, "face", None)
    assert info.value.missing == ["hyperstyle", "hyperstyle-w-encoder"]
    assert info.value.hint.endswith(f"--models {tmp_path.absolute()} high")
    with pytest.raises(ModelsMissing, match="church"):
        load_real_hyperstyle(tmp_path, "church", None)


@pytest.mark.slow
def test_the_official_files_load_and_share_the_engines_generator(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    layers = (0, 2, 3, 14, 24)  # a file tuning fewer layers: read from its keys
    files = S.hyperstyle_files(1024, layers)
    for name, ckpt in zip(("hyperstyle", "hyperstyle-w-encoder"), files.values(), strict=True):
        S.save(ckpt, tmp_path / f"{name}.pt")
        store.import_file(tmp_path / f"{name}.pt")
    same = generator_from_state_dict(S.cheap_state_dict(L.generator_shapes(1024)))
    nets = load_real_hyperstyle(tmp_path, "face", same)
    assert nets.generator is None  # the engine's own: the same weights
    tuned = [j for j, block in enumerate(nets.hypernet.refinement_blocks) if block is not None]
    assert tuned == list(layers) and set(layers) < set(FFHQ_LAYERS_TO_TUNE)
    assert nets.latent_avg.shape == (18, 512) and nets.n_iters == 5 and nets.rows is None
    assert nets.sources == {"hyperstyle": "hyperstyle_ffhq.pt", "hyperstyle-w-encoder": "faces_w_encoder.pt"}
    del nets
    other = generator_from_state_dict(S.cheap_state_dict(L.generator_shapes(1024), 1.0))
    nets = load_real_hyperstyle(tmp_path, "face", other)
    assert nets.generator is not None and torch.equal(
        nets.generator.conv1.conv.weight, torch.zeros_like(other.conv1.conv.weight)
    )
