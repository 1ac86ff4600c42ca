"""Reading and writing photos: EXIF orientation, 16 bit, alpha and greyscale kept.

Arrays are (H, W, C) with C in {1, 3, 4} (grey, RGB, RGBA), uint8 or uint16. The pixel count is
checked from the header before anything is decoded, so a decompression bomb costs nothing, and
every decoded array must have the header's size: memory stays within what the pixel limit allows
(a few bytes per allowed pixel), whatever else the file claims. A file that cannot be decoded is
EngineError("bad_image") with the reason, whatever the decoder raised. Only photo formats are
opened (Pillow would run Ghostscript on an EPS file). PIL reads 16-bit RGB(A) PNGs as 8 bit, so
those go through OpenCV, after checking that OpenCV will read the same header.
"""

from __future__ import annotations

import io
import os
import struct
import warnings
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from ffclip.plugin.protocol import DEFAULT_MAX_PIXELS, EngineError

LUMA = np.array([0.299, 0.587, 0.114], np.float32)  # Rec. 601 weights: RGB -> grey
# What photos come as; never formats whose reader runs other programs (EPS: Ghostscript).
FORMATS = ("JPEG", "PNG", "TIFF", "WEBP", "AVIF", "BMP", "GIF", "PPM")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

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


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__


def _open(source: str | os.PathLike | bytes) -> tuple[Image.Image, bytes]:
    try:
        data = source if isinstance(source, bytes | bytearray) else Path(source).read_bytes()
    except OSError as exc:
        raise EngineError("bad_image", f"cannot read {source}: {exc.strerror or exc}") from None
    if not data:
        raise EngineError("bad_image", "the file is empty")
    try:
        img = Image.open(io.BytesIO(data), formats=FORMATS)
    except UnidentifiedImageError:
        raise EngineError(
            "bad_image", f"not an image (unrecognised file format; read are {', '.join(FORMATS)})"
        ) from None
    except Image.DecompressionBombError:
        limit = 2 * (Image.MAX_IMAGE_PIXELS or 0) / 1e6
        raise EngineError("too_large", f"image has more than {limit:.0f} MP; Pillow refuses to open it") from None
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types for malformed headers
        raise EngineError("bad_image", f"unreadable image header ({_reason(exc)})") from None
    return img, bytes(data)


def _orientation(img: Image.Image) -> int:
    try:
        value = img.getexif().get(0x0112, 1)
        return value if isinstance(value, int) else 1  # a lying tag (text, a fraction...) means none
    except Exception:  # noqa: BLE001 - a broken EXIF block must not make the photo unreadable
        return 1


def _rgb16_png(img: Image.Image, data: bytes) -> bool:
    """A 16-bit PNG with colour (RGB, RGBA, grey+alpha), which PIL would reduce to 8 bit."""
    return img.format == "PNG" and len(data) > 26 and data[24] == 16 and data[25] in (2, 4, 6)


def _decode_cv2(data: bytes, size: tuple[int, int]) -> np.ndarray:
    # OpenCV reads the IHDR that libpng requires first: it must be the size PIL read and checked
    if data[:8] != _PNG_SIGNATURE or data[12:16] != b"IHDR" or struct.unpack(">II", data[16:24]) != size:
        raise EngineError("bad_image", "the PNG's header is not where its decoder reads it")
    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None:
        raise EngineError("bad_image", "the image data is truncated or corrupt")
    if arr.ndim == 2:
        return arr[..., None]
    if arr.shape[2] == 3:
        return cv2.cvtColor(arr, cv2.COLOR_BGR2RGB)
    if arr.shape[2] == 2:  # grey + alpha
        return np.dstack([arr[..., 0]] * 3 + [arr[..., 1]])
    return cv2.cvtColor(arr, cv2.COLOR_BGRA2RGBA)


def _decode_pil(img: Image.Image) -> np.ndarray:
    img.load()
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N"):
        return np.asarray(img).astype(np.uint16)[..., None]  # native byte order, as the rest expects
    if img.mode == "I":
        return np.clip(np.asarray(img), 0, 65535).astype(np.uint16)[..., None]
    if img.mode in ("1", "L"):
        return np.asarray(img.convert("L"))[..., None]
    if img.mode in ("LA", "La", "PA", "RGBa"):
        return np.asarray(img.convert("RGBA"))
    if img.mode == "RGBA":
        return np.asarray(img)
    if img.mode == "F":
        return np.clip(np.rint(np.asarray(img)), 0, 255).astype(np.uint8)[..., None]
    return np.asarray(img if img.mode == "RGB" else img.convert("RGB"))


def _decode(img: Image.Image, data: bytes, size: tuple[int, int]) -> np.ndarray:
    """The pixels, whatever the decoder raises on a damaged file turned into bad_image."""
    try:
        arr = _decode_cv2(data, size) if _rgb16_png(img, data) else _decode_pil(img)
    except (EngineError, MemoryError):
        raise
    except Exception as exc:  # noqa: BLE001 - decoders raise anything on damaged data (OSError,
        # SyntaxError, a TypeError from a TIFF tag of the wrong type, cv2.error...)
        raise EngineError("bad_image", f"the image data is truncated or corrupt ({_reason(exc)})") from None
    width, height = size
    if arr.ndim != 3 or arr.shape[:2] != (height, width):
        raise EngineError("bad_image", f"the image decodes to {arr.shape[1::-1]}, its header says {width}x{height}")
    return arr


def load_image(source: str | os.PathLike | bytes, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode a photo to (H, W, C) uint8/uint16 with EXIF orientation applied.

    Raises EngineError("bad_image") for anything unreadable and ("too_large") when the header
    announces more than `max_pixels` pixels.
    """
    with warnings.catch_warnings():  # a damaged file's warnings say what the error already says
        warnings.simplefilter("ignore")
        img, data = _open(source)
        with img:
            width, height = img.size
            if width < 1 or height < 1:
                raise EngineError("bad_image", f"the image has no pixels ({width}x{height})")
            if max_pixels and width * height > max_pixels:
                raise EngineError(
                    "too_large",
                    f"image is {width}x{height} = {width * height / 1e6:.1f} MP, over the limit of "
                    f"{max_pixels / 1e6:.1f} MP (raise it with --max-pixels)",
                )
            orientation = _orientation(img)
            arr = _decode(img, data, (width, height))
    if arr.dtype not in (np.uint8, np.uint16):
        arr = np.clip(arr, 0, 65535).astype(np.uint16)
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
