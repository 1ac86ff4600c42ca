"""Bad input and image formats: clear errors (never a traceback), 16 bit, alpha, grey, EXIF."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps

from ffclip.app.cli import main
from ffclip.engine.imageio import load_image, save_image
from ffclip.engine.pipeline import Pipeline
from ffclip.plugin.protocol import BadRequest, EditParams, EngineError, parse_faces


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR announces width x height, with (almost) no pixel data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 64)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def _encode(arr: np.ndarray, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt, **kw)
    return buf.getvalue()


@pytest.fixture
def gradient() -> np.ndarray:
    y, x = np.mgrid[0:40, 0:60]
    return np.stack([x * 4, y * 6, (x + y) * 2], axis=2).astype(np.uint8)


# -- load_image errors ---------------------------------------------------------------------------


def test_not_an_image() -> None:
    with pytest.raises(EngineError) as info:
        load_image(b"this is not an image at all")
    assert info.value.code == "bad_image"


def test_missing_and_empty_files(tmp_path: Path) -> None:
    for source in (tmp_path / "missing.png", b""):
        with pytest.raises(EngineError) as info:
            load_image(source)
        assert info.value.code == "bad_image"


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_file(gradient: np.ndarray, fmt: str) -> None:
    data = _encode(np.tile(gradient, (8, 8, 1)), fmt)
    with pytest.raises(EngineError) as info:
        load_image(data[: len(data) // 2])
    assert info.value.code == "bad_image"
    assert "truncated" in info.value.message or "corrupt" in info.value.message


def test_too_large_is_refused_from_the_header() -> None:
    with pytest.raises(EngineError) as info:
        load_image(_png_header_only(100_000, 100_000), max_pixels=50_000_000)
    assert info.value.code == "too_large" and "MP" in info.value.message
    with pytest.raises(EngineError) as info:
        load_image(_png_header_only(300, 200), max_pixels=50_000)
    assert info.value.code == "too_large"


def test_pipeline_rejects_tiny_huge_and_malformed_arrays() -> None:
    pipeline = Pipeline(None, editor="passthrough", max_pixels=10_000)
    cases = {
        "bad_image": [
            np.zeros((1, 1, 3), np.uint8),
            np.zeros((20, 20, 2), np.uint8),
            np.zeros((20, 20), np.float32),
        ],
        "too_large": [np.zeros((200, 200, 3), np.uint8)],
    }
    for code, images in cases.items():
        for image in images:
            with pytest.raises(EngineError) as info:
                pipeline.edit(EditParams.single("x"), image)
            assert info.value.code == code


def test_no_face() -> None:
    pipeline = Pipeline(None, editor="passthrough")
    flat = np.full((120, 160, 3), 128, np.uint8)
    with pytest.raises(EngineError) as info:
        pipeline.edit(EditParams.single("x"), flat)
    assert info.value.code == "no_face"


def test_bad_requests() -> None:
    for faces in ("some", "1,x", [-1], []):
        with pytest.raises(BadRequest) as info:
            parse_faces(faces)
        assert info.value.code == "bad_request"
    assert parse_faces("0, 2") == (0, 2) and parse_faces("LARGEST") == "largest"


# -- the CLI: a clear message and an exit code, never a traceback ---------------------------------


def test_cli_bad_inputs(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    not_image = tmp_path / "notes.jpg"
    not_image.write_text("hello")
    tiny = tmp_path / "tiny.png"
    Image.new("RGB", (1, 1)).save(tiny)
    huge = tmp_path / "huge.png"
    huge.write_bytes(_png_header_only(50_000, 50_000))
    blank = tmp_path / "blank.png"
    Image.new("RGB", (200, 150), (90, 120, 200)).save(blank)
    out = tmp_path / "out.png"
    expected = {not_image: "bad_image", tiny: "bad_image", huge: "too_large", blank: "no_face"}
    for path, code in expected.items():
        rc = main(["edit", str(path), "x", "-o", str(out), "--editor", "passthrough"])
        err = capsys.readouterr().err
        assert rc == 2 and f"[{code}]" in err and "Traceback" not in err, (path.name, err)
    assert main(["faces", str(not_image), "--json"]) == 2
    assert '"bad_image"' in capsys.readouterr().out


# -- formats ---------------------------------------------------------------------------------------


def test_exif_orientation_matches_pillow(gradient: np.ndarray) -> None:
    for orientation in range(1, 9):
        img = Image.fromarray(gradient)
        exif = img.getexif()
        exif[0x0112] = orientation
        buf = io.BytesIO()
        img.save(buf, format="PNG", exif=exif)
        expected = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(buf.getvalue()))))
        got = load_image(buf.getvalue())
        assert np.array_equal(got, expected), orientation


def test_sixteen_bit_alpha_and_grey_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    cases = {
        "rgb16.png": rng.integers(0, 65536, (30, 20, 3), dtype=np.uint16),
        "rgba16.png": rng.integers(0, 65536, (30, 20, 4), dtype=np.uint16),
        "grey16.png": rng.integers(0, 65536, (30, 20, 1), dtype=np.uint16),
        "rgba8.png": rng.integers(0, 256, (30, 20, 4), dtype=np.uint8),
        "grey8.png": rng.integers(0, 256, (30, 20, 1), dtype=np.uint8),
    }
    for name, arr in cases.items():
        save_image(tmp_path / name, arr)
        back = load_image(tmp_path / name)
        assert back.dtype == arr.dtype and np.array_equal(back, arr), name


def test_sixteen_bit_png_written_by_opencv_keeps_precision(tmp_path: Path) -> None:
    arr = (np.arange(64 * 48 * 3, dtype=np.uint32) * 37 % 65536).astype(np.uint16).reshape(48, 64, 3)
    cv2.imwrite(str(tmp_path / "a.png"), arr[..., ::-1])
    assert np.array_equal(load_image(tmp_path / "a.png"), arr)


def test_palette_and_la_images(gradient: np.ndarray) -> None:
    pal = Image.fromarray(gradient).convert("P")
    assert load_image(_encode_pil(pal)).shape == (40, 60, 3)
    la = Image.fromarray(gradient).convert("LA")
    assert load_image(_encode_pil(la)).shape == (40, 60, 4)


def _encode_pil(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()
