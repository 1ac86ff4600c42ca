"""Framing a car or a church: the selection's bounding box widened to the domain generator's frame.

There are no landmarks outside faces, so the crop is axis-aligned: the selection's bounding box (or
the whole image), grown so that the paste-back's feathered edge falls outside the selection, then
widened to the domain's frame (cars 4:3, churches 1:1) and shifted into the photo where it fits.
The generator draws a square: a church fills it, a car's 4:3 frame is its middle band with 1/8 of
padding above and below (the e4e/FFCLIP car data: 512×384 padded to 512²). That square is an
`AlignTransform` like a face's quad, so rendering, the exact inverse warp, the change mask,
feathering and colour matching are the face path's own; only the crop alpha differs: it fades at
the frame's edges (not the square's), and not at all along edges that lie on the photo's border,
where nothing beyond needs a seam.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import cv2
import numpy as np

from ffclip.engine.domains import Domain
from ffclip.engine.face.align import AlignTransform
from ffclip.engine.face.blend import BlendConfig, _smoothstep
from ffclip.plugin.protocol import BadRequest

EDGE_EPS = 1e-6  # a frame edge this close to the photo's border lies on it


@dataclass
class SceneCrop:
    """The framed car or church of one edit; shaped like a detected face for the pipeline and the
    wire (`index`, `box`, `quad`, `qsize`, `to_wire`)."""

    domain: str
    frame: tuple[float, float, float, float]  # x0, y0, x1, y1 in pixel-edge coordinates (may leave the photo)
    band: tuple[float, float]  # rows (v0, v1) of the generator's square that hold the frame
    open_edges: tuple[bool, bool, bool, bool]  # left, top, right, bottom lie on the photo's border
    transform: AlignTransform  # the generator's square <-> the photo
    box: tuple[int, int, int, int]  # the frame inside the photo (x, y, w, h)
    index: int = 0
    score: float = 1.0

    @property
    def quad(self) -> np.ndarray:
        return self.transform.quad

    @property
    def qsize(self) -> float:
        return self.transform.qsize

    @property
    def area(self) -> int:
        return self.box[2] * self.box[3]

    @property
    def cache_id(self) -> tuple:
        """The inversion cache's key part: the same photo framed the same way."""
        return ("scene", self.domain, tuple(round(v, 3) for v in self.frame))

    def to_wire(self) -> dict:
        return {
            "index": self.index,
            "box": [int(v) for v in self.box],
            "quad": np.asarray(self.quad, dtype=float).round(2).tolist(),
            "score": self.score,
        }

    def crop_alpha(self, config: BlendConfig) -> functools.partial:
        """The paste-back's crop alpha at (u, v) of the square (see `frame_alpha`)."""
        return functools.partial(frame_alpha, band=self.band, open_edges=self.open_edges, config=config)


def selection_box(selection: np.ndarray | None, width: int, height: int) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1): the bounding box of selection > 0, or the whole image without a selection."""
    if selection is None:
        return 0, 0, width, height
    rows = np.flatnonzero(selection.any(axis=1))
    cols = np.flatnonzero(selection.any(axis=0))
    if len(rows) == 0:
        raise BadRequest("the selection is empty: select the car or church to edit, or nothing for the whole image")
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def _widen(a0: float, a1: float, length: float, limit: int) -> tuple[float, float]:
    """[a0, a1] widened to `length` around its centre, then shifted inside [0, limit] when it fits."""
    centre = (a0 + a1) / 2.0
    a0, a1 = centre - length / 2.0, centre + length / 2.0
    if length <= limit:
        shift = max(0.0, -a0) - max(0.0, a1 - limit)
        a0, a1 = a0 + shift, a1 + shift
    return a0, a1


def frame_box(
    box: tuple[int, int, int, int], width: int, height: int, aspect: float, config: BlendConfig
) -> tuple[float, float, float, float]:
    """The selection box grown by the crop alpha's ramp (so that the fade lies outside it), clipped
    to the photo, then widened to `aspect` (width / height)."""
    x0, y0, x1, y1 = (float(v) for v in box)
    ramp = config.crop_margin + config.crop_feather  # of the frame's extent, per side
    grow = ramp / (1.0 - 2.0 * ramp)
    w, h = x1 - x0, y1 - y0
    x0, x1 = max(x0 - grow * w, 0.0), min(x1 + grow * w, float(width))
    y0, y1 = max(y0 - grow * h, 0.0), min(y1 + grow * h, float(height))
    w, h = x1 - x0, y1 - y0
    if w < aspect * h:
        x0, x1 = _widen(x0, x1, aspect * h, width)
    else:
        y0, y1 = _widen(y0, y1, w / aspect, height)
    return x0, y0, x1, y1


def frame_scene(
    selection: np.ndarray | None, width: int, height: int, domain: Domain, config: BlendConfig
) -> SceneCrop:
    """Frame the selection (or the whole image) for `domain`'s generator."""
    x0, y0, x1, y1 = frame_box(selection_box(selection, width, height), width, height, domain.frame_aspect, config)
    side = x1 - x0  # the square's side: the frame's width
    top = y0 - (side - (y1 - y0)) / 2.0  # the frame is the square's middle band
    left = x0
    # pixel-edge coordinates -> index coordinates (pixel centres), AlignTransform's convention
    nw = (left - 0.5, top - 0.5)
    quad = np.array([nw, (nw[0], nw[1] + side), (nw[0] + side, nw[1] + side), (nw[0] + side, nw[1])])
    transform = AlignTransform(quad=quad, qsize=float(side))
    open_edges = (x0 <= EDGE_EPS, y0 <= EDGE_EPS, x1 >= width - EDGE_EPS, y1 >= height - EDGE_EPS)
    bx0, by0 = max(int(np.floor(x0)), 0), max(int(np.floor(y0)), 0)
    bx1, by1 = min(int(np.ceil(x1)), width), min(int(np.ceil(y1)), height)
    box = (bx0, by0, bx1 - bx0, by1 - by0)
    return SceneCrop(domain.name, (x0, y0, x1, y1), domain.band, open_edges, transform, box)


def frame_alpha(
    u: np.ndarray,
    v: np.ndarray,
    band: tuple[float, float],
    open_edges: tuple[bool, bool, bool, bool],
    config: BlendConfig,
) -> np.ndarray:
    """The crop alpha of a scene at (u, v) of the generator's square: 0 outside the frame, fading in
    over the same margin and feather as a face's crop (as fractions of the frame's width and height),
    except along edges on the photo's border."""
    v0, v1 = band
    fv = (v - v0) / (v1 - v0)  # frame-normalised rows
    far = np.full(np.shape(u), np.inf)
    distances = [u, fv, 1.0 - u, 1.0 - fv]
    d = far
    for distance, is_open in zip(distances, open_edges, strict=True):
        if is_open:  # no seam here, but nothing outside the frame either (the padding of a car's square)
            distance = np.where(distance < 0.0, -1.0, np.inf)
        d = np.minimum(d, distance)
    return _smoothstep((d - config.crop_margin) / config.crop_feather).astype(np.float32)


def render_frame(rgb: np.ndarray, crop: SceneCrop, width: int, height: int) -> np.ndarray:
    """The frame as e4e's input: (height, width, 3) uint8, area-filtered when shrinking, the photo
    mirrored where the frame leaves it."""
    v0, v1 = crop.band
    u = (np.arange(width, dtype=np.float64) + 0.5) / width
    v = v0 + (np.arange(height, dtype=np.float64) + 0.5) / height * (v1 - v0)
    px, py = crop.transform.forward(*np.meshgrid(u, v))
    mapx, mapy = px.astype(np.float32), py.astype(np.float32)
    work = rgb.astype(np.float32)
    factor = (crop.frame[2] - crop.frame[0]) / width
    if factor > 1.5:  # minified: sample a pre-shrunk photo, as the face crops
        small = cv2.resize(work, None, fx=1.0 / factor, fy=1.0 / factor, interpolation=cv2.INTER_AREA)
        sx, sy = small.shape[1] / work.shape[1], small.shape[0] / work.shape[0]
        mapx, mapy = (mapx + 0.5) * sx - 0.5, (mapy + 0.5) * sy - 0.5
        work = small
    out = cv2.remap(work, mapx, mapy, cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT_101)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)
