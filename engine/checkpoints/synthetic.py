"""Checkpoint files in the official layouts, filled with placeholder weights, for tests and smoke runs.

`cheap_state_dict` makes every tensor a zero-stride view of one shared scalar, and torch.save
stores views as (storage, shape, stride): a full-size e4e or StyleGAN2 1024 checkpoint then takes a
few hundred kilobytes and saves and loads in well under a second, while its keys and shapes are
exactly the real ones.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import torch

from .layouts import e4e_shapes, generator_shapes, hypernet_shapes, mapper_shapes, n_latent_for, w_encoder_shapes
from .report import Shape


def cheap_state_dict(shapes: Mapping[str, Shape], value: float = 0.0) -> OrderedDict[str, torch.Tensor]:
    scalar = torch.full((), value)
    return OrderedDict((k, scalar.expand(shape)) for k, shape in shapes.items())


def save(obj: Any, path: str | os.PathLike[str], legacy: bool = False) -> None:
    """torch.save; `legacy` writes the pre-1.6 non-zip format, as older official files have."""
    torch.save(obj, path, _use_new_zipfile_serialization=not legacy)


def rosinality_checkpoint(g_ema: Mapping[str, torch.Tensor], style_dim: int = 512) -> dict[str, Any]:
    """{'g_ema', 'latent_avg'} as rosinality's convert_weight.py writes it."""
    return {"g_ema": OrderedDict(g_ema), "latent_avg": torch.zeros(style_dim)}


def e4e_checkpoint(
    encoder: Mapping[str, torch.Tensor],
    decoder: Mapping[str, torch.Tensor] | None,
    n_latent: int,
    opts: Any = None,
) -> dict[str, Any]:
    """{'state_dict': encoder.* + decoder.*, 'latent_avg': [n_latent, 512], 'opts'} as e4e's coach saves."""
    state_dict: OrderedDict[str, torch.Tensor] = OrderedDict()
    state_dict.update((f"encoder.{k}", v) for k, v in encoder.items())
    state_dict.update((f"decoder.{k}", v) for k, v in (decoder or {}).items())
    if opts is None:
        size = 2 ** ((n_latent + 2) // 2)
        opts = {"encoder_type": "Encoder4Editing", "stylegan_size": size, "start_from_latent_avg": True}
    return {"state_dict": state_dict, "latent_avg": torch.zeros(n_latent, 512), "opts": opts}


def ffclip_checkpoint(
    mapper: Mapping[str, torch.Tensor], generator: Mapping[str, torch.Tensor], opts: Any = None
) -> dict[str, Any]:
    """{'state_dict': module.att_mapper.* + module.generator.*, 'opts'} as FFCLIP's DDP coach saves."""
    state_dict: OrderedDict[str, torch.Tensor] = OrderedDict()
    state_dict.update((f"module.generator.{k}", v) for k, v in generator.items())
    state_dict.update((f"module.att_mapper.{k}", v) for k, v in mapper.items())
    return {"state_dict": state_dict, "opts": opts if opts is not None else {}}


def official_size_files(size: int = 1024) -> dict[str, dict[str, Any]]:
    """Cheap full-size checkpoints for one domain: {'stylegan2', 'e4e', 'ffclip'} -> checkpoint dict."""
    n_latent = n_latent_for(size)
    g = cheap_state_dict(generator_shapes(size))
    return {
        "stylegan2": rosinality_checkpoint(g),
        "e4e": e4e_checkpoint(cheap_state_dict(e4e_shapes(size)), g, n_latent),
        "ffclip": ffclip_checkpoint(cheap_state_dict(mapper_shapes(n_latent)), g),
    }


def hyperstyle_checkpoint(
    hypernet: Mapping[str, torch.Tensor], decoder: Mapping[str, torch.Tensor], n_latent: int, opts: Any = None
) -> dict[str, Any]:
    """{'state_dict': hypernet.* + decoder.*, 'opts', 'latent_avg', ...} as HyperStyle's coach saves
    (the W encoder's keys left out)."""
    state_dict: OrderedDict[str, torch.Tensor] = OrderedDict()
    state_dict.update((f"hypernet.{k}", v) for k, v in hypernet.items())
    state_dict.update((f"decoder.{k}", v) for k, v in decoder.items())
    if opts is None:
        size = 2 ** ((n_latent + 2) // 2)
        opts = {"encoder_type": "SharedWeightsHyperNetResNet", "output_size": size, "n_iters_per_batch": 5}
    return {
        "state_dict": state_dict,
        "opts": opts,
        "latent_avg": torch.zeros(n_latent, 512),
        "global_step": 500000,
        "best_val_loss": None,
    }


def w_encoder_checkpoint(
    encoder: Mapping[str, torch.Tensor], decoder: Mapping[str, torch.Tensor] | None, n_latent: int, opts: Any = None
) -> dict[str, Any]:
    """{'state_dict': encoder.* + decoder.*, 'latent_avg', 'opts'} as pSp's coach saves a W encoder."""
    ckpt = e4e_checkpoint(encoder, decoder, n_latent, opts)
    if opts is None:
        ckpt["opts"] = {"encoder_type": "WEncoder", "output_size": 2 ** ((n_latent + 2) // 2)}
    return ckpt


def hyperstyle_files(size: int = 1024, layers: tuple[int, ...] | None = None) -> dict[str, dict[str, Any]]:
    """Cheap full-size HyperStyle files of one domain: {'hyperstyle', 'w_encoder'} -> checkpoint dict."""
    from ffclip.engine.models.hyperstyle import FFHQ_LAYERS_TO_TUNE

    n_latent = n_latent_for(size)
    if layers is None:
        layers = tuple(j for j in FFHQ_LAYERS_TO_TUNE if j < 3 * (size.bit_length() - 1) - 4)
    g = cheap_state_dict(generator_shapes(size))
    return {
        "hyperstyle": hyperstyle_checkpoint(cheap_state_dict(hypernet_shapes(size, layers)), g, n_latent),
        "w_encoder": w_encoder_checkpoint(cheap_state_dict(w_encoder_shapes()), g, n_latent),
    }
