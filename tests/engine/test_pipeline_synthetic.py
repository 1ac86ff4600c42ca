"""Synthetic photos: several faces, faces cut by the border, selections, RGBA/grey/16 bit/EXIF."""

from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from ffclip.engine.imageio import load_image
from ffclip.engine.pipeline import PhotoEdit, Pipeline
from ffclip.plugin.protocol import EditParams, EngineError


def psnr(a: np.ndarray, b: np.ndarray, peak: float = 255.0) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(peak**2 / mse)


def coverage(mask: np.ndarray, box: tuple[int, int, int, int]) -> float:
    x, y, w, h = box
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, mask.shape[1]), min(y + h, mask.shape[0])
    return float((mask[y0:y1, x0:x1] >= 128).mean())


def check_passthrough(image: np.ndarray, result: PhotoEdit, peak: float = 255.0) -> None:
    """The must-show passthrough properties on any photo."""
    mask = result.mask
    assert result.image.shape == image.shape and result.image.dtype == image.dtype
    assert np.array_equal(result.image[mask == 0], image[mask == 0])
    assert psnr(result.image[mask > 0], image[mask > 0], peak) >= 38.0
    for face in result.faces:
        assert coverage(mask, face.box) >= 0.8, face.box


@pytest.fixture(scope="module")
def obama(photos_dir: Path) -> np.ndarray:
    img = load_image(photos_dir / "obama.jpg")
    return cv2.resize(img, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA)


@pytest.fixture(scope="module")
def two_faces(photos_dir: Path, obama: np.ndarray) -> np.ndarray:
    """Obama (left, face ~130 px) and Biden (right, face ~155 px) side by side."""
    biden = load_image(photos_dir / "biden.jpg")[:1137]
    biden = cv2.resize(biden, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA)
    h = min(obama.shape[0], biden.shape[0])
    return np.ascontiguousarray(np.concatenate([obama[:h], biden[:h]], axis=1))


@pytest.fixture(scope="module")
def pipeline() -> Pipeline:
    return Pipeline(None, editor="passthrough")


def test_several_faces(pipeline: Pipeline, two_faces: np.ndarray) -> None:
    result = pipeline.edit(EditParams.single("x", faces="all"), two_faces)
    assert len(result.faces) == 2
    check_passthrough(two_faces, result)
    left, right = sorted(result.faces, key=lambda f: f.box[0])
    assert left.box[0] < 455 <= right.box[0]

    largest = pipeline.edit(EditParams.single("x", faces="largest"), two_faces)
    assert [f.index for f in largest.faces] == [max(result.faces, key=lambda f: f.area).index]

    only = pipeline.edit(EditParams.single("x", faces=[left.index]), two_faces)
    assert [f.index for f in only.faces] == [left.index]
    x, y, w, h = right.box
    assert not only.mask[y : y + h, x : x + w].any(), "the other face must not change"
    check_passthrough(two_faces, only)

    with pytest.raises(EngineError) as info:
        pipeline.edit(EditParams.single("x", faces=[0, 5]), two_faces)
    assert info.value.code == "bad_request"


@pytest.mark.parametrize(
    "cut",
    [
        (slice(95, None), slice(None)),  # forehead cut off at the top (weak HOG score, CNN-confirmed)
        (slice(None), slice(None, 260)),  # cheek cut off on the right
        (slice(None, 170), slice(None)),  # chin cut off at the bottom
        (slice(85, None), slice(None, 290)),  # top-right corner
    ],
)
def test_faces_cut_by_the_border(pipeline: Pipeline, obama: np.ndarray, cut: tuple[slice, slice]) -> None:
    image = np.ascontiguousarray(obama[cut])
    result = pipeline.edit(EditParams.single("x"), image)
    assert len(result.faces) == 1
    check_passthrough(image, result)


def test_selection_mask(pipeline: Pipeline, two_faces: np.ndarray) -> None:
    height, width = two_faces.shape[:2]
    selection = np.zeros((height, width), np.uint8)
    selection[:, : width // 2 - 40] = 255  # the left face only, and not all of its crop
    result = pipeline.edit(EditParams.single("x"), two_faces, selection=selection)
    assert len(result.faces) == 1 and result.faces[0].box[0] < width // 2
    assert not result.mask[selection == 0].any()
    assert np.array_equal(result.image[selection == 0], two_faces[selection == 0])
    check_passthrough(two_faces, result)

    half = np.full((height, width), 128, np.uint8)
    soft = pipeline.edit(EditParams.single("x"), two_faces, selection=half)
    assert soft.mask.max() <= 129 and len(soft.faces) == 2

    with pytest.raises(EngineError) as info:
        pipeline.edit(EditParams.single("x"), two_faces, selection=np.zeros((height, width), np.uint8))
    assert info.value.code == "no_face"
    with pytest.raises(EngineError) as info:
        pipeline.edit(EditParams.single("x"), two_faces, selection=np.zeros((5, 5), np.uint8))
    assert info.value.code == "bad_request"


def test_rgba_keeps_alpha(pipeline: Pipeline, obama: np.ndarray) -> None:
    h, w = obama.shape[:2]
    alpha = np.tile(np.linspace(255, 60, w).astype(np.uint8), (h, 1))[..., None]
    image = np.concatenate([obama, alpha], axis=2)
    result = pipeline.edit(EditParams.single("x"), image)
    assert result.image.shape == image.shape
    assert np.array_equal(result.image[..., 3], image[..., 3])
    check_passthrough(image, result)
    assert result.rgba.shape[2] == 4


def test_greyscale(pipeline: Pipeline, obama: np.ndarray) -> None:
    grey = cv2.cvtColor(obama, cv2.COLOR_RGB2GRAY)[..., None]
    result = pipeline.edit(EditParams.single("x"), grey)
    assert result.image.shape == grey.shape
    check_passthrough(grey, result)
    r, g, b = (result.rgba[..., i] for i in range(3))
    assert np.array_equal(r, g) and np.array_equal(g, b)


def test_sixteen_bit(pipeline: Pipeline, obama: np.ndarray) -> None:
    rng = np.random.default_rng(3)
    image = (obama.astype(np.uint16) * 257 + rng.integers(0, 200, obama.shape)).astype(np.uint16)
    result = pipeline.edit(EditParams.single("x"), image)
    assert result.image.dtype == np.uint16
    check_passthrough(image, result, peak=65535.0)
    changed = result.mask == 255
    # the paste keeps 16-bit precision: the low byte is not truncated away
    assert len(np.unique(result.image[changed] % 257)) > 50


def test_exif_orientation(tmp_path: Path, pipeline: Pipeline, obama: np.ndarray) -> None:
    """A JPEG stored sideways with orientation 6 is edited upright, the face found where it is."""
    stored = np.ascontiguousarray(np.rot90(obama, k=1))  # what a sideways camera writes
    img = Image.fromarray(stored)
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=95, exif=exif)
    upright = load_image(buf.getvalue())
    assert upright.shape == obama.shape
    assert np.abs(upright.astype(float) - obama).mean() < 3.0
    faces = pipeline.detect(upright)
    reference = pipeline.detect(obama)
    assert len(faces) == 1 and np.abs(np.array(faces[0].box) - reference[0].box).max() <= 8
