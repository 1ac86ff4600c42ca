"""The networks that training and evaluation need: the frozen StyleGAN2 generator, CLIP with its
image tower, the ArcFace identity network and (optionally) the face parser of the background loss.

Sources:
* `profile="tiny"`: the engine's tiny generator and CLIP (engine.inference.build_tiny), and a narrow
  seeded IR-SE stand-in for ArcFace (`TinyArcFace`) — all untrained, for tests and smoke runs;
* `profile="real"`: the model store (`--models DIR`): the generator from the rosinality StyleGAN2
  file (or, when absent, from the FFCLIP checkpoint), ArcFace `model_ir_se50.pth`, CLIP ViT-B/32;
* explicit files (`generator=`, `arcface=`, `clip=`, `parsenet=`, `moco=`) override either.

`domain` (face, car, church) picks the generator (a car's or church's comes from its FFCLIP file,
else from its e4e file) and the identity term's network (`similarity`: ArcFace for faces, MoCo v2 —
or the named CLIP replacement — for cars and churches; engine/training/similarity.py).
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
from ffclip.engine.profiles import TINY_SEED, profile_for
from ffclip.engine.seeding import seeded

from .similarity import (
    DEFAULT_SIMILARITY,
    SIMILARITIES,
    ArcFaceIdentity,
    ClipImageSimilarity,
    MocoSimilarity,
    build_tiny_moco,
    load_moco,
)

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
    with seeded(seed):
        return TinyArcFace().eval()


@dataclass
class TrainingNets:
    generator: Generator
    clip: Any  # open_clip CLIP with its visual tower
    arcface: nn.Module | None  # faces' identity network (None for a car or church run without it)
    parsenet: nn.Module | None = None
    profile: str = "real"
    init_mapper: dict[str, Tensor] | None = None  # mapper weights to start from (--init)
    notes: dict[str, str] = field(default_factory=dict)  # what each network is, for the log
    domain: str = "face"
    similarity: str = "arcface"  # the identity term's network: arcface, moco or clip
    identity: nn.Module | None = None  # its features of generator images (similarity.py)

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
        for net in (self.generator, self.clip, self.arcface, self.parsenet, self.identity):
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


def _domain_generator(store: Any, domain: str) -> tuple[Generator, str]:
    """A car's or church's generator: its FFCLIP file's, else its e4e file's decoder."""
    from ffclip.engine.checkpoints.layouts import parse_e4e, read_ffclip
    from ffclip.engine.checkpoints.safe_load import load_checkpoint
    from ffclip.engine.domains import domain_spec
    from ffclip.engine.inference import generator_from_state_dict

    spec = domain_spec(domain)
    if store.present(spec.ffclip):
        _, sd = read_ffclip(store.path(spec.ffclip))
        if sd:
            return generator_from_state_dict(sd), f"{store.path(spec.ffclip).name} (ffclip layout)"
    if store.present(spec.e4e):
        parts = parse_e4e(load_checkpoint(store.path(spec.e4e)), store.path(spec.e4e).name)
        if parts.decoder is not None:
            return generator_from_state_dict(parts.decoder), f"{store.path(spec.e4e).name} (e4e decoder)"
    raise _missing(store, spec.ffclip, "--generator")


def load_training_nets(
    profile: str = "real",
    models_dir: str | os.PathLike[str] | None = None,
    *,
    generator: str | None = None,
    arcface: str | None = None,
    clip: str | None = None,
    parsenet: str | None = None,
    init: str | None = None,
    domain: str = "face",
    similarity: str | None = None,
    moco: str | None = None,
) -> TrainingNets:
    from ffclip.engine.domains import domain_spec

    band = domain_spec(domain).band
    similarity = similarity or DEFAULT_SIMILARITY[domain]
    if similarity not in SIMILARITIES:
        raise ValueError(f"--similarity must be one of {', '.join(SIMILARITIES)}, not {similarity!r}")
    notes: dict[str, str] = {}
    g = clip_model = face = None
    if profile == "tiny":
        from ffclip.engine.inference import build_tiny

        tiny = build_tiny(profile_for("tiny", domain))
        g, clip_model = tiny.generator, tiny.clip
        notes["generator"] = notes["clip"] = f"tiny profile, {domain} (seeded, untrained)"
    elif profile != "real":
        raise ValueError(f"unknown profile {profile!r}")
    store = None
    if profile == "real":
        from ffclip.engine.store import ModelStore

        store = ModelStore(models_dir)

    if generator:
        g, notes["generator"] = _generator_from_file(Path(generator))
    elif g is None and domain != "face":
        g, notes["generator"] = _domain_generator(store, domain)
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

    if similarity != "arcface":
        pass  # cars and churches: no face recogniser needed
    elif arcface:
        face, notes["arcface"] = load_arcface(arcface), f"{Path(arcface).name} (IR-SE-50, real layout)"
    elif profile == "tiny":
        face = build_tiny_arcface()
        notes["arcface"] = "narrow seeded IR-SE stand-in (TinyArcFace, untrained): not a face recogniser"
    else:
        assert store is not None
        if not store.present("arcface"):
            raise _missing(store, "arcface", "--arcface")
        face, notes["arcface"] = load_arcface(store.path("arcface")), "model_ir_se50.pth (IR-SE-50)"
    identity = _identity(similarity, profile, store, face, clip_model, moco, band, notes)

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
    assert g is not None and clip_model is not None and identity is not None
    return TrainingNets(g, clip_model, face, parser, profile, init_sd, notes, domain, similarity, identity)


def _identity(
    similarity: str,
    profile: str,
    store: Any,
    arcface: nn.Module | None,
    clip_model: Any,
    moco: str | None,
    band: tuple[float, float],
    notes: dict[str, str],
) -> nn.Module:
    """The identity term's feature network (see similarity.py)."""
    if similarity == "arcface":
        assert arcface is not None
        return ArcFaceIdentity(arcface)
    if similarity == "clip":
        notes["identity"] = "CLIP ViT-B/32 image similarity (the named replacement of MoCo v2: not MoCo)"
        return ClipImageSimilarity(clip_model, band)
    if moco:
        notes["identity"] = f"{Path(moco).name} (MoCo v2 ResNet-50, e4e's similarity loss)"
        return MocoSimilarity(load_moco(moco), band)
    if profile == "tiny":
        notes["identity"] = "narrow seeded convnet stand-in for MoCo v2 (TinyMoco, untrained): not MoCo"
        return MocoSimilarity(build_tiny_moco(TINY_SEED + 2), band)
    if not store.present("moco"):
        raise FileNotFoundError(
            f"{store.path('moco')} is missing: the MoCo v2 similarity of cars and churches needs it; fetch it "
            f"with `{store.fetch_hint} moco`, give --moco PATH, or train with the named replacement "
            "--similarity clip (CLIP image similarity, docs/training.md)"
        )
    notes["identity"] = "moco_v2_800ep_pretrain.pt (MoCo v2 ResNet-50, e4e's similarity loss)"
    return MocoSimilarity(load_moco(store.path("moco")), band)
