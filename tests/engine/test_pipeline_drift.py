"""The change mask's dead zone and thresholds through the pipeline: a fake engine whose edit drifts
slightly everywhere (tests/engine/face/test_blend_change_mask.py has the properties of `change_mask` itself).

Below `change_low` (6 of 255 levels) the drift must blend in at 0 %, so the photo keeps its own pixels;
between the thresholds the blend follows the ramp; from `change_high` on it is full.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from ffclip.engine.face.align import AlignTransform
from ffclip.engine.imageio import load_image
from ffclip.engine.pipeline import Pipeline
from ffclip.plugin.protocol import EditParams
from tests.support.edit_engine import ImageSpaceEngine


class DriftingEngine(ImageSpaceEngine):
    """The fake engine's edit plus a uniform drift of `drift` levels (0..255) over the whole crop;
    `band` adds the fake "hair" edit (the top 30 % of the crop darkened)."""

    def __init__(self, drift: float, band: bool) -> None:
        super().__init__()
        self.drift, self.band = drift, band

    def delta(self, w: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        edit = super().delta(w, e) if self.band else torch.zeros_like(w)
        return edit - self.drift / 127.5  # darker: clear of the 255 clamp of bright skin


@pytest.fixture(scope="module")
def photo(photos_dir: Path) -> np.ndarray:
    img = load_image(photos_dir / "obama.jpg")
    return cv2.resize(img, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA)


def _face_centre_mask(result) -> float:
    face = result.faces[0]
    px, py = AlignTransform(quad=face.quad, qsize=face.qsize).forward(np.array([0.5]), np.array([0.55]))
    return float(result.mask[int(round(py[0])), int(round(px[0]))])


def test_a_drift_under_the_low_threshold_blends_nothing(photo: np.ndarray) -> None:
    """4 levels everywhere (a quarter of the way to change_high): 0 %, the photo is returned as is."""
    result = Pipeline(DriftingEngine(4.0, band=False), editor="model").edit(EditParams.single("drift"), photo)
    assert int(result.mask.max()) == 0
    assert np.array_equal(result.image, photo)
    assert result.region == (0, 0, 0, 0)


def test_a_drift_does_not_carry_an_edit_beyond_its_region(photo: np.ndarray) -> None:
    result = Pipeline(DriftingEngine(4.0, band=True), editor="model").edit(EditParams.single("hair"), photo)
    face = result.faces[0]
    x, y, w, h = face.box
    mouth = result.mask[y + int(0.75 * h) : y + h, x + w // 3 : x + 2 * w // 3]
    assert int(mouth.max()) == 0
    assert int(result.mask.max()) == 255  # the band itself is pasted


@pytest.mark.parametrize(("drift", "expected"), [(5.0, 0), (11.0, 128), (16.0, 255), (24.0, 255)])
def test_the_blend_follows_the_thresholds(photo: np.ndarray, drift: float, expected: int) -> None:
    """Mid-face (crop alpha 1) the blend is the ramp: 0 below 6 levels, half at 11, full from 16."""
    result = Pipeline(DriftingEngine(drift, band=False), editor="model").edit(EditParams.single("drift"), photo)
    assert abs(_face_centre_mask(result) - expected) <= 3, _face_centre_mask(result)
