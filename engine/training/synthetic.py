"""Real-size training inputs with synthetic weights, in the official file layouts (tests, smoke runs).

* `stylegan2-ffhq-config-f.pt`: rosinality {'g_ema', 'latent_avg'}, filled from
  parity/stylegan2_1024.manifest.json with engine.synth (the parity recipe);
* `model_ir_se50.pth`: the plain IR-SE-50 state_dict, filled from parity/training/arcface_ir_se50;
* `clip_vit_b_32_openai.safetensors`: an open_clip ViT-B/32 state_dict (no manifest exists: seeded
  normal weights of CLIP-like scale, LayerNorm weights 1, stored as float16 to halve the file);
* `train.npy`: W+ codes near the generator's mean.
None of these is a trained model.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

GENERATOR_NAME = "stylegan2-ffhq-config-f.pt"
ARCFACE_NAME = "model_ir_se50.pth"
CLIP_NAME = "clip_vit_b_32_openai.safetensors"


def synthetic_clip_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    from ffclip.engine.checkpoints.layouts import clip_shapes

    rng = np.random.default_rng(seed)
    sd = {}
    for key, shape in clip_shapes().items():
        if key.endswith("logit_scale"):
            arr = np.full(shape, np.log(100.0))
        elif ("ln" in key or key.endswith("norm.weight")) and key.endswith("weight"):
            arr = np.ones(shape)
        elif key.endswith("bias"):
            arr = np.zeros(shape)
        else:
            arr = rng.standard_normal(size=shape, dtype=np.float32) * 0.02
        sd[key] = torch.from_numpy(np.asarray(arr, dtype=np.float16))
    return sd


def write_real_size_files(
    folder: str | os.PathLike[str], parity_dir: str | os.PathLike[str], seed: int = 1, n_latents: int = 4
) -> dict[str, Path]:
    from safetensors.torch import save_file

    from ffclip.engine.checkpoints.synthetic import rosinality_checkpoint
    from ffclip.engine.synth import load_manifest, synth_state_dict

    folder, parity_dir = Path(folder), Path(parity_dir)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {
        "generator": folder / GENERATOR_NAME,
        "arcface": folder / ARCFACE_NAME,
        "clip": folder / CLIP_NAME,
        "latents": folder / "train.npy",
    }
    g = synth_state_dict(load_manifest(parity_dir / "stylegan2_1024.manifest.json"), seed)
    torch.save(rosinality_checkpoint(g), paths["generator"])
    arc = synth_state_dict(load_manifest(parity_dir / "training" / "arcface_ir_se50.manifest.json"), seed + 1)
    torch.save(arc, paths["arcface"])
    save_file(synthetic_clip_state_dict(seed + 2), str(paths["clip"]))
    rng = np.random.default_rng(seed + 3)
    np.save(paths["latents"], (0.3 * rng.standard_normal((n_latents, 18, 512))).astype(np.float32))
    return paths
