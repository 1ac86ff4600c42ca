"""Damaged photos are refused, wherever the damage is (issue 31): the corpus in tests/data/damaged
(tools/damaged_images.py: flipped bytes in the coded pixels, bad CRCs, lying lengths, cut data in
PNG, JPEG, WebP and TIFF), the issue's PNG that came out black, and `edit --url`, which reads the
photo with the engine's reader before it connects. Every photo the reader accepts decodes to the
same pixels through OpenCV's decoders (the differential check of tools/fuzz, run here on the sound
files; the seeded fuzz runs of tests/engine/test_imageio_fuzzed.py run it on every accepted mutant)."""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from ffclip.bridge.fake import FakeBackend
from ffclip.bridge.testing import running_server
from ffclip.engine import imageio
from ffclip.engine.imageio import decode_image, load_image
from ffclip.plugin.protocol import EngineError
from tests.support.paths import REPO
from tools import damaged_images  # noqa: E402
from tools.fuzz import seeds  # noqa: E402
from tools.fuzz.targets import second_decoder_disagrees  # noqa: E402

CORPUS = REPO / "tests" / "data" / "damaged"
MANIFEST: dict[str, str] = json.loads((CORPUS / "manifest.json").read_text())


def test_the_corpus_holds_every_format_and_its_manifest_lists_every_file():
    files = {p.name for p in CORPUS.iterdir()} - {"manifest.json"}
    assert files == set(MANIFEST)
    assert {name.split("-")[0] for name in files} == {"png", "jpeg", "webp", "tiff"}


@pytest.mark.parametrize("name", sorted(MANIFEST))
def test_every_damaged_photo_is_bad_image_with_its_reason(name: str):
    with pytest.raises(EngineError) as err:
        load_image((CORPUS / name).read_bytes())
    assert err.value.code == "bad_image", err.value
    assert "(" in err.value.message and len(err.value.message) > 30, err.value.message  # says why


def test_the_sound_files_of_the_corpus_decode_to_the_source_pixels():
    """The damage is what the reader refuses, not the encodings: undamaged, each decodes (the
    lossless ones to exactly the source), and OpenCV agrees on every pixel."""
    source = damaged_images.source_pixels()
    for name, data in damaged_images.sound_files(source).items():
        pixels = load_image(data)
        assert pixels.shape == source.shape, name
        if "lossy" not in name and "jpeg" not in name:
            assert np.array_equal(pixels, source), name
        assert second_decoder_disagrees(data, decode_image(data)[0]) is None, name


def test_the_issues_png_with_damaged_pixel_data_is_refused_not_read_black(photos_dir):
    data = bytearray((photos_dir / "astronaut.png").read_bytes())
    pos = 8
    while data[pos + 4 : pos + 8] != b"IDAT":
        pos += 12 + struct.unpack(">I", data[pos : pos + 4])[0]
    start = pos + 8 + 1000
    data[start : start + 200] = bytes(b ^ 0xFF for b in data[start : start + 200])
    with pytest.raises(EngineError) as err:
        load_image(bytes(data))
    assert err.value.code == "bad_image" and "IDAT" in err.value.message, err.value


def test_a_png_whose_stream_stops_short_is_refused():
    """Pillow fills the rows a complete but short image data stream lacks; libpng refuses it."""
    rgb = damaged_images.source_pixels()
    raw = b"".join(b"\x00" + row.tobytes() for row in rgb[:64])  # half the rows, a valid stream
    ihdr = struct.pack(">IIBBBBB", 128, 128, 8, 2, 0, 0, 0)

    def chunk(kind: bytes, body: bytes) -> bytes:
        import zlib

        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    import zlib

    data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    with pytest.raises(EngineError) as err:
        load_image(data)
    assert "the image needs" in err.value.message, err.value


@pytest.mark.parametrize("fmt", ["jpeg", "png", "tiff", "webp"])
def test_opencv_decodes_the_same_pixels_from_every_seed(fmt: str):
    for n, data in enumerate(seeds.image_seeds(fmt)):
        assert second_decoder_disagrees(data, decode_image(data)[0]) is None, (fmt, n)


def test_opencv_decodes_the_same_pixels_from_the_test_photos(photos_dir):
    for path in sorted(photos_dir.glob("*.*")):
        if path.suffix.lower() in (".png", ".jpg"):
            data = path.read_bytes()
            assert second_decoder_disagrees(data, decode_image(data)[0]) is None, path.name


def test_a_tiffs_orientation_is_applied_once():
    """Found by the differential: Pillow's TIFF loader applies the orientation tag itself; the
    reader read the tag before loading and turned the photo a second time."""
    data = seeds.image_seeds("tiff")[5]  # 40×32 stored, orientation 5 (transpose)
    upright = np.ascontiguousarray(seeds.photo().transpose(1, 0, 2))
    assert np.array_equal(load_image(data), upright)


def test_a_16_bit_rgb_tiff_keeps_16_bit():
    """Found by the differential: Pillow reads 16-bit RGB TIFFs as 8 bit."""
    data = seeds.image_seeds("tiff")[4]
    pixels = load_image(data)
    assert pixels.dtype == np.uint16 and np.array_equal(pixels, seeds.photo(depth=16))


def test_a_harmless_jpeg_warning_is_not_damage():
    """Phone cameras write bytes after the scan: libjpeg's "extraneous bytes before marker 0xd9"."""
    rgb = damaged_images.source_pixels()
    jpeg = damaged_images.encode(rgb, "JPEG", quality=90)
    padded = jpeg[:-2] + b"\x00\x00\x00" + jpeg[-2:]
    assert np.array_equal(load_image(padded), load_image(jpeg))


def test_decode_errors_raised_while_reading_the_exif_are_not_swallowed(monkeypatch):
    """The orientation is read after decoding, so a decoder error can no longer hide behind it."""
    calls = []
    real = imageio._orientation
    monkeypatch.setattr(imageio, "_orientation", lambda img: calls.append(img.im is not None) or real(img))
    load_image(damaged_images.encode(damaged_images.source_pixels(), "PNG"))
    assert calls == [True]  # the pixels were decoded before the EXIF was looked at


# --------------------------------------------------------------------------- edit --url


def _edit(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "ffclip.app", "edit", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


@pytest.mark.process
def test_edit_url_refuses_a_damaged_photo_like_the_engine_before_connecting(tmp_path):
    done = _edit(
        str(CORPUS / "png-idat-flipped.png"), "smiling", "-o", str(tmp_path / "o.png"), "--url", "ws://127.0.0.1:9"
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error [bad_image]: "), done.stderr


@pytest.mark.process
def test_edit_url_refuses_a_huge_photo_as_too_large(tmp_path):
    huge = tmp_path / "huge.png"
    buffer = io.BytesIO()
    Image.new("L", (12_000, 9_000)).save(buffer, format="PNG")  # 108 MP of zeros: a few hundred KB
    huge.write_bytes(buffer.getvalue())
    done = _edit(str(huge), "smiling", "-o", str(tmp_path / "o.png"), "--url", "ws://127.0.0.1:9")
    assert done.returncode == 2 and done.stderr.startswith("error [too_large]: "), done.stderr


@pytest.mark.process
def test_edit_url_sends_the_selection(tmp_path):
    rgb = damaged_images.source_pixels()
    photo, selection = tmp_path / "photo.png", tmp_path / "selection.png"
    Image.fromarray(rgb).save(photo)
    keep_left = np.zeros(rgb.shape[:2], np.uint8)
    keep_left[:, 64:] = 255
    Image.fromarray(keep_left).save(selection)
    out = tmp_path / "out.png"
    with running_server(lambda: FakeBackend(0.0)) as server:
        done = _edit(str(photo), "smiling", "-o", str(out), "--selection", str(selection), "--url", server.url)
    assert done.returncode == 0, done.stderr
    edited = np.asarray(Image.open(out).convert("RGB"))
    assert np.array_equal(edited[:, :64], rgb[:, :64])  # outside the selection: untouched
    assert not np.array_equal(edited[:, 64:], rgb[:, 64:])  # inside: edited
