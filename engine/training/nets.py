"""The networks that training and evaluation need: the frozen StyleGAN2 generator, CLIP with its
image tower, the ArcFace identity network and (optionally) the face parser of the background loss.

Sources:
* `profile="tiny"`: the engine's tiny generator and CLIP (engine.inference.build_tiny), and a narrow
  seeded IR-SE stand-in for ArcFace (`TinyArcFace`) — all untrained, for tests and smoke runs;
* `profile="real"`: the model store (`--models DIR`): the generator from the rosinality StyleGAN2
  file (or, when absent, from the FFCLIP checkpoint), ArcFace `model_ir_se50.pth`, CLIP ViT-B/32;
* explicit files (`generator=`, `arcface=`, `clip=`, `parsenet=`) override either.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ffclip.engine.models.arcface import Backbone
from ffclip.engine.models.irse import l2_norm, make_body, make_input_layer, stage_specs
from ffclip.engine.models.stylegan2 import Generator
from ffclip.engine.profiles import TINY, TINY_SEED

log = logging.getLogger(__name__)

TINY_ARCFACE_STAGES = ((16, 1), (32, 1), (64, 1), (64, 1))


class TinyArcFace(nn.Module):
    """A narrow IR-SE network with ArcFace's interface (112×112 in [-1, 1] -> unit 128-d feature)."""

    def __init__(
        self, width: int = 16, stages: tuple[tuple[int, int], ...] = TINY_ARCFACE_STAGES, dim: int = 128
    ) -> None:
        super().__init__()
        self.input_layer = make_input_layer(width)
        self.body = make_body(stage_specs(stages, width), "ir_se")
        top = stages[-1][0]
        self.output_layer = nn.Sequential(
            nn.BatchNorm2d(top), nn.Dropout(0.6), nn.Flatten(), nn.Linear(top * 7 * 7, dim), nn.BatchNorm1d(dim)
        )

    def forward(self, x: Tensor) -> Tensor:
        return l2_norm(self.output_layer(self.body(self.input_layer(x))))


def build_tiny_arcface(seed: int = TINY_SEED + 1) -> TinyArcFace:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return TinyArcFace().eval()


@dataclass
class TrainingNets:
    generator: Generator
    clip: Any  # open_clip CLIP with its visual tower
    arcface: nn.Module
    parsenet: nn.Module | None = None
    profile: str = "real"
    init_mapper: dict[str, Tensor] | None = None  # mapper weights to start from (--init)
    notes: dict[str, str] = field(default_factory=dict)  # what each network is, for the log

    @property
    def n_latent(self) -> int:
        return self.generator.n_latent

    @property
    def style_dim(self) -> int:
        return self.generator.style_dim

    @property
    def clip_dim(self) -> int:
        return int(self.clip.text_projection.shape[1])

    def freeze(self, device: torch.device) -> TrainingNets:
        for net in (self.generator, self.clip, self.arcface, self.parsenet):
            if net is not None:
                net.eval().requires_grad_(False).to(device)
        return self


def _generator_from_file(path: Path) -> tuple[Generator, str]:
    from ffclip.engine.checkpoints.errors import CheckpointError
    from ffclip.engine.checkpoints.layouts import detect_kind, parse_ffclip, parse_generator
    from ffclip.engine.checkpoints.safe_load import load_checkpoint
    from ffclip.engine.inference import generator_from_state_dict

    ckpt = load_checkpoint(path)
    kind = detect_kind(ckpt)
    if kind == "stylegan2":
        sd = parse_generator(ckpt, path.name).state_dict
    elif kind == "ffclip":
        sd = parse_ffclip(ckpt, path.name).generator
        if not sd:
            raise CheckpointError(f"{path.name} is a mapper-only FFCLIP file: give the StyleGAN2 file instead")
    else:
        raise CheckpointError(f"{path.name} is a {kind} checkpoint, not a StyleGAN2 generator (rosinality/FFCLIP)")
    return generator_from_state_dict(sd), f"{path.name} ({kind} layout)"


def load_arcface(path: str | os.PathLike[str]) -> Backbone:
    from ffclip.engine.checkpoints.layouts import parse_arcface
    from ffclip.engine.checkpoints.safe_load import load_checkpoint

    path = Path(path)
    sd, config = parse_arcface(load_checkpoint(path), path.name)
    net = Backbone(**config)
    net.load_state_dict(sd, strict=True)
    return net.eval()


def load_clip(path: str | os.PathLike[str]) -> Any:
    from ffclip.engine.models.clip import build_clip, load_clip_weights

    return build_clip(load_clip_weights(path), text_only=False)


def read_mapper_init(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    from ffclip.engine.checkpoints.layouts import read_ffclip

    mapper, _ = read_ffclip(path)
    return mapper


def _missing(store: Any, name: str, option: str) -> FileNotFoundError:
    return FileNotFoundError(
        f"{store.path(name)} is missing: fetch it with `{store.fetch_hint} {name}` or give {option} PATH"
    )


def load_training_nets(
    profile: str = "real",
    models_dir: str | os.PathLike[str] | None = None,
    *,
    generator: str | None = None,
    arcface: str | None = None,
    clip: str | None = None,
    parsenet: str | None = None,
    init: str | None = None,
) -> TrainingNets:
    notes: dict[str, str] = {}
    g = clip_model = face = None
    if profile == "tiny":
        from ffclip.engine.inference import build_tiny

        tiny = build_tiny(TINY)
        g, clip_model = tiny.generator, tiny.clip
        notes["generator"] = notes["clip"] = "tiny profile (seeded, untrained)"
    elif profile != "real":
        raise ValueError(f"unknown profile {profile!r}")
    store = None
    if profile == "real" and not (generator and arcface and clip):
        from ffclip.engine.store import ModelStore

        store = ModelStore(models_dir)

    if generator:
        g, notes["generator"] = _generator_from_file(Path(generator))
    elif g is None:
        assert store is not None
        name = "stylegan2" if store.present("stylegan2") else "ffclip"
        if not store.present(name):
            raise _missing(store, "stylegan2", "--generator")
        g, notes["generator"] = _generator_from_file(store.path(name))

    if clip:
        clip_model, notes["clip"] = load_clip(clip), f"{Path(clip).name} (ViT-B/32)"
    elif clip_model is None:
        assert store is not None
        if not store.present("clip"):
            raise _missing(store, "clip", "--clip")
        clip_model, notes["clip"] = load_clip(store.path("clip")), f"{store.path('clip').name} (ViT-B/32)"

    if arcface:
        face, notes["arcface"] = load_arcface(arcface), f"{Path(arcface).name} (IR-SE-50, real layout)"
    elif profile == "tiny":
        face = build_tiny_arcface()
        notes["arcface"] = "narrow seeded IR-SE stand-in (TinyArcFace, untrained): not a face recogniser"
    else:
        assert store is not None
        if not store.present("arcface"):
            raise _missing(store, "arcface", "--arcface")
        face, notes["arcface"] = load_arcface(store.path("arcface")), "model_ir_se50.pth (IR-SE-50)"

    parser = None
    if parsenet is None and store is not None and (store.root / "parsenet.pth").is_file():
        parsenet = str(store.root / "parsenet.pth")
    if parsenet:
        from .parsenet import load_parsenet

        parser = load_parsenet(parsenet)
        notes["parsenet"] = f"{Path(parsenet).name} (face-parsing U-Net, 19 classes)"

    init_sd = None
    if init:
        init_sd = read_mapper_init(init)
        notes["init"] = f"mapper initialised from {Path(init).name}"
    assert g is not None and clip_model is not None and face is not None
    return TrainingNets(g, clip_model, face, parser, profile, init_sd, notes)
