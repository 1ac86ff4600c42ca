"""The face-parsing U-Net of FFCLIP's background loss (`parsenet.pth`, 19 CelebAMask-HQ classes).

Layout of the official `losses/background/unet.py` (feature_scale 4: widths 16..256, batch norm,
transposed-conv up-sampling): `conv1..conv4`, `center`, `up_concat4..1` (each `.up` and `.conv`)
and `final`; every double conv is `convN.conv1.{0,1}` / `convN.conv2.{0,1}` (conv, batch norm).
Class 13 is hair: the background loss compares the pixels that both images agree are *not* hair.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

HAIR_CLASS = 13
N_CLASSES = 19


class _DoubleConv(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(cin, cout, 3, 1, 1), nn.BatchNorm2d(cout), nn.ReLU())
        self.conv2 = nn.Sequential(nn.Conv2d(cout, cout, 3, 1, 1), nn.BatchNorm2d(cout), nn.ReLU())

    def forward(self, x: Tensor) -> Tensor:
        return self.conv2(self.conv1(x))


class _Up(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = _DoubleConv(cin, cout)
        self.up = nn.ConvTranspose2d(cin, cout, kernel_size=2, stride=2)

    def forward(self, skip: Tensor, x: Tensor) -> Tensor:
        x = self.up(x)
        offset = x.shape[2] - skip.shape[2]
        skip = F.pad(skip, 2 * [offset // 2, offset // 2])
        return self.conv(torch.cat([skip, x], 1))


class FaceParser(nn.Module):
    def __init__(self, feature_scale: int = 4, n_classes: int = N_CLASSES, in_channels: int = 3) -> None:
        super().__init__()
        f = [c // feature_scale for c in (64, 128, 256, 512, 1024)]
        self.conv1 = _DoubleConv(in_channels, f[0])
        self.conv2 = _DoubleConv(f[0], f[1])
        self.conv3 = _DoubleConv(f[1], f[2])
        self.conv4 = _DoubleConv(f[2], f[3])
        self.center = _DoubleConv(f[3], f[4])
        self.up_concat4 = _Up(f[4], f[3])
        self.up_concat3 = _Up(f[3], f[2])
        self.up_concat2 = _Up(f[2], f[1])
        self.up_concat1 = _Up(f[1], f[0])
        self.final = nn.Conv2d(f[0], n_classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        c1 = self.conv1(x)
        c2 = self.conv2(F.max_pool2d(c1, 2))
        c3 = self.conv3(F.max_pool2d(c2, 2))
        c4 = self.conv4(F.max_pool2d(c3, 2))
        center = self.center(F.max_pool2d(c4, 2))
        up = self.up_concat4(c4, center)
        up = self.up_concat3(c3, up)
        up = self.up_concat2(c2, up)
        up = self.up_concat1(c1, up)
        return self.final(up)


def load_parsenet(path: str | os.PathLike[str]) -> FaceParser:
    """`parsenet.pth` (a plain state_dict, or one under 'state_dict'), loaded safely and strictly."""
    from ffclip.engine.checkpoints.errors import CheckpointError
    from ffclip.engine.checkpoints.report import check_state_dict
    from ffclip.engine.checkpoints.safe_load import load_checkpoint

    ckpt: Any = load_checkpoint(path)
    sd = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else ckpt
    if not isinstance(sd, dict):
        raise CheckpointError(f"{path}: not a state_dict")
    sd = {k.removeprefix("module."): v for k, v in sd.items()}
    net = FaceParser()
    check_state_dict(sd, {k: tuple(v.shape) for k, v in net.state_dict().items()}, os.path.basename(path))
    net.load_state_dict(sd, strict=True)
    return net.eval()
