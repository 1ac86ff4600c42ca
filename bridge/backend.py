"""What the daemon runs jobs on: the real engine + pipeline, or a stand-in when models are missing.

A backend is used from the worker thread only (`run`); `describe` and `cache_stats` may be called
from the event loop for status messages and must be cheap and never raise.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from ffclip.plugin.protocol import STAGES

from .messages import EditSpec

log = logging.getLogger("ffclip.bridge")

ProgressFn = Callable[[str, float], None]
CancelFn = Callable[[], bool]


class JobError(Exception):
    """A job failure the client can act on; `code` is a protocol error code."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


@dataclass
class Outcome:
    region: tuple[int, int, int, int]
    rgba: bytes  # region w*h*4, alpha = blend mask
    faces: list[dict] = field(default_factory=list)
    stages: list[str] = field(default_factory=list)  # stages run
    untrained: bool = False


class Backend(Protocol):
    def describe(self) -> dict: ...

    def cache_stats(self) -> dict: ...

    def run(
        self,
        spec: EditSpec,
        image: bytes,
        selection: bytes | None,
        progress: ProgressFn,
        should_cancel: CancelFn,
    ) -> Outcome: ...


# ---------------------------------------------------------------------- pixels in


def image_array(spec: EditSpec, data: bytes, max_pixels: int, decode: Callable | None = None) -> np.ndarray:
    """The announced image as (H, W, C): RGBA8 is viewed in place, PNG is decoded with `decode`."""
    if spec.image_format == "rgba8":
        return np.frombuffer(data, np.uint8).reshape(spec.height, spec.width, 4)
    array = (decode or _decode_png)(data, max_pixels)
    if array.shape[:2] != (spec.height, spec.width):
        raise JobError(
            "bad_image",
            f"the PNG is {array.shape[1]}x{array.shape[0]} but the edit announced {spec.width}x{spec.height}",
        )
    return array


def selection_array(spec: EditSpec, data: bytes | None) -> np.ndarray | None:
    if data is None:
        return None
    return np.frombuffer(data, np.uint8).reshape(spec.height, spec.width)


def _decode_png(data: bytes, max_pixels: int) -> np.ndarray:
    """Pillow decoding, for backends without the engine's image reader."""
    import io

    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.width * image.height > max_pixels:
                raise JobError("too_large", f"the PNG is {image.width}x{image.height}, over the pixel limit")
            return np.asarray(image.convert("RGBA"))
    except JobError:
        raise
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types for broken files
        raise JobError("bad_image", f"cannot decode the PNG: {exc}") from None


# ---------------------------------------------------------------------- results out


def face_dict(face: Any) -> dict:
    """A FaceInfo-like object → the protocol's face entry (index, box, quad, score)."""
    entry: dict = {"index": int(getattr(face, "index", 0))}
    for name in ("box", "quad"):
        value = getattr(face, name, None)
        if value is not None:
            entry[name] = np.asarray(value, dtype=float).round(2).tolist()
    score = getattr(face, "score", None)
    if score is not None:
        entry["score"] = round(float(score), 4)
    if "box" in entry:
        entry["box"] = [int(round(v)) for v in entry["box"]]
    return entry


def stage_names(stages: Any) -> list[str]:
    """Stage entries (names, or (name, ...) pairs, or dicts with `stage`/`name`) → names."""
    names = []
    for item in stages or ():
        if isinstance(item, str):
            name = item
        elif isinstance(item, dict):
            name = item.get("stage") or item.get("name")
        elif isinstance(item, list | tuple) and item:
            name = item[0]
        else:
            name = None
        if isinstance(name, str) and name in STAGES:
            names.append(name)
    return names


# ---------------------------------------------------------------------- the real engine


class EngineBackend:
    """The engine (models loaded once) and its photo pipeline (which owns the inversion cache)."""

    def __init__(self, engine: Any, pipeline: Any, load_image: Callable | None = None):
        self.engine = engine
        self.pipeline = pipeline
        self._load_image = load_image

    def describe(self) -> dict:
        info = dict(self.engine.describe()) if self.engine is not None else {"profile": "none"}
        info["editor"] = getattr(self.pipeline, "editor", "model")
        return {"state": "ready", "models": info, "device": str(info.get("device", "cpu"))}

    def cache_stats(self) -> dict:
        stats: dict = {}
        try:
            stats["inversion"] = dict(self.pipeline.cache_stats())
            if self.engine is not None and hasattr(self.engine, "text_cache_stats"):
                stats["text"] = dict(self.engine.text_cache_stats())
        except Exception:  # noqa: BLE001 - stats are read while the worker may be updating them
            log.debug("cache stats unavailable", exc_info=True)
        return stats

    def run(self, spec, image, selection, progress, should_cancel) -> Outcome:
        from ffclip.engine.pipeline import EditRequest, PipelineError

        try:
            request = EditRequest(
                image=image_array(spec, image, self._max_pixels(), self._load_image),
                prompt=spec.prompt,
                strength=spec.strength,
                faces=spec.faces if isinstance(spec.faces, str) else list(spec.faces),
                selection=selection_array(spec, selection),
                preview=spec.preview,
            )
            result = self.pipeline.edit(request, progress=progress, should_cancel=should_cancel)
        except PipelineError as exc:
            raise JobError(exc.code, exc.message) from None
        rgba = np.ascontiguousarray(result.rgba, dtype=np.uint8)
        x, y, w, h = (int(v) for v in result.region)
        if rgba.shape != (h, w, 4):
            raise RuntimeError(f"pipeline returned rgba {rgba.shape} for region {(x, y, w, h)}")
        return Outcome(
            region=(x, y, w, h),
            rgba=rgba.tobytes(),
            faces=[face_dict(f) for f in result.faces],
            stages=stage_names(result.stages),
            untrained=bool(getattr(result, "untrained", False)),
        )

    def _max_pixels(self) -> int:
        return int(getattr(self.pipeline, "max_pixels", 0) or 1 << 62)


class UnavailableBackend:
    """Models missing (or failed to load): the daemon still runs, reports why, refuses edits."""

    def __init__(self, code: str, message: str, models: dict):
        self.code = code
        self.message = message
        self.models = models

    def describe(self) -> dict:
        return {"state": "missing" if self.code == "models_missing" else "failed", "models": self.models}

    def cache_stats(self) -> dict:
        return {}

    def run(self, spec, image, selection, progress, should_cancel) -> Outcome:
        raise JobError(self.code, self.message)


def load_engine_backend(profile: str, models_dir: str | None, device: str, editor: str, max_pixels: int) -> Backend:
    """Load the models once; missing real checkpoints give an UnavailableBackend, not a crash."""
    from ffclip.engine.imageio import load_image
    from ffclip.engine.inference import Engine, ModelsMissing
    from ffclip.engine.pipeline import Pipeline

    device = _resolve_device(device)
    engine = None
    if editor != "passthrough" or profile == "tiny":
        try:
            engine = Engine.load(profile=profile, models_dir=models_dir, device=device)
        except ModelsMissing as exc:
            names = [_name(m) for m in exc.missing]
            log.warning("model files missing: %s; fetch them with `%s`", ", ".join(names), exc.hint)
            message = f"the engine has no model weights ({', '.join(names)}); fetch them with: {exc.hint}"
            models = {"profile": profile, "device": device, "missing": names, "fetch": exc.hint}
            return UnavailableBackend("models_missing", message, models)
    pipeline = Pipeline(engine, editor=editor, max_pixels=max_pixels)
    started = time.monotonic()
    try:
        pipeline.warm_up()
    except Exception:  # noqa: BLE001 - a failed warm-up only means a slower first edit
        log.warning("warm-up failed; the first edit will be slower", exc_info=True)
    else:
        log.info("warm-up done in %.1f s", time.monotonic() - started)
    return EngineBackend(engine, pipeline, load_image)


def _resolve_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _name(missing: Any) -> str:
    """A missing-model entry without any directory of this machine."""
    import os

    text = str(missing)
    return os.path.basename(text.rstrip("/\\")) or text
