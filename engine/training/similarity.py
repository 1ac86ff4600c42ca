"""The identity term of the objective per domain: who stays who (faces), what stays what (cars,
churches).

* `arcface` (faces, the official FFCLIP IDLoss): ArcFace IR-SE-50 on the official crop.
* `moco` (cars and churches): e4e's MocoLoss, the similarity loss the e4e/FFCLIP authors use for
  domains other than faces: a MoCo v2 ResNet-50 (`moco_v2_800ep_pretrain.pt`, e4e's README) up to
  its average pool, on the generator's output resized to 224 (nearest, as e4e), features
  l2-normalised; the loss is 1 − ⟨f(G(ŵ)), f(G(w))⟩. For cars only the 512×384 band is compared
  (e4e crops the padding rows away before its losses).
* `clip` — the named replacement where the MoCo v2 weights cannot be had: the same 1 − cos, with
  the CLIP ViT-B/32 image tower that training loads anyway as the feature network. It is *not*
  MoCo: CLIP features also carry what the edit asks for, so it resists the edit more than MoCo's
  instance features would; use it knowingly (docs/training.md).

Every network here is frozen; `forward(x)` takes generator images (B, 3, S, S) in about [-1, 1] and
returns unit features (B, D).
"""

from __future__ import annotations

import os
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from ffclip.engine.seeding import seeded

from .losses import CLIP_SIZE, clip_input, id_crop

SIMILARITIES = ("arcface", "moco", "clip")
DEFAULT_SIMILARITY = {"face": "arcface", "car": "moco", "church": "moco"}
MOCO_SIZE = 224


def band_rows(x: Tensor, band: tuple[float, float]) -> Tensor:
    """The rows of the domain's frame (a car's 4:3 band of the square); the whole image otherwise."""
    v0, v1 = band
    if (v0, v1) == (0.0, 1.0):
        return x
    height = x.shape[-2]
    return x[..., int(round(v0 * height)) : int(round(v1 * height)), :]


class ArcFaceIdentity(nn.Module):
    """The official IDLoss features: ArcFace on the 256 → crop → 112 input."""

    def __init__(self, arcface: nn.Module) -> None:
        super().__init__()
        self.arcface = arcface

    def forward(self, x: Tensor) -> Tensor:
        return self.arcface(id_crop(x)).float()


class MocoSimilarity(nn.Module):
    """e4e's MocoLoss features: a ResNet-50 trunk (MoCo v2), 224 nearest, l2-normalised."""

    def __init__(self, backbone: nn.Module, band: tuple[float, float] = (0.0, 1.0)) -> None:
        super().__init__()
        self.backbone = backbone
        self.band = band

    def forward(self, x: Tensor) -> Tensor:
        x = F.interpolate(band_rows(x, self.band), size=MOCO_SIZE)
        return F.normalize(self.backbone(x).flatten(1).float(), dim=1)


class ClipImageSimilarity(nn.Module):
    """The replacement: CLIP ViT-B/32 image embeddings of G(ŵ) and G(w), l2-normalised."""

    def __init__(self, clip_model: Any, band: tuple[float, float] = (0.0, 1.0), mode: str = "official") -> None:
        super().__init__()
        self.clip_model = clip_model
        self.band = band
        self.mode = mode

    def forward(self, x: Tensor) -> Tensor:
        x = band_rows(x, self.band)
        x = F.interpolate(x, size=(CLIP_SIZE, CLIP_SIZE), mode="bicubic", align_corners=True)
        return F.normalize(self.clip_model.encode_image(clip_input(x, self.mode)).float(), dim=-1)


def moco_backbone(state_dict: dict[str, Tensor] | None = None) -> nn.Module:
    """torchvision's ResNet-50 up to its average pool (what e4e keeps of the MoCo model), loaded
    strictly with the backbone of a MoCo v2 checkpoint."""
    from torchvision.models import resnet50

    model = resnet50(weights=None)
    if state_dict is not None:
        missing, unexpected = model.load_state_dict(state_dict, strict=False)
        if set(missing) != {"fc.weight", "fc.bias"} or unexpected:  # parse_moco checked it; belt and braces
            raise ValueError(f"the MoCo backbone does not fit ResNet-50: missing {missing}, unexpected {unexpected}")
    return nn.Sequential(*list(model.children())[:-1])


def load_moco(path: str | os.PathLike[str]) -> nn.Module:
    """The MoCo v2 ResNet-50 trunk of `moco_v2_800ep_pretrain.pt`, read without running pickled code."""
    from ffclip.engine.checkpoints.layouts import read_moco

    return moco_backbone(read_moco(path)).eval()


class TinyMoco(nn.Module):
    """A narrow seeded convnet with MocoSimilarity's interface (tiny profile): untrained, not MoCo."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, width, 7, stride=4, padding=3),
            nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(2 * width, 4 * width, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def build_tiny_moco(seed: int) -> TinyMoco:
    with seeded(seed):
        return TinyMoco().eval()
