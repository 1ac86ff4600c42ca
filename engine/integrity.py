"""Is an encoded photo intact? Checks for the damage that decoders read past without a word.

Pillow raises on most damage, but some decoders recover silently and hand back pixels that are
not the photo: libjpeg reports corrupt entropy-coded data only as a warning (Pillow ignores its
warnings, so a JPEG with a damaged scan decodes to grey or smeared blocks), and Pillow's PNG reader
checks the CRCs of the chunks before the image data only. These checks read the file once more:

- PNG: the chunks' order, lengths and CRCs up to IEND, and an image data stream that is complete
  (Pillow checks the CRCs before the image data only, and fills rows that a short stream lacks).
- JPEG: a strict libjpeg-turbo pass (simplejpeg) at 1/8 scale — the entropy decoding, where
  damage shows, runs in full; any warning is damage, except extraneous bytes before the end-of-image
  marker, which phone cameras write and which follow a complete scan.
- WebP: the RIFF container's sizes (the file's and each chunk's) agree with the file.
- TIFF with deflate strips: each strip inflates to its end and its Adler-32 checksum holds (libtiff
  stops inflating once a strip's rows are filled, so it never reaches the checksum). And every TIFF
  must decode through libtiff without an error (through OpenCV, which stops at the first one).

What no check can see: a file format without checksums (JPEG, lossy WebP, uncompressed TIFF) whose
damaged bytes still form valid coded data decodes to wrong pixels like any other photo.
"""

from __future__ import annotations

import io
import re
import struct
import zlib

import numpy as np
from PIL import Image

from ffclip.plugin.protocol import EngineError

# Not damage: libjpeg's JWRN_EXTRANEOUS_DATA before EOI (0xd9), padding after a complete scan; and a
# coding process that libjpeg-turbo's TurboJPEG API does not decode (lossless, 12 bit), left to Pillow.
_NOT_DAMAGE = re.compile(r"extraneous bytes before marker 0xd9$|^Unsupported JPEG process")


def check_intact(image_format: str | None, data: bytes) -> None:
    """Raise EngineError("bad_image") with the reason when `data` (a file of `image_format`, as
    Pillow names it) is damaged in a way its decoder would not report."""
    check = _CHECKS.get(image_format or "")
    if check is not None:
        reason = check(data)
        if reason:
            raise EngineError("bad_image", f"the image data is truncated or corrupt ({reason})")


def _png(data: bytes) -> str | None:
    """The chunk structure libpng insists on, every CRC (IEND's too), and an image data stream that
    ends, with its checksum, after exactly the image's rows: Pillow decodes a stream that stops
    short as if the missing rows were there."""
    chunks, reason = _png_chunks(data)
    if reason:
        return reason
    kinds = [kind for kind, _, _ in chunks]
    if kinds[0] != b"IHDR" or kinds.count(b"IHDR") != 1 or chunks[0][2] != 13:
        return "IHDR is not the one 13-byte first chunk"
    if kinds[-1] != b"IEND":
        return "no IEND chunk"
    idat = [n for n, kind in enumerate(kinds) if kind == b"IDAT"]
    if not idat or idat != list(range(idat[0], idat[-1] + 1)):
        return "the IDAT chunks are missing or not consecutive"
    width, height, depth, colour, method, filtering, interlace = struct.unpack(">IIBBBBB", data[16:29])
    if (method, filtering) != (0, 0) or interlace not in (0, 1) or depth not in _PNG_DEPTHS.get(colour, ()):
        return "IHDR names a compression, filter, interlace, bit depth or colour type that does not exist"
    if b"PLTE" in kinds:
        plte = kinds.index(b"PLTE")
        if kinds.count(b"PLTE") > 1 or plte > idat[0] or colour in (0, 4):
            return "PLTE twice, after IDAT, or in a grey image"
        if chunks[plte][2] % 3 or not 3 <= chunks[plte][2] <= 768:
            return "PLTE is not a whole number of colours (1 to 256)"
    elif colour == 3:
        return "a palette image without PLTE"
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[colour]
    return _png_stream(data, chunks, _png_raw_size(width, height, depth * channels, interlace))


def _png_chunks(data: bytes) -> tuple[list[tuple[bytes, int, int]], str | None]:
    """(type, data offset, length) of each chunk up to IEND, or the reason they cannot be walked."""
    chunks, pos = [], 8
    while True:
        if pos + 12 > len(data):
            return chunks, f"the file ends inside a chunk at byte {pos}"
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, end = data[pos + 4 : pos + 8], pos + 8 + length
        if end + 4 > len(data):
            return chunks, f"chunk {kind!r} claims {length} bytes, past the end of the file"
        (crc,) = struct.unpack(">I", data[end : end + 4])
        if zlib.crc32(data[pos + 4 : end]) != crc:
            return chunks, f"bad CRC in chunk {kind!r}"
        chunks.append((kind, pos + 8, length))
        if kind == b"IEND":
            return chunks, None
        pos = end + 4


def _png_raw_size(width: int, height: int, bits: int, interlace: int) -> int:
    """Bytes of filtered scanlines (a filter byte and the packed pixels per row) the image data holds."""
    passes = [(0, 0, 1, 1)] if interlace == 0 else _ADAM7
    size = 0
    for x0, y0, dx, dy in passes:
        w, h = (width - x0 + dx - 1) // dx, (height - y0 + dy - 1) // dy
        if w > 0 and h > 0:
            size += h * (1 + (w * bits + 7) // 8)
    return size


_PNG_DEPTHS = {0: (1, 2, 4, 8, 16), 2: (8, 16), 3: (1, 2, 4, 8), 4: (8, 16), 6: (8, 16)}  # per colour type
_ADAM7 = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)]


def _png_stream(data: bytes, chunks: list[tuple[bytes, int, int]], expected: int) -> str | None:
    """Inflate the IDAT stream without keeping it: it must reach its end (checksum included) and hold
    at least the image's rows (more is tolerated, as by libpng)."""
    inflate, produced = zlib.decompressobj(), 0
    try:
        for kind, start, length in chunks:
            if kind != b"IDAT":
                continue
            pending = data[start : start + length]
            while pending and not inflate.eof:
                produced += len(inflate.decompress(pending, 1 << 20))
                pending = inflate.unconsumed_tail
    except zlib.error as exc:
        return f"the image data stream is corrupt ({exc})"
    if not inflate.eof:
        return "the image data stream is cut short"
    if produced < expected:
        return f"the image data holds {produced} bytes of rows, the image needs {expected}"
    return None


def _jpeg(data: bytes) -> str | None:
    import simplejpeg

    try:
        header = simplejpeg.decode_jpeg_header(data)
        colourspace = {"Gray": "GRAY", "CMYK": "CMYK", "YCCK": "CMYK"}.get(header[2], "RGB")
        simplejpeg.decode_jpeg(data, colorspace=colourspace, min_height=1, min_width=1, strict=True)
    except Exception as exc:  # noqa: BLE001 - ValueError with libjpeg's message, or a C-level error
        text = _text(exc)
        return None if _NOT_DAMAGE.search(text) else text
    return None


def _webp(data: bytes) -> str | None:
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        return "not a RIFF WebP container"
    (riff_size,) = struct.unpack("<I", data[4:8])
    if riff_size + 8 != len(data):
        return f"the RIFF header says {riff_size + 8} bytes, the file has {len(data)}"
    pos = 12
    while pos < len(data):
        if pos + 8 > len(data):
            return f"a chunk header is cut off at byte {pos}"
        chunk, (size,) = data[pos : pos + 4], struct.unpack("<I", data[pos + 4 : pos + 8])
        end = pos + 8 + size
        if end > len(data):
            return f"chunk {chunk!r} claims {size} bytes, past the end of the file"
        pos = end + (size & 1)  # chunks are padded to an even length (a last pad left out is tolerated)
    return None


def _tiff(data: bytes) -> str | None:
    with Image.open(io.BytesIO(data), formats=("TIFF",)) as img:
        tags = img.tag_v2
        if tags.get(259, 1) not in _DEFLATE:
            return _libtiff_strict(data)
        offsets, counts = tags.get(273) or tags.get(324), tags.get(279) or tags.get(325)  # strips or tiles
        width, height = img.size
        limit = width * height * max(1, len(img.getbands())) * 8  # a strip can hold no more than the image
    if not offsets or not counts or len(offsets) != len(counts):
        return "its strips' offsets and byte counts do not match"
    for n, (offset, count) in enumerate(zip(offsets, counts, strict=True)):
        if not isinstance(offset, int) or not isinstance(count, int):
            return f"strip {n}'s offset or byte count is not a number"
        if offset + count > len(data):
            return f"strip {n} runs past the end of the file"
        inflate = zlib.decompressobj()
        try:
            inflate.decompress(data[offset : offset + count], limit)
        except zlib.error as exc:
            return f"strip {n}: {exc}"
        if not inflate.eof:
            return f"strip {n} is cut short or holds more than the image"
    return _libtiff_strict(data)


_DEFLATE = (8, 32946)  # TIFF's Compression tag for zlib deflate (and its old Adobe number)


def _libtiff_strict(data: bytes) -> str | None:
    """Decode once more through OpenCV, whose TIFF reader stops at libtiff's first error (Pillow reads
    LZW and JPEG strips through libtiff's RGBA interface, which carries on, reads raw strips itself,
    and fills rows that the strips lack)."""
    import cv2

    if cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED) is None:
        return "libtiff cannot decode its strips"
    return None


def _text(exc: BaseException) -> str:
    text = str(exc).strip()
    return text[:200] if text else type(exc).__name__


_CHECKS = {"PNG": _png, "JPEG": _jpeg, "WEBP": _webp, "TIFF": _tiff}
