"""FFHQ / e4e face alignment, with the geometric transform kept so that it can be inverted.

`align_face` follows e4e's `align_face` (FFHQ's dataset script) step by step: oriented quad from
the 68 landmarks, integer shrink for large faces, crop, reflect-padding with blur for faces near
the border, then PIL's QUAD warp. PIL's QUAD warp samples output pixel (x, y) of a T x T image at
photo pixel-index coordinates Q((x + 0.5) / T, (y + 0.5) / T), where Q is the bilinear map of the
quad corners (NW, SW, SE, NE) -- e4e adds 0.5 to the quad and PIL's bilinear filter subtracts it
again. Shrink, crop and pad are per-axis affine, so the whole chain from normalised crop
coordinates (u, v) in [0, 1]^2 to photo pixel indices is again a bilinear map with four corners:
`AlignTransform.quad`. It does not depend on the resolution the crop is rendered at, so a
synthesized 1024^2 face, a 256^2 preview or a change mask all go back through the same map.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

UNIT_CORNERS = np.array([[0.0, 0.0], [0.0, 1.0], [1.0, 1.0], [1.0, 0.0]])  # NW, SW, SE, NE in (u, v)


def ffhq_quad(landmarks: np.ndarray) -> tuple[np.ndarray, float]:
    """The FFHQ oriented crop quad (NW, SW, SE, NE) and its side length, from 68 landmarks."""
    lm = np.asarray(landmarks, dtype=np.float64)
    eye_left = lm[36:42].mean(axis=0)
    eye_right = lm[42:48].mean(axis=0)
    mouth_outer = lm[48:60]
    eye_avg = (eye_left + eye_right) * 0.5
    eye_to_eye = eye_right - eye_left
    mouth_avg = (mouth_outer[0] + mouth_outer[6]) * 0.5
    eye_to_mouth = mouth_avg - eye_avg

    x = eye_to_eye - np.flipud(eye_to_mouth) * [-1, 1]
    x /= np.hypot(*x)
    x *= max(np.hypot(*eye_to_eye) * 2.0, np.hypot(*eye_to_mouth) * 1.8)
    y = np.flipud(x) * [-1, 1]
    c = eye_avg + eye_to_mouth * 0.1
    quad = np.stack([c - x - y, c - x + y, c + x + y, c + x - y])
    return quad, float(np.hypot(*x) * 2)


@dataclass
class AlignTransform:
    """Map between normalised crop coordinates (u, v) in [0, 1]^2 and photo pixel indices.

    Crop pixel (x, y) of an S x S rendering has its centre at u = (x + 0.5) / S; photo pixel
    (i, j) has its centre at index coordinates (i, j), the convention dlib's landmarks use.
    """

    quad: np.ndarray  # (4, 2) photo index coordinates of the (u, v) corners NW, SW, SE, NE
    qsize: float  # quad side in photo pixels
    shrink: int = 1  # e4e's bookkeeping, for debugging
    crop: tuple[int, int, int, int] = (0, 0, 0, 0)
    pad: tuple[int, int, int, int] = (0, 0, 0, 0)

    def _coeffs(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        nw, sw, se, ne = self.quad
        return nw, ne - nw, sw - nw, se - sw - ne + nw

    def forward(self, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(u, v) -> photo pixel-index coordinates."""
        a, bu, bv, buv = self._coeffs()
        px = a[0] + bu[0] * u + bv[0] * v + buv[0] * u * v
        py = a[1] + bu[1] * u + bv[1] * v + buv[1] * u * v
        return px, py

    def inverse(self, px: np.ndarray, py: np.ndarray, iterations: int = 4) -> tuple[np.ndarray, np.ndarray]:
        """Photo pixel-index coordinates -> (u, v).

        e4e's quad is a square (the bilinear term vanishes), so the affine inverse is already
        exact; a few Newton steps handle a general quad (e.g. after anisotropic shrink rounding).
        """
        a, bu, bv, buv = self._coeffs()
        jac = np.array([[bu[0], bv[0]], [bu[1], bv[1]]])
        inv = np.linalg.inv(jac)
        dx, dy = px - a[0], py - a[1]
        u = inv[0, 0] * dx + inv[0, 1] * dy
        v = inv[1, 0] * dx + inv[1, 1] * dy
        if np.abs(buv).max() < 1e-9 * max(self.qsize, 1.0):
            return u, v
        for _ in range(iterations):
            fx, fy = self.forward(u, v)
            rx, ry = fx - px, fy - py
            j00, j01 = bu[0] + buv[0] * v, bv[0] + buv[0] * u
            j10, j11 = bu[1] + buv[1] * v, bv[1] + buv[1] * u
            det = j00 * j11 - j01 * j10
            u = u - (j11 * rx - j01 * ry) / det
            v = v - (-j10 * rx + j00 * ry) / det
        return u, v

    def sample_maps(self, size: int) -> tuple[np.ndarray, np.ndarray]:
        """cv2.remap maps that render the photo into an S x S crop."""
        t = (np.arange(size, dtype=np.float64) + 0.5) / size
        u, v = np.meshgrid(t, t)
        px, py = self.forward(u, v)
        return px.astype(np.float32), py.astype(np.float32)

    def crop_maps(self, region: tuple[int, int, int, int], size: int) -> tuple[np.ndarray, np.ndarray]:
        """For each photo pixel of region (x, y, w, h): its index coordinates in an S x S crop."""
        x, y, w, h = region
        px, py = np.meshgrid(np.arange(x, x + w, dtype=np.float64), np.arange(y, y + h, dtype=np.float64))
        u, v = self.inverse(px, py)
        return (u * size - 0.5).astype(np.float32), (v * size - 0.5).astype(np.float32)

    def photo_region(self, width: int, height: int, margin: float = 2.0) -> tuple[int, int, int, int]:
        """Bounding box (x, y, w, h) of the quad inside the photo, widened by `margin` pixels."""
        x0 = max(int(np.floor(self.quad[:, 0].min() - margin)), 0)
        y0 = max(int(np.floor(self.quad[:, 1].min() - margin)), 0)
        x1 = min(int(np.ceil(self.quad[:, 0].max() + margin)) + 1, width)
        y1 = min(int(np.ceil(self.quad[:, 1].max() + margin)) + 1, height)
        return x0, y0, max(x1 - x0, 0), max(y1 - y0, 0)

    def to_json(self) -> dict:
        return {
            "quad": self.quad.tolist(),
            "qsize": self.qsize,
            "shrink": self.shrink,
            "crop": list(self.crop),
            "pad": list(self.pad),
        }


def _gaussian_blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """scipy.ndimage.gaussian_filter(img, [s, s, 0]) (truncate 4, mirror 'reflect' border) via cv2."""
    radius = int(4.0 * sigma + 0.5)
    if radius < 1:
        return img.copy()
    # An explicit kernel: cv2.GaussianBlur approximates large kernels and misses scipy by ~20 levels.
    t = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (t / sigma) ** 2)
    kernel = (kernel / kernel.sum()).astype(np.float32)
    return cv2.sepFilter2D(img, -1, kernel, kernel, borderType=cv2.BORDER_REFLECT)


def _pad_and_blur(img: np.ndarray, pad: tuple[int, int, int, int], qsize: float) -> np.ndarray:
    """e4e's reflect padding, blurred and faded to the median colour towards the padded edges."""
    left, top, right, bottom = (int(p) for p in pad)
    arr = np.pad(np.float32(img), ((top, bottom), (left, right), (0, 0)), "reflect")
    h, w, _ = arr.shape
    y, x, _ = np.ogrid[:h, :w, :1]
    left, top, right, bottom = (max(p, 1) for p in pad)  # only tiny quads get a zero pad
    mask = np.maximum(
        1.0 - np.minimum(np.float32(x) / left, np.float32(w - 1 - x) / right),
        1.0 - np.minimum(np.float32(y) / top, np.float32(h - 1 - y) / bottom),
    )
    blurred = _gaussian_blur(arr, qsize * 0.02)
    arr += (blurred - arr) * np.clip(mask * 3.0 + 1.0, 0.0, 1.0)
    arr += (np.median(arr, axis=(0, 1)) - arr) * np.clip(mask, 0.0, 1.0)
    return np.uint8(np.clip(np.rint(arr), 0, 255))


def align_face(
    rgb: np.ndarray,
    quad: np.ndarray,
    qsize: float,
    output_size: int = 256,
    transform_size: int | None = None,
    enable_padding: bool = True,
) -> tuple[np.ndarray, AlignTransform]:
    """e4e's alignment of one face of an (H, W, 3) uint8 RGB photo.

    Returns the aligned (output_size, output_size, 3) uint8 crop and the transform that maps it
    back into the photo.
    """
    transform_size = transform_size or output_size
    img = Image.fromarray(np.ascontiguousarray(rgb), "RGB")
    width, height = img.size
    quad = np.array(quad, dtype=np.float64)

    # Shrink: PIL's resize maps new pixel centres to old edge coordinates (i + 0.5) * scale.
    shrink = int(np.floor(qsize / output_size * 0.5))
    scale = np.array([1.0, 1.0])
    if shrink > 1:
        rsize = (int(np.rint(float(width) / shrink)), int(np.rint(float(height) / shrink)))
        img = img.resize(rsize, Image.LANCZOS)
        scale = np.array([width / rsize[0], height / rsize[1]])
        quad /= shrink
        qsize /= shrink
    photo_quad = (quad + 0.5) * scale - 0.5 if shrink > 1 else quad.copy()

    # Crop.
    border = max(int(np.rint(qsize * 0.1)), 3)
    crop = (
        int(np.floor(min(quad[:, 0]))),
        int(np.floor(min(quad[:, 1]))),
        int(np.ceil(max(quad[:, 0]))),
        int(np.ceil(max(quad[:, 1]))),
    )
    crop = (
        max(crop[0] - border, 0),
        max(crop[1] - border, 0),
        min(crop[2] + border, img.size[0]),
        min(crop[3] + border, img.size[1]),
    )
    if crop[2] - crop[0] < img.size[0] or crop[3] - crop[1] < img.size[1]:
        img = img.crop(crop)
        quad -= crop[0:2]

    # Pad (reflect + blur) when the quad leaves the photo.
    pad = (
        int(np.floor(min(quad[:, 0]))),
        int(np.floor(min(quad[:, 1]))),
        int(np.ceil(max(quad[:, 0]))),
        int(np.ceil(max(quad[:, 1]))),
    )
    pad = (
        max(-pad[0] + border, 0),
        max(-pad[1] + border, 0),
        max(pad[2] - img.size[0] + border, 0),
        max(pad[3] - img.size[1] + border, 0),
    )
    if enable_padding and max(pad) > border - 4:
        pad = tuple(int(p) for p in np.maximum(pad, int(np.rint(qsize * 0.3))))
        img = Image.fromarray(_pad_and_blur(np.asarray(img), pad, qsize), "RGB")
        quad += pad[:2]
    else:
        pad = (0, 0, 0, 0)

    # Warp.
    img = img.transform((transform_size, transform_size), Image.QUAD, (quad + 0.5).flatten().tolist(), Image.BILINEAR)
    if output_size < transform_size:
        img = img.resize((output_size, output_size), Image.LANCZOS)

    transform = AlignTransform(
        quad=photo_quad,
        qsize=float(qsize * (scale.mean() if shrink > 1 else 1.0)),
        shrink=max(shrink, 1),
        crop=crop,
        pad=pad,
    )
    return np.asarray(img), transform
