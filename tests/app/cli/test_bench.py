"""`ffclip-engine bench` and the inference fast paths it measures: the JSON contract, the dense-limit
shapes, and every inference-only formulation against the reference (autograd) formulation."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ffclip.app.cli import bench
from ffclip.engine import precision
from ffclip.engine.models.e4e import Encoder4Editing
from ffclip.engine.models.stylegan2 import Generator
from ffclip.engine.profiles import TINY


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
    for name in ("g1024", "preview", "edit_photo", *bench.LIVE_STAGES, *bench.HIGH_STAGES):
        limit = result["limits"].get(f"g1024_beside_{name}", result["limits"]["g1024"])["seconds"]
        assert result["ratios"][f"{name}_in_L"] == result["stages"][name]["seconds"] / limit
    # invert_high is in units of an L measured in alternation with it (as g1024 with its own)
    assert result["limits"]["g1024_beside_invert_high"]["convs"] == result["limits"]["g1024"]["convs"]
    # fidelity high (issue 29): the re-edit skips the inversion as the standard one does
    assert set(result["pipeline"]["reedit_high"]) == {"encode_text", "map", "synthesize", "blend"}
    # ... and is compared with the standard re-edit timed in alternation with it
    high, beside = result["stages"]["reedit_high"], result["stages"]["reedit_beside_high"]
    assert len(high["all"]) == len(beside["all"]) == 1
    assert result["ratios"]["reedit_high_vs_standard"] == high["seconds"] / beside["seconds"]


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


def test_bf16_bench_reports_its_quality_against_fp32(photos_dir, monkeypatch) -> None:
    """--precision bf16 (issue 27): the same stages, L still the float32 limit, plus the quality of the
    bf16 outputs against float32 on the same inputs; auto's Apply is float32 (identical: null)."""
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx512_bf16"})
    photo = str(photos_dir / "obama.jpg")
    code, out = _bench("--profile", "tiny", "--json", "--repeats", "1", "--photo", photo, "--precision", "bf16")
    assert code == 0
    result = json.loads(out)
    assert result["precision"] == "bf16" and result["cpu_bf16"] is True
    quality = result["quality"]
    assert quality["g1024_psnr_db"] > 40 and quality["preview_psnr_db"] > 40 and 0 < quality["e4e_rel_err"] < 0.01
    assert result["limits"]["g1024"]["seconds"] > 0
    # the same convolutions' limits in bf16: how far the hardware's own rate lets g1024 and the preview go
    ratios, limits = result["ratios"], result["limits"]
    assert limits["g1024_bf16"]["convs"] == limits["g1024"]["convs"]
    assert 0 < limits["preview_bf16"]["gflop"] < limits["g1024_bf16"]["gflop"]
    for stage in ("g1024", "preview"):
        seconds = limits[f"{stage}_bf16"]["seconds"]
        assert ratios[f"{stage}_bf16_limit_in_L"] == seconds / limits["g1024"]["seconds"]
        assert ratios[f"{stage}_vs_conv_bf16"] == seconds / result["stages"][stage]["seconds"]
    code, out = _bench("--profile", "tiny", "--json", "--repeats", "1", "--photo", photo, "--precision", "auto")
    result = json.loads(out)
    assert result["precision"] == "bf16 previews, fp32 Apply"
    assert result["quality"]["g1024_psnr_db"] is None and result["quality"]["e4e_rel_err"] == 0.0
    assert result["quality"]["preview_psnr_db"] > 40
    assert "preview_vs_conv_bf16" in result["ratios"] and "g1024_vs_conv_bf16" not in result["ratios"]
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx2"})
    assert _bench("--profile", "tiny", "--precision", "bf16")[0] == 1  # would be emulated: said, not run


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
    preview = bench.preview_convs(convs, 128)  # the preview stops at 128²: conv1, to_rgb1, levels 8..128
    assert len(preview) == 2 + 5 * 3 and preview[-1].x == (1, 256, 128, 128)
    assert preview[-3].kind == "conv_transpose2d" and preview[-3].x == (1, 512, 64, 64)
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


def test_reedit_high_is_timed_in_alternation_with_the_standard_reedit(photos_dir, monkeypatch) -> None:
    """The "within 10 %" ratio compares two sides measured in the same minutes: after one warm-up edit
    of each fidelity (the high one inverts), standard and high re-edits alternate, each timed."""
    from ffclip.engine.inference import Engine
    from ffclip.engine.pipeline import Pipeline

    nets = bench.build_networks(TINY)
    engine = Engine(nets, TINY, torch.device("cpu"))
    engine.set_hyperstyle(lambda: bench.build_hyperstyle(TINY, nets.latent_avg))
    image = bench._photo(photos_dir / "obama.jpg", 0)
    order: list[str] = []
    edit = Pipeline.edit
    monkeypatch.setattr(
        Pipeline, "edit", lambda self, params, *a, **k: order.append(params.fidelity) or edit(self, params, *a, **k)
    )
    stages: dict = {}
    breakdown = bench._bench_reedit_high(engine, image, 3, stages, lambda _msg: None)
    assert order == ["high", "standard"] + ["standard", "high"] * 3
    assert len(stages["reedit_high"]["all"]) == len(stages["reedit_beside_high"]["all"]) == 3
    assert set(breakdown) == {"encode_text", "map", "synthesize", "blend"}  # the high edits' own stages
