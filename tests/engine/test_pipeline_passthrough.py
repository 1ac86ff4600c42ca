"""Must-show checks of issue 3: `edit --editor passthrough --mask-out M` on every shared photo.

M >= 128 on at least 80 % of every face box; pixels where M == 0 are bit-identical to the input;
where M > 0 the PSNR against the input is >= 38 dB (half a pixel of misalignment costs far more).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from ffclip.app.cli import main
from ffclip.engine.imageio import load_image
from ffclip.engine.pipeline import Pipeline
from ffclip.plugin.protocol import EditParams
from tests.support.metrics import psnr

PHOTO_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff")


def _photos(photos_dir: Path) -> list[Path]:
    return sorted(p for p in photos_dir.iterdir() if p.suffix.lower() in PHOTO_SUFFIXES)


def box_coverage(mask: np.ndarray, box: list[int] | tuple[int, ...]) -> float:
    x, y, w, h = box
    x0, y0 = max(x, 0), max(y, 0)
    x1, y1 = min(x + w, mask.shape[1]), min(y + h, mask.shape[0])
    return float((mask[y0:y1, x0:x1] >= 128).mean())


@pytest.fixture(scope="module")
def cli_runs(photos_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    out_dir = tmp_path_factory.mktemp("passthrough")
    runs = {}
    for photo in _photos(photos_dir):
        out, mask = out_dir / f"{photo.stem}.png", out_dir / f"{photo.stem}.mask.png"
        code = main(["edit", str(photo), "any prompt", "-o", str(out), "--editor", "passthrough",
                     "--mask-out", str(mask)])  # fmt: skip
        assert code == 0, photo.name
        runs[photo.name] = (out, mask)
    return runs


def test_passthrough_on_every_photo(photos_dir: Path, cli_runs: dict) -> None:
    pipeline = Pipeline(None, editor="passthrough")
    for name, (out_path, mask_path) in cli_runs.items():
        original = load_image(photos_dir / name)
        edited = load_image(out_path)
        mask = load_image(mask_path)[..., 0]
        assert edited.shape == original.shape and mask.shape == original.shape[:2]
        faces = pipeline.detect(original)
        assert len(faces) == 1, name  # one real face per photo (tests/data/photos/README.md)
        for face in faces:
            cov = box_coverage(mask, face.box)
            assert cov >= 0.8, f"{name} face {face.index}: mask >= 128 on only {cov:.0%} of the box"
        assert np.array_equal(edited[mask == 0], original[mask == 0]), f"{name}: pixels outside M changed"
        value = psnr(edited[mask > 0], original[mask > 0])
        assert value >= 38.0, f"{name}: PSNR {value:.2f} dB where M > 0"


def test_passthrough_has_no_subpixel_shift(photos_dir: Path, cli_runs: dict) -> None:
    """Phase correlation of the pasted area against the input finds no shift (< 0.05 px)."""
    for name, (out_path, mask_path) in cli_runs.items():
        original = load_image(photos_dir / name)[..., :3].astype(np.float64).mean(axis=2)
        edited = load_image(out_path)[..., :3].astype(np.float64).mean(axis=2)
        mask = load_image(mask_path)[..., 0]
        ys, xs = np.nonzero(mask == 255)
        y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        window = cv2.createHanningWindow((int(x1 - x0), int(y1 - y0)), cv2.CV_64F)
        (dx, dy), _ = cv2.phaseCorrelate(original[y0:y1, x0:x1], edited[y0:y1, x0:x1], window)
        assert abs(dx) < 0.05 and abs(dy) < 0.05, f"{name}: shifted by ({dx:.3f}, {dy:.3f}) px"


def test_passthrough_preview_and_rgba(photos_dir: Path) -> None:
    """The preview resolution still pastes back well; the RGBA region re-composites to the image."""
    image = load_image(photos_dir / "obama.jpg")
    pipeline = Pipeline(None, editor="passthrough")
    result = pipeline.edit(EditParams.single("x", preview=True), image)
    mask = result.mask
    assert psnr(result.image[mask > 0], image[mask > 0]) >= 30.0
    x, y, w, h = result.region
    ys, xs = np.nonzero(mask)
    assert (x, y, w, h) == (xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)
    assert result.rgba.shape == (h, w, 4) and result.rgba.dtype == np.uint8
    assert np.array_equal(result.rgba[..., 3], mask[y : y + h, x : x + w])
    a = result.rgba[..., 3:].astype(np.float64) / 255.0
    recomposed = image[y : y + h, x : x + w] * (1 - a) + result.rgba[..., :3] * a
    assert np.abs(recomposed - result.image[y : y + h, x : x + w]).max() <= 1.0
