"""Damaged photos: truncated, bit-flipped and lying JPEG/PNG/TIFF/WebP files and EXIF that lies about
the orientation decode, or are `bad_image` with a reason (`too_large` when the header asks for more
pixels than allowed); never a traceback, never more memory than the pixel limit allows. Seeded fuzz
runs (tools/fuzz) of the decoders, then the same files through `edit`, `faces`, `invert-folder` and
the daemon."""

from __future__ import annotations

import json
import random
import struct
from pathlib import Path

import cv2
import numpy as np
import pytest

from ffclip.app.cli import main
from ffclip.engine import imageio
from ffclip.engine.imageio import load_image
from ffclip.plugin.protocol import EngineError
from tools.fuzz import mutators, runner, seeds, targets, wire  # noqa: E402

FORMATS = ["jpeg", "png", "tiff", "webp"]

# --------------------------------------------------------------------------- seeded fuzz runs


@pytest.mark.parametrize("fmt", [*FORMATS, "exif"])
def test_fuzzed_images_decode_or_are_bad_image_within_the_pixel_budget(fmt: str, tmp_path: Path) -> None:
    with runner.address_space_limit(3 << 30):
        report = runner.run(targets.ImageTarget(fmt), 200, seed=18, workdir=tmp_path)
    assert report.escapes == [] and report.executed == [], report.escapes[:3]
    assert report.over_budget == []  # decoded pixels and copies within 16 bytes x max_pixels (Linux)
    # the mutants reach both outcomes: damaged files are refused, harmless damage still decodes
    assert report.outcomes["bad_image"] > 40 and report.outcomes["ok"] > 20, report.outcomes


def test_fuzzed_png_frames_through_the_daemon_are_errors_never_internal(tmp_path: Path) -> None:
    report = runner.run(wire.DaemonImageTarget(), 40, seed=18, workdir=tmp_path)
    assert report.escapes == [], report.escapes[:3]
    assert report.outcomes["error:bad_image"] > 5, report.outcomes


# --------------------------------------------------------------------------- one file per lie


def _sound(fmt: str) -> bytes:
    return seeds.image_seeds(fmt)[0]


def _bad_image(data: bytes, match: str = "") -> str:
    with pytest.raises(EngineError) as err:
        load_image(data, max_pixels=targets.IMAGE_MAX_PIXELS)
    assert err.value.code == "bad_image", err.value
    assert len(err.value.message) > 10 and match in err.value.message, err.value.message
    return err.value.message


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("keep", [0.1, 0.5, 0.9])
def test_a_truncated_photo_is_bad_image(fmt: str, keep: float) -> None:
    data = _sound(fmt)
    _bad_image(data[: int(len(data) * keep)])


@pytest.mark.parametrize("seed_index", [0, 4])  # 8 bit through Pillow, 16 bit RGBA through OpenCV
def test_a_png_whose_header_lies_about_its_size_is_bad_image(seed_index: int) -> None:
    """The IHDR says more (or fewer) rows than the data holds, with correct checksums."""
    chunks = mutators.png_chunks(seeds.image_seeds("png")[seed_index])
    width, height = struct.unpack(">II", chunks[0][1][:8])
    for lie in (height * 2, 999, max(height // 2, 1)):
        ihdr = struct.pack(">II", width, lie) + chunks[0][1][8:]
        data = mutators.pack_png([(b"IHDR", ihdr), *chunks[1:]])
        try:
            arr = load_image(data, max_pixels=targets.IMAGE_MAX_PIXELS)
        except EngineError as exc:
            assert exc.code == "bad_image" and exc.message
        else:  # fewer rows than the data holds can decode: then exactly as many as the header says
            assert arr.shape[:2] == (lie, width)


def test_a_tiff_whose_strips_lie_is_bad_image() -> None:
    data = bytearray(_sound("tiff"))
    order = "<" if data[:2] == b"II" else ">"
    (ifd,) = struct.unpack(order + "I", data[4:8])
    (count,) = struct.unpack(order + "H", data[ifd : ifd + 2])
    for i in range(count):
        at = ifd + 2 + 12 * i
        tag, _kind, _n = struct.unpack(order + "HHI", data[at : at + 8])
        if tag == 273:  # StripOffsets: past the end of the file
            data[at + 8 : at + 12] = struct.pack(order + "I", len(data) * 4)
    _bad_image(bytes(data))


def test_a_photo_larger_than_the_limit_is_too_large_before_decoding() -> None:
    chunks = mutators.png_chunks(_sound("png"))
    ihdr = struct.pack(">II", 4000, 3000) + chunks[0][1][8:]
    with pytest.raises(EngineError) as err:
        load_image(mutators.pack_png([(b"IHDR", ihdr), *chunks[1:]]), max_pixels=targets.IMAGE_MAX_PIXELS)
    assert err.value.code == "too_large" and "4000x3000" in err.value.message


# what each of seeds.exif_seeds() must do: the orientation applied (PIL's reading of an integer tag,
# whatever its declared type), or None: the tag ignored and the photo read as stored
EXIF_EXPECTED = [None, None, 2, 3, 4, 5, 6, 7, 8, None, None, None]  # SHORT 0-9, 255, 65535
EXIF_EXPECTED += [6, None, None, None, None, None]  # LONG 6, LONG 2**31, ASCII, RATIONAL, 1000 SHORTs, UNDEFINED
EXIF_EXPECTED += [None, None]  # RATIONAL 8/1, FLOAT 6.0: equal to a valid orientation, but not integers


@pytest.mark.parametrize("index", range(len(EXIF_EXPECTED)))
def test_exif_that_lies_about_the_orientation_is_ignored_and_a_valid_one_applied(index: int) -> None:
    """Orientation 0, 9, 255, 65535, the wrong tag type, a count past the block, an offset outside
    the file, a non-integer equal to 6 or 8: the photo is read as stored; a valid tag turns it
    (never refused for its EXIF)."""
    exif = seeds.exif_seeds()
    assert len(exif) == len(EXIF_EXPECTED)
    arr = load_image(exif[index], max_pixels=targets.IMAGE_MAX_PIXELS)
    stored = load_image(exif[1], max_pixels=targets.IMAGE_MAX_PIXELS)  # orientation 1: as stored
    orientation = EXIF_EXPECTED[index]
    expected = stored if orientation is None else np.ascontiguousarray(imageio._ORIENT[orientation](stored))
    assert arr.shape == expected.shape and np.array_equal(arr, expected)


@pytest.mark.parametrize(
    "error",
    [
        OSError("broken data stream"),
        SyntaxError("broken PNG file"),
        ValueError("x"),
        TypeError("x"),
        IndexError("x"),
        KeyError("x"),
        struct.error("x"),
        ZeroDivisionError(),
        cv2.error("x"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_whatever_a_decoder_raises_is_bad_image(monkeypatch, error: BaseException) -> None:
    def broken(*_args):
        raise error

    monkeypatch.setattr(imageio, "_decode_pil", broken)
    message = _bad_image(_sound("jpeg"), "truncated or corrupt")
    assert type(error).__name__ in message


def test_a_decoder_that_returns_another_size_than_the_header_is_bad_image(monkeypatch) -> None:
    """A decoder that believes other sizes than the header's (which the pixel limit was checked on)."""
    real = imageio._decode_pil
    monkeypatch.setattr(imageio, "_decode_pil", lambda img: np.tile(real(img), (2, 1, 1)))
    _bad_image(_sound("png"), "its header says")


def test_a_file_of_another_format_is_not_opened() -> None:
    """EPS (Pillow would run Ghostscript) and the like are not photo formats: bad_image, nothing run."""
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"
    assert "unrecognised file format" in _bad_image(eps)


# --------------------------------------------------------------------------- the commands


def _damaged_files(folder: Path) -> dict[str, bytes]:
    """One damaged file per format: truncated, bit-flipped in the data, or lying in a header."""
    rng = random.Random(18)
    files = {
        "cut.jpg": _sound("jpeg")[:900],
        "cut.png": _sound("png")[:300],
        "cut.tif": _sound("tiff")[:200],
        "cut.webp": _sound("webp")[:100],
        "flipped.png": mutators.flip_bits(rng, _sound("png")[:40]) + _sound("png")[40:],
        "empty.jpg": b"",
        "text.jpg": b"not a photo at all",
    }
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return files


def test_edit_and_faces_say_bad_image_with_a_reason(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    folder = tmp_path / "bad"
    for name in _damaged_files(folder):
        path = folder / name
        rc = main(["edit", str(path), "smiling", "-o", str(tmp_path / "out.png"), "--editor", "passthrough"])
        err = capsys.readouterr().err
        assert rc == 2 and "error [bad_image]: " in err and "Traceback" not in err, (name, err)
        assert len(err.split("error [bad_image]: ", 1)[1].strip()) > 10, (name, err)  # the reason
        assert main(["faces", str(path), "--json"]) == 2, name
        out, err = capsys.readouterr()
        doc = json.loads(out.splitlines()[0])
        assert doc["error"]["code"] == "bad_image" and doc["error"]["message"], (name, doc)
        assert "Traceback" not in err


@pytest.mark.process
def test_invert_folder_reports_each_damaged_photo_and_goes_on(
    photos_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    folder = tmp_path / "photos"
    damaged = _damaged_files(folder)
    (folder / "astronaut.png").write_bytes((photos_dir / "astronaut.png").read_bytes())
    report_path = tmp_path / "report.json"
    args = ["invert-folder", str(folder), "-o", str(tmp_path / "w.npy"), "--profile", "tiny"]
    rc = main([*args, "--threads", "1", "--no-progress", "--report", str(report_path)])
    assert rc == 0 and "Traceback" not in capsys.readouterr().err
    report = json.loads(report_path.read_text())
    unreadable = {u["file"]: u["reason"] for u in report["unreadable"]}
    assert set(unreadable) == set(damaged)
    assert all(reason.startswith(("bad_image: ", "too_large: ")) for reason in unreadable.values()), unreadable
    assert report["faces"] == 1
    assert np.load(tmp_path / "w.npy").shape[0] == 1
