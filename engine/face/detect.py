"""Face detection: dlib HOG detector + 68-point landmarks, false positives vetted by dlib's CNN.

e4e's alignment is defined on dlib's 68 landmarks, so the HOG detector (upsample 1) and the
68-point shape predictor are used exactly as in e4e/FFHQ. HOG fires on face-like texture (the
mission patch in the astronaut photo scores 0.12), so every detection below `trust_score` is
re-checked by dlib's MMOD CNN face detector on a small crop around the box; that costs ~0.3 s per
weak detection on a CPU instead of ~10 s for running the CNN on the whole photo.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import cv2
import numpy as np

from ffclip.engine.face.align import ffhq_quad


@dataclass
class FaceInfo:
    """One detected face; `index` is its rank by detector score (0 = most confident)."""

    index: int
    box: tuple[int, int, int, int]  # x, y, w, h (dlib rect: left, top, right-left, bottom-top)
    score: float
    landmarks: np.ndarray  # (68, 2) float64, pixel-centre coordinates
    quad: np.ndarray  # (4, 2) FFHQ/e4e oriented quad: NW, SW, SE, NE corners of the aligned crop
    qsize: float = 0.0  # side of the quad in pixels
    verified: str = field(default="score")  # "score" (trusted) or "cnn" (weak, confirmed by the CNN)

    def to_json(self) -> dict:
        return {
            "index": self.index,
            "box": [int(v) for v in self.box],
            "score": float(self.score),
            "landmarks": [[float(x), float(y)] for x, y in self.landmarks],
            "quad": [[float(x), float(y)] for x, y in self.quad],
        }

    def to_wire(self) -> dict:
        """The protocol's face entry in a `result`: index, box, quad and score, rounded."""
        return {
            "index": self.index,
            "box": [int(v) for v in self.box],
            "quad": np.asarray(self.quad, dtype=float).round(2).tolist(),
            "score": round(float(self.score), 4),
        }

    @classmethod
    def from_json(cls, doc: dict, scale: float = 1.0) -> FaceInfo:
        """The inverse of `to_json` (quad and qsize recomputed from the landmarks), with every
        coordinate multiplied by `scale` (detections of a resized copy of the photo)."""
        landmarks = np.asarray(doc["landmarks"], dtype=np.float64).reshape(68, 2) * scale
        quad, qsize = ffhq_quad(landmarks)
        box = tuple(int(round(v * scale)) for v in doc["box"])
        return cls(int(doc["index"]), box, float(doc["score"]), landmarks, quad, qsize)

    @property
    def area(self) -> int:
        return int(self.box[2]) * int(self.box[3])


class _Models:
    """dlib's models, one set per thread that detects (loading the predictor takes ~1 s).

    dlib's Python objects are not thread-safe: one detector or shape predictor called from two
    threads at once corrupts its scratch buffers and crashes the process (two engine workers did).
    Each thread therefore loads its own set on its first detection and keeps it; an engine worker is
    one long-lived thread, so this costs one load (~100 MB) per worker, and detections of different
    workers run in parallel instead of queueing behind a lock.
    """

    _local = threading.local()

    def __init__(self) -> None:
        import dlib
        import face_recognition_models as frm

        self.hog = dlib.get_frontal_face_detector()
        self.predictor = dlib.shape_predictor(frm.pose_predictor_model_location())
        self.cnn = dlib.cnn_face_detection_model_v1(frm.cnn_face_detector_model_location())
        self.rectangle = dlib.rectangle

    @classmethod
    def get(cls) -> _Models:
        """This thread's models, loaded on its first call."""
        models = getattr(cls._local, "models", None)
        if models is None:
            models = cls._local.models = cls()
        return models


@dataclass
class DetectorConfig:
    upsample: int = 1  # as e4e/FFHQ; faces down to ~40 px
    hog_threshold: float = 0.0  # dlib's default decision threshold
    trust_score: float = 0.8  # HOG scores at or above this are accepted without the CNN check
    cnn_face_px: int = 100  # the CNN check rescales the candidate box to about this size
    cnn_threshold: float = 0.0
    # HOG at upsample 1 costs ~1 s per megapixel on a CPU. Above max_exact_pixels it runs on a copy
    # shrunk to approx_pixels instead; the landmarks still come from the full image, but the quads
    # are then ~1 % of the face size away from e4e's own detection on the full image.
    max_exact_pixels: int = 12_000_000
    approx_pixels: int = 6_000_000


class FaceDetector:
    def __init__(self, config: DetectorConfig | None = None) -> None:
        self.config = config or DetectorConfig()

    def load_models(self) -> None:
        """Load this thread's dlib models now (~1 s) instead of on its first detection."""
        _Models.get()

    def detect(self, rgb: np.ndarray) -> list[FaceInfo]:
        """All faces of an (H, W, 3) uint8 RGB image, most confident first."""
        models = _Models.get()
        img = np.ascontiguousarray(rgb)
        rects, scores = self._hog(models, img)
        order = sorted(range(len(rects)), key=lambda i: -scores[i])
        faces: list[FaceInfo] = []
        for i in order:
            rect, score = rects[i], float(scores[i])
            box = (rect.left(), rect.top(), rect.right() - rect.left(), rect.bottom() - rect.top())
            verified = "score"
            if score < self.config.trust_score:
                if not self._cnn_confirms(models, img, box):
                    continue
                verified = "cnn"
            shape = models.predictor(img, rect)
            landmarks = np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float64)
            quad, qsize = ffhq_quad(landmarks)
            faces.append(FaceInfo(len(faces), box, score, landmarks, quad, qsize, verified))
        return faces

    def _hog(self, models: _Models, img: np.ndarray) -> tuple[list, list[float]]:
        pixels = img.shape[0] * img.shape[1]
        if pixels <= self.config.max_exact_pixels:
            rects, scores, _ = models.hog.run(img, self.config.upsample, self.config.hog_threshold)
            return list(rects), list(scores)
        f = float(np.sqrt(self.config.approx_pixels / pixels))
        small = cv2.resize(img, None, fx=f, fy=f, interpolation=cv2.INTER_AREA)
        rects, scores, _ = models.hog.run(small, self.config.upsample, self.config.hog_threshold)

        def back(v: int) -> int:
            return int(round((v + 0.5) / f - 0.5))

        full = [models.rectangle(back(r.left()), back(r.top()), back(r.right()), back(r.bottom())) for r in rects]
        return full, list(scores)

    def _cnn_confirms(self, models: _Models, img: np.ndarray, box: tuple[int, int, int, int]) -> bool:
        """Whether the CNN finds a face of similar size centred inside the HOG box."""
        x, y, w, h = box
        side = max(w, h, 1)
        cx, cy = x + w / 2.0, y + h / 2.0
        height, width = img.shape[:2]
        x0, y0 = int(max(cx - side, 0)), int(max(cy - side, 0))
        x1, y1 = int(min(cx + side, width)), int(min(cy + side, height))
        if x1 - x0 < 2 or y1 - y0 < 2:
            return False
        scale = self.config.cnn_face_px / side
        interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
        crop = cv2.resize(img[y0:y1, x0:x1], None, fx=scale, fy=scale, interpolation=interp)
        for det in models.cnn(np.ascontiguousarray(crop), 0):
            if det.confidence < self.config.cnn_threshold:
                continue
            r = det.rect
            dx0, dy0 = r.left() / scale + x0, r.top() / scale + y0
            dw, dh = r.width() / scale, r.height() / scale
            ccx, ccy = dx0 + dw / 2.0, dy0 + dh / 2.0
            inside = x <= ccx <= x + w and y <= ccy <= y + h
            if inside and 0.5 <= dw / side <= 2.0:
                return True
        return False


class KnownFaces:
    """A detector that returns given faces (e.g. `ffclip-engine faces --json` of the same photo,
    made on another machine): for benchmarks where dlib or its models are not installed."""

    def __init__(self, faces: list[FaceInfo]) -> None:
        self.faces = faces

    def load_models(self) -> None:
        pass

    def detect(self, rgb: np.ndarray) -> list[FaceInfo]:
        return list(self.faces)


def detect_faces(rgb: np.ndarray, config: DetectorConfig | None = None) -> list[FaceInfo]:
    return FaceDetector(config).detect(rgb)
