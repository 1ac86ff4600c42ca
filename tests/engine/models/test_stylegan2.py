"""StyleGAN2's synthesis paths (engine/models/stylegan2.py): FOLDED and BANDED compute what REFERENCE
computes, with the reference's random noise too, per-sample weights equal rosinality's fused ones,
and the path is the caller's to name."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ffclip.engine.inference import Engine, build_tiny
from ffclip.engine.models import stylegan2
from ffclip.engine.models.stylegan2 import ModulatedConv2d, SynthesisPath, upfirdn2d
from ffclip.engine.profiles import TINY
from tests.support.generators import assert_rel, lively_generator

F32 = {"rtol": 1e-5, "atol": 1e-5}


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("stop_at", [None, 16])
def test_inference_synthesis_equals_the_reference(batch: int, stop_at: int | None) -> None:
    g = lively_generator()
    latent = torch.randn(batch, g.n_latent, 32)
    with torch.enable_grad():  # autograd on: the reference formulation
        expected = g.synthesis(latent, g.fixed_noise(), stop_at).detach()
    with torch.inference_mode():
        got = g.synthesis(latent, g.fixed_noise(), stop_at, path=SynthesisPath.FOLDED)
    assert got.is_contiguous()
    assert_rel(got, expected)


def test_inference_synthesis_draws_random_noise_as_the_reference() -> None:
    g = lively_generator()
    latent = torch.randn(2, g.n_latent, 32)
    torch.manual_seed(7)
    with torch.enable_grad():
        expected = g.synthesis(latent, [None] * g.num_layers).detach()
    torch.manual_seed(7)
    with torch.no_grad():
        got = g.synthesis(latent, [None] * g.num_layers, path=SynthesisPath.FOLDED)
    assert_rel(got, expected)


@pytest.mark.parametrize("batch, band_rows, stop_at", [(1, 8, None), (2, 5, None), (1, 3, 32)])
def test_banded_levels_equal_the_reference(monkeypatch, batch: int, band_rows: int, stop_at: int | None) -> None:
    """The CPU runs its large levels in bands of rows (halos at the band edges, zero padding at the
    image edges, a last band shorter than the others): the same images as the full-size path."""
    g = lively_generator()
    latent = torch.randn(batch, g.n_latent, 32)
    with torch.no_grad():
        whole = g.synthesis(latent, g.fixed_noise(), stop_at, path=SynthesisPath.FOLDED)
    with torch.enable_grad():
        expected = g.synthesis(latent, g.fixed_noise(), stop_at).detach()
        torch.manual_seed(3)
        expected_random = g.synthesis(latent, [None] * g.num_layers).detach()
    monkeypatch.setattr(stylegan2, "BANDED_FROM", 16)  # levels 16², 32², 64² in bands
    monkeypatch.setattr(stylegan2, "BAND_ROWS", band_rows)
    with torch.inference_mode():
        got = g.synthesis(latent, g.fixed_noise(), stop_at, path=SynthesisPath.BANDED)
        torch.manual_seed(3)  # random noise is drawn at full size, in the reference's order
        got_random = g.synthesis(latent, [None] * g.num_layers, path=SynthesisPath.BANDED)
    assert got.shape == expected.shape and got.is_contiguous()
    assert_rel(got, expected)
    assert_rel(got_random, expected_random)
    torch.testing.assert_close(got, whole, rtol=1e-5, atol=1e-5)


def _rosinality_conv(conv: ModulatedConv2d, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
    """rosinality's fused=True path: modulated, demodulated grouped weight; transposed conv + blur."""
    b, cin, h, w = x.shape
    k = conv.kernel_size
    weight = conv.scale * conv.weight * conv.modulation(style).view(b, 1, cin, 1, 1)
    if conv.demodulate:
        weight = weight * torch.rsqrt(weight.pow(2).sum([2, 3, 4]) + 1e-8).view(b, conv.out_channel, 1, 1, 1)
    if not conv.upsample:
        out = F.conv2d(
            x.view(1, b * cin, h, w), weight.view(b * conv.out_channel, cin, k, k), padding=conv.padding, groups=b
        )
        return out.view(b, conv.out_channel, *out.shape[-2:])
    weight = weight.transpose(1, 2).reshape(b * cin, conv.out_channel, k, k)
    out = F.conv_transpose2d(x.view(1, b * cin, h, w), weight, padding=0, stride=2, groups=b)
    return upfirdn2d(out.view(b, conv.out_channel, *out.shape[-2:]), conv.blur.kernel, pad=conv.blur.pad)


@pytest.mark.parametrize("upsample, demodulate, kernel", [(True, True, 3), (False, True, 3), (False, False, 1)])
def test_per_sample_weights_equal_rosinality(upsample: bool, demodulate: bool, kernel: int) -> None:
    torch.manual_seed(0)
    conv = ModulatedConv2d(8, 6, kernel, 16, upsample=upsample, demodulate=demodulate).eval()
    x, style = torch.randn(2, 8, 5, 5), torch.randn(2, 16)
    gain = 1.7  # the input is the true activation / gain: the gain goes into the weight
    with torch.no_grad():
        expected = _rosinality_conv(conv, x * gain, style)
        weights = conv.modulated_weights(style, gain)
        x_cl = x.contiguous(memory_format=torch.channels_last)
        got = torch.cat([conv.conv_inference(x_cl[b : b + 1], w) for b, w in enumerate(weights)])
    torch.testing.assert_close(got, expected, **F32)


def test_the_synthesis_path_is_named_by_the_caller() -> None:
    """Nothing picks a path silently: REFERENCE unless asked, and an inference path refuses autograd
    (it computes in place) instead of falling back."""
    g = lively_generator()
    latent = torch.randn(1, g.n_latent, 32)
    with torch.no_grad():
        plain = g.synthesis(latent, g.fixed_noise())  # no autograd, and still REFERENCE
    with torch.enable_grad():
        reference = g.synthesis(latent, g.fixed_noise())
        with pytest.raises(ValueError, match="folded synthesis path is for inference"):
            g.synthesis(latent, g.fixed_noise(), path=SynthesisPath.FOLDED)
    torch.testing.assert_close(plain, reference.detach(), rtol=0, atol=0)
    assert SynthesisPath.for_inference("cpu") is SynthesisPath.BANDED
    assert SynthesisPath.for_inference("cuda:1") is SynthesisPath.FOLDED
    assert Engine(build_tiny(TINY), TINY, "cpu").path is SynthesisPath.BANDED
