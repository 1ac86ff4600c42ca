"""Issue 6: `invert-folder` turns every face of every photo into W+ codes; faceless and unreadable
files are reported, not fatal; an interrupted run resumes, and a re-run only inverts new photos."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ffclip.app.cli import main
from ffclip.engine.face.detect import FaceDetector


@pytest.fixture()
def photos(photos_dir: Path, tmp_path: Path) -> Path:
    d = tmp_path / "photos"
    (d / "sub").mkdir(parents=True)
    shutil.copy(photos_dir / "astronaut.png", d / "astronaut.png")
    shutil.copy(photos_dir / "obama_partial_face.jpg", d / "sub" / "obama_partial_face.jpg")
    (d / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a JPEG")
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((120, 160)) * 255).astype(np.uint8)).save(d / "noise.png")  # grey, no face
    (d / "notes.txt").write_text("not a photo")
    return d


def _invert(folder: Path, out: Path, *extra: str) -> int:
    return main(
        ["invert-folder", str(folder), "-o", str(out), "--profile", "tiny", "--threads", "1", "--no-progress", *extra]
    )


@pytest.mark.process
def test_every_face_inverted_and_bad_files_reported(photos: Path, tmp_path: Path) -> None:
    out = tmp_path / "latents.npy"
    assert _invert(photos, out, "--report", str(tmp_path / "report.json")) == 0
    codes = np.load(out)
    assert codes.dtype == np.float32 and codes.shape == (2, 14, 64)  # tiny: 14 W+ layers of 64
    assert np.isfinite(codes).all()
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["photos"] == 4 and report["faces"] == 2 and report["photos_with_faces"] == 2
    assert report["no_face"] == ["noise.png"]
    assert [u["file"] for u in report["unreadable"]] == ["broken.jpg"]
    assert report["other_files_ignored"] == 1
    index = json.loads((tmp_path / "latents.index.json").read_text())
    assert [(f["row"], f["file"]) for f in index["faces"]] == [(0, "astronaut.png"), (1, "sub/obama_partial_face.jpg")]
    assert not (tmp_path / "latents.npy.partial").exists()


@pytest.mark.process
def test_interrupted_run_resumes_and_new_photos_are_added(photos: Path, tmp_path: Path, monkeypatch) -> None:
    reference = tmp_path / "reference.npy"
    assert _invert(photos, reference) == 0

    out = tmp_path / "latents.npy"
    calls = {"n": 0}
    original = FaceDetector.detect

    def flaky(self, rgb):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return original(self, rgb)

    monkeypatch.setattr(FaceDetector, "detect", flaky)
    # astronaut.png, broken.jpg (unreadable: no detection) and noise.png done; sub/... interrupted
    # --workers 0: detection in this process, where the patched detector is
    assert _invert(photos, out, "--flush-every", "1", "--workers", "0") == 130
    assert (tmp_path / "latents.npy.partial" / "rank00000" / "state.json").exists() and not out.exists()
    monkeypatch.setattr(FaceDetector, "detect", original)

    assert _invert(photos, out, "--report", str(tmp_path / "r1.json")) == 0
    r1 = json.loads((tmp_path / "r1.json").read_text())
    assert r1["resumed_from"] == "partial" and r1["reused"] == 3 and r1["inverted_this_run"] == 1
    np.testing.assert_allclose(np.load(out), np.load(reference), rtol=1e-5, atol=1e-6)

    shutil.copy(photos / "sub" / "obama_partial_face.jpg", photos / "again.jpg")
    assert _invert(photos, out, "--report", str(tmp_path / "r2.json")) == 0
    r2 = json.loads((tmp_path / "r2.json").read_text())
    assert r2["resumed_from"] == "output" and r2["inverted_this_run"] == 1 and r2["faces"] == 3
    codes = np.load(out)
    index = json.loads((tmp_path / "latents.index.json").read_text())
    rows = {f["file"]: f["row"] for f in index["faces"]}
    np.testing.assert_allclose(codes[rows["again.jpg"]], codes[rows["sub/obama_partial_face.jpg"]], atol=1e-5)


def test_an_empty_folder_is_an_error_not_a_crash(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    assert _invert(tmp_path / "empty", tmp_path / "x.npy") == 1
    assert np.load(tmp_path / "x.npy").shape == (0, 14, 64)
