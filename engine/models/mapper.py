"""FFCLIP's mapper (`Dynamic_mapper`): four semantic-modulation blocks, Δw = mapper(w, e).

Faithful to the official `edit/dynamic_mapper.py` and `edit/modules.py`, quirks included, because
the official checkpoint was trained with them:

* `PixelNorm` normalises over dim 1 — the W+ *layer* axis, not the 512 channels;
* the "position" attention takes its softmax over the layers (dim 1) of K·Q;
* `attention_layer` (channel attention) maps the text embedding through a Linear(1, n_latent)
  (`k_matrix`, weight [n_latent, 1]), builds a 512×512 channel attention, and its
  `AdaptiveAvgPool2d((1, 512))` on a 3-D tensor averages over the layers;
* LayerNorms: `norm1d` and `attention_layer.layer_norm` without affine, the ones inside
  `gamma_`/`beta_` with affine; LeakyReLU slope 0.01 (PyTorch's default);
* `fc` exists in the checkpoint but is never used.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .stylegan2 import PixelNorm


def edited_latent(w: Tensor, edits: Iterable[tuple[float, Tensor]]) -> Tensor:
    """ŵ = w + Σ αᵢ·Δwᵢ, added in the order given; one attribute is the paper's ŵ = w + α·Δw. The one
    place the edit is written: the engine, the pipeline, training and evaluation all come here."""
    w_hat = w
    for strength, delta in edits:
        w_hat = w_hat + strength * delta
    return w_hat


def _film_mlp(dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, dim), nn.LayerNorm([dim]), nn.LeakyReLU(), nn.Linear(dim, dim))


class ChannelAttention(nn.Module):
    """The official `attention_mapping`."""

    def __init__(self, n_latent: int = 18, dim: int = 512) -> None:
        super().__init__()
        self.q_matrix = nn.Linear(dim, dim, bias=False)
        self.k_matrix = nn.Linear(1, n_latent, bias=False)
        self.v_matrix = nn.Linear(dim, dim, bias=False)
        self.pool = nn.AdaptiveAvgPool2d((1, dim))  # on (B, L, D): the mean over the L layers
        self.layer_norm = nn.LayerNorm([dim], elementwise_affine=False)
        self.dk = dim

    def forward(self, w: Tensor, e: Tensor) -> Tensor:
        q = self.q_matrix(w)  # B, L, D
        k = self.k_matrix(e.transpose(-2, -1))  # B, D, 1 -> B, D, L
        v = self.v_matrix(w)  # B, L, D
        attention = F.softmax(torch.matmul(k, q) / math.sqrt(self.dk), dim=-1)  # B, D, D
        out = torch.matmul(v, attention)  # B, L, D
        return self.layer_norm(self.pool(out))  # B, 1, D


class SemanticModulation(nn.Module):
    """The official `att_module`: alignment (position + channel attention), then injection."""

    def __init__(self, n_latent: int = 18, dim: int = 512) -> None:
        super().__init__()
        self.pixelnorm = PixelNorm()
        self.norm1d = nn.LayerNorm([dim], elementwise_affine=False)
        self.q_matrix = nn.Linear(dim, dim, bias=False)
        self.k_matrix = nn.Linear(dim, dim, bias=False)
        self.v_matrix = nn.Linear(dim, dim, bias=False)
        self.gamma_ = _film_mlp(dim)
        self.beta_ = _film_mlp(dim)
        self.fc = nn.Linear(dim, dim)  # present in the checkpoints, unused by the official forward
        self.leakyrelu = nn.LeakyReLU()
        self.attention_layer = ChannelAttention(n_latent, dim)

    def forward(self, x: Tensor, e: Tensor) -> Tensor:
        """x (B, L, D), e (B, 1, D) -> (B, L, D)."""
        x = self.pixelnorm(x)  # over the layer axis (dim 1), as the official code
        k = self.k_matrix(x)
        v = self.v_matrix(x)
        q = self.q_matrix(e).permute(0, 2, 1)  # B, D, 1
        score = torch.softmax(torch.matmul(k, q), dim=1)  # B, L, 1: which layers the text concerns
        h = score * v + self.attention_layer(x, e)
        h = self.norm1d(h)
        h = h * (1 + self.gamma_(e)) + self.beta_(e)
        return self.leakyrelu(h)


class DynamicMapper(nn.Module):
    def __init__(self, n_latent: int = 18, dim: int = 512, n_blocks: int = 4) -> None:
        super().__init__()
        self.n_latent = n_latent
        self.att_mapper = nn.ModuleList([SemanticModulation(n_latent, dim) for _ in range(n_blocks)])

    def forward(self, w: Tensor, e: Tensor) -> Tensor:
        """Δw for W+ codes w (B, L, D) and raw CLIP text embeddings e (B, 1, D)."""
        x = w
        for block in self.att_mapper:
            x = block(x, e)
        return x

    def edit(self, w: Tensor, e: Tensor, strength: float = 1.0) -> Tensor:
        """ŵ = w + α·Δw (α = 1 is the paper's edit)."""
        return edited_latent(w, [(strength, self(w, e))])
