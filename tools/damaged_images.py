"""Write the corpus of damaged photos in tests/data/damaged/ (issue 31): PNG, JPEG, WebP and TIFF files,
each damaged in one way that the image reader must refuse (`bad_image`), and manifest.json saying how.

    python -m tools.damaged_images [--out tests/data/damaged]

Every file starts as a sound encoding of the same 128² crop of tests/data/photos/astronaut.png and is
damaged deterministically: bytes flipped inside the coded pixel data (IDAT, a JPEG scan, a VP8L
bitstream, a deflate or LZW strip), checksums that do not match (a chunk's CRC), lengths that lie
(a chunk, a segment, a RIFF size, a strip's byte count), data cut short or cut out. Flipped bytes are
placed where they break the coding: a JPEG scan or a lossy WebP frame has no checksum, and damage
that still forms valid coded data decodes to wrong pixels in any decoder (docs/testing.md).
"""

from __future__ import annotations

import argparse
import io
import json
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SOURCE = REPO / "tests" / "data" / "photos" / "astronaut.png"


def source_pixels() -> np.ndarray:
    """The astronaut's face, 128² RGB: photo content, small files."""
    rgb = np.asarray(Image.open(SOURCE).convert("RGB"))
    return np.ascontiguousarray(rgb[60:188, 150:278])


def encode(rgb: np.ndarray, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format=fmt, **options)
    return buffer.getvalue()


# --------------------------------------------------------------------------- damage


def flip(data: bytes, start: int, count: int) -> bytes:
    out = bytearray(data)
    for i in range(start, start + count):
        out[i] ^= 0xFF
    return bytes(out)


def png_chunks(data: bytes) -> list[tuple[bytes, int, int]]:
    """(type, offset of the chunk's length field, data length) of each chunk."""
    chunks, pos = [], 8
    while pos + 8 <= len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        chunks.append((data[pos + 4 : pos + 8], pos, length))
        pos += 12 + length
    return chunks


def png_chunk(data: bytes, kind: bytes) -> tuple[int, int]:
    """(offset of the chunk's data, its length) of the first chunk of that type."""
    for name, pos, length in png_chunks(data):
        if name == kind:
            return pos + 8, length
    raise ValueError(kind)


def fix_crc(data: bytes, kind: bytes) -> bytes:
    start, length = png_chunk(data, kind)
    crc = zlib.crc32(data[start - 4 : start + length]) & 0xFFFFFFFF
    return data[: start + length] + struct.pack(">I", crc) + data[start + length + 4 :]


def jpeg_scan(data: bytes) -> tuple[int, int]:
    """(first byte of the entropy-coded data after SOS, offset of EOI)."""
    sos = data.index(b"\xff\xda")
    (length,) = struct.unpack(">H", data[sos + 2 : sos + 4])
    return sos + 2 + length, data.rindex(b"\xff\xd9")


def jpeg_segment(data: bytes, marker: bytes) -> int:
    return data.index(b"\xff" + marker)


def riff_chunk(data: bytes, kind: bytes) -> tuple[int, int]:
    """(offset of the chunk's header, its data length)."""
    pos = 12
    while pos + 8 <= len(data):
        (size,) = struct.unpack("<I", data[pos + 4 : pos + 8])
        if data[pos : pos + 4] == kind:
            return pos, size
        pos += 8 + size + (size & 1)
    raise ValueError(kind)


def tiff_strips(data: bytes) -> tuple[list[int], list[int], dict[int, int]]:
    """Strip offsets, byte counts, and where the StripByteCounts values sit (tag -> file offset)."""
    with Image.open(io.BytesIO(data)) as img:
        offsets, counts = list(img.tag_v2[273]), list(img.tag_v2[279])
    # Pillow writes a little-endian classic TIFF: the IFD's entries are 12 bytes each
    (ifd,) = struct.unpack("<I", data[4:8])
    (entries,) = struct.unpack("<H", data[ifd : ifd + 2])
    where = {}
    for e in range(entries):
        pos = ifd + 2 + 12 * e
        tag, kind, n = struct.unpack("<HHI", data[pos : pos + 8])
        size = {3: 2, 4: 4}.get(kind, 0) * n
        where[tag] = pos + 8 if size <= 4 else struct.unpack("<I", data[pos + 8 : pos + 12])[0]
    return offsets, counts, where


def tiff_set_count(data: bytes, strip: int, value: int) -> bytes:
    _, _, where = tiff_strips(data)
    pos = where[279] + 4 * strip  # Pillow writes the counts as LONGs
    return data[:pos] + struct.pack("<I", value) + data[pos + 4 :]


# --------------------------------------------------------------------------- the corpus


def sound_files(rgb: np.ndarray) -> dict[str, bytes]:
    """The undamaged encodings the corpus is made from."""
    return {
        "png": encode(rgb, "PNG", compress_level=9),
        "jpeg": encode(rgb, "JPEG", quality=90),
        "jpeg-progressive": encode(rgb, "JPEG", quality=90, progressive=True),
        "webp-lossy": encode(rgb, "WEBP", quality=80),
        "webp-lossless": encode(rgb, "WEBP", lossless=True),
        "tiff-deflate": encode(rgb, "TIFF", compression="tiff_adobe_deflate"),
        "tiff-lzw": encode(rgb, "TIFF", compression="tiff_lzw"),
    }


def corpus(rgb: np.ndarray) -> dict[str, tuple[str, bytes]]:
    """name -> (what was done, the damaged file)."""
    sound = sound_files(rgb)
    png, jpeg, progressive = sound["png"], sound["jpeg"], sound["jpeg-progressive"]
    lossy, lossless = sound["webp-lossy"], sound["webp-lossless"]
    deflate, lzw = sound["tiff-deflate"], sound["tiff-lzw"]
    idat, idat_len = png_chunk(png, b"IDAT")
    scan, eoi = jpeg_scan(jpeg)
    pscan, _ = jpeg_scan(progressive)
    vp8l, vp8l_len = riff_chunk(lossless, b"VP8L")
    vp8, _ = riff_chunk(lossy, b"VP8 ")
    d_offsets, d_counts, _ = tiff_strips(deflate)
    l_offsets, l_counts, _ = tiff_strips(lzw)

    items: dict[str, tuple[str, Callable[[], bytes]]] = {
        # PNG
        "png-idat-flipped.png": (
            "200 bytes flipped in the middle of IDAT, CRC left",
            lambda: flip(png, idat + idat_len // 2, 200),
        ),
        "png-idat-flipped-crc-fixed.png": (
            "200 bytes flipped in IDAT and its CRC recomputed: only the deflate stream tells",
            lambda: fix_crc(flip(png, idat + idat_len // 2, 200), b"IDAT"),
        ),
        "png-ihdr-bad-crc.png": ("IHDR's CRC changed", lambda: flip(png, 29, 1)),
        "png-idat-length-too-long.png": (
            "IDAT's length field 1000 bytes too long",
            lambda: png[: idat - 8] + struct.pack(">I", idat_len + 1000) + png[idat - 4 :],
        ),
        "png-idat-cut-out.png": (
            "300 bytes cut out of IDAT, length and CRC made to match",
            lambda: fix_crc(
                png[: idat - 8] + struct.pack(">I", idat_len - 300) + png[idat - 4 : idat + 100] + png[idat + 400 :],
                b"IDAT",
            ),
        ),
        "png-truncated-in-idat.png": ("the file ends in the middle of IDAT", lambda: png[: idat + idat_len // 2]),
        # JPEG
        "jpeg-scan-flipped.jpg": (
            "200 bytes flipped a quarter into the scan data (a stuffed 0xFF 0x00 becomes an invalid marker)",
            lambda: flip(jpeg, scan + (eoi - scan) // 4, 200),
        ),
        "jpeg-scan-flipped-late.jpg": ("64 bytes flipped near the scan's end", lambda: flip(jpeg, eoi - 400, 64)),
        "jpeg-progressive-scan-flipped.jpg": (
            "200 bytes flipped in the first scan of a progressive JPEG",
            lambda: flip(progressive, pscan + 20, 200),
        ),
        "jpeg-scan-cut-out.jpg": (
            "400 bytes cut out of the scan data",
            lambda: jpeg[: scan + 300] + jpeg[scan + 700 :],
        ),
        "jpeg-truncated-in-scan.jpg": ("the file ends in the middle of the scan", lambda: jpeg[: (scan + eoi) // 2]),
        "jpeg-dqt-length-wrong.jpg": (
            "the quantisation table segment's length 40 bytes too long",
            lambda: _jpeg_length(jpeg, b"\xdb", +40),
        ),
        "jpeg-dht-length-wrong.jpg": (
            "a Huffman table segment's length 9 bytes too short",
            lambda: _jpeg_length(jpeg, b"\xc4", -9),
        ),
        # WebP
        "webp-riff-size-too-large.webp": (
            "the RIFF size 4096 bytes larger than the file",
            lambda: lossy[:4] + struct.pack("<I", len(lossy) - 8 + 4096) + lossy[8:],
        ),
        "webp-vp8-size-too-large.webp": (
            "the VP8 chunk's size past the end of the file",
            lambda: lossy[: vp8 + 4] + struct.pack("<I", len(lossy)) + lossy[vp8 + 8 :],
        ),
        "webp-lossless-flipped.webp": (
            "64 bytes flipped at the start of the VP8L bitstream (its transforms and code lengths)",
            lambda: flip(lossless, vp8l + 8 + 5, 64),
        ),
        "webp-truncated.webp": ("the file ends in the middle of the frame", lambda: lossy[: len(lossy) // 2]),
        # TIFF
        "tiff-deflate-flipped.tif": (
            "200 bytes flipped in the middle of a deflate strip",
            lambda: flip(deflate, d_offsets[0] + d_counts[0] // 2, 200),
        ),
        "tiff-deflate-strip-cut.tif": (
            "a deflate strip's byte count 40 bytes short (its stream cut before the checksum)",
            lambda: tiff_set_count(deflate, 0, d_counts[0] - 40),
        ),
        "tiff-lzw-flipped.tif": (
            "200 bytes flipped in the middle of an LZW strip",
            lambda: flip(lzw, l_offsets[0] + l_counts[0] // 2, 200),
        ),
        "tiff-strip-past-end.tif": (
            "the last strip's byte count reaches past the end of the file",
            lambda: tiff_set_count(deflate, len(d_counts) - 1, d_counts[-1] + 100_000),
        ),
        "tiff-truncated.tif": ("the file ends in the middle of the strips", lambda: lzw[: len(lzw) // 2]),
    }
    return {name: (what, make()) for name, (what, make) in items.items()}


def _jpeg_length(data: bytes, marker: bytes, change: int) -> bytes:
    pos = jpeg_segment(data, marker)
    (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
    return data[: pos + 2] + struct.pack(">H", length + change) + data[pos + 4 :]


def write(out: Path) -> dict[str, str]:
    out.mkdir(parents=True, exist_ok=True)
    manifest = {}
    for name, (what, data) in corpus(source_pixels()).items():
        (out / name).write_bytes(data)
        manifest[name] = what
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "tests" / "data" / "damaged")
    args = parser.parse_args(argv)
    manifest = write(args.out)
    print(f"wrote {len(manifest)} damaged files to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
