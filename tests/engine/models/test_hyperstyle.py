"""HyperStyle (engine/models/hyperstyle.py): the official layouts, parity with the original code's
outputs through the conformance command, and the generator's per-layer weight deltas (W·(1 + Δ))."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ffclip.app.cli import conformance as conformance_cli
from ffclip.engine import conformance
from ffclip.engine.models.hyperstyle import SharedWeightsHyperNetResNet, WEncoder, conv_shapes
from ffclip.engine.models.stylegan2 import ModulatedConv2d, SynthesisPath, upfirdn2d
from tests.support.generators import assert_rel, lively_generator


def _shapes(module: torch.nn.Module) -> list[tuple[str, list[int]]]:
    return [(k, list(v.shape)) for k, v in module.state_dict().items()]


@pytest.mark.parametrize(
    "manifest, factory",
    [
        ("hyperstyle_ffhq.manifest.json", lambda: SharedWeightsHyperNetResNet(6, 26)),
        ("hyperstyle_w_encoder.manifest.json", lambda: WEncoder(50, "ir_se", 1024)),
    ],
)
def test_state_dict_is_the_official_layout_in_order(parity_dir: Path, manifest: str, factory) -> None:
    """Keys, shapes and order (the order decides which copy of the shared hypernetwork's keys stays)."""
    with torch.device("meta"):
        module = factory()
    expected = [(t["key"], t["shape"]) for t in json.loads((parity_dir / manifest).read_text())["tensors"]]
    assert _shapes(module) == expected


def test_conv_shapes_are_the_official_table() -> None:
    shapes = conv_shapes(26)
    assert shapes[0] == (3, 512, 512) and shapes[1] == (1, 512, 3) and shapes[13] == (1, 512, 3)
    assert shapes[14] == (3, 512, 256) and shapes[24] == (3, 32, 32) and shapes[25] == (1, 32, 3)


def _conformance(directory: Path) -> int:
    parser = argparse.ArgumentParser()
    conformance_cli.add_arguments(parser)
    return conformance_cli.run(parser.parse_args([str(directory)]))


def _copy(parity_dir: Path, dest: Path, *names: str, manifest_only: tuple[str, ...] = ()) -> Path:
    for name in names:
        for suffix in (".manifest.json", ".expected.npz"):
            shutil.copy(parity_dir / f"{name}{suffix}", dest / f"{name}{suffix}")
    for name in manifest_only:  # a companion's weights, not a fixture of its own here
        shutil.copy(parity_dir / f"{name}.manifest.json", dest / f"{name}.manifest.json")
    return dest


def _scale(path: Path, key: str, factor: float) -> None:
    data = dict(np.load(path))
    data[key] = data[key] * factor
    np.savez(path, **data)


def test_kind_is_the_longest_matching_prefix() -> None:
    assert conformance.kind_of("hyperstyle_w_encoder_ffhq") == "hyperstyle_w_encoder_"
    assert conformance.kind_of("hyperstyle_hypernet_ffhq") == "hyperstyle_hypernet_"


def test_w_encoder_meets_the_reference(parity_dir: Path) -> None:
    result = conformance.run_fixture(parity_dir / "hyperstyle_w_encoder.manifest.json", torch.device("cpu"))
    assert [c.key for c in result.judged] == ["codes"] and result.passed() and result.worst.error < 1e-5


def test_w_encoder_fixture_fails_on_a_1_percent_reference_change(parity_dir: Path, tmp_path: Path) -> None:
    _copy(parity_dir, tmp_path, "hyperstyle_w_encoder")
    _scale(tmp_path / "hyperstyle_w_encoder.expected.npz", "codes", 1.01)
    assert _conformance(tmp_path) != 0


@pytest.mark.slow  # ~60-80 s on 2 cores: 6 GB of synthetic weights, three 1024² syntheses
def test_hyperstyle_meets_every_reference_output(parity_dir: Path) -> None:
    result = conformance.run_fixture(parity_dir / "hyperstyle_ffhq.manifest.json", torch.device("cpu"))
    data = np.load(parity_dir / "hyperstyle_ffhq.expected.npz")
    outputs = set(data.files) - conformance.INPUTS
    assert {c.key for c in result.judged} == outputs and len(outputs) == 2 * 17 * 4 + 9
    assert result.passed(), conformance.report_line(result)


@pytest.mark.slow
def test_hyperstyle_fixture_fails_on_a_1_percent_reference_change(parity_dir: Path, tmp_path: Path) -> None:
    """y_hat_2 scaled by 1.01: exactly that output fails, through the command (exit status non-zero)."""
    _copy(parity_dir, tmp_path, "hyperstyle_ffhq", manifest_only=("hyperstyle_w_encoder", "stylegan2_1024"))
    _scale(tmp_path / "hyperstyle_ffhq.expected.npz", "y_hat_2", 1.01)
    result = conformance.run_fixture(tmp_path / "hyperstyle_ffhq.manifest.json", torch.device("cpu"))
    assert [c.key for c in result.judged if c.error > conformance.TOLERANCE] == ["y_hat_2"]
    assert not result.passed()


def test_a_wrong_shape_is_not_within_tolerance() -> None:
    ours = {"delta_1_0_shape": np.array([1, 512, 512, 3, 3])}
    assert conformance._error(ours, "delta_1_0_shape", np.array([1, 512, 512, 3, 3])) == 0.0
    assert conformance._error(ours, "delta_1_0_shape", np.array([1, 512, 511, 3, 3])) == float("inf")


# -- the generator's weights_deltas ----------------------------------------------------------------


def _reference_conv(conv: ModulatedConv2d, x: torch.Tensor, style: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """HyperStyle's grouped formulation: scale·(W·(1 + Δ)·s), demodulated, conv_transpose + blur or conv."""
    b, cin, h, w = x.shape
    s = conv.modulation(style).view(b, 1, cin, 1, 1)
    weight = conv.scale * (conv.weight * (1 + delta) * s)
    if conv.demodulate:
        weight = weight * torch.rsqrt(weight.pow(2).sum([2, 3, 4]) + 1e-8).view(b, conv.out_channel, 1, 1, 1)
    k = conv.kernel_size
    if not conv.upsample:
        out = F.conv2d(x.reshape(1, b * cin, h, w), weight.view(-1, cin, k, k), padding=conv.padding, groups=b)
        return out.view(b, conv.out_channel, *out.shape[-2:])
    weight = weight.transpose(1, 2).reshape(b * cin, conv.out_channel, k, k)
    out = F.conv_transpose2d(x.reshape(1, b * cin, h, w), weight, padding=0, stride=2, groups=b)
    return upfirdn2d(out.view(b, conv.out_channel, *out.shape[-2:]), conv.blur.kernel, pad=conv.blur.pad)


@pytest.mark.parametrize("upsample", [False, True])
def test_weights_delta_is_hyperstyles_arithmetic(upsample: bool) -> None:
    """Per sample W·(1 + Δ_b), also where the up-sampling weight is cached (no autograd)."""
    torch.manual_seed(0)
    conv = ModulatedConv2d(8, 6, 3, 16, upsample=upsample).eval()
    x, style, delta = torch.randn(2, 8, 5, 5), torch.randn(2, 16), torch.randn(2, 6, 8, 3, 3) * 0.5
    with torch.no_grad():
        conv(x, style)  # fills the parameter's cache: a delta must not read it
        got = conv(x, style, delta)
        assert_rel(got, _reference_conv(conv, x, style, delta))
        assert_rel(conv(x, style, torch.zeros_like(delta)), conv(x, style))


def test_generator_takes_weights_deltas_layer_by_layer() -> None:
    g = lively_generator()
    latent = torch.randn(2, g.n_latent, 32)
    n = 2 + 3 * len(g.to_rgbs)
    with torch.no_grad():
        plain = g.synthesis(latent, g.fixed_noise())
        zeros = [torch.zeros(2, *c.weight.shape[1:]) for c in _convs(g)]
        assert torch.equal(g.synthesis(latent, g.fixed_noise(), weights_deltas=[None] * n), plain)
        assert_rel(g.synthesis(latent, g.fixed_noise(), weights_deltas=zeros), plain)
        for j in (0, 1, n - 2, n - 1):  # each layer, ToRGBs too, reads its own entry
            deltas: list[torch.Tensor | None] = [None] * n
            deltas[j] = torch.full_like(zeros[j], 0.5)
            assert not torch.allclose(g.synthesis(latent, g.fixed_noise(), weights_deltas=deltas), plain)
    with pytest.raises(ValueError, match="entries"):
        g.synthesis(latent, g.fixed_noise(), weights_deltas=[None] * (n - 1))


def _convs(g) -> list[ModulatedConv2d]:
    """The modulated convolutions in HyperStyle's order: conv1, to_rgb1, then up-conv, conv, ToRGB per level."""
    out = [g.conv1.conv, g.to_rgb1.conv]
    for up, conv, rgb in zip(g.convs[::2], g.convs[1::2], g.to_rgbs, strict=True):
        out += [up.conv, conv.conv, rgb.conv]
    return out


@pytest.mark.parametrize("path", [SynthesisPath.FOLDED, SynthesisPath.BANDED])
def test_the_inference_paths_take_weights_deltas_as_the_reference_does(path: SynthesisPath) -> None:
    """The product's fast paths (style folded into each sample's weight; at 512² and up in bands of
    rows) with HyperStyle's deltas on every convolution equal the reference path's images."""
    g = lively_generator(512)
    torch.manual_seed(1)
    latent = torch.randn(2, g.n_latent, 32)
    convs = _convs(g)
    deltas = [torch.randn(2 if j % 2 else 1, *c.weight.shape[1:]) * 0.3 for j, c in enumerate(convs)]
    deltas[4] = None  # a layer not tuned
    with torch.no_grad():
        expected = g.synthesis_levels(latent, g.fixed_noise(), (64, 512), weights_deltas=deltas)
        plain = g.synthesis(latent, g.fixed_noise())
    with torch.inference_mode():
        got = g.synthesis_levels(latent, g.fixed_noise(), (64, 512), path=path, weights_deltas=deltas)
    for size in (64, 512):
        assert_rel(got[size], expected[size], 1e-4)
    assert not torch.allclose(expected[512], plain, atol=1e-2)  # the deltas change the image


def test_the_shared_hypernetwork_runs_once_with_the_official_results() -> None:
    """The forward stacks the shared blocks' codes into one pass of the shared hypernetwork: each Δ
    is what its block alone (the official forward) gives."""
    from ffclip.engine.models.hyperstyle import conv_shapes as shapes_of

    torch.manual_seed(0)
    shapes = shapes_of(20, 1, 64)
    net = SharedWeightsHyperNetResNet(6, 20, (0, 2, 3, 5, 14, 17), shapes=shapes, base=8, hidden=64).eval()
    x = torch.randn(2, 6, 256, 256)
    with torch.no_grad():
        got = net(x)
        features = net.body(net.relu(net.bn1(net.conv1(x))))
        for j, block in enumerate(net.refinement_blocks):
            assert (got[j] is None) == (block is None)
            if block is not None:
                assert_rel(got[j], block(features), 1e-6)


def test_w2_stored_by_columns_gives_the_same_kernels_and_state_dict() -> None:
    """The engine keeps the shared hypernetwork's w2 column by column (a faster product on a CPU): the
    same kernels as the official row-major product, the same official state_dict."""
    from ffclip.engine.models.hyperstyle import SharedWeightsHypernet

    torch.manual_seed(0)
    net = SharedWeightsHypernet(3, 64, 64, 64)
    z = torch.randn(9, 64)
    with torch.no_grad():
        official = (torch.matmul(z, net.w2) + net.b2).view(9, 64, 64) @ net.w1 + net.b1  # the official forward
        by_rows = net(z)
        before = {k: v.clone() for k, v in net.state_dict().items()}
        net.store_w2_by_columns_()
        assert net.w2.t().is_contiguous() and net.w2.shape == (64, 64 * 64)
        by_columns = net(z)
    assert_rel(by_rows, official.view(9, 64, 64, 3, 3), 1e-6)
    assert_rel(by_columns, by_rows, 1e-6)
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())
