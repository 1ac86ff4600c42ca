"""PNG reading and writing on the standard library (zlib), for the command-line client.

Reads non-interlaced PNGs of every colour type at bit depth 8 or 16 (16-bit samples are rounded to
8 bits) and returns RGBA8; writes RGBA8, RGB8 or grey 8-bit PNGs. Pure Python unfiltering is slow for
big photos, so callers prefer Pillow when it is importable and use this as the fallback.
"""

from __future__ import annotations

import struct
import zlib

SIGNATURE = b"\x89PNG\r\n\x1a\n"
_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # colour type -> samples per pixel


class PNGError(ValueError):
    """Not a PNG, or a PNG this reader does not handle."""


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) from the IHDR chunk, without decoding."""
    if len(data) < 24 or data[:8] != SIGNATURE or data[12:16] != b"IHDR":
        raise PNGError("not a PNG file")
    width, height = struct.unpack("!II", data[16:24])
    return width, height


def read_png(data: bytes) -> tuple[int, int, bytes]:
    """Decode PNG bytes → (width, height, RGBA8 rows)."""
    width, height = png_size(data)
    header, palette, transparency, compressed = _chunks(data)
    depth, ctype, _, _, interlace = header
    if ctype not in _CHANNELS or depth not in (8, 16):
        raise PNGError(f"unsupported PNG: colour type {ctype}, bit depth {depth}")
    if interlace:
        raise PNGError("interlaced PNGs are not supported")
    channels = _CHANNELS[ctype]
    bpp = channels * depth // 8
    try:
        raw = zlib.decompress(compressed)
    except zlib.error as exc:
        raise PNGError(f"corrupt PNG data: {exc}") from None
    stride = width * bpp
    if len(raw) < (stride + 1) * height:
        raise PNGError("truncated PNG data")
    rows = _unfilter(raw, width, height, bpp)
    if depth == 16:
        rows = bytes(rows[0::2])  # keep the high byte of each big-endian sample
    return width, height, _to_rgba(rows, width * height, ctype, palette, transparency)


def write_png(width: int, height: int, pixels: bytes, channels: int = 4, level: int = 6) -> bytes:
    """Encode 8-bit rows (`channels` 1 = grey, 3 = RGB, 4 = RGBA) as a PNG without row filters."""
    ctype = {1: 0, 3: 2, 4: 6}[channels]
    stride = width * channels
    if len(pixels) != stride * height:
        raise ValueError(f"expected {stride * height} bytes, got {len(pixels)}")
    view = memoryview(pixels)
    raw = b"".join(b"\x00" + view[y * stride : (y + 1) * stride] for y in range(height))
    header = struct.pack("!IIBBBBB", width, height, 8, ctype, 0, 0, 0)
    return SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(raw, level)) + _chunk(b"IEND", b"")


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack("!I", len(body)) + kind + body + struct.pack("!I", zlib.crc32(kind + body))


def _chunks(data: bytes):
    pos, header, palette, transparency, idat = 8, None, b"", None, []
    while pos + 8 <= len(data):
        length, kind = struct.unpack("!I4s", data[pos : pos + 8])
        body = data[pos + 8 : pos + 8 + length]
        if len(body) != length:
            raise PNGError("truncated PNG file")
        if kind == b"IHDR":
            header = struct.unpack("!IIBBBBB", body)[2:]
        elif kind == b"PLTE":
            palette = body
        elif kind == b"tRNS":
            transparency = body
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
        pos += 12 + length
    else:
        raise PNGError("truncated PNG file (no IEND)")
    if header is None or not idat:
        raise PNGError("PNG without IHDR or IDAT")
    return header, palette, transparency, b"".join(idat)


def _unfilter(raw: bytes, width: int, height: int, bpp: int) -> bytearray:
    stride = width * bpp
    out = bytearray(stride * height)
    prev = bytearray(stride)
    for y in range(height):
        kind = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        if kind == 1:
            for i in range(bpp, stride):
                line[i] = (line[i] + line[i - bpp]) & 0xFF
        elif kind == 2:
            line = bytearray((a + b) & 0xFF for a, b in zip(line, prev, strict=True))
        elif kind == 3:
            for i in range(stride):
                left = line[i - bpp] if i >= bpp else 0
                line[i] = (line[i] + ((left + prev[i]) >> 1)) & 0xFF
        elif kind == 4:
            for i in range(stride):
                a = line[i - bpp] if i >= bpp else 0
                c = prev[i - bpp] if i >= bpp else 0
                line[i] = (line[i] + _paeth(a, prev[i], c)) & 0xFF
        elif kind != 0:
            raise PNGError(f"unknown PNG row filter {kind}")
        out[y * stride : (y + 1) * stride] = line
        prev = line
    return out


def _paeth(a: int, b: int, c: int) -> int:
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    if pa <= pb and pa <= pc:
        return a
    return b if pb <= pc else c


def _to_rgba(rows: bytes, count: int, ctype: int, palette: bytes, transparency: bytes | None) -> bytes:
    out = bytearray(count * 4)
    if ctype == 6:
        return bytes(rows)
    if ctype == 2:
        for c in range(3):
            out[c::4] = rows[c::3]
        out[3::4] = b"\xff" * count
    elif ctype == 0:
        for c in range(3):
            out[c::4] = rows
        out[3::4] = b"\xff" * count
    elif ctype == 4:
        for c in range(3):
            out[c::4] = rows[0::2]
        out[3::4] = rows[1::2]
    else:  # palette
        table = [palette[i * 3 : i * 3 + 3] + b"\xff" for i in range(len(palette) // 3)]
        for i, alpha in enumerate(transparency or b""):
            if i < len(table):
                table[i] = table[i][:3] + bytes([alpha])
        table += [b"\x00\x00\x00\xff"] * (256 - len(table))
        return b"".join(table[i] for i in rows)
    return bytes(out)
