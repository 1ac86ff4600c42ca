"""FFCLIP's training objective (official `Coach.calc_loss`), each term weighted separately.

    L = λ_id·L_id + Σ_i λ_clip(i)·L_clip(i) + λ_latent·L_latent + λ_embd·L_embd [+ λ_bg·L_bg]

* L_id (0.9): 1 − ⟨ArcFace(G(ŵ)), ArcFace(G(w))⟩, batch mean; faces go image → 256 (adaptive average
  pool) → crop [35:223, 32:220] → 112 (adaptive average pool), as the official IDLoss; cars and
  churches use another feature network instead (`identity`, engine/training/similarity.py);
* L_clip (1.0): 1 − cos(CLIP_image(G(ŵ)), CLIP_text(prompt)), the image resampled to 224 as the
  official CLIPLoss (nearest ×7 then 32-average for 1024, i.e. an exact area resampling). The official
  loop *sums* it over the samples of a batch (weighted per prompt category); `clip_reduction="mean"`
  averages instead;
* L_latent (1.6): mean |ŵ − w|;
* L_embd (1.0): mean |CLIP_image(G(ŵ)) − CLIP_image(G(w))|, both images bicubically resized to 224;
* L_bg (2.0, only with a face-parsing network): MSE of both images where both parse as not hair.

As in the official code the CLIP image tower sees the generator's [-1, 1] output directly;
`clip_input="normalized"` maps it to CLIP's own input normalisation instead.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ffclip.engine.models.clip import OPENAI_MEAN, OPENAI_STD

CLIP_SIZE = 224
ID_CROP = (35, 223, 32, 220)  # rows, then columns, of the 256² image
TERMS = ("loss_id", "loss_clip", "loss_latent", "loss_embd", "loss_background", "loss")


@lru_cache(maxsize=8)
def area_matrix(src: int, dst: int = CLIP_SIZE) -> Tensor:
    """(dst, src) separable weights of "nearest up-sampling ×u, then average pooling ×k" (u/k = dst/src).

    For 1024 → 224 that is the official Upsample(×7) + AvgPool2d(32): output pixel i averages the
    up-sampled pixels [32i, 32i + 32), i.e. source pixels ⌊j/7⌋. As a matrix it costs src·dst floats
    instead of the (7·1024)² up-sampled image.
    """
    g = math.gcd(src, dst)
    up, k = dst // g, src // g
    j = torch.arange(src * up)
    a = torch.zeros(dst, src, dtype=torch.float64)
    a.index_put_((j // k, j // up), torch.ones(len(j), dtype=torch.float64), accumulate=True)
    return (a / k).float()


def area_resize(x: Tensor, dst: int = CLIP_SIZE) -> Tensor:
    """(B, C, S, S) -> (B, C, dst, dst): A · x · Aᵀ with the area matrix above."""
    a = area_matrix(x.shape[-1], dst).to(x.device, x.dtype)
    return a @ x @ a.t()


def id_crop(x: Tensor) -> Tensor:
    """The official IDLoss input: 256 pool, crop [35:223, 32:220], 112 pool."""
    if x.shape[-1] != 256:
        x = F.adaptive_avg_pool2d(x, (256, 256))
    r0, r1, c0, c1 = ID_CROP
    return F.adaptive_avg_pool2d(x[:, :, r0:r1, c0:c1], (112, 112))


def clip_input(x: Tensor, mode: str) -> Tensor:
    if mode == "official":
        return x
    mean = torch.tensor(OPENAI_MEAN, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_STD, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return ((x.clamp(-1, 1) + 1) / 2 - mean) / std


@dataclass
class LossWeights:
    id: float = 0.9
    clip: float = 1.0
    latent: float = 1.6
    embd: float = 1.0
    background: float = 2.0
    age: float | None = None  # CLIP-loss weight of "age" prompts (official age_lambda; default: clip)
    emotion: float | None = None  # of "emotion" prompts (official emotion_lambda; default: clip)
    clip_reduction: str = "sum"  # the official loop sums the CLIP loss over the batch
    clip_input: str = "official"  # "official" (raw [-1, 1]) or "normalized"

    def for_category(self, category: str) -> float:
        if category == "age" and self.age is not None:
            return self.age
        if category == "emotion" and self.emotion is not None:
            return self.emotion
        return self.clip

    def to_dict(self) -> dict:
        return asdict(self)


class Objective(nn.Module):
    """The weighted loss; holds the frozen CLIP image tower, ArcFace and (optionally) the parser."""

    def __init__(
        self,
        clip_model: nn.Module,
        arcface: nn.Module,
        text_features: Tensor,
        entry_to_text: list[int],
        entry_categories: list[str],
        weights: LossWeights,
        parsenet: nn.Module | None = None,
        identity: nn.Module | None = None,
    ) -> None:
        """`identity`: the feature network of L_id (unit features of generator images); None: ArcFace
        on the official crop."""
        super().__init__()
        self.clip_model = clip_model
        self.arcface = arcface
        self.identity = identity
        self.parsenet = parsenet
        self.weights = weights
        # l2-normalised text features, one row per distinct prompt; per draw slot: row and weight
        self.register_buffer("text_features", F.normalize(text_features.float(), dim=-1), persistent=False)
        self.register_buffer("entry_to_text", torch.tensor(entry_to_text, dtype=torch.long), persistent=False)
        lam = [weights.for_category(c) for c in entry_categories]
        self.register_buffer("entry_clip_weight", torch.tensor(lam, dtype=torch.float32), persistent=False)

    @property
    def use_background(self) -> bool:
        return self.parsenet is not None and self.weights.background > 0

    def active_terms(self) -> list[str]:
        """The terms `forward` reports, in TERMS order (the same on every rank)."""
        wt = self.weights
        on = {
            "loss_id": wt.id > 0,
            "loss_clip": bool(wt.clip > 0 or wt.age or wt.emotion),
            "loss_latent": wt.latent > 0,
            "loss_embd": wt.embd > 0,
            "loss_background": self.use_background,
            "loss": True,
        }
        return [k for k in TERMS if on[k]]

    def _clip_embed(self, x: Tensor) -> Tensor:
        return self.clip_model.encode_image(clip_input(x, self.weights.clip_input)).float()

    def embd_features(self, x: Tensor) -> Tensor:
        """CLIP image embedding of the embedding-L1 term (bicubic 224, align_corners as the official)."""
        return self._clip_embed(F.interpolate(x, size=(CLIP_SIZE, CLIP_SIZE), mode="bicubic", align_corners=True))

    def id_features(self, x: Tensor) -> Tensor:
        if self.identity is not None:
            return self.identity(x).float()
        return self.arcface(id_crop(x)).float()

    @torch.no_grad()
    def targets(self, x: Tensor) -> dict[str, Tensor]:
        """What the loss needs of G(w): its ArcFace feature and CLIP embedding (constant per sample)."""
        out = {}
        if self.weights.id > 0:
            out["id"] = self.id_features(x)
        if self.weights.embd > 0:
            out["embd"] = self.embd_features(x)
        return out

    def background_mask(self, x: Tensor) -> Tensor:
        from .parsenet import HAIR_CLASS

        assert self.parsenet is not None
        with torch.no_grad():
            labels = self.parsenet(F.adaptive_avg_pool2d(x, (512, 512))).argmax(1, keepdim=True)
            mask = (labels != HAIR_CLASS).to(x.dtype)
            return F.adaptive_avg_pool2d(mask, x.shape[-2:])

    def forward(
        self,
        w: Tensor,
        w_hat: Tensor,
        x_hat: Tensor,
        entries: Tensor,
        targets: dict[str, Tensor],
        x: Tensor | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Total loss and the detached terms (unweighted; loss_clip is the batch mean of 1 − cos)."""
        wt = self.weights
        zero = x_hat.new_zeros((), dtype=torch.float32)
        terms: dict[str, Tensor] = {}
        total = zero
        if wt.id > 0:
            feats = self.id_features(x_hat)
            loss_id = (1 - (feats * targets["id"].to(feats.dtype)).sum(-1)).mean()
            terms["loss_id"] = loss_id
            total = total + wt.id * loss_id
        if wt.clip > 0 or wt.age or wt.emotion:
            img = F.normalize(self._clip_embed(area_resize(x_hat)), dim=-1)
            txt = self.text_features[self.entry_to_text[entries]]
            per_sample = 1 - (img * txt).sum(-1)
            weighted = per_sample * self.entry_clip_weight[entries]
            total = total + (weighted.sum() if wt.clip_reduction == "sum" else weighted.mean())
            terms["loss_clip"] = per_sample.mean()
        if wt.latent > 0:
            loss_latent = (w_hat.float() - w.float()).abs().mean()
            terms["loss_latent"] = loss_latent
            total = total + wt.latent * loss_latent
        if wt.embd > 0:
            loss_embd = (self.embd_features(x_hat) - targets["embd"]).abs().mean()
            terms["loss_embd"] = loss_embd
            total = total + wt.embd * loss_embd
        if self.use_background:
            if x is None:
                raise ValueError("the background loss needs G(w)")
            mask = ((self.background_mask(x) + self.background_mask(x_hat)) == 2).to(x_hat.dtype)
            loss_bg = F.mse_loss((x * mask).float(), (x_hat * mask).float())
            terms["loss_background"] = loss_bg
            total = total + wt.background * loss_bg
        terms["loss"] = total
        return total, {k: v.detach().float() for k, v in terms.items()}
