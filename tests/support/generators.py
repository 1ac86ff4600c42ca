"""A small StyleGAN2 whose noise and biases are not zero (a fresh one's are), so that every path has
something to get wrong; and the relative comparison of two images."""

from __future__ import annotations

import torch

from ffclip.engine.models.stylegan2 import Generator


def assert_rel(got: torch.Tensor, expected: torch.Tensor, tol: float = 1e-5) -> None:
    """max|got − expected| / max|expected| (the conformance measure), float32 rounding only."""
    assert got.shape == expected.shape
    err = float((got - expected).abs().max() / expected.abs().max())
    assert err <= tol, err


def lively_generator(size: int = 64) -> Generator:
    """Small generator with non-zero noise weights and biases (zero at init)."""
    torch.manual_seed(0)
    g = Generator(size, style_dim=32, n_mlp=2, channel_base=32).eval().requires_grad_(False)
    with torch.no_grad():
        for name, p in g.named_parameters():
            if name.endswith("noise.weight"):
                p.fill_(0.3)
            elif name.endswith("bias") and "style" not in name and "modulation" not in name:
                p.normal_()
    return g
