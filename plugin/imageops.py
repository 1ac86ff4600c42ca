"""Pixel helpers of the command-line client: read/write image files, paste an edited region back.

Standard library first: Pillow and NumPy are used when importable (they are, in the engine's own
environment) because pure Python is slow on big photos; the fallbacks give identical results for PNG.
"""

from __future__ import annotations

import io
from pathlib import Path

from . import png


def decode_file(data: bytes) -> tuple[int, int, bytes]:
    """Image file bytes → (width, height, RGBA8 rows). Pillow when present, else PNG only."""
    try:
        from PIL import Image, ImageOps
    except ImportError:
        return png.read_png(data)
    try:
        with Image.open(io.BytesIO(data)) as image:
            image = ImageOps.exif_transpose(image).convert("RGBA")
            return image.width, image.height, image.tobytes()
    except (OSError, ValueError, SyntaxError) as exc:  # Pillow's "cannot identify", truncated, ...
        raise ValueError(f"cannot read the image: {exc}") from None


def encode_file(path: Path, width: int, height: int, rgba: bytes, keep_alpha: bool = True) -> None:
    """Write RGBA8 rows to `path` in the format its extension names (PNG without Pillow)."""
    suffix = path.suffix.lower()
    try:
        from PIL import Image
    except ImportError:
        if suffix != ".png":
            raise ValueError(f"writing {suffix} files needs Pillow; use a .png output") from None
        pixels, channels = (rgba, 4) if keep_alpha else (drop_alpha(rgba), 3)
        path.write_bytes(png.write_png(width, height, pixels, channels))
        return
    image = Image.frombytes("RGBA", (width, height), rgba)
    if not keep_alpha or suffix in (".jpg", ".jpeg"):
        image = image.convert("RGB")
    image.save(path)


def write_gray_png(path: Path, width: int, height: int, gray: bytes) -> None:
    path.write_bytes(png.write_png(width, height, gray, channels=1))


def drop_alpha(rgba: bytes) -> bytes:
    out = bytearray(len(rgba) // 4 * 3)
    for c in range(3):
        out[c::3] = rgba[c::4]
    return bytes(out)


def is_opaque(rgba: bytes) -> bool:
    alpha = rgba[3::4]
    return alpha.count(255) == len(alpha)


def composite(base: bytes, width: int, height: int, region: tuple[int, int, int, int], patch: bytes) -> bytes:
    """`patch` (RGBA8, its alpha the blend mask) over `base` (RGBA8) at `region`; base alpha is kept."""
    x, y, w, h = region
    if x < 0 or y < 0 or x + w > width or y + h > height:
        raise ValueError(f"region {region} is outside the {width}x{height} image")
    if len(patch) != w * h * 4 or len(base) != width * height * 4:
        raise ValueError("pixel buffers do not match their sizes")
    try:
        import numpy as np
    except ImportError:
        return _composite_python(base, width, region, patch)
    out = np.frombuffer(base, np.uint8).reshape(height, width, 4).copy()
    top = np.frombuffer(patch, np.uint8).reshape(h, w, 4).astype(np.uint32)
    under = out[y : y + h, x : x + w, :3].astype(np.uint32)
    alpha = top[:, :, 3:4]
    blended = (top[:, :, :3] * alpha + under * (255 - alpha) + 127) // 255
    out[y : y + h, x : x + w, :3] = blended.astype(np.uint8)
    return out.tobytes()


def _composite_python(base: bytes, width: int, region: tuple[int, int, int, int], patch: bytes) -> bytes:
    x, y, w, h = region
    out = bytearray(base)
    for row in range(h):
        start = ((y + row) * width + x) * 4
        under = out[start : start + w * 4]
        top = patch[row * w * 4 : (row + 1) * w * 4]
        line = bytearray(under)
        for i in range(0, w * 4, 4):
            a = top[i + 3]
            if a == 0:
                continue
            for c in range(3):
                line[i + c] = (top[i + c] * a + under[i + c] * (255 - a) + 127) // 255
        out[start : start + w * 4] = line
    return bytes(out)


def region_mask(width: int, height: int, region: tuple[int, int, int, int], patch: bytes) -> bytes:
    """A full-size grey mask: the patch's alpha inside `region`, 0 elsewhere."""
    x, y, w, h = region
    mask = bytearray(width * height)
    alpha = patch[3::4]
    for row in range(h):
        start = (y + row) * width + x
        mask[start : start + w] = alpha[row * w : (row + 1) * w]
    return bytes(mask)
