"""The model path of the pipeline with a small fake engine (same methods as inference.Engine).

The fake engine's "latent" is the aligned crop itself; `map` darkens the top 30 %
of the crop (a "hair" edit) and `synthesize` upsamples with a colour error, as a GAN
reconstruction has. So the change mask, the cache, progress, cancellation and the seam colour
matching can all be checked without weights.
"""

from __future__ import annotations

import threading
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from ffclip.app.cli import main
from ffclip.engine.face.align import AlignTransform
from ffclip.engine.face.blend import BlendConfig
from ffclip.engine.imageio import load_image
from ffclip.engine.pipeline import Pipeline
from ffclip.plugin.protocol import STAGES, EditParams, EngineError
from tests.support.edit_engine import ImageSpaceEngine


@pytest.fixture(scope="module")
def photo(photos_dir: Path) -> np.ndarray:
    img = load_image(photos_dir / "obama.jpg")
    return cv2.resize(img, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA)


def test_change_mask_confines_the_edit(photo: np.ndarray) -> None:
    pipeline = Pipeline(ImageSpaceEngine(), editor="model")
    result = pipeline.edit(EditParams.single("blond hair"), photo)
    face = result.faces[0]
    mask = result.mask
    assert np.array_equal(result.image[mask == 0], photo[mask == 0])
    x, y, w, h = face.box
    mouth = mask[y + int(0.75 * h) : y + h, x + w // 3 : x + 2 * w // 3]
    assert mouth.max() == 0, "the unchanged lower face keeps the photo's own pixels"
    # the darkened top 30 % of the crop (forehead and hair) is pasted
    u, v = np.meshgrid(np.linspace(0.15, 0.85, 30), np.linspace(0.1, 0.25, 10))
    px, py = AlignTransform(quad=face.quad, qsize=face.qsize).forward(u, v)
    assert (mask[np.rint(py).astype(int), np.rint(px).astype(int)] >= 128).mean() > 0.95
    assert result.image[mask == 255].astype(float).mean() < photo[mask == 255].mean() - 30


def test_cache_skips_detect_align_invert(photo: np.ndarray) -> None:
    engine = ImageSpaceEngine()
    pipeline = Pipeline(engine, editor="model")
    first = pipeline.edit(EditParams.single("blond hair"), photo)
    assert first.stages == list(STAGES)
    assert engine.calls["invert"] == 1 and engine.calls["synthesize"] == 2  # edit + reconstruction
    # one pass gives the edit and its 256² copy; the reconstruction stops at 256²
    assert engine.levels == [(256, 512), (256,)]

    second = pipeline.edit(EditParams.single("curly hair", strength=0.5), photo.copy())
    assert second.stages == ["encode_text", "map", "synthesize", "blend"]
    assert engine.calls["invert"] == 1 and engine.calls["synthesize"] == 3  # the reconstruction is cached
    stats = pipeline.cache_stats()
    assert stats["hits"] >= 2 and stats["entries"] >= 2 and stats["bytes"] > 0

    other = photo.copy()
    other[0, 0] ^= 1  # another photo: everything runs again
    assert pipeline.edit(EditParams.single("blond hair"), other).stages == list(STAGES)


def test_cache_is_bounded(photo: np.ndarray) -> None:
    pipeline = Pipeline(ImageSpaceEngine(), editor="model", cache_bytes=1 << 20)
    pipeline.edit(EditParams.single("blond hair"), photo)
    assert pipeline.cache_stats()["bytes"] <= 1 << 20


def test_progress_in_stage_order_and_cancel(photo: np.ndarray) -> None:
    pipeline = Pipeline(ImageSpaceEngine(), editor="model")
    events: list[tuple[str, float]] = []
    pipeline.edit(EditParams.single("blond hair"), photo, progress=lambda s, v: events.append((s, v)))
    order = list(dict.fromkeys(s for s, _ in events))
    assert order == list(STAGES)
    for stage in STAGES:
        values = [v for s, v in events if s == stage]
        assert values[-1] == 1.0 and all(0.0 <= v <= 1.0 for v in values)

    seen: list[str] = []

    def cancel_after_invert() -> bool:
        return "invert" in seen

    with pytest.raises(EngineError) as info:
        pipeline.edit(
            EditParams.single("other prompt"),
            photo,
            progress=lambda s, v: seen.append(s),
            should_cancel=cancel_after_invert,
        )
    assert info.value.code == "cancelled"
    assert "map" not in seen


def test_seam_colour_matching(photo: np.ndarray) -> None:
    """A reconstruction colour error (+20 red) is matched away on the seam ring."""

    def seam_error(config: BlendConfig) -> tuple[float, float]:
        result = Pipeline(ImageSpaceEngine(), editor="model", blend=config).edit(EditParams.single("hair"), photo)
        face = result.faces[0]
        ys, xs = np.nonzero((result.mask > 20) & (result.mask < 235))
        _, v = AlignTransform(quad=face.quad, qsize=face.qsize).inverse(xs.astype(float), ys.astype(float))
        below = v > 0.32  # the seam around the edited band, where the edit itself changed nothing
        err = np.abs(result.image[ys[below], xs[below], 0].astype(float) - photo[ys[below], xs[below], 0]).mean()
        edited = result.mask == 255
        darkening = float(photo[edited].mean() - result.image[edited].astype(float).mean())
        return float(err), darkening

    plain, dark_plain = seam_error(BlendConfig(colour_limit=0.0))
    matched, dark_matched = seam_error(BlendConfig())
    assert plain > 6.0
    assert matched < 0.4 * plain
    # matching removes the GAN's colour error, not the edit (which reaches the crop's top edge)
    assert dark_matched > 40.0 and abs(dark_matched - dark_plain) < 10.0


def test_strength_zero_changes_nothing(photo: np.ndarray) -> None:
    result = Pipeline(ImageSpaceEngine(), editor="model").edit(EditParams.single("hair", strength=0.0), photo)
    assert not result.mask.any() and np.array_equal(result.image, photo)
    assert result.region == (0, 0, 0, 0) and result.rgba.shape == (0, 0, 4)


def test_preview_and_debug_images(photo: np.ndarray) -> None:
    result = Pipeline(ImageSpaceEngine(), editor="model").edit(
        EditParams.single("hair", preview=True), photo, debug=True
    )
    images = result.debug[0]
    assert images["edit"].shape == (128, 128, 3) and images["reconstruction"].shape == (128, 128, 3)
    assert images["aligned"].shape == (256, 256, 3)
    assert images["change_mask"].shape == (128, 128) and "blend_alpha" in images


def test_cli_passthrough_writes_mask_and_debug(tmp_path: Path, photos_dir: Path) -> None:
    out, mask, dbg = tmp_path / "out.png", tmp_path / "mask.png", tmp_path / "dbg"
    argv = ["edit", str(photos_dir / "astronaut.png"), "x", "-o", str(out), "--editor", "passthrough"]
    assert main(argv + ["--mask-out", str(mask), "--debug-dir", str(dbg), "--faces", "largest"]) == 0
    assert load_image(mask).shape == (512, 512, 1)
    names = sorted(p.name for p in dbg.iterdir())
    assert "face0.aligned.png" in names and "face0.edit.png" in names and "mask.png" in names


@pytest.mark.slow
def test_cli_tiny_profile(tmp_path: Path, photos_dir: Path, capsys: pytest.CaptureFixture) -> None:
    out, mask = tmp_path / "out.png", tmp_path / "mask.png"
    argv = ["edit", str(photos_dir / "astronaut.png"), "smiling", "-o", str(out), "--profile", "tiny"]
    assert main(argv + ["--mask-out", str(mask), "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    assert "untrained" in captured.err.lower() and "UNTRAINED" in captured.out
    edited, original, m = load_image(out), load_image(photos_dir / "astronaut.png"), load_image(mask)[..., 0]
    assert np.array_equal(edited[m == 0], original[m == 0])


def test_warm_up_runs_each_network_once_with_the_edit_shapes(photo: np.ndarray) -> None:
    engine = ImageSpaceEngine()
    pipeline = Pipeline(engine, editor="model")
    pipeline.warm_up()
    assert engine.calls["invert"] == 1 and engine.calls["map"] == 1 and engine.calls["encode_text"] == 1
    assert engine.levels == [(256, 512), (256,)]
    assert pipeline.cache_stats()["entries"] == 0  # nothing of the blank face is kept
    assert pipeline.edit(EditParams.single("blond hair"), photo).stages == list(STAGES)


class _WaitingDetector:
    """Detects as dlib does, after waiting (up to 5 s) for the engine to encode a prompt meanwhile."""

    def __init__(self, real, encoded: threading.Event) -> None:
        self.real, self.encoded, self.saw_encoding = real, encoded, []

    def detect(self, rgb: np.ndarray) -> list:
        self.saw_encoding.append(self.encoded.wait(5.0))
        return self.real.detect(rgb)


class _SignallingEngine(ImageSpaceEngine):
    def __init__(self, fail: int = 0) -> None:
        super().__init__()
        self.encoded, self.threads, self.fail = threading.Event(), [], fail

    def encode_text(self, prompts: list[str]) -> torch.Tensor:
        self.threads.append(threading.current_thread())
        if self.fail:
            self.fail -= 1
            raise EngineError("bad_request", "CLIP could not encode that")
        self.encoded.set()
        return super().encode_text(prompts)


def test_a_new_photos_prompts_are_encoded_while_its_faces_are_detected(photo: np.ndarray) -> None:
    engine = _SignallingEngine()
    pipeline = Pipeline(engine, editor="model")
    pipeline.detector = detector = _WaitingDetector(pipeline.detector, engine.encoded)
    first = pipeline.edit(EditParams.single("blond hair"), photo)
    assert detector.saw_encoding == [True] and engine.calls["encode_text"] == 1  # beside, and only there
    assert engine.threads[0] is not threading.current_thread()
    assert first.stages == list(STAGES)
    alone = Pipeline(ImageSpaceEngine(), editor="model").edit(EditParams.single("blond hair"), photo)
    assert np.array_equal(first.image, alone.image)
    engine.encoded.clear()  # a known photo: no detection, CLIP on the worker's own thread
    pipeline.edit(EditParams.single("curly hair"), photo)
    assert engine.calls["encode_text"] == 2 and engine.threads[1] is threading.current_thread()


def test_an_encoding_that_fails_beside_the_detection_fails_the_edit_in_its_own_stage(photo: np.ndarray) -> None:
    engine = _SignallingEngine(fail=2)
    pipeline = Pipeline(engine, editor="model")
    seen: list[str] = []
    with pytest.raises(EngineError, match="CLIP could not encode that"):
        pipeline.edit(EditParams.single("blond hair"), photo, progress=lambda s, v: seen.append(s))
    assert "align" in seen and seen[-1] == "encode_text"  # tried again in its stage, which reports it
    assert pipeline.edit(EditParams.single("blond hair"), photo).stages[0] == "encode_text"
