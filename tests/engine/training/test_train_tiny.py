"""Issue 6 on the tiny profile: a few hundred CPU steps lower the objective (logged per step, plotted),
checkpoints in the official layout, resume, mapper export, and `evaluate` (JSON + an HTML page)."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ffclip.app.cli import main
from ffclip.engine.inference import build_tiny
from ffclip.engine.profiles import TINY

pytestmark = pytest.mark.slow  # the module's run trains a few hundred steps first

EPOCHS = 7  # 32 samples, batch 1: 224 steps


def _latents(n: int, seed: int) -> np.ndarray:
    g = build_tiny(TINY).generator
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        w = g.mapping(torch.randn(n, TINY.style_dim, generator=gen))
    w = w[:, None].repeat(1, TINY.n_latent, 1) + 0.05 * torch.randn(n, TINY.n_latent, TINY.style_dim, generator=gen)
    return w.numpy().astype(np.float32)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("tiny_data")
    np.save(d / "train.npy", _latents(32, 1))
    np.save(d / "val.npy", _latents(6, 2))
    return d


def _train(data: Path, out: Path, *extra: str) -> int:
    return main(
        [
            "train",
            "--profile",
            "tiny",
            "--latents",
            str(data / "train.npy"),
            "--val-latents",
            str(data / "val.npy"),
            "--out",
            str(out),
            "--batch-size",
            "1",
            "--threads",
            "1",
            "--no-progress",
            "--val-limit",
            "4",
            "--log-every",
            "1000",
            *extra,
        ]
    )


@pytest.fixture(scope="module")
def run_dir(data: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tiny_run")
    assert (
        _train(
            data,
            out,
            "--epochs",
            str(EPOCHS),
            "--image-interval",
            str(EPOCHS),
            "--export-mapper",
            str(out / "mapper_only.pt"),
        )
        == 0
    )
    return out


def _records(out: Path, kind: str = "train") -> list[dict]:
    lines = (out / "log.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


def test_a_few_hundred_steps_lower_the_objective(run_dir: Path) -> None:
    steps = _records(run_dir)
    assert [r["step"] for r in steps] == list(range(1, 32 * EPOCHS + 1))  # every step logged
    for r in steps:
        assert {"loss", "loss_id", "loss_clip", "loss_latent", "loss_embd", "lr"} <= set(r)
        assert np.isfinite(r["loss"])
    first = np.mean([r["loss"] for r in steps[:30]])
    last = np.mean([r["loss"] for r in steps[-30:]])
    assert last < 0.8 * first, (first, last)
    val = _records(run_dir, "val")
    assert len(val) == EPOCHS and val[-1]["loss"] < val[0]["loss"]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 32 * EPOCHS and summary["loss_last"] < summary["loss_first"]
    assert summary["steps_per_s"] > 0 and summary["background_loss"] is False
    log = (run_dir / "train.log").read_text()
    assert "background loss off" in log and "TinyArcFace" in log  # said in the log


def test_the_plot_is_an_svg_with_the_curves(run_dir: Path) -> None:
    root = ET.parse(run_dir / "loss.svg").getroot()
    assert root.tag.endswith("svg")
    polylines = [e for e in root.iter() if e.tag.endswith("polyline")]
    assert len(polylines) >= 2 and len(polylines[0].get("points").split()) == 32 * EPOCHS
    assert ET.parse(run_dir / "loss_terms.svg").getroot().tag.endswith("svg")
    grid = Image.open(run_dir / "images" / f"epoch_{EPOCHS:04d}.png")
    assert grid.size[0] > grid.size[1] > 0


def test_checkpoints_have_the_official_layout(run_dir: Path) -> None:
    from ffclip.engine.checkpoints.layouts import read_ffclip
    from ffclip.engine.checkpoints.safe_load import load_checkpoint

    ckpts = run_dir / "checkpoints"
    names = {p.name for p in ckpts.glob("*.pt")}
    assert {"best_model.pt", "last.pt", f"epoch_{EPOCHS}.pt", "epoch_2.pt"} <= names
    ckpt = load_checkpoint(ckpts / "best_model.pt")
    assert set(ckpt) == {"state_dict", "opts"}
    keys = list(ckpt["state_dict"])
    assert all(k.startswith(("module.att_mapper.att_mapper.", "module.generator.")) for k in keys)
    assert keys[0].startswith("module.generator.")  # EditModel's order
    opts = ckpt["opts"]
    assert opts["loss"]["id_lambda"] == 0.9 and opts["train"]["learning_rate"] == 5e-4
    json.dumps(opts)  # primitives only
    mapper, generator = read_ffclip(ckpts / "best_model.pt")
    tiny = build_tiny(TINY)  # the trained mapper and the frozen generator, in our classes' keys
    assert set(mapper) == set(tiny.mapper.state_dict()) and set(generator) == set(tiny.generator.state_dict())
    only = load_checkpoint(run_dir / "mapper_only.pt")
    assert all(k.startswith("module.att_mapper.") for k in only["state_dict"])
    assert read_ffclip(run_dir / "mapper_only.pt")[1] == {}
    for k, v in read_ffclip(run_dir / "mapper_only.pt")[0].items():
        assert torch.equal(v, mapper[k])


def test_resume_continues_where_it_stopped(run_dir: Path, data: Path, tmp_path: Path) -> None:
    import shutil

    out = tmp_path / "resumed"
    shutil.copytree(run_dir, out)
    assert _train(data, out, "--epochs", str(EPOCHS + 1), "--resume", "--image-interval", "0") == 0
    steps = [r["step"] for r in _records(out)]
    assert steps == list(range(1, 32 * (EPOCHS + 1) + 1))
    assert "resumed from" in (out / "train.log").read_text()


def test_max_steps_then_resume_mid_epoch(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "mid"
    assert _train(data, out, "--epochs", "2", "--max-steps", "5", "--image-interval", "0") == 0
    assert [r["step"] for r in _records(out)] == [1, 2, 3, 4, 5]
    assert _train(data, out, "--epochs", "2", "--max-steps", "9", "--resume", "--image-interval", "0") == 0
    assert [r["step"] for r in _records(out)] == list(range(1, 10))
    # the same order as an uninterrupted run: step 6..9 saw the samples it would have seen
    ref = tmp_path / "ref"
    assert _train(data, ref, "--epochs", "2", "--max-steps", "9", "--image-interval", "0") == 0
    a, b = _records(out), _records(ref)
    assert np.allclose([r["loss"] for r in a], [r["loss"] for r in b], rtol=1e-4, atol=1e-5)


class _Images(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.srcs: list[str] = []
        self.rows = 0

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag == "img":
            self.srcs.append(dict(attrs)["src"])
        if tag == "tr":
            self.rows += 1


def test_evaluate_writes_json_and_an_html_page(run_dir: Path, data: Path, tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# three prompts\nsmiling\nblond hair\nBald\n")
    report_dir = tmp_path / "report"
    code = main(
        [
            "evaluate",
            "--profile",
            "tiny",
            "--latents",
            str(data / "val.npy"),
            "--checkpoint",
            str(run_dir / "checkpoints" / "best_model.pt"),
            "--prompts",
            str(prompts),
            "-o",
            str(report_dir),
            "--limit",
            "3",
            "--grid-rows",
            "2",
            "--threads",
            "1",
        ]
    )
    assert code == 0
    report = json.loads((report_dir / "report.json").read_text())
    assert [p["prompt"] for p in report["prompts"]] == ["smiling", "blond hair", "Bald"]
    for p in report["prompts"]:
        assert -1 <= p["clip_score"] <= 1 and -1 <= p["identity"] <= 1
        assert p["mean_abs_delta_w"] > 0
        assert p["psnr_outside"] is None or p["psnr_outside"] > 0
        assert p["ssim_outside"] is None or -1 <= p["ssim_outside"] <= 1
    assert report["samples"] == 3 and report["untrained"] is True
    page = (report_dir / "index.html").read_text()
    parser = _Images()
    parser.feed(page)
    assert len(parser.srcs) == 2 * 4  # 2 rows: the original, then one column per prompt
    for src in parser.srcs:
        with Image.open(report_dir / src) as img:
            img.verify()
    assert "original" in page and "blond hair" in page and "untrained" in page


def test_evaluate_a_mapper_only_export_with_its_generator(run_dir: Path, data: Path, tmp_path: Path) -> None:
    code = main(
        [
            "evaluate",
            "--profile",
            "tiny",
            "--latents",
            str(data / "val.npy"),
            "--checkpoint",
            str(run_dir / "mapper_only.pt"),
            "-o",
            str(tmp_path / "r"),
            "--limit",
            "1",
            "--max-prompts",
            "2",
            "--grid-rows",
            "1",
            "--threads",
            "1",
        ]
    )
    assert code == 0  # tiny profile: the generator comes from the profile
    assert len(json.loads((tmp_path / "r" / "report.json").read_text())["prompts"]) == 2
