"""IR-SE ResNet units (the backbone of e4e's encoder and of the ArcFace identity network).

Layout of TreB1eN's InsightFace_Pytorch `model_irse.py`, as used by pSp/e4e: `input_layer`,
`body.N.shortcut_layer` / `body.N.res_layer.{0..5}` with a squeeze-excitation `fc1`/`fc2`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class UnitSpec(NamedTuple):
    in_channel: int
    depth: int
    stride: int


# (depth, units) per stage for the depths the checkpoints use
STAGES: dict[int, Sequence[tuple[int, int]]] = {
    50: ((64, 3), (128, 4), (256, 14), (512, 3)),
    100: ((64, 3), (128, 13), (256, 30), (512, 3)),
    152: ((64, 3), (128, 8), (256, 36), (512, 3)),
}


def stage_specs(stages: Sequence[tuple[int, int]], in_channel: int) -> list[list[UnitSpec]]:
    """Each stage opens with a stride-2 unit, then stride-1 units at the stage's depth."""
    out = []
    for depth, units in stages:
        out.append([UnitSpec(in_channel, depth, 2)] + [UnitSpec(depth, depth, 1)] * (units - 1))
        in_channel = depth
    return out


class SEModule(nn.Module):
    def __init__(self, channels: int, reduction: int) -> None:
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, channels // reduction, kernel_size=1, padding=0, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(channels // reduction, channels, kernel_size=1, padding=0, bias=False)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x: Tensor) -> Tensor:
        s = self.sigmoid(self.fc2(self.relu(self.fc1(self.avg_pool(x)))))
        return x * s


class BottleneckIRSE(nn.Module):
    """`bottleneck_IR_SE` (or `bottleneck_IR` with se=False)."""

    def __init__(self, in_channel: int, depth: int, stride: int, se: bool = True) -> None:
        super().__init__()
        if in_channel == depth:
            self.shortcut_layer: nn.Module = nn.MaxPool2d(1, stride)
        else:
            self.shortcut_layer = nn.Sequential(
                nn.Conv2d(in_channel, depth, (1, 1), stride, bias=False), nn.BatchNorm2d(depth)
            )
        layers: list[nn.Module] = [
            nn.BatchNorm2d(in_channel),
            nn.Conv2d(in_channel, depth, (3, 3), (1, 1), 1, bias=False),
            nn.PReLU(depth),
            nn.Conv2d(depth, depth, (3, 3), stride, 1, bias=False),
            nn.BatchNorm2d(depth),
        ]
        if se:
            layers.append(SEModule(depth, 16))
        self.res_layer = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        if not torch.is_grad_enabled() and not self.training:
            return self._forward_inference(x)
        return self.res_layer(x) + self.shortcut_layer(x)

    # -- inference (eval, no autograd): the same arithmetic with fewer passes ---------------------

    def _forward_inference(self, x: Tensor) -> Tensor:
        """The 1×1 max-pool shortcut as a strided view (a max over one element), the
        squeeze-excitation as two small matrix products, products and sums in place."""
        r = self.res_layer[:5](x)
        if len(self.res_layer) > 5:
            se = self.res_layer[5]
            s = r.mean((2, 3))
            s = torch.relu_(F.linear(s, se.fc1.weight.flatten(1)))
            s = torch.sigmoid_(F.linear(s, se.fc2.weight.flatten(1)))
            r = r.mul_(s[:, :, None, None])
        if isinstance(self.shortcut_layer, nn.MaxPool2d):
            stride = self.shortcut_layer.stride
            return r.add_(x if stride == 1 else x[:, :, ::stride, ::stride])
        return r.add_(self.shortcut_layer(x))


def make_input_layer(width: int = 64) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(3, width, (3, 3), 1, 1, bias=False), nn.BatchNorm2d(width), nn.PReLU(width))


def make_body(specs: list[list[UnitSpec]], mode: str = "ir_se") -> nn.Sequential:
    if mode not in ("ir", "ir_se"):
        raise ValueError(f"mode must be 'ir' or 'ir_se', not {mode!r}")
    return nn.Sequential(
        *[BottleneckIRSE(u.in_channel, u.depth, u.stride, se=mode == "ir_se") for stage in specs for u in stage]
    )


def l2_norm(x: Tensor, axis: int = 1) -> Tensor:
    return torch.div(x, torch.norm(x, 2, axis, True))
