"""The standard-library PNG codec (plugin/png.py) against Pillow."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from ffclip.plugin import png

RNG = np.random.default_rng(7)


@pytest.mark.parametrize("mode", ["RGBA", "RGB", "L", "LA", "P", "I;16"])
def test_png_reader_matches_pillow(mode):
    base = Image.fromarray(RNG.integers(0, 256, (23, 37, 4), dtype=np.uint8), "RGBA")
    image = base.convert("RGB").quantize(64) if mode == "P" else base.convert(mode if mode != "I;16" else "L")
    if mode == "I;16":
        image = Image.fromarray(RNG.integers(0, 65536, (23, 37), dtype=np.uint16))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    width, height, rgba = png.read_png(buffer.getvalue())
    assert (width, height) == image.size
    if mode == "I;16":
        expected = (np.asarray(image) >> 8).astype(np.uint8)
        assert np.array_equal(np.frombuffer(rgba, np.uint8).reshape(23, 37, 4)[..., 0], expected)
    else:
        assert rgba == image.convert("RGBA").tobytes()


def test_png_writer_roundtrip_and_errors():
    pixels = RNG.integers(0, 256, (9, 11, 4), dtype=np.uint8).tobytes()
    data = png.write_png(11, 9, pixels)
    assert Image.open(io.BytesIO(data)).convert("RGBA").tobytes() == pixels
    assert png.png_size(data) == (11, 9)
    for bad in (b"not a png", data[:40]):
        with pytest.raises(png.PNGError):
            png.read_png(bad)
