"""Evaluation metrics: CLIP score, identity similarity, masked PSNR/SSIM."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ffclip.engine.models.clip import OPENAI_MEAN, OPENAI_STD

PSNR_CAP = 100.0  # dB, for (numerically) identical regions


def clip_preprocess(x: Tensor, size: int = 224) -> Tensor:
    """Generator output in [-1, 1] -> CLIP's input: antialiased bicubic resize, then CLIP's mean/std."""
    x = (x.float().clamp(-1, 1) + 1) / 2
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
    mean = torch.tensor(OPENAI_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def clip_image_features(clip_model: torch.nn.Module, x: Tensor) -> Tensor:
    """l2-normalised CLIP image embeddings of properly pre-processed images."""
    return F.normalize(clip_model.encode_image(clip_preprocess(x)).float(), dim=-1)


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> Tensor:
    r = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    g = torch.exp(-(r**2) / (2 * sigma**2))
    return g / g.sum()


def ssim_map(x: Tensor, y: Tensor, data_range: float = 1.0) -> Tensor:
    """Per-pixel SSIM (Wang et al. 2004: Gaussian 11×11, σ 1.5), same size as the input (reflect padding).

    x, y: (B, C, H, W) -> (B, C, H, W).
    """
    c = x.shape[1]
    g = _gaussian_window().to(x.device, x.dtype)
    kh = g.view(1, 1, -1, 1).expand(c, 1, -1, 1)
    kw = g.view(1, 1, 1, -1).expand(c, 1, 1, -1)
    pad = g.numel() // 2

    def blur(t: Tensor) -> Tensor:
        t = F.pad(t, [pad, pad, pad, pad], mode="reflect")
        return F.conv2d(F.conv2d(t, kh, groups=c), kw, groups=c)

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mx, my = blur(x), blur(y)
    vx = blur(x * x) - mx * mx
    vy = blur(y * y) - my * my
    cov = blur(x * y) - mx * my
    return ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))


def masked_psnr_ssim(x: Tensor, y: Tensor, weight: Tensor) -> tuple[list[float | None], list[float | None]]:
    """PSNR (dB) and SSIM of images in [0, 1], averaged with a per-pixel weight (B, 1, H, W) in [0, 1].

    None where the weight is (almost) zero everywhere: nothing left to compare.
    """
    x, y, weight = x.float(), y.float(), weight.float()
    total = weight.sum((1, 2, 3))
    mse = ((x - y) ** 2 * weight).sum((1, 2, 3)) / (total * x.shape[1]).clamp_min(1e-12)
    ssim = (ssim_map(x, y) * weight).sum((1, 2, 3)) / (total * x.shape[1]).clamp_min(1e-12)
    psnrs: list[float | None] = []
    ssims: list[float | None] = []
    for i in range(x.shape[0]):
        if float(total[i]) < 1.0:
            psnrs.append(None)
            ssims.append(None)
            continue
        m = float(mse[i])
        psnrs.append(PSNR_CAP if m <= 10 ** (-PSNR_CAP / 10) else -10 * math.log10(m))
        ssims.append(float(ssim[i]))
    return psnrs, ssims
