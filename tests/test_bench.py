"""`ffclip-engine bench` and the inference fast paths it measures: the JSON contract, the dense-limit
shapes, and every inference-only formulation against the reference (autograd) formulation."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ffclip.app.cli import bench
from ffclip.engine.inference import Engine, build_tiny
from ffclip.engine.models import stylegan2
from ffclip.engine.models.e4e import Encoder4Editing
from ffclip.engine.models.irse import BottleneckIRSE
from ffclip.engine.models.stylegan2 import Generator, ModulatedConv2d, SynthesisPath, upfirdn2d
from ffclip.engine.profiles import TINY

F32 = {"rtol": 1e-5, "atol": 1e-5}


def _assert_rel(got: torch.Tensor, expected: torch.Tensor, tol: float = 1e-5) -> None:
    """max|got − expected| / max|expected| (the conformance measure), float32 rounding only."""
    assert got.shape == expected.shape
    err = float((got - expected).abs().max() / expected.abs().max())
    assert err <= tol, err


def _bench(*argv: str) -> tuple[int, str]:
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    from contextlib import redirect_stdout
    from io import StringIO

    out = StringIO()
    with redirect_stdout(out):
        code = bench.run(parser.parse_args(list(argv)))
    return code, out.getvalue()


def test_tiny_bench_json_has_every_key(photos_dir) -> None:
    code, out = _bench("--profile", "tiny", "--json", "--repeats", "1", "--photo", str(photos_dir / "obama.jpg"))
    assert code == 0
    result = json.loads(out)
    assert result["device"] == "cpu" and result["profile"] == "tiny"
    assert "synthetic weights" in result["weights"]
    for stage in bench.BENCH_STAGES:
        assert result["stages"][stage]["seconds"] > 0, stage
    for name in ("g1024", "e4e"):
        assert result["limits"][name]["seconds"] > 0
    for key in ("g1024_vs_conv", "e4e_vs_conv"):
        assert result["ratios"][key] > 0
    assert 0 < result["peak_rss_mb"] <= result["peak_rss_process_mb"]
    # the re-edit skipped detection, alignment and inversion: the pipeline cached them
    assert set(result["pipeline"]["reedit_cached"]) == {"encode_text", "map", "synthesize", "blend"}
    assert {"detect", "invert"} <= set(result["pipeline"]["edit_photo"])
    # the live stages: a new prompt maps it; new strengths and Apply only synthesize and blend
    assert set(result["pipeline"]["live_prompt"]) == {"encode_text", "map", "synthesize", "blend"}
    assert set(result["pipeline"]["live_strength"]) == {"synthesize", "blend"}
    assert set(result["pipeline"]["apply_cached"]) == {"synthesize", "blend"}
    for name in bench.LIVE_STAGES:
        limit = result["limits"]["g1024"]["seconds"]
        assert result["ratios"][f"{name}_in_L"] == result["stages"][name]["seconds"] / limit


def test_bench_takes_detections_from_a_faces_json(tmp_path, photos_dir, monkeypatch) -> None:
    """--faces replaces dlib (for a GPU machine without its models); coordinates follow the bench's
    enlargement of the photo, and the detections are those `faces --json` printed."""
    from contextlib import redirect_stdout
    from io import StringIO

    from ffclip.app.cli import main
    from ffclip.engine.face.detect import FaceInfo

    faces_json = tmp_path / "faces.json"
    out = StringIO()
    with redirect_stdout(out):
        assert main(["faces", str(photos_dir / "obama.jpg"), "--json"]) == 0
    faces_json.write_text(out.getvalue())
    doc = json.loads(out.getvalue())
    face = FaceInfo.from_json(doc["faces"][0], 2.0)
    assert face.qsize > 0 and np.allclose(face.quad / 2.0, doc["faces"][0]["quad"], atol=1e-6)

    from ffclip.engine.face import detect

    dlib_runs = []
    real_detect = detect.FaceDetector.detect
    monkeypatch.setattr(detect.FaceDetector, "detect", lambda self, rgb: dlib_runs.append(1) or real_detect(self, rgb))

    code, out = _bench(
        "--profile",
        "tiny",
        "--json",
        "--repeats",
        "1",
        "--photo",
        str(photos_dir / "obama.jpg"),
        "--min-pixels",
        "2000000",
        "--faces",
        str(faces_json),
    )
    assert code == 0
    result = json.loads(out)
    assert result["photo"]["faces_from"] == str(faces_json) and result["photo"]["width"] > doc["width"]
    assert result["stages"]["edit_photo"]["seconds"] > 0 and "detect" in result["pipeline"]["edit_photo"]
    assert dlib_runs == []  # the detections came from the file: dlib never ran

    faces_json.write_text("<html>not json</html>")
    assert _bench("--profile", "tiny", "--repeats", "1", "--faces", str(faces_json))[0] == 1


def test_bench_on_an_empty_model_store_names_the_missing_files(tmp_path, capsys) -> None:
    code, out = _bench("--models", str(tmp_path), "--repeats", "1")
    assert code == 1 and out == ""
    assert "model files missing" in capsys.readouterr().err


def test_bench_refuses_cuda_without_a_gpu() -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    code, _ = _bench("--profile", "tiny", "--device", "cuda")
    assert code == 1


def test_generator_limit_uses_the_reference_layer_shapes() -> None:
    with torch.device("meta"):
        g = Generator(1024)
    convs = bench.generator_convs(g)
    assert len(convs) == 1 + 1 + 8 * 3  # conv1, to_rgb1, then (up, conv, to_rgb) per level 8..1024
    ups = [c for c in convs if c.kind == "conv_transpose2d"]
    assert len(ups) == 8 and all(c.w[2:] == (3, 3) and c.stride == 2 for c in ups)
    assert ups[-1].x == (1, 64, 512, 512) and ups[-1].w == (64, 32, 3, 3)
    assert convs[-1].w == (3, 32, 1, 1) and convs[-1].x == (1, 32, 1024, 1024)
    assert 140 < sum(c.flops for c in convs) / 1e9 < 155  # ~150 GFLOP, as the issue quotes


def test_module_convs_records_every_conv_of_e4e() -> None:
    enc = Encoder4Editing(stylegan_size=256, style_dim=64, stages=TINY.e4e_stages, input_width=16).eval()
    enc.requires_grad_(False)
    convs = bench.module_convs(enc, torch.zeros(1, 3, 256, 256))
    n_modules = sum(isinstance(m, torch.nn.Conv2d) for m in enc.modules())
    assert len(convs) == n_modules
    assert convs[0].x == (1, 3, 256, 256) and convs[0].w == (16, 3, 3, 3)
    assert bench.dense_limit(convs[:3], torch.device("cpu"), 1)["seconds"] > 0


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="Linux: resettable high-water mark")
def test_peak_rss_leaves_out_the_limit_passes() -> None:
    bench.PeakRss().exclude(lambda: None)  # the high-water mark starts again from the current RSS
    before = bench._high_water_mb()
    peak = bench.PeakRss()

    def big() -> None:  # 400 MB touched, then freed, like a limit pass's buffers
        np.ones(100 * 1024 * 1024, dtype=np.float32).sum()

    peak.exclude(big)
    peak.note()
    assert peak.process_mb > before + 300
    assert peak.engine_mb < before + 100


# -- inference formulations against the reference ------------------------------------------------


def _lively_generator(size: int = 64) -> Generator:
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


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("stop_at", [None, 16])
def test_inference_synthesis_equals_the_reference(batch: int, stop_at: int | None) -> None:
    g = _lively_generator()
    latent = torch.randn(batch, g.n_latent, 32)
    with torch.enable_grad():  # autograd on: the reference formulation
        expected = g.synthesis(latent, g.fixed_noise(), stop_at).detach()
    with torch.inference_mode():
        got = g.synthesis(latent, g.fixed_noise(), stop_at, path=SynthesisPath.FOLDED)
    assert got.is_contiguous()
    _assert_rel(got, expected)


def test_inference_synthesis_draws_random_noise_as_the_reference() -> None:
    g = _lively_generator()
    latent = torch.randn(2, g.n_latent, 32)
    torch.manual_seed(7)
    with torch.enable_grad():
        expected = g.synthesis(latent, [None] * g.num_layers).detach()
    torch.manual_seed(7)
    with torch.no_grad():
        got = g.synthesis(latent, [None] * g.num_layers, path=SynthesisPath.FOLDED)
    _assert_rel(got, expected)


@pytest.mark.parametrize("batch, band_rows, stop_at", [(1, 8, None), (2, 5, None), (1, 3, 32)])
def test_banded_levels_equal_the_reference(monkeypatch, batch: int, band_rows: int, stop_at: int | None) -> None:
    """The CPU runs its large levels in bands of rows (halos at the band edges, zero padding at the
    image edges, a last band shorter than the others): the same images as the full-size path."""
    g = _lively_generator()
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
    _assert_rel(got, expected)
    _assert_rel(got_random, expected_random)
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


@pytest.mark.parametrize("in_channel, depth, stride", [(8, 16, 2), (16, 16, 2), (16, 16, 1)])
def test_irse_inference_unit_equals_the_reference(in_channel: int, depth: int, stride: int) -> None:
    torch.manual_seed(0)
    unit = BottleneckIRSE(in_channel, depth, stride).eval()
    with torch.no_grad():
        for m in unit.modules():
            if isinstance(m, torch.nn.BatchNorm2d):  # non-trivial running statistics to fold
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.2)
                m.running_mean.normal_(0, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    x = torch.randn(2, in_channel, 9, 9)
    with torch.enable_grad():
        expected = unit(x).detach()
    with torch.inference_mode():
        got = unit(x)
        again = unit(x)  # the folded weights come from the cache
    torch.testing.assert_close(got, expected, **F32)
    torch.testing.assert_close(again, got, rtol=0, atol=0)
    with torch.no_grad():  # a changed BatchNorm invalidates the cache
        unit.res_layer[4].running_var.mul_(2.0)
    with torch.enable_grad():
        expected = unit(x).detach()
    with torch.no_grad():
        torch.testing.assert_close(unit(x), expected, **F32)


def test_engine_synthesizes_at_a_chosen_size() -> None:
    engine = Engine(build_tiny(TINY), TINY, "cpu")
    w = engine.invert(torch.zeros(1, 3, 256, 256))
    assert engine.synthesize(w, size=32).shape == (1, 3, 32, 32)
    assert engine.synthesize(w, size=engine.size).shape == (1, 3, engine.size, engine.size)
    with pytest.raises(ValueError):
        engine.synthesize(w, size=100)


def test_levels_are_the_images_of_synthesis_stopped_there() -> None:
    """One pass yields the 1024² edit and its 256² copy; the copy must equal a synthesis stopped at
    256², since the pipeline compares it with a reconstruction made only up to there."""
    engine = Engine(build_tiny(TINY), TINY, "cpu")
    w = engine.invert(torch.rand(2, 3, 256, 256) * 2 - 1)
    levels = engine.synthesize_levels(w, (engine.size, 64, 16))
    assert sorted(levels) == [16, 64, engine.size]
    for size, image in levels.items():
        assert image.shape == (2, 3, size, size)
        torch.testing.assert_close(image, engine.synthesize(w, size=size), rtol=0, atol=0)
    with torch.enable_grad():  # the reference path keeps the same levels
        g = _lively_generator()
        latent = torch.randn(1, g.n_latent, 32)
        ref = g.synthesis_levels(latent, g.fixed_noise(), (8, 32))
        torch.testing.assert_close(ref[8], g.synthesis(latent, g.fixed_noise(), 8))
    with pytest.raises(ValueError):
        engine.synthesize_levels(w, (48,))


def test_the_synthesis_path_is_named_by_the_caller() -> None:
    """Nothing picks a path silently: REFERENCE unless asked, and an inference path refuses autograd
    (it computes in place) instead of falling back."""
    g = _lively_generator()
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


def test_engine_options() -> None:
    nets = build_tiny(TINY)
    with pytest.raises(ValueError, match="CUDA"):
        Engine(nets, TINY, "cpu", autocast=True)
    before = torch.get_num_threads()
    try:
        engine = Engine(nets, TINY, "cpu", threads=1)
        assert torch.get_num_threads() == 1
        assert engine.describe()["autocast"] is False
    finally:
        torch.set_num_threads(before)
