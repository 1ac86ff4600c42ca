"""The sound files that mutants are made from: checkpoints in both torch formats, a TorchScript
archive laid out like OpenAI's CLIP, an official-layout e4e file, photos in every format the
decoders read. Built in memory, deterministically, by the code that writes such files for real."""

from __future__ import annotations

import argparse
import io
import pickle
import pickletools
import struct
import sys
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[2]


# --------------------------------------------------------------------------- checkpoints


def checkpoint_object(data_bytes: int = 1 << 20) -> dict[str, Any]:
    """A checkpoint that exercises everything the loader rebuilds: tensors of every common dtype,
    views sharing a storage, a transposed view, a zero-stride view, empty and 0-d tensors, a
    Parameter, an OrderedDict state_dict with its _metadata, an argparse Namespace, plain values;
    about `data_bytes` of tensor data, so that memory can be compared with the file's size."""
    import torch

    gen = torch.Generator().manual_seed(0)
    big = torch.randn(data_bytes // 4, generator=gen)
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    state: OrderedDict[str, Any] = OrderedDict(
        weight=big[: (data_bytes // 8)].reshape(-1, 64),
        bias=big[(data_bytes // 8) :][:64],  # a view of the same storage at an offset
        half=torch.randn(16, 3, generator=gen).half(),
        bf16=torch.randn(5, generator=gen).bfloat16(),
        steps=torch.tensor(123456789, dtype=torch.int64),
        mask=torch.tensor([True, False, True]),
        index=torch.arange(10, dtype=torch.int32),
        transposed=base.t(),
        expanded=torch.full((), 0.5).expand(8, 512),
        empty=torch.empty(0, 7),
        double=torch.randn(3, 3, generator=gen, dtype=torch.float64),
        byte=torch.arange(7, dtype=torch.uint8),
    )
    state._metadata = OrderedDict({"": {"version": 1}, "block": {"version": 2}})  # type: ignore[attr-defined]
    return {
        "state_dict": state,
        "latent_avg": torch.randn(18, 8, generator=gen),
        "param": torch.nn.Parameter(torch.ones(4)),
        "opts": argparse.Namespace(stylegan_size=1024, lr=1e-4, paths=["a", "b"], flag=True, nothing=None),
        "step": 7,
        "meta": {"name": "fuzz", "scale": 1.5, "shape": (3, 4), "tags": {"x", "y"}, "raw": b"\x00\x01"},
    }


def torch_bytes(obj: Any, legacy: bool) -> bytes:
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer, _use_new_zipfile_serialization=not legacy)
    return buffer.getvalue()


def legacy_regions(data: bytes) -> list[tuple[int, int]]:
    """Where a legacy file keeps its structure: its five pickles (magic number, protocol, system
    info, the object, the storage keys) and the 8-byte element count before each storage."""
    regions, at = [], 0
    for _ in range(5):
        end = at
        for _op, _arg, pos in pickletools.genops(io.BytesIO(data[at:])):
            end = at + pos + 1
        regions.append((at, end))
        at = end
    keys = pickle.loads(data[regions[4][0] : regions[4][1]])  # our own seed: a list of strings
    return regions + _storage_headers(data, at, len(keys))


def _storage_headers(data: bytes, at: int, left: int) -> list[tuple[int, int]]:
    """The count headers of `left` storages from `at` to the end of the file. The element size of
    each is not in the header, so the one (1, 2, 4 or 8) that lands on the next header is found."""
    if left == 0:
        return [] if at == len(data) else [(-1, -1)]
    if at + 8 > len(data):
        return [(-1, -1)]
    (count,) = struct.unpack("<q", data[at : at + 8])
    if count < 0:
        return [(-1, -1)]
    for itemsize in (4, 8, 2, 1):
        rest = _storage_headers(data, at + 8 + count * itemsize, left - 1)
        if (-1, -1) not in rest:
            return [(at, at + 8), *rest]
    return [(-1, -1)]


def torchscript_bytes() -> bytes:
    """OpenAI's CLIP archive layout at tiny widths (tests/support/openai_clip_archive.py), float16."""
    import tempfile

    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))  # `python -m tools.fuzz` from elsewhere
    from tests.support.openai_clip_archive import save_archive

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ViT-B-32.pt"
        save_archive(path)
        return path.read_bytes()


def official_e4e_bytes(legacy: bool = False) -> bytes:
    """A full-size e4e FFHQ checkpoint in the official layout with zero-stride placeholder weights
    (every key and shape real, a few hundred kilobytes): what `models import` takes apart."""
    from ffclip.engine.checkpoints import synthetic

    files = synthetic.official_size_files(1024)
    return torch_bytes(files["e4e"], legacy)


def zip_regions(data: bytes) -> list[tuple[int, int]]:
    """The archive's own structure: local headers and the central directory."""
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        infos = zf.infolist()
        start_dir = zf.start_dir
    regions = [(i.header_offset, i.header_offset + 30 + len(i.filename.encode()) + 64) for i in infos]
    return regions + [(start_dir, len(data))]


# --------------------------------------------------------------------------- photos


def photo(width: int = 40, height: int = 32, channels: int = 3, depth: int = 8) -> np.ndarray:
    """A small deterministic photo-like image: gradients and noise."""
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[0:height, 0:width]
    top = 255 if depth == 8 else 65535
    base = np.stack([xx * top // width, yy * top // height, (xx + yy) * top // (width + height)], axis=-1)
    noise = rng.integers(0, max(1, top // 16), (height, width, 3))
    rgb = np.clip(base + noise, 0, top)
    if channels == 4:
        alpha = np.full((height, width, 1), top)
        alpha[: height // 2, : width // 2] = top // 3
        rgb = np.concatenate([rgb, alpha], axis=-1)
    if channels == 1:
        rgb = rgb[..., :1]
    return rgb.astype(np.uint8 if depth == 8 else np.uint16)


def exif_orientation(
    value: int, tag_type: int = 3, count: int = 1, field: bytes | None = None, extra: bytes = b""
) -> bytes:
    """An EXIF block (APP1 payload) holding only the orientation tag in a little-endian TIFF
    structure, written as `tag_type` (3 SHORT, 4 LONG, 2 ASCII, 5 RATIONAL...) with `count` values."""
    ifd_offset = 8
    entry_value = struct.pack("<HHI", 0x0112, tag_type, count)
    if field is not None:  # the entry's 4-byte value field as given (a FLOAT, an offset to `extra`)
        entry_value += field
    elif tag_type == 3 and count == 1:
        entry_value += struct.pack("<HH", value & 0xFFFF, 0)
    elif tag_type == 4 and count == 1:
        entry_value += struct.pack("<I", value & 0xFFFFFFFF)
    else:  # values beyond the entry: an offset (which may point anywhere)
        entry_value += struct.pack("<I", value & 0xFFFFFFFF)
    tiff = b"II*\x00" + struct.pack("<I", ifd_offset) + struct.pack("<H", 1) + entry_value + b"\x00\x00\x00\x00" + extra
    # the APP1 identifier: Pillow writes these bytes as they are into a JPEG (and a reader finds no
    # EXIF without it); into a PNG's eXIf chunk it writes them without it
    return b"Exif\x00\x00" + tiff


def _pil(array: np.ndarray, fmt: str, **options: Any) -> bytes:
    from PIL import Image

    arr = array[..., 0] if array.shape[-1] == 1 else array
    buffer = io.BytesIO()
    Image.fromarray(arr).save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _cv2(array: np.ndarray, ext: str) -> bytes:
    import cv2

    arr = array
    if arr.shape[-1] == 3:
        arr = cv2.cvtColor(arr, cv2.COLOR_RGB2BGR)
    elif arr.shape[-1] == 4:
        arr = cv2.cvtColor(arr, cv2.COLOR_RGBA2BGRA)
    ok, encoded = cv2.imencode(ext, arr)
    assert ok
    return encoded.tobytes()


def image_seeds(fmt: str) -> list[bytes]:
    """Sound files of one format, in the variants its decoder has code paths for."""
    from PIL import Image

    rgb, rgba, grey = photo(), photo(channels=4), photo(channels=1)
    if fmt == "jpeg":
        return [
            _pil(rgb, "JPEG", quality=90),
            _pil(rgb, "JPEG", quality=80, progressive=True, exif=exif_orientation(6)),
            _pil(grey, "JPEG"),
            _pil(rgb, "JPEG", subsampling=2, exif=exif_orientation(8)),
        ]
    if fmt == "png":
        palette = Image.fromarray(rgb).quantize(16)
        buffer = io.BytesIO()
        palette.save(buffer, format="PNG", transparency=0)
        return [
            _pil(rgb, "PNG"),
            _pil(rgba, "PNG"),
            _pil(grey, "PNG"),
            buffer.getvalue(),
            _cv2(photo(channels=4, depth=16), ".png"),
            _cv2(photo(channels=1, depth=16), ".png"),
            _pil(rgb, "PNG", exif=exif_orientation(3)),
        ]
    if fmt == "tiff":
        return [
            _pil(rgb, "TIFF"),
            _pil(rgba, "TIFF", compression="tiff_lzw"),
            _pil(grey, "TIFF", compression="tiff_adobe_deflate"),
            _pil(rgb, "TIFF", compression="packbits"),
            _cv2(photo(depth=16), ".tiff"),
            _pil(rgb, "TIFF", exif=exif_orientation(5)),
        ]
    if fmt == "webp":
        return [
            _pil(rgb, "WEBP", quality=80),
            _pil(rgba, "WEBP", lossless=True),
            _pil(rgb, "WEBP", lossless=True, exif=exif_orientation(6)),
        ]
    raise ValueError(fmt)


def exif_seeds() -> list[bytes]:
    """JPEGs whose EXIF orientation lies: every value 0-9 and far beyond, the wrong tag type, a
    count with values outside the block, an offset outside the file, a RATIONAL 8/1, a FLOAT 6.0."""
    rgb = photo()
    out = []
    for value in (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 255, 0xFFFF):
        out.append(_pil(rgb, "JPEG", exif=exif_orientation(value)))
    for tag_type, count, value in ((4, 1, 6), (4, 1, 1 << 31), (2, 4, 60), (5, 1, 8), (3, 1000, 0x7FFFFFF0), (7, 2, 6)):
        out.append(_pil(rgb, "JPEG", exif=exif_orientation(value, tag_type, count)))
    # numbers that equal a valid orientation but are not integers: RATIONAL 8/1 (after the IFD, at
    # offset 26), FLOAT 6.0
    rational = exif_orientation(0, 5, 1, field=struct.pack("<I", 26), extra=struct.pack("<II", 8, 1))
    out.append(_pil(rgb, "JPEG", exif=rational))
    out.append(_pil(rgb, "JPEG", exif=exif_orientation(0, 11, 1, field=struct.pack("<f", 6.0))))
    return out
