"""A stand-in backend without models: fast, deterministic, numpy only.

It follows the pipeline's contract closely enough to exercise everything the daemon does (stages and
progress in order, a per-photo cache that lets re-edits skip detect/align/invert, cancellation between
stages, no_face on featureless images) — for the protocol tests, and for developing clients
(`ffclip-engine serve --fake-engine`) on machines without torch or weights. Its edits are a colour
inversion of the centre of the photo: it never pretends to be a model.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict

import numpy as np

from ffclip.plugin.protocol import CACHEABLE_STAGES, STAGES

from .backend import CancelFn, JobError, Outcome, ProgressFn, image_array, selection_array
from .messages import EditSpec


class FakeBackend:
    def __init__(self, stage_seconds: float = 0.0, cache_entries: int = 8, max_pixels: int = 1 << 62):
        self.stage_seconds = stage_seconds
        self.max_pixels = max_pixels
        self._cache: OrderedDict[str, tuple[int, int, int, int]] = OrderedDict()
        self._cache_entries = cache_entries
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        self._prompts: OrderedDict[str, None] = OrderedDict()

    def describe(self) -> dict:
        models = {"profile": "fake", "untrained": True, "note": "no models: a test stand-in"}
        return {"state": "ready", "models": models, "device": "cpu"}

    def cache_stats(self) -> dict:
        with self._lock:
            inversion = {"hits": self.hits, "misses": self.misses, "entries": len(self._cache)}
            return {"inversion": inversion, "text": {"entries": len(self._prompts)}}

    def run(
        self,
        spec: EditSpec,
        image: bytes,
        selection: bytes | None,
        progress: ProgressFn,
        should_cancel: CancelFn,
    ) -> Outcome:
        pixels = image_array(spec, image, self.max_pixels)
        mask = selection_array(spec, selection)
        key = hashlib.sha256(pixels.tobytes()).hexdigest() + repr(spec.faces)
        with self._lock:
            box = self._cache.get(key)
            if box is not None:
                self._cache.move_to_end(key)
                self.hits += 1
            else:
                self.misses += 1
        cached, ran = box is not None, []
        for stage in STAGES:
            if should_cancel():
                raise JobError("cancelled", "the edit was cancelled")
            if cached and stage in CACHEABLE_STAGES:
                progress(stage, 1.0)
                continue
            self._stage(stage, progress)
            ran.append(stage)
            if stage == "detect":
                box = self._detect(pixels)
        assert box is not None
        with self._lock:
            self._cache[key] = box
            self._prompts[spec.prompt] = None
            while len(self._cache) > self._cache_entries:
                self._cache.popitem(last=False)
            while len(self._prompts) > self._cache_entries:
                self._prompts.popitem(last=False)
        return self._edit(pixels, mask, box, ran)

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
            raise JobError("no_face", "no face found in the image")
        h, w = pixels.shape[:2]
        side = max(min(h, w) // 2, 1)
        return (w - side) // 2, (h - side) // 2, side, side

    @staticmethod
    def _edit(pixels: np.ndarray, mask: np.ndarray | None, box, ran: list[str]) -> Outcome:
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
        return Outcome((x, y, w, h), np.ascontiguousarray(rgba).tobytes(), [face], ran, untrained=True)
