"""What the daemon runs jobs on: the real engine + pipeline, or a stand-in when models are missing.

A backend is used from the worker thread only (`run`); `describe` and `cache_stats` may be called
from the event loop for status messages and must be cheap and never raise.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

import numpy as np

from ffclip.plugin.protocol import EditResult, EngineError, EngineState

from .messages import EditAnnouncement

if TYPE_CHECKING:
    from ffclip.engine.interface import EditEngine
    from ffclip.engine.pipeline import Pipeline

log = logging.getLogger("ffclip.bridge")

ProgressFn = Callable[[str, float], None]
CancelFn = Callable[[], bool]


class Backend(Protocol):
    def describe(self) -> dict: ...

    def cache_stats(self) -> dict: ...

    def run(
        self,
        request: EditAnnouncement,
        image: bytes,
        selection: bytes | None,
        progress: ProgressFn,
        should_cancel: CancelFn,
        memo: dict,
    ) -> EditResult:
        """The edit's result (its id and seconds are the server's to fill), or EngineError. `memo`
        belongs to the image frame: what the backend keeps in it (decoded pixels, the cache key)
        serves every later edit that reuses the frame (`reuse_image`), and goes with the frame."""


# ---------------------------------------------------------------------- pixels in


def image_array(request: EditAnnouncement, data: bytes, max_pixels: int, decode: Callable | None = None) -> np.ndarray:
    """The announced image as (H, W, C): RGBA8 is viewed in place, PNG is decoded with `decode`."""
    spec = request.image
    if spec.format == "rgba8":
        return np.frombuffer(data, np.uint8).reshape(spec.height, spec.width, 4)
    array = (decode or _decode_png)(data, max_pixels)
    if array.shape[:2] != (spec.height, spec.width):
        raise EngineError(
            "bad_image",
            f"the PNG is {array.shape[1]}x{array.shape[0]} but the edit announced {spec.width}x{spec.height}",
        )
    return array


def selection_array(request: EditAnnouncement, data: bytes | None) -> np.ndarray | None:
    if data is None:
        return None
    return np.frombuffer(data, np.uint8).reshape(request.image.height, request.image.width)


def _decode_png(data: bytes, max_pixels: int) -> np.ndarray:
    """Pillow decoding, for backends without the engine's image reader."""
    import io

    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.width * image.height > max_pixels:
                raise EngineError("too_large", f"the PNG is {image.width}x{image.height}, over the pixel limit")
            return np.asarray(image.convert("RGBA"))
    except EngineError:
        raise
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types for broken files
        raise EngineError("bad_image", f"cannot decode the PNG: {exc}") from None


# ---------------------------------------------------------------------- the real engine


class EngineBackend:
    """The engine (models loaded once) and its photo pipeline (which owns the inversion cache)."""

    def __init__(self, engine: EditEngine | None, pipeline: Pipeline, load_image: Callable | None = None):
        self.engine = engine
        self.pipeline = pipeline
        self._load_image = load_image

    def describe(self) -> dict:
        info = dict(self.engine.describe()) if self.engine is not None else {"profile": "none"}
        info["editor"] = self.pipeline.editor
        return {"state": EngineState.READY, "models": info, "device": str(info.get("device", "cpu"))}

    def cache_stats(self) -> dict:
        stats: dict = {}
        try:
            stats["inversion"] = dict(self.pipeline.cache_stats())
            if self.engine is not None:
                stats["text"] = dict(self.engine.text_cache_stats())
        except Exception:  # noqa: BLE001 - stats are read while the worker may be updating them
            log.debug("cache stats unavailable", exc_info=True)
        return stats

    def run(self, request, image, selection, progress, should_cancel, memo) -> EditResult:
        pixels, key = self._pixels(request, image, memo)
        photo = self.pipeline.edit(
            request.params,
            pixels,
            selection_array(request, selection),
            progress=progress,
            should_cancel=should_cancel,
            key=key,
        )
        return photo.result(request.params)

    def _pixels(self, request: EditAnnouncement, frame: bytes, memo: dict) -> tuple[np.ndarray, str]:
        """The frame's pixels and cache key, decoded and hashed once per frame (a live preview
        reuses its photo's frame: hashing 12 MP again would cost ~50 ms per update)."""
        from ffclip.engine.pipeline import image_key

        if "pixels" not in memo:
            pixels = image_array(request, frame, self.pipeline.max_pixels or 1 << 62, self._load_image)
            memo["pixels"], memo["key"] = pixels, image_key(pixels)
        return memo["pixels"], memo["key"]


class UnavailableBackend:
    """Models missing (or failed to load): the daemon still runs, reports why, refuses edits."""

    def __init__(self, code: str, message: str, models: dict):
        self.code = code
        self.message = message
        self.models = models

    def describe(self) -> dict:
        return {
            "state": EngineState.MISSING if self.code == "models_missing" else EngineState.FAILED,
            "models": self.models,
        }

    def cache_stats(self) -> dict:
        return {}

    def run(self, request, image, selection, progress, should_cancel, memo) -> EditResult:
        raise EngineError(self.code, self.message)
