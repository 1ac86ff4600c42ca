"""The alignment transform reproduces PIL's QUAD warp and e4e's shrink/crop bookkeeping exactly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ffclip.engine.face.align import AlignTransform, align_face, ffhq_quad


def _coordinate_images(width: int, height: int) -> tuple[Image.Image, Image.Image]:
    xs = np.tile(np.arange(width, dtype=np.float32), (height, 1))
    ys = np.tile(np.arange(height, dtype=np.float32)[:, None], (1, width))
    return Image.fromarray(xs, mode="F"), Image.fromarray(ys, mode="F")


def _quad_warp(img: Image.Image, quad: np.ndarray, size: int) -> np.ndarray:
    data = (quad + 0.5).flatten().tolist()
    return np.asarray(img.transform((size, size), Image.QUAD, data, Image.BILINEAR))


@pytest.mark.parametrize(
    "quad",
    [
        [[20.3, 10.2], [12.1, 70.7], [73.6, 78.2], [80.8, 17.7]],  # general quadrilateral
        [[30.0, 5.5], [10.5, 50.0], [55.0, 69.5], [74.5, 25.0]],  # square (e4e's case)
    ],
)
def test_forward_map_is_pils_quad_warp(quad: list) -> None:
    quad = np.array(quad)
    tr = AlignTransform(quad=quad, qsize=60.0)
    xs, ys = _coordinate_images(100, 90)
    for size in (16, 37):
        mapx, mapy = tr.sample_maps(size)
        np.testing.assert_allclose(_quad_warp(xs, quad, size), mapx, atol=2e-3)
        np.testing.assert_allclose(_quad_warp(ys, quad, size), mapy, atol=2e-3)


def test_inverse_round_trip() -> None:
    rng = np.random.default_rng(0)
    for quad in (
        np.array([[20.3, 10.2], [12.1, 70.7], [73.6, 78.2], [80.8, 17.7]]),
        np.array([[30.0, 5.5], [10.5, 50.0], [55.0, 69.5], [74.5, 25.0]]),
    ):
        tr = AlignTransform(quad=quad, qsize=60.0)
        u, v = rng.uniform(-0.2, 1.2, 500), rng.uniform(-0.2, 1.2, 500)
        uu, vv = tr.inverse(*tr.forward(u, v))
        assert np.abs(uu - u).max() < 1e-9 and np.abs(vv - v).max() < 1e-9


def test_crop_maps_invert_sample_maps() -> None:
    tr = AlignTransform(quad=np.array([[30.0, 5.5], [10.5, 50.0], [55.0, 69.5], [74.5, 25.0]]), qsize=60.0)
    size = 64
    mapx, mapy = tr.crop_maps((0, 0, 90, 80), size)
    # crop pixel coordinates of photo pixel p, sent forward again, land on p
    px, py = tr.forward((mapx.astype(np.float64) + 0.5) / size, (mapy.astype(np.float64) + 0.5) / size)
    gx, gy = np.meshgrid(np.arange(90), np.arange(80))
    assert np.abs(px - gx).max() < 1e-3 and np.abs(py - gy).max() < 1e-3


def test_shrink_path_transform(photos_dir: Path, parity_dir: Path) -> None:
    """A face larger than 1024 px takes e4e's integer shrink; the transform still maps exactly."""
    ref = json.loads((parity_dir / "align" / "faces.json").read_text())["photos"]["obama.jpg"]["faces"][0]
    photo = Image.open(photos_dir / "obama.jpg").convert("RGB")
    scale = 2.5
    big = photo.resize((int(photo.width * scale), int(photo.height * scale)), Image.BICUBIC)
    landmarks = (np.array(ref["landmarks68"]) + 0.5) * scale - 0.5
    quad, qsize = ffhq_quad(landmarks)
    assert qsize > 1024
    aligned, tr = align_face(np.asarray(big), quad, qsize, output_size=256)
    assert tr.shrink == 2 and aligned.shape == (256, 256, 3)

    # Replay e4e's shrink + crop + warp on coordinate images: the warp samples tr.forward exactly.
    rsize = (int(np.rint(big.width / tr.shrink)), int(np.rint(big.height / tr.shrink)))
    q = quad / tr.shrink - np.array(tr.crop[:2], dtype=np.float64)
    assert tr.pad == (0, 0, 0, 0)
    for axis, img in enumerate(_coordinate_images(big.width, big.height)):
        # the images hold photo coordinates, so the warp returns the photo coordinate it sampled
        photo_coord = _quad_warp(img.resize(rsize, Image.LANCZOS).crop(tr.crop), q, 256)
        expected = tr.sample_maps(256)[axis]
        assert np.abs(photo_coord - expected)[8:-8, 8:-8].max() < 0.05
