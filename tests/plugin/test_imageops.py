"""Pixels without numpy (plugin/imageops.py): the composite."""

from __future__ import annotations

import numpy as np

from ffclip.plugin import imageops

RNG = np.random.default_rng(7)


def test_composite_python_and_numpy_agree():
    base = RNG.integers(0, 256, (20, 30, 4), dtype=np.uint8).tobytes()
    patch = RNG.integers(0, 256, (6, 7, 4), dtype=np.uint8).tobytes()
    region = (5, 4, 7, 6)
    fast = imageops.composite(base, 30, 20, region, patch)
    slow = imageops._composite_python(base, 30, region, patch)
    assert fast == slow
    out = np.frombuffer(fast, np.uint8).reshape(20, 30, 4)
    assert np.array_equal(out[:4], np.frombuffer(base, np.uint8).reshape(20, 30, 4)[:4])
    mask = np.frombuffer(imageops.region_mask(30, 20, region, patch), np.uint8).reshape(20, 30)
    assert mask[4:10, 5:12].tobytes() == patch[3::4] and mask.sum() == sum(patch[3::4])
