"""A stand-in backend without models: fast, deterministic, numpy only.

It follows the pipeline's contract closely enough to exercise everything the daemon does (stages and
progress in order, a per-photo cache that lets re-edits skip detect/align/invert, cancellation between
stages, no_face on featureless images) — for the protocol tests, and for developing clients
(`ffclip-engine serve --fake-engine`) on machines without torch or weights. Its edits are a colour
inversion of the centre of the photo: it never pretends to be a model.
"""

from __future__ import annotations

import hashlib
import time

import numpy as np

from ffclip.engine.cache import LRUCache
from ffclip.plugin.protocol import CACHEABLE_STAGES, STAGES, EditResult, EngineError, EngineState

from .backend import CancelFn, ProgressFn, image_array, selection_array
from .messages import EditAnnouncement


class FakeBackend:
    def __init__(
        self, stage_seconds: float = 0.0, cache_entries: int = 8, max_pixels: int = 1 << 62, device: str = "cpu"
    ):
        self.stage_seconds = stage_seconds
        self.device = "cpu" if device in ("auto", "") else device  # a label: nothing runs on a device
        self.max_pixels = max_pixels
        self._cache = LRUCache(cache_entries)  # photo and faces -> the face box
        self._prompts = LRUCache(cache_entries)

    def describe(self) -> dict:
        models = {"profile": "fake", "untrained": True, "note": "no models: a test stand-in"}
        # both fidelities, as an engine with HyperStyle's files (each inverted once per photo, like the engine)
        models.update({"fidelities": ["standard", "high"], "high_fidelity": {"loaded": False, "missing": []}})
        return {"state": EngineState.READY, "models": models, "device": self.device}

    def cache_stats(self) -> dict:
        return {"inversion": self._cache.stats(), "text": {"entries": len(self._prompts)}}

    def run(
        self,
        request: EditAnnouncement,
        image: bytes,
        selection: bytes | None,
        progress: ProgressFn,
        should_cancel: CancelFn,
        memo: dict,
    ) -> EditResult:
        pixels = image_array(request, image, self.max_pixels)
        mask = selection_array(request, selection)
        key = hashlib.sha256(pixels.tobytes()).hexdigest() + repr((request.params.faces, request.params.fidelity))
        box = self._cache.get(key)
        cached, ran = box is not None, []
        for stage in STAGES:
            if should_cancel():
                raise EngineError("cancelled", "the edit was cancelled")
            if cached and stage in CACHEABLE_STAGES:
                progress(stage, 1.0)
                continue
            self._stage(stage, progress)
            ran.append(stage)
            if stage == "detect":
                box = self._detect(pixels)
        assert box is not None
        self._cache.put(key, box)
        for prompt in request.params.prompts:
            self._prompts.put(prompt, None)
        result = self._edit(pixels, mask, box, ran)
        result.edits, result.preview = request.params.edits, request.params.preview
        result.fidelity = request.params.fidelity
        return result

    def _stage(self, stage: str, progress: ProgressFn) -> None:
        progress(stage, 0.0)
        if self.stage_seconds:
            for step in range(1, 5):
                time.sleep(self.stage_seconds / 4)
                progress(stage, step / 4)
        else:
            progress(stage, 1.0)

    @staticmethod
    def _detect(pixels: np.ndarray) -> tuple[int, int, int, int]:
        if int(pixels[..., :3].max()) == int(pixels[..., :3].min()):
            raise EngineError("no_face", "no face found in the image")
        h, w = pixels.shape[:2]
        side = max(min(h, w) // 2, 1)
        return (w - side) // 2, (h - side) // 2, side, side

    @staticmethod
    def _edit(pixels: np.ndarray, mask: np.ndarray | None, box, ran: list[str]) -> EditResult:
        x, y, w, h = box
        rgb = pixels[y : y + h, x : x + w, :3]
        if rgb.dtype != np.uint8:
            rgb = (rgb >> 8).astype(np.uint8)
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        r = np.hypot((xx + 0.5) / w - 0.5, (yy + 0.5) / h - 0.5) * 2.0
        alpha = np.clip((1.0 - r) * 4.0, 0.0, 1.0)  # feathered disc
        if mask is not None:
            alpha *= mask[y : y + h, x : x + w] / 255.0
        rgba = np.dstack([255 - rgb, np.rint(alpha * 255).astype(np.uint8)])
        face = {"index": 0, "box": [x, y, w, h], "quad": [[x, y], [x, y + h], [x + w, y + h], [x + w, y]]}
        rgba_bytes = np.ascontiguousarray(rgba).tobytes()
        return EditResult((x, y, w, h), rgba_bytes, [face], stages=ran, size=w, untrained=True)
