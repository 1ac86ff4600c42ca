"""e4e's `Encoder4Editing`: IR-SE-50 body, a feature pyramid and one `GradualStyleBlock` per W+
layer (18 / 16 / 14 for generators of size 1024 / 512 / 256).

Layout of the encoder inside `e4e_ffhq_encode.pt` (keys there carry the prefix `encoder.`). The
forward pass returns the codes *before* adding the checkpoint's `latent_avg`: W+ = codes + avg.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .irse import STAGES, make_body, make_input_layer, stage_specs
from .stylegan2 import EqualLinear


class GradualStyleBlock(nn.Module):
    """log2(spatial) stride-2 convolutions down to 1×1, then an EqualLinear."""

    def __init__(self, in_c: int, out_c: int, spatial: int) -> None:
        super().__init__()
        self.out_c = out_c
        num_pools = int(np.log2(spatial))
        modules: list[nn.Module] = [nn.Conv2d(in_c, out_c, kernel_size=3, stride=2, padding=1), nn.LeakyReLU()]
        for _ in range(num_pools - 1):
            modules += [nn.Conv2d(out_c, out_c, kernel_size=3, stride=2, padding=1), nn.LeakyReLU()]
        self.convs = nn.Sequential(*modules)
        self.linear = EqualLinear(out_c, out_c, lr_mul=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(self.convs(x).reshape(-1, self.out_c))


def _upsample_add(x: Tensor, y: Tensor) -> Tensor:
    return F.interpolate(x, size=y.shape[-2:], mode="bilinear", align_corners=True) + y


class Encoder4Editing(nn.Module):
    coarse_ind = 3
    middle_ind = 7

    def __init__(
        self,
        num_layers: int = 50,
        mode: str = "ir_se",
        stylegan_size: int = 1024,
        style_dim: int = 512,
        stages: Sequence[tuple[int, int]] | None = None,
        input_width: int = 64,
    ) -> None:
        """`stages` ((depth, units) × 4) overrides the IR-SE depth table (the `tiny` profile)."""
        super().__init__()
        stages = tuple(stages or STAGES[num_layers])
        specs = stage_specs(stages, input_width)
        self.input_layer = make_input_layer(input_width)
        self.body = make_body(specs, mode)
        # pyramid taps: the ends of stages 2, 3 and 4 (units 6, 20, 23 for IR-SE-50)
        ends = np.cumsum([len(s) for s in specs]) - 1
        self.taps = (int(ends[1]), int(ends[2]), int(ends[3]))
        self.style_count = 2 * int(math.log2(stylegan_size)) - 2
        top = stages[3][0]
        self.styles = nn.ModuleList()
        for i in range(self.style_count):
            spatial = 16 if i < self.coarse_ind else 32 if i < self.middle_ind else 64
            self.styles.append(GradualStyleBlock(top, style_dim, spatial))
        self.latlayer1 = nn.Conv2d(stages[2][0], style_dim, kernel_size=1, stride=1, padding=0)
        self.latlayer2 = nn.Conv2d(stages[1][0], style_dim, kernel_size=1, stride=1, padding=0)

    def forward(self, x: Tensor) -> Tensor:
        """x (B, 3, 256, 256) in [-1, 1] -> codes (B, style_count, style_dim), without latent_avg."""
        x = self.input_layer(x)
        c1 = c2 = c3 = x
        for i, unit in enumerate(self.body):
            x = unit(x)
            if i == self.taps[0]:
                c1 = x
            elif i == self.taps[1]:
                c2 = x
            elif i == self.taps[2]:
                c3 = x
        # w0 everywhere plus a delta per further layer, from ever finer pyramid levels
        w0 = self.styles[0](c3)
        codes = [w0]
        features = c3
        p2 = c3
        for i in range(1, self.style_count):
            if i == self.coarse_ind:
                p2 = features = _upsample_add(c3, self.latlayer1(c2))
            elif i == self.middle_ind:
                features = _upsample_add(p2, self.latlayer2(c1))
            codes.append(w0 + self.styles[i](features))
        return torch.stack(codes, dim=1)
