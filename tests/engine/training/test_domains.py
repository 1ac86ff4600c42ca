"""Issue 16: training and evaluation take --domain. Cars and churches train with e4e's MoCo v2
similarity (or its named replacement, CLIP image similarity) instead of ArcFace; the MoCo v2
checkpoint layout is read strictly and safely; tiny car/church runs train and evaluate."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ffclip.app.cli import main
from ffclip.engine.checkpoints.errors import CheckpointError
from ffclip.engine.inference import build_tiny
from ffclip.engine.profiles import profile_for
from ffclip.engine.training import nets as training_nets
from ffclip.engine.training.similarity import MocoSimilarity, band_rows


def _latents(domain: str, n: int, seed: int) -> np.ndarray:
    profile = profile_for("tiny", domain)
    g = build_tiny(profile).generator
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        w = g.mapping(torch.randn(n, profile.style_dim, generator=gen))
    w = w[:, None].repeat(1, profile.n_latent, 1) + 0.05 * torch.randn(n, profile.n_latent, profile.style_dim)
    return w.numpy().astype(np.float32)


def _moco_checkpoint(path: Path) -> None:
    """A MoCo v2 checkpoint's layout (torchvision ResNet-50 query and key encoders with the MLP head,
    the queue), half precision to stay small; random values."""
    from torchvision.models import resnet50

    torch.manual_seed(0)
    trunk = {k: v.half() for k, v in resnet50(weights=None).state_dict().items() if not k.startswith("fc.")}
    head = {"fc.0.weight": torch.randn(2048, 2048).half(), "fc.0.bias": torch.zeros(2048).half()}
    head |= {"fc.2.weight": torch.randn(128, 2048).half(), "fc.2.bias": torch.zeros(128).half()}
    state = {f"module.encoder_q.{k}": v for k, v in {**trunk, **head}.items()}
    state |= {f"module.encoder_k.{k}": v for k, v in head.items()}
    state |= {"module.queue": torch.zeros(128, 16), "module.queue_ptr": torch.zeros(1, dtype=torch.long)}
    torch.save({"epoch": 800, "arch": "resnet50", "state_dict": state}, path)


@pytest.mark.slow
def test_the_moco_v2_layout_is_read_strictly(tmp_path: Path) -> None:
    from ffclip.engine.checkpoints.layouts import inspect_file
    from ffclip.engine.store import ModelStore
    from ffclip.engine.training.similarity import load_moco

    path = tmp_path / "moco_v2_800ep_pretrain.pt"
    _moco_checkpoint(path)
    assert inspect_file(path).kind == "moco"
    name, result = ModelStore(tmp_path / "store").import_file(path)
    assert name == "moco" and result.info["arch"] == "resnet50"
    similarity = MocoSimilarity(load_moco(path), band=(0.125, 0.875))
    features = similarity(torch.rand(2, 3, 64, 64) * 2 - 1)
    assert features.shape == (2, 2048) and torch.allclose(features.norm(dim=1), torch.ones(2))
    broken = torch.load(path)
    del broken["state_dict"]["module.encoder_q.layer4.2.conv3.weight"]
    torch.save(broken, tmp_path / "broken.pt")
    with pytest.raises(CheckpointError, match="layer4.2.conv3.weight"):
        load_moco(tmp_path / "broken.pt")


def test_a_cars_similarity_compares_its_frame_band_only() -> None:
    x = torch.zeros(1, 3, 64, 64)
    x[..., :8, :] = 5.0  # the padding rows of a car's square
    assert band_rows(x, (0.125, 0.875)).shape[-2] == 48 and band_rows(x, (0.125, 0.875)).max() == 0
    assert band_rows(x, (0.0, 1.0)) is x


def test_without_moco_weights_the_error_names_the_fetch_and_the_replacement(tmp_path: Path) -> None:
    from ffclip.engine.store import ModelStore

    store = ModelStore(tmp_path)
    with pytest.raises(FileNotFoundError) as caught:
        training_nets._identity("moco", "real", store, None, None, None, (0.0, 1.0), {})
    text = str(caught.value)
    assert "models fetch" in text and "moco" in text and "--similarity clip" in text


@pytest.mark.slow
@pytest.mark.parametrize(("domain", "similarity"), [("car", None), ("church", "clip")])
def test_tiny_domain_training_and_evaluation(tmp_path: Path, domain: str, similarity: str | None) -> None:
    np.save(tmp_path / "train.npy", _latents(domain, 6, 1))
    np.save(tmp_path / "val.npy", _latents(domain, 2, 2))
    out = tmp_path / "run"
    args = ["train", "--profile", "tiny", "--domain", domain, "--latents", str(tmp_path / "train.npy")]
    args += ["--val-latents", str(tmp_path / "val.npy"), "--out", str(out), "--batch-size", "2", "--epochs", "2"]
    args += ["--threads", "1", "--no-progress", "--image-interval", "0"]
    args += ["--similarity", similarity] if similarity else []
    assert main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    profile = profile_for("tiny", domain)
    assert summary["domain"] == domain and summary["n_latent"] == profile.n_latent
    assert summary["similarity"] == (similarity or "moco")
    assert "not MoCo" in summary["networks"]["identity"]  # a stand-in or the replacement: said plainly
    assert "arcface" not in summary["networks"]
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert all(np.isfinite(r["loss_id"]) and r["loss_id"] >= 0 for r in log if r["kind"] == "train")
    report_dir = tmp_path / "report"
    args = ["evaluate", "--profile", "tiny", "--domain", domain, "--latents", str(tmp_path / "val.npy")]
    args += ["--checkpoint", str(out / "checkpoints" / "last.pt"), "-o", str(report_dir), "--max-prompts", "2"]
    args += ["--threads", "1"] + (["--similarity", similarity] if similarity else [])
    assert main(args) == 0
    report = json.loads((report_dir / "report.json").read_text())
    assert report["domain"] == domain and report["samples"] == 2 and report["mean"]["identity"] is not None
