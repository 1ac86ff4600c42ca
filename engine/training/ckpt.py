"""Checkpoints in the official FFCLIP layout, both ways.

    {'state_dict': {'module.generator.<g_ema key>' ..., 'module.att_mapper.<mapper key>' ...},
     'opts': {...}}

which is what the official Coach saves from `DDP(EditModel)`; its loaders read only
`ckpt['state_dict']` and strip the first name component, so they load ours unchanged. The mapper's
own keys start with `att_mapper.N.` (so `module.att_mapper.att_mapper.0.q_matrix.weight`), exactly
the keys of parity/ffclip_mapper.manifest.json after `module.att_mapper.`. `opts` is a plain dict of
primitives (no pickled classes), laid out like train_configs.yaml. A mapper-only export leaves out
the generator. Our `last.pt` adds a `train_state` entry (optimizer, epoch, step) for --resume; the
official code ignores it.
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
from torch import nn

MAPPER_PREFIX = "module.att_mapper."
GENERATOR_PREFIX = "module.generator."


def plain(obj: Any) -> Any:
    """JSON-able primitives only (what the engine's safe unpickler and any reader can take)."""
    return json.loads(json.dumps(obj, default=str))


def official_state_dict(mapper: nn.Module, generator: nn.Module | None) -> OrderedDict[str, torch.Tensor]:
    sd: OrderedDict[str, torch.Tensor] = OrderedDict()
    if generator is not None:  # EditModel registers the generator first
        sd.update((GENERATOR_PREFIX + k, v.detach().cpu().clone()) for k, v in generator.state_dict().items())
    sd.update((MAPPER_PREFIX + k, v.detach().cpu().clone()) for k, v in mapper.state_dict().items())
    return sd


def save_checkpoint(
    path: str | os.PathLike[str],
    mapper: nn.Module,
    generator: nn.Module | None,
    opts: dict[str, Any],
    train_state: dict[str, Any] | None = None,
) -> Path:
    """Write atomically (a reader never sees half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    obj: dict[str, Any] = {"state_dict": official_state_dict(mapper, generator), "opts": plain(opts)}
    if train_state is not None:
        obj["train_state"] = train_state
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)
    return path


def load_train_state(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, Any]]:
    """(mapper state_dict, train_state, opts) of one of our checkpoints, read safely and strictly."""
    from ffclip.engine.checkpoints.layouts import parse_ffclip
    from ffclip.engine.checkpoints.safe_load import load_checkpoint

    ckpt = load_checkpoint(path)
    parts = parse_ffclip(ckpt, Path(path).name)
    state = ckpt.get("train_state")
    if not isinstance(state, dict):
        raise ValueError(f"{path} has no training state (only our last.pt does); start it with --init instead")
    return parts.mapper, state, parts.opts
