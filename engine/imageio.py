"""Reading and writing photos: EXIF orientation, 16 bit, alpha and greyscale kept.

Arrays are (H, W, C) with C in {1, 3, 4} (grey, RGB, RGBA), uint8 or uint16. The pixel count is
checked from the header before anything is decoded, so a decompression bomb costs nothing.
PIL reads 16-bit RGB(A) PNG/TIFF as 8 bit, so those go through OpenCV.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from ffclip.plugin.protocol import DEFAULT_MAX_PIXELS, EngineError

LUMA = np.array([0.299, 0.587, 0.114], np.float32)  # Rec. 601 weights: RGB -> grey

# EXIF orientation -> (transpose, then flip-left-right?) as numpy operations on (H, W, C).
_ORIENT = {
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: a.transpose(1, 0, 2)[:, ::-1],
    7: lambda a: a.transpose(1, 0, 2)[::-1, ::-1],
    8: lambda a: a.transpose(1, 0, 2)[::-1],
}


def _open(source: str | os.PathLike | bytes) -> tuple[Image.Image, bytes]:
    try:
        data = source if isinstance(source, bytes | bytearray) else Path(source).read_bytes()
    except OSError as exc:
        raise EngineError("bad_image", f"cannot read {source}: {exc.strerror or exc}") from None
    if not data:
        raise EngineError("bad_image", "the file is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise EngineError("bad_image", "not an image (unrecognised file format)") from None
    except Image.DecompressionBombError:
        limit = 2 * (Image.MAX_IMAGE_PIXELS or 0) / 1e6
        raise EngineError("too_large", f"image has more than {limit:.0f} MP; Pillow refuses to open it") from None
    except Exception as exc:  # PIL raises many types for malformed headers
        raise EngineError("bad_image", f"unreadable image header: {exc}") from None
    return img, bytes(data)


def _orientation(img: Image.Image) -> int:
    try:
        return int(img.getexif().get(0x0112, 1) or 1)
    except Exception:  # a broken EXIF block must not make the photo unreadable
        return 1


def _is_16bit(img: Image.Image, data: bytes) -> bool:
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        return True
    if img.format == "PNG" and len(data) > 25:
        return data[24] == 16  # IHDR bit depth
    return False


def _decode_cv2(data: bytes) -> np.ndarray:
    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None:
        raise EngineError("bad_image", "the image data is truncated or corrupt")
    if arr.ndim == 2:
        return arr[..., None]
    if arr.shape[2] == 3:
        return cv2.cvtColor(arr, cv2.COLOR_BGR2RGB)
    return cv2.cvtColor(arr, cv2.COLOR_BGRA2RGBA)


def _decode_pil(img: Image.Image) -> np.ndarray:
    img.load()
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("1", "L"):
        return np.asarray(img.convert("L"))[..., None]
    if img.mode in ("LA", "La", "PA"):
        return np.asarray(img.convert("RGBA"))
    if img.mode in ("RGBA", "RGBa"):
        return np.asarray(img.convert("RGBA"))
    if img.mode == "F":
        return np.clip(np.rint(np.asarray(img)), 0, 255).astype(np.uint8)[..., None]
    return np.asarray(img.convert("RGB"))


def load_image(source: str | os.PathLike | bytes, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode a photo to (H, W, C) uint8/uint16 with EXIF orientation applied.

    Raises EngineError("bad_image") for anything unreadable and ("too_large") when the header
    announces more than `max_pixels` pixels.
    """
    img, data = _open(source)
    width, height = img.size
    if max_pixels and width * height > max_pixels:
        raise EngineError(
            "too_large",
            f"image is {width}x{height} = {width * height / 1e6:.1f} MP, over the limit of "
            f"{max_pixels / 1e6:.1f} MP (raise it with --max-pixels)",
        )
    orientation = _orientation(img)
    try:
        arr = _decode_cv2(data) if _is_16bit(img, data) else _decode_pil(img)
    except EngineError:
        raise
    except (OSError, SyntaxError, ValueError) as exc:
        raise EngineError("bad_image", f"the image data is truncated or corrupt ({exc})") from None
    if arr.dtype not in (np.uint8, np.uint16):
        arr = np.clip(arr, 0, 65535).astype(np.uint16)
    if arr.ndim == 2:
        arr = arr[..., None]
    if orientation in _ORIENT:
        arr = _ORIENT[orientation](arr)
    return np.ascontiguousarray(arr)


def save_image(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write (H, W, C) or (H, W) uint8/uint16; 16 bit needs PNG or TIFF."""
    path = Path(path)
    arr = np.asarray(array)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.dtype == np.uint16:
        if path.suffix.lower() not in (".png", ".tif", ".tiff"):
            raise ValueError(f"16-bit images need a .png or .tif name, not {path.name}")
        if arr.ndim == 3:
            code = cv2.COLOR_RGB2BGR if arr.shape[2] == 3 else cv2.COLOR_RGBA2BGRA
            arr = cv2.cvtColor(arr, code)
        if not cv2.imwrite(str(path), arr):
            raise OSError(f"cannot write {path}")
        return
    img = Image.fromarray(np.ascontiguousarray(arr.astype(np.uint8)))
    if path.suffix.lower() in (".jpg", ".jpeg"):
        img = img.convert("RGB") if img.mode == "RGBA" else img
        img.save(path, quality=95, subsampling=0)
    else:
        img.save(path)


# -------------------------------------------------------------------------- pixel formats


def as_hwc(image: Any) -> np.ndarray:
    if not isinstance(image, np.ndarray):
        raise EngineError("bad_image", "the image must be a numpy array")
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
        raise EngineError("bad_image", f"expected an (H, W, 1|3|4) image, got shape {image.shape}")
    if image.dtype not in (np.uint8, np.uint16):
        raise EngineError("bad_image", f"expected uint8 or uint16 pixels, got {image.dtype}")
    return image


def rgb_float(image: np.ndarray) -> np.ndarray:
    """Colour channels as (H, W, 3) float32 in 0..255 (16 bit scaled down, grey replicated)."""
    colour = image[..., :3] if image.shape[2] >= 3 else np.repeat(image[..., :1], 3, axis=2)
    work = colour.astype(np.float32)
    if image.dtype == np.uint16:
        work /= 257.0
    return work


def to_uint8(work: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(work), 0, 255).astype(np.uint8)


def as_rgb8(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB, what dlib and the alignment read (8-bit RGB photos as they are)."""
    if image.dtype == np.uint8 and image.shape[2] == 3:
        return np.ascontiguousarray(image)
    return to_uint8(rgb_float(image))
