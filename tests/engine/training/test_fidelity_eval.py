"""`ffclip-engine evaluate --fidelity-photos` (issue 29): ID similarity and reconstruction error for
both fidelities, on the tiny profile; ID similarity only with ArcFace weights, skipped cleanly
without them; a fidelity the engine cannot run is reported as skipped."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import pytest

from ffclip.app.cli import evaluate as evaluate_cli
from ffclip.engine.training import fidelity
from ffclip.engine.training.nets import build_tiny_arcface


def _run(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    evaluate_cli.add_arguments(parser)
    return evaluate_cli.run(parser.parse_args(list(argv)))


@pytest.fixture
def photos(photos_dir: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "photos"
    folder.mkdir()
    shutil.copy(photos_dir / "obama.jpg", folder / "obama.jpg")
    (folder / "notes.txt").write_text("not a photo")
    return folder


def test_without_arcface_the_id_similarity_is_skipped_with_the_reason(
    photos: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "empty-store"))
    out = tmp_path / "report"
    assert _run("--fidelity-photos", str(photos), "-o", str(out), "--profile", "tiny", "--device", "cpu") == 0
    report = json.loads((out / "fidelity.json").read_text())
    assert report["faces"] == 1 and "ArcFace weights not found" in report["arcface"]
    for name in ("standard", "high"):
        figures = report["fidelities"][name]
        assert figures["id_similarity"] is None and figures["mse"] > 0 and figures["psnr_db"] > 0
    assert report["fidelities"]["standard"]["mse"] != report["fidelities"]["high"]["mse"]  # each its own inversion
    printed = capsys.readouterr().out
    assert "standard ID similarity n/a, reconstruction MSE" in printed and "high     ID similarity n/a" in printed


def test_with_arcface_both_fidelities_get_an_id_similarity(
    photos: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fidelity, "find_arcface", lambda *a: (build_tiny_arcface(), "a stand-in ArcFace (untrained)"))
    out = tmp_path / "report"
    assert _run("--fidelity-photos", str(photos), "-o", str(out), "--profile", "tiny", "--device", "cpu") == 0
    report = json.loads((out / "fidelity.json").read_text())
    for name in ("standard", "high"):
        assert -1.0 <= report["fidelities"][name]["id_similarity"] <= 1.0
    assert report["photos"][0]["photo"] == "obama.jpg" and set(report["photos"][0]) == {"photo", "standard", "high"}


def test_a_fidelity_without_its_models_is_reported_as_skipped(photos_dir: Path) -> None:
    from ffclip.engine.inference import Engine

    engine = Engine.load("tiny", threads=0)
    engine.set_hyperstyle(lambda: None, lambda: ["hyperstyle", "hyperstyle-w-encoder"])
    faces = fidelity.aligned_faces([photos_dir / "obama.jpg"])
    report = fidelity.evaluate_fidelity(engine, faces, None, "none")
    assert report["fidelities"]["high"] == {"skipped": "missing hyperstyle, hyperstyle-w-encoder"}
    assert report["fidelities"]["standard"]["mse"] > 0


def test_latents_and_checkpoint_are_still_needed_for_the_mapper_evaluation(tmp_path: Path) -> None:
    assert _run("-o", str(tmp_path)) == 2
