"""Models: checkpoint keys as the official layouts, parity through the conformance command, and
the fused arithmetic against the reference formulation."""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ffclip.app.cli import conformance as conformance_cli
from ffclip.engine import conformance
from ffclip.engine.inference import Engine
from ffclip.engine.models.arcface import Backbone
from ffclip.engine.models.e4e import Encoder4Editing
from ffclip.engine.models.mapper import DynamicMapper
from ffclip.engine.models.stylegan2 import Generator, ModulatedConv2d, Upsample, upfirdn2d


def _shapes(module: torch.nn.Module) -> dict[str, list[int]]:
    return {k: list(v.shape) for k, v in module.state_dict().items()}


def _manifest_shapes(path: Path) -> dict[str, list[int]]:
    return {t["key"]: t["shape"] for t in json.loads(path.read_text())["tensors"]}


@pytest.mark.parametrize(
    "manifest, factory",
    [
        ("stylegan2_1024.manifest.json", lambda: Generator(1024)),
        ("stylegan2_256.manifest.json", lambda: Generator(256)),
        ("e4e_1024.manifest.json", lambda: Encoder4Editing(50, "ir_se", 1024)),
        ("ffclip_mapper.manifest.json", lambda: DynamicMapper(18)),
        ("training/arcface_ir_se50.manifest.json", lambda: Backbone(112, 50, "ir_se")),
    ],
)
def test_state_dict_keys_are_the_official_layout(parity_dir: Path, manifest: str, factory) -> None:
    with torch.device("meta"):
        module = factory()
    assert _shapes(module) == _manifest_shapes(parity_dir / manifest)


def _conformance(directory: Path, *extra: str) -> int:
    parser = argparse.ArgumentParser()
    conformance_cli.add_arguments(parser)
    return conformance_cli.run(parser.parse_args([str(directory), *extra]))


@pytest.mark.slow
def test_conformance_passes_on_the_parity_fixtures(parity_dir: Path, capsys) -> None:
    assert _conformance(parity_dir) == 0
    out = capsys.readouterr().out
    names = ("stylegan2_1024", "stylegan2_256", "e4e_1024", "ffclip_mapper", "hyperstyle_ffhq", "hyperstyle_w_encoder")
    for name in names:
        assert name in out
    assert "6 passed, 0 failed" in out


def test_conformance_passes_on_the_training_fixtures(parity_dir: Path, capsys) -> None:
    assert _conformance(parity_dir / "training") == 0
    assert "arcface_ir_se50" in capsys.readouterr().out


# More fixture folders (other seeds and sizes) to run: $FFCLIP_FIXTURES, paths separated by ':'.
EXTRA_FIXTURES = [Path(p) for p in os.environ.get("FFCLIP_FIXTURES", "").split(os.pathsep) if p.strip()]


@pytest.mark.skipif(not EXTRA_FIXTURES, reason="no $FFCLIP_FIXTURES")
@pytest.mark.parametrize("directory", EXTRA_FIXTURES, ids=str)
def test_conformance_passes_on_extra_fixtures(directory: Path) -> None:
    assert _conformance(directory) == 0


def test_conformance_fails_without_fixtures(tmp_path: Path) -> None:
    assert _conformance(tmp_path) != 0


def _copy_fixture(parity_dir: Path, name: str, dest: Path) -> Path:
    for suffix in (".manifest.json", ".expected.npz"):
        shutil.copy(parity_dir / f"{name}{suffix}", dest / f"{name}{suffix}")
    return dest


def test_conformance_catches_a_wrong_mapper(parity_dir: Path, tmp_path: Path, monkeypatch) -> None:
    """PixelNorm over the channels instead of the layers: a plausible slip, caught."""
    _copy_fixture(parity_dir, "ffclip_mapper", tmp_path)
    monkeypatch.setattr(
        "ffclip.engine.models.stylegan2.PixelNorm.forward",
        lambda self, x: x * torch.rsqrt(torch.mean(x**2, dim=-1, keepdim=True) + 1e-8),
    )
    assert _conformance(tmp_path) != 0


@pytest.mark.parametrize("factor", [1.01, 1.001])
def test_conformance_catches_a_changed_reference(parity_dir: Path, tmp_path: Path, factor: float) -> None:
    """Every reference output scaled: a 1 % (and 0.1 %) error fails on every machine (float64 rule)."""
    _copy_fixture(parity_dir, "ffclip_mapper", tmp_path)
    path = tmp_path / "ffclip_mapper.expected.npz"
    data = dict(np.load(path))
    for key in ("delta", "w_hat", "delta_f64", "w_hat_f64"):
        data[key] = data[key] * factor
    np.savez(path, **data)
    assert _conformance(tmp_path) != 0


@pytest.mark.slow
def test_conformance_passes_in_bf16_by_its_own_rule(parity_dir: Path, capsys) -> None:
    """The networks as the engine runs them in bfloat16, against the float32 references (issue 27)."""
    assert _conformance(parity_dir, "--precision", "bf16") == 0
    out = capsys.readouterr().out
    # both generator fixtures judged on their images, computed in bfloat16
    assert len(re.findall(r"stylegan2 +worst [0-9.e+-]+ \(img_\w+, bfloat16\)", out)) == 2
    assert conformance.BF16_TOLERANCES == {
        "stylegan2": 2e-2, "e4e_encoder": 1e-2, "ffclip_mapper": 1e-4, "arcface_ir_se50": 1e-4,
        "hyperstyle_w_encoder": 1e-4, "hyperstyle_hypernet": 1e-4,
    }  # fmt: skip  # docs/performance.md states them


def test_the_bf16_rule_still_catches_a_changed_reference(parity_dir: Path, tmp_path: Path) -> None:
    """A generator reference off by 5 %: beyond bfloat16's rounding, caught in bf16 too."""
    _copy_fixture(parity_dir, "stylegan2_256", tmp_path)
    path = tmp_path / "stylegan2_256.expected.npz"
    data = dict(np.load(path))
    for key in [k for k in data if k.startswith("img_")]:
        data[key] = data[key] * 1.05
    np.savez(path, **data)
    assert _conformance(tmp_path, "--precision", "bf16") != 0


def test_mapper_is_judged_in_float64(parity_dir: Path, capsys) -> None:
    """The mapper fixture's float64 references are met to ~1e-12; float32 is printed, not judged."""
    result = conformance.run_fixture(parity_dir / "ffclip_mapper.manifest.json", torch.device("cpu"))
    judged = {c.key: c for c in result.judged}
    assert set(judged) == {"delta_f64", "w_hat_f64"}
    assert all(c.precision == "float64" and c.error < 1e-9 for c in judged.values())
    assert {c.key for c in result.checks if not c.judged} == {"delta", "w_hat"}


def test_a_fixture_without_float64_keys_keeps_the_float32_rule(parity_dir: Path, tmp_path: Path) -> None:
    _copy_fixture(parity_dir, "ffclip_mapper", tmp_path)
    path = tmp_path / "ffclip_mapper.expected.npz"
    data = dict(np.load(path))
    del data["delta_f64"], data["w_hat_f64"]
    np.savez(path, **data)
    result = conformance.run_fixture(tmp_path / "ffclip_mapper.manifest.json", torch.device("cpu"))
    assert {c.key for c in result.judged} == {"delta", "w_hat"}
    assert all(c.precision == "float32" for c in result.checks)


def test_a_float64_reference_of_an_output_we_do_not_make_fails(parity_dir: Path, tmp_path: Path) -> None:
    _copy_fixture(parity_dir, "ffclip_mapper", tmp_path)
    path = tmp_path / "ffclip_mapper.expected.npz"
    data = dict(np.load(path))
    data["gamma_f64"] = data["delta_f64"]
    np.savez(path, **data)
    assert _conformance(tmp_path) != 0


def _reference_up_conv(conv: ModulatedConv2d, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
    """rosinality's grouped formulation: modulate/demodulate the weight, conv_transpose, blur."""
    b, cin, h, w = x.shape
    s = conv.modulation(style).view(b, 1, cin, 1, 1)
    weight = conv.scale * conv.weight * s
    weight = weight * torch.rsqrt(weight.pow(2).sum([2, 3, 4]) + 1e-8).view(b, conv.out_channel, 1, 1, 1)
    k = conv.kernel_size
    weight = weight.view(b, conv.out_channel, cin, k, k).transpose(1, 2).reshape(b * cin, conv.out_channel, k, k)
    out = F.conv_transpose2d(x.view(1, b * cin, h, w), weight, padding=0, stride=2, groups=b)
    out = out.view(b, conv.out_channel, *out.shape[-2:])
    return upfirdn2d(out, conv.blur.kernel, pad=conv.blur.pad)


def test_fused_upsampling_conv_equals_reference() -> None:
    torch.manual_seed(0)
    conv = ModulatedConv2d(8, 6, 3, 16, upsample=True).eval()
    x, style = torch.randn(2, 8, 5, 5), torch.randn(2, 16)
    with torch.no_grad():
        torch.testing.assert_close(conv(x, style), _reference_up_conv(conv, x, style), rtol=1e-5, atol=1e-5)


def test_skip_upsample_equals_upfirdn() -> None:
    torch.manual_seed(0)
    up = Upsample((1, 3, 3, 1))
    x = torch.randn(2, 3, 7, 7)
    expected = upfirdn2d(x, up.kernel, up=2, pad=up.pad)
    torch.testing.assert_close(up(x), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("n_latent", [18, 16, 14])
def test_mapper_is_generic_in_the_number_of_layers(n_latent: int) -> None:
    mapper = DynamicMapper(n_latent=n_latent)
    w, e = torch.randn(2, n_latent, 512), torch.randn(2, 1, 512)
    assert mapper(w, e).shape == (2, n_latent, 512)
    assert torch.equal(mapper.edit(w, e, strength=0.0), w)


def test_generator_preview_stops_early_and_z_path_works() -> None:
    torch.manual_seed(0)
    g = Generator(64, style_dim=32, n_mlp=2, channel_base=32).eval()
    z = torch.randn(2, 32)
    with torch.no_grad():
        full, latents = g([z], return_latents=True, randomize_noise=False)
        preview, _ = g([latents], input_is_latent=True, randomize_noise=False, stop_at=16)
        again, _ = g([latents], input_is_latent=True, randomize_noise=False)
        mean = g.mean_latent(256)
        truncated, _ = g([z], truncation=0.5, truncation_latent=mean, randomize_noise=False)
    assert full.shape == (2, 3, 64, 64) and preview.shape == (2, 3, 16, 16)
    assert torch.equal(full, again)  # fixed noise buffers: repeatable
    assert not torch.equal(full, truncated)


@pytest.fixture(scope="module")
def tiny() -> Engine:
    return Engine.load("tiny")


def test_tiny_engine_runs_the_whole_chain(tiny: Engine) -> None:
    assert tiny.untrained and tiny.describe()["profile"] == "tiny"
    x = torch.rand(2, 3, 256, 256) * 2 - 1
    w = tiny.invert(x)
    assert w.shape == (2, tiny.n_latent, tiny.profile.style_dim)
    e = tiny.encode_text(["smiling"])
    assert e.shape == (1, 1, tiny.profile.style_dim)
    w_hat = tiny.map(w, e, strength=1.0)
    assert torch.equal(tiny.map(w, e, strength=0.0), w) and not torch.equal(w_hat, w)
    assert tiny.synthesize(w_hat).shape == (2, 3, tiny.size, tiny.size)
    assert tiny.synthesize(w_hat, preview=True).shape[-1] == tiny.preview_size


def test_tiny_engine_is_seeded(tiny: Engine) -> None:
    other = Engine.load("tiny")
    x = torch.zeros(1, 3, 256, 256)
    assert torch.equal(tiny.invert(x), other.invert(x))
    assert torch.equal(tiny.encode_text(["blond hair"]), other.encode_text(["blond hair"]))


def test_text_embeddings_are_cached_per_prompt(tiny: Engine) -> None:
    before = tiny.text_cache_stats()
    a = tiny.encode_text(["curly hair"])
    b = tiny.encode_text(["curly hair"])
    after = tiny.text_cache_stats()
    assert torch.equal(a, b)
    assert after["hits"] == before["hits"] + 1 and after["misses"] == before["misses"] + 1


def test_text_encoding_runs_only_up_to_the_end_of_text_token() -> None:
    import open_clip

    from ffclip.engine.models.clip import build_tiny_clip, encode_text

    model = build_tiny_clip()
    tokens = open_clip.get_tokenizer("ViT-B-32")(["smiling", "", "a person with long curly red hair and round glasses"])
    with torch.inference_mode():
        full = model.encode_text(tokens)  # all 77 positions
        prefix = encode_text(model, tokens)
        alone = encode_text(model, tokens[:1])  # a shorter prefix than in the batch
    assert prefix.shape == full.shape == (3, 64)
    torch.testing.assert_close(prefix, full, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(alone, full[:1], rtol=1e-5, atol=1e-5)
