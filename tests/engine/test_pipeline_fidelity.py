"""`fidelity: high` (issue 29) through the pipeline on the tiny profile's seeded HyperStyle: the
photo's generator offsets are computed once per (photo, face), cached beside the inversion and
counted in the cache's byte budget; previews, strength changes and Apply reuse them; without
HyperStyle's files an edit is refused with models_missing, never edited at the standard fidelity."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest

from ffclip.engine.imageio import load_image
from ffclip.engine.inference import Engine
from ffclip.engine.pipeline import Pipeline
from ffclip.plugin.protocol import STAGES, Attribute, EditParams, EngineError


@pytest.fixture(scope="module")
def photo(photos_dir: Path) -> np.ndarray:
    return cv2.resize(load_image(photos_dir / "obama.jpg"), None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA)


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine.load("tiny", threads=0)


def _counting(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> Counter:
    calls: Counter = Counter()
    for name in ("invert", "invert_high"):
        real = getattr(engine, name)

        def counted(*args, _real=real, _name=name, **kwargs):
            calls[_name] += 1
            return _real(*args, **kwargs)

        monkeypatch.setattr(engine, name, counted)
    return calls


def _high(prompt: str = "smiling", strength: float = 1.0, preview: bool = False) -> EditParams:
    return EditParams((Attribute(prompt, strength),), "largest", preview, fidelity="high")


def test_high_fidelity_inverts_once_per_face_and_everything_after_reuses_it(
    engine: Engine, photo: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _counting(engine, monkeypatch)
    pipeline = Pipeline(engine)
    first = pipeline.edit(_high(preview=True), photo)
    assert first.stages == list(STAGES) and calls == {"invert_high": 1}
    assert first.result(_high(preview=True)).to_message()["fidelity"] == "high"
    # a new strength (live slider), a new prompt, Apply at full size: no inversion again
    for params in (_high(strength=0.4, preview=True), _high("grey hair", preview=True), _high(strength=0.4)):
        result = pipeline.edit(params, photo)
        assert "invert" not in result.stages and calls == {"invert_high": 1}, params
    assert pipeline.edit(_high(strength=0.4, preview=True), photo).stages == ["synthesize", "blend"]
    # standard fidelity on the same face: e4e's inversion beside HyperStyle's, each cached
    standard = pipeline.edit(EditParams.single("smiling", faces="largest"), photo)
    assert "invert" in standard.stages and calls == {"invert_high": 1, "invert": 1}


def test_high_and_standard_edits_differ_and_high_repeats_exactly(engine: Engine, photo: np.ndarray) -> None:
    high = Pipeline(engine).edit(_high(), photo)
    again = Pipeline(engine).edit(_high(), photo)  # a fresh cache: the same offsets, the same pixels
    standard = Pipeline(engine).edit(EditParams.single("smiling", faces="largest"), photo)
    assert np.array_equal(high.image, again.image)
    assert high.region != (0, 0, 0, 0)
    assert not np.array_equal(high.image, standard.image)


def test_the_offsets_count_in_the_cache_budget(engine: Engine, photo: np.ndarray) -> None:
    pipeline = Pipeline(engine)
    pipeline.edit(EditParams.single("smiling", faces="largest"), photo)
    standard_bytes = pipeline.cache_stats()["bytes"]
    pipeline.edit(_high(), photo)
    # the offsets of this face, as the cache holds them
    entry = next(v for k, (v, _) in pipeline._cache._items.items() if k[0] == "face")  # noqa: SLF001
    offsets = entry.inversion("high").offsets
    offsets_bytes = sum(d.numel() * d.element_size() for d in offsets if d is not None)
    assert offsets_bytes > 100_000
    assert pipeline.cache_stats()["bytes"] >= standard_bytes + offsets_bytes
    # a budget smaller than one face's offsets keeps nothing of it, and stays within the budget
    small = Pipeline(engine, cache_bytes=offsets_bytes // 2)
    small.edit(_high(), photo)
    assert small.cache_stats()["bytes"] <= offsets_bytes // 2


def test_without_hyperstyles_files_high_is_refused_naming_them(
    photo: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = Engine.load("tiny", threads=0)
    engine.set_hyperstyle(
        lambda: pytest.fail("loaded without its files"),
        lambda: ["hyperstyle", "hyperstyle-w-encoder"],
        "ffclip-engine models fetch high",
    )
    calls = _counting(engine, monkeypatch)
    assert engine.describe()["fidelities"] == ["standard"]
    assert engine.describe()["high_fidelity"] == {
        "loaded": False,
        "missing": ["hyperstyle", "hyperstyle-w-encoder"],
        "fetch": "ffclip-engine models fetch high",
    }
    with pytest.raises(EngineError) as info:
        Pipeline(engine).edit(_high(), photo)
    assert info.value.code == "models_missing"
    assert "hyperstyle (hyperstyle_ffhq.pt), hyperstyle-w-encoder (faces_w_encoder.pt)" in info.value.message
    assert "ffclip-engine models fetch high" in info.value.message
    assert not calls  # refused before any inversion: no silent fallback to e4e
    # standard still works on that engine
    assert "invert" in Pipeline(engine).edit(EditParams.single("smiling", faces="largest"), photo).stages


def test_the_tiny_church_has_no_hyperstyle_as_the_real_one() -> None:
    church = Engine.load("tiny", domain="church", threads=0)
    assert church.describe()["fidelities"] == ["standard"]
    assert "church" in church.describe()["high_fidelity"]["missing"][0]


def test_a_car_is_edited_at_high_fidelity_on_its_192_by_256_frame(photo: np.ndarray) -> None:
    """Cars get HyperStyle too (hyperstyle_cars.pt): the official rows 32:224 of the pooled image,
    the hypernetwork on the car's 192 × 256 frame."""
    car = Engine.load("tiny", domain="car", threads=0)
    pipeline = Pipeline(car)
    params = EditParams.single("a red car", domain="car", fidelity="high")
    first = pipeline.edit(params, photo)
    assert "invert" in first.stages and car.hyperstyle().rows == (32, 224)
    assert pipeline.edit(EditParams.single("a blue car", domain="car", fidelity="high"), photo).stages == [
        "encode_text",
        "map",
        "synthesize",
        "blend",
    ]
