"""Paste-back: warp a synthesized face into the photo and blend it invisibly.

The blend alpha of one face is the soft crop region (the aligned quad, feathered inwards)
times the change mask (where the edit G(w_hat) differs from the reconstruction G(w), dilated and
feathered), so pixels the edit did not touch keep the photo's own detail. All widths are
fractions of the crop, hence proportional to the face size. The warped face is colour-corrected
by a smooth field that matches its low frequencies to the photo's on the seam ring.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from ffclip.engine.face.align import AlignTransform


@dataclass
class BlendConfig:
    crop_margin: float = 0.01  # (u, v) distance from the crop edge where the crop alpha starts
    crop_feather: float = 0.08  # ramp width of the crop alpha, fraction of the crop side
    change_low: float = 6.0  # mean |G(w_hat) - G(w)| in 0..255 levels: below = unchanged
    change_high: float = 16.0  # at or above = fully changed
    change_smooth: float = 1 / 256  # blur before thresholding, fraction of the crop side
    change_dilate: float = 0.03  # dilation radius, fraction of the crop side
    change_feather: float = 0.02  # Gaussian feather sigma, fraction of the crop side
    colour_sigma: float = 0.08  # low-pass sigma of the seam colour correction, fraction of qsize
    colour_limit: float = 48.0  # largest colour correction in 0..255 levels
    oversample: float = 2.0  # warp back from a crop pre-shrunk to this many pixels per photo pixel


def _smoothstep(t: np.ndarray) -> np.ndarray:
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _gaussian(img: np.ndarray, sigma: float) -> np.ndarray:
    if sigma <= 0.3:
        return img
    radius = max(int(3.0 * sigma + 0.5), 1)
    # by keyword: the 4th positional parameter is `dst`, so positionally sigmaY became BORDER_REFLECT (2)
    size = (2 * radius + 1, 2 * radius + 1)
    return cv2.GaussianBlur(img, size, sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_REFLECT)


def crop_alpha(u: np.ndarray, v: np.ndarray, config: BlendConfig) -> np.ndarray:
    """Soft crop region at normalised crop coordinates: 0 outside, 1 well inside."""
    d = np.minimum(np.minimum(u, 1.0 - u), np.minimum(v, 1.0 - v))
    return _smoothstep((d - config.crop_margin) / config.crop_feather).astype(np.float32)


def change_mask(edit: np.ndarray, recon: np.ndarray, config: BlendConfig | None = None) -> np.ndarray:
    """(S, S) float32 in [0, 1]: where the edit differs from the reconstruction, dilated, feathered.

    edit, recon: (S, S, 3) float arrays in 0..255.
    """
    config = config or BlendConfig()
    size = edit.shape[0]
    diff = np.abs(edit.astype(np.float32) - recon.astype(np.float32)).mean(axis=2)
    diff = _gaussian(diff, config.change_smooth * size)
    mask = np.clip((diff - config.change_low) / (config.change_high - config.change_low), 0.0, 1.0)
    radius = int(round(config.change_dilate * size))
    if radius > 0:
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
        mask = cv2.dilate(mask, kernel)
    return np.clip(_gaussian(mask, config.change_feather * size), 0.0, 1.0).astype(np.float32)


@dataclass
class FacePaste:
    """One face warped into photo coordinates, restricted to `region` (x, y, w, h)."""

    region: tuple[int, int, int, int]
    alpha: np.ndarray  # (h, w) float32 in [0, 1]
    content: np.ndarray  # (h, w, 3) float32 in 0..255
    reference: np.ndarray | None = None  # the warped reconstruction G(w), for colour matching


def _prefilter(img: np.ndarray, size: int) -> np.ndarray:
    if img.shape[0] == size:
        return img
    interp = cv2.INTER_AREA if size < img.shape[0] else cv2.INTER_CUBIC
    return cv2.resize(img, (size, size), interpolation=interp)


def warp_to_photo(
    transform: AlignTransform,
    content: np.ndarray,
    change: np.ndarray | None,
    photo_size: tuple[int, int],
    config: BlendConfig | None = None,
    recon: np.ndarray | None = None,
    crop: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
) -> FacePaste | None:
    """Resample an S x S crop (any S) back into the photo with the exact inverse warp.

    content, recon: (S, S, 3) float32 0..255 (the edit and the reconstruction G(w));
    change: (S, S) float32 0..1 or None (all changed); photo_size: (width, height);
    crop: the crop alpha at (u, v) (default: a face's, `crop_alpha`; a car's or church's frame
    brings its own, engine/scene.py). None when the crop does not reach into the photo.
    """
    config = config or BlendConfig()
    width, height = photo_size
    region = transform.photo_region(width, height)
    if region[2] <= 0 or region[3] <= 0:
        return None
    # A 1024^2 face over a ~200 px photo face would alias; shrink it (area filter) first.
    size = content.shape[0]
    target = int(np.ceil(transform.qsize * config.oversample))
    if target < size:
        size = max(target, 8)
    mapx, mapy = transform.crop_maps(region, size)
    u, v = (mapx + 0.5) / size, (mapy + 0.5) / size
    alpha = crop_alpha(u, v, config) if crop is None else crop(u, v)

    def warp(img: np.ndarray, interp: int) -> np.ndarray:
        src = img.astype(np.float32)
        if src.shape[0] > size:  # minified: area-filter first
            src = _prefilter(src, size)
        mx, my = mapx, mapy
        if src.shape[0] != size:  # a smaller image (the 256² change mask, the reference): sampled in place
            f = src.shape[0] / size
            mx, my = (mapx + 0.5) * f - 0.5, (mapy + 0.5) * f - 0.5
        return cv2.remap(np.ascontiguousarray(src), mx, my, interp, borderMode=cv2.BORDER_REPLICATE)

    warped = warp(content, cv2.INTER_CUBIC).reshape(alpha.shape + (3,))
    if change is not None:
        alpha *= np.clip(warp(change, cv2.INTER_LINEAR), 0.0, 1.0)
    reference = None if recon is None else warp(recon, cv2.INTER_LINEAR).reshape(alpha.shape + (3,))
    return FacePaste(region, alpha, warped, reference)


def match_colours(paste: FacePaste, photo: np.ndarray, qsize: float, config: BlendConfig | None = None) -> None:
    """Shift the pasted face's low frequencies to the photo's on the seam ring (in place).

    The offset photo - reconstruction (the GAN's colour error, not the edit: an edit that
    reaches the crop edge must survive) is averaged with weight 4a(1 - a) (the seam) by
    normalised convolution at a reduced resolution; far from the seam it falls back to the
    ring's mean. photo: the photo's (h, w, 3) float32 0..255 pixels under paste.region.
    """
    config = config or BlendConfig()
    _, _, w, h = paste.region
    ring = 4.0 * paste.alpha * (1.0 - paste.alpha)
    if float(ring.sum()) < 1.0 or config.colour_limit <= 0:
        return
    reference = paste.content if paste.reference is None else paste.reference
    diff = photo - reference
    step = max(qsize / 96.0, 1.0)  # work at ~96 px per face side
    small = (max(int(round(w / step)), 1), max(int(round(h / step)), 1))
    ring_s = cv2.resize(ring, small, interpolation=cv2.INTER_AREA)
    wd_s = cv2.resize(diff * ring[..., None], small, interpolation=cv2.INTER_AREA).reshape(small[1], small[0], 3)
    sigma = config.colour_sigma * qsize / step
    ring_b = _gaussian(ring_s, sigma)
    wd_b = _gaussian(wd_s, sigma).reshape(small[1], small[0], 3)
    mean = wd_s.reshape(-1, 3).sum(axis=0) / max(float(ring_s.sum()), 1e-6)
    lam = 0.05 * float(ring_b.max())
    corr = (wd_b + lam * mean) / (ring_b[..., None] + lam)
    corr = np.clip(corr, -config.colour_limit, config.colour_limit).astype(np.float32)
    corr = cv2.resize(corr, (w, h), interpolation=cv2.INTER_LINEAR).reshape(h, w, 3)
    paste.content += corr


class Compositor:
    """Accumulates face pastes (premultiplied) over the union of their regions."""

    def __init__(self, regions: list[tuple[int, int, int, int]]) -> None:
        regions = [r for r in regions if r[2] > 0 and r[3] > 0]
        if regions:
            x0 = min(r[0] for r in regions)
            y0 = min(r[1] for r in regions)
            x1 = max(r[0] + r[2] for r in regions)
            y1 = max(r[1] + r[3] for r in regions)
        else:
            x0 = y0 = x1 = y1 = 0
        self.box = (x0, y0, x1 - x0, y1 - y0)
        self.alpha = np.zeros((y1 - y0, x1 - x0), np.float32)
        self.premul = np.zeros((y1 - y0, x1 - x0, 3), np.float32)

    def add(self, paste: FacePaste, weight: np.ndarray | None = None) -> None:
        """Paste over what is there (faces later in the list win where they overlap)."""
        x, y, w, h = paste.region
        sx, sy = x - self.box[0], y - self.box[1]
        a = paste.alpha if weight is None else paste.alpha * weight
        acc = self.alpha[sy : sy + h, sx : sx + w]
        pre = self.premul[sy : sy + h, sx : sx + w]
        pre *= (1.0 - a)[..., None]
        pre += paste.content * a[..., None]
        acc *= 1.0 - a
        acc += a

    def layer(self, window: tuple[slice, slice] = (slice(None), slice(None))) -> np.ndarray:
        """Un-premultiplied content (of a window of the box): what compositing over the photo with
        `alpha` must show."""
        return self.premul[window] / np.maximum(self.alpha[window], 1e-6)[..., None]
