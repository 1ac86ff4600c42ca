"""Reading and writing photos: EXIF orientation, 16 bit, alpha and greyscale kept.

Arrays are (H, W, C) with C in {1, 3, 4} (grey, RGB, RGBA), uint8 or uint16. The pixel count is
checked from the header before anything is decoded, so a decompression bomb costs nothing, and
every decoded array must have the header's size: memory stays within what the pixel limit allows
(a few bytes per allowed pixel), whatever else the file claims. A file that cannot be decoded is
EngineError("bad_image") with the reason, whatever the decoder raised. Only photo formats are
opened (Pillow would run Ghostscript on an EPS file). PIL reads 16-bit RGB(A) PNGs and TIFFs as 8
bit, so those go through OpenCV, after checking that OpenCV will read the same header. Damage that
decoders read past silently is looked for first (engine/integrity.py).
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

from ffclip.engine.integrity import check_intact
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
        raise EngineError("bad_image", _unidentified(bytes(data))) from None
    except Image.DecompressionBombError:
        limit = 2 * (Image.MAX_IMAGE_PIXELS or 0) / 1e6
        raise EngineError("too_large", f"image has more than {limit:.0f} MP; Pillow refuses to open it") from None
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types for malformed headers
        raise EngineError("bad_image", f"unreadable image header ({_reason(exc)})") from None
    return img, bytes(data)


def _unidentified(data: bytes) -> str:
    """Why Pillow found no format: a file that begins like a photo format has a damaged header (its
    reader's own complaint says where); anything else is not an image."""
    fmt = next((f for prefix, f in _SIGNATURES if data.startswith(prefix)), None)
    if fmt is None or (fmt == "WEBP" and data[8:12] != b"WEBP"):
        return f"not an image (unrecognised file format; read are {', '.join(FORMATS)})"
    try:
        Image.OPEN[fmt][0](io.BytesIO(data))  # the format's reader alone, which raises the reason
    except Exception as exc:  # noqa: BLE001 - SyntaxError, OSError, struct.error...
        return f"a damaged {fmt} file: its header cannot be read ({_reason(exc)})"
    return f"a damaged {fmt} file: its header cannot be read"


_SIGNATURES = [
    (_PNG_SIGNATURE, "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"RIFF", "WEBP"),
]


def _orientation(img: Image.Image) -> int:
    """The EXIF orientation of a decoded image (1 when there is none or it is unreadable)."""
    try:
        value = img.getexif().get(0x0112, 1)
        return value if isinstance(value, int) else 1  # a lying tag (text, a fraction...) means none
    except Exception:  # noqa: BLE001 - a broken EXIF block must not make the photo unreadable
        return 1


def _rgb16(img: Image.Image, data: bytes) -> bool:
    """16-bit colour (RGB, RGBA, grey+alpha PNG; RGB(A) TIFF), which PIL would reduce to 8 bit."""
    if img.format == "PNG":
        return len(data) > 26 and data[24] == 16 and data[25] in (2, 4, 6)
    if img.format == "TIFF":
        bits = img.tag_v2.get(258)  # BitsPerSample, one per channel
        return isinstance(bits, tuple) and len(bits) in (3, 4) and set(bits) == {16}
    return False


def _decode_cv2(data: bytes, size: tuple[int, int], image_format: str) -> np.ndarray:
    # OpenCV reads the header that PIL read and checked (libpng requires IHDR first); a TIFF's
    # first directory is the one both read, and the decoded size is checked against it after
    if image_format == "PNG" and (
        data[:8] != _PNG_SIGNATURE or data[12:16] != b"IHDR" or struct.unpack(">II", data[16:24]) != size
    ):
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
        arr = _decode_cv2(data, size, img.format) if _rgb16(img, data) else _decode_pil(img)
    except (EngineError, MemoryError):
        raise
    except Exception as exc:  # noqa: BLE001 - decoders raise anything on damaged data (OSError,
        # SyntaxError, a TypeError from a TIFF tag of the wrong type, cv2.error...)
        raise EngineError("bad_image", f"the image data is truncated or corrupt ({_reason(exc)})") from None
    width, height = size
    if arr.ndim != 3 or arr.shape[:2] != (height, width):
        raise EngineError("bad_image", f"the image decodes to {arr.shape[1::-1]}, its header says {width}x{height}")
    return arr


def decode_image(
    source: str | os.PathLike | bytes, max_pixels: int | None = DEFAULT_MAX_PIXELS
) -> tuple[np.ndarray, int]:
    """(the pixels as stored, (H, W, C) uint8/uint16; the EXIF orientation still to apply, 1-8).

    Raises EngineError("bad_image") for anything unreadable or damaged and ("too_large") when the
    header announces more than `max_pixels` pixels.
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
            check_intact(img.format, data)
            arr = _decode(img, data, (width, height))
            # Only after decoding: reading the EXIF block of a PNG loads the image, and a decode error
            # raised there was swallowed with the EXIF's (a damaged PNG came out black). A TIFF's
            # loader applies its orientation tag itself and drops it.
            orientation = _orientation(img)
    if arr.dtype not in (np.uint8, np.uint16):
        arr = np.clip(arr, 0, 65535).astype(np.uint16)
    return arr, orientation


def orient(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """The pixels turned upright for an EXIF orientation (1 or unknown: as they are)."""
    return np.ascontiguousarray(_ORIENT[orientation](pixels) if orientation in _ORIENT else pixels)


def load_image(source: str | os.PathLike | bytes, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode a photo to (H, W, C) uint8/uint16 with EXIF orientation applied.

    Raises EngineError("bad_image") for anything unreadable or damaged and ("too_large") when the
    header announces more than `max_pixels` pixels.
    """
    return orient(*decode_image(source, max_pixels))


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
