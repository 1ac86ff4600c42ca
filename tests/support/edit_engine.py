"""A stand-in for the engine's networks (`EditEngine`) whose W+ is the aligned image itself: inversion copies, the
mapper darkens the top rows, synthesis resizes and tints. The pipeline's geometry, caching and stages are tested
with it, without weights; it counts what ran."""

from __future__ import annotations

from collections import Counter

import torch
import torch.nn.functional as F

from ffclip.engine.models.mapper import edited_latent


class ImageSpaceEngine:
    untrained = False
    device = torch.device("cpu")
    n_latent = 3

    def __init__(self, size: int = 512, bias: tuple[float, float, float] = (20.0, 0.0, -10.0)) -> None:
        self.size = size
        self.bias = torch.tensor(bias).view(1, 3, 1, 1) / 127.5
        self.calls: Counter[str] = Counter()
        self.levels: list[tuple[int, ...]] = []

    def invert(self, x: torch.Tensor) -> torch.Tensor:
        self.calls["invert"] += x.shape[0]
        return x.clone()

    def encode_text(self, prompts: list[str]) -> torch.Tensor:
        self.calls["encode_text"] += 1
        return torch.full((len(prompts), 1, 4), float(len(prompts[0])))

    def map(self, w: torch.Tensor, e: torch.Tensor, strength: float = 1.0) -> torch.Tensor:
        return edited_latent(w, [(strength, self.delta(w, e))])

    def delta(self, w: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        self.calls["map"] += 1
        delta = torch.zeros_like(w)
        delta[:, :, : int(0.3 * w.shape[2]), :] = -0.6
        return delta

    preview_size = 128

    def synthesize(self, w: torch.Tensor, preview: bool = False, size: int | None = None) -> torch.Tensor:
        size = size or (self.preview_size if preview else self.size)
        return self.synthesize_levels(w, (size,))[size]

    def synthesize_levels(
        self, w: torch.Tensor, sizes: tuple[int, ...], between_levels=None, preview: bool = False
    ) -> dict[int, torch.Tensor]:
        self.calls["synthesize"] += w.shape[0]
        self.levels.append(tuple(sorted(sizes)))
        return {s: F.interpolate(w, size=(s, s), mode="bicubic", align_corners=False) + self.bias for s in sizes}
