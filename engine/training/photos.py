"""Photos to aligned face crops for `invert-folder`, in worker processes.

Reading, dlib detection and e4e alignment cost ~0.1–1 s a photo on one CPU core, far more than the
encoder on a GPU, so they run in a pool of worker processes that stays a few photos ahead of the
encoder. Results come back in submission order, so the output does not depend on the number of
workers. This module does not import torch: a worker only loads what detection needs.

A worker that dies (a native crash inside a decoder or dlib) breaks the pool; the pool is rebuilt
and the photo at the head is retried alone: if it kills a worker again it is reported as
unreadable and the run goes on.
"""

from __future__ import annotations

import os
import signal
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ffclip.engine.training.orphans import end_with_parent

CROP_SIZE = 256  # e4e's input size
CRASHED = "the photo crashed a detection worker process"


@dataclass(frozen=True)
class PrepOptions:
    max_pixels: int
    faces: str = "all"  # "all" or "largest"


@dataclass
class Prepared:
    """One photo: its index entry (status, reason, faces) and its aligned crops (k, 256, 256, 3)."""

    rel: str
    entry: dict[str, Any]
    crops: np.ndarray | None


def prepare_photo(folder: Path, rel: str, options: PrepOptions) -> Prepared:
    """Read, detect and align one photo. A photo that cannot be read or analysed is reported in its
    entry, never raised: one bad file must not end a run over thousands."""
    from ffclip.engine.face.align import align_face
    from ffclip.engine.face.detect import FaceDetector
    from ffclip.engine.imageio import as_rgb8, load_image
    from ffclip.plugin.protocol import EngineError

    try:
        rgb = as_rgb8(load_image(folder / rel, options.max_pixels))
        faces = FaceDetector().detect(rgb)
    except EngineError as exc:
        return Prepared(rel, {"status": "unreadable", "reason": f"{exc.code}: {exc.message}"}, None)
    except Exception as exc:  # a decoder or detector failure on one photo
        return Prepared(rel, {"status": "unreadable", "reason": f"{type(exc).__name__}: {exc}"}, None)
    if not faces:
        return Prepared(rel, {"status": "no_face", "reason": "no face found"}, None)
    if options.faces == "largest":
        faces = [max(faces, key=lambda f: f.area)]
    entry = {
        "status": "ok",
        "faces": [{"face": f.index, "box": [int(v) for v in f.box], "score": round(float(f.score), 4)} for f in faces],
    }
    crops = np.stack([align_face(rgb, f.quad, f.qsize, output_size=CROP_SIZE)[0] for f in faces])
    return Prepared(rel, entry, crops)


PrepareFn = Callable[[Path, str, PrepOptions], Prepared]


def _init_worker() -> None:
    # Ctrl-C goes to the whole process group: the parent shuts the pool down, workers must not
    # print their own KeyboardInterrupt tracebacks. One thread each: the workers are the parallelism.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    end_with_parent()  # a worker outlives a SIGKILLed rank otherwise
    import cv2

    from ffclip.engine.face.detect import FaceDetector

    cv2.setNumThreads(1)
    FaceDetector().load_models()


def default_workers(local_world_size: int = 1) -> int:
    """Cores per process on this node, less one for the process itself; at least 1, at most 8."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, min(8, cores // max(local_world_size, 1) - 1))


def _finished(future: Future[Prepared]) -> bool:
    return future.done() and not future.cancelled() and future.exception() is None


class PhotoPipeline:
    """Prepared photos in the order given, computed `workers` at a time (0: in this process)."""

    def __init__(self, folder: Path, options: PrepOptions, workers: int, prepare: PrepareFn = prepare_photo) -> None:
        self.folder = folder
        self.options = options
        self.workers = workers
        self.prepare = prepare
        self.prefetch = 2 * workers + 2  # bounded: results wait in memory for the encoder
        self.crashes = 0
        self._pool: ProcessPoolExecutor | None = None

    def __enter__(self) -> PhotoPipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def run(self, rels: Iterable[str]) -> Iterator[Prepared]:
        if self.workers <= 0:
            for rel in rels:
                yield self.prepare(self.folder, rel, self.options)
            return
        todo = iter(rels)
        pending: deque[tuple[str, Future[Prepared]]] = deque()
        while True:
            while len(pending) < self.prefetch and (rel := next(todo, None)) is not None:
                pending.append((rel, self._submit(rel)))
            if not pending:
                return
            rel, future = pending.popleft()
            try:
                yield future.result()
            except BrokenProcessPool:
                yield self._retry_alone(rel)
                # photos in flight without a result were lost with the pool: submit them again
                pending = deque((r, f if _finished(f) else self._submit(r)) for r, f in pending)

    def _submit(self, rel: str) -> Future[Prepared]:
        if self._pool is None:
            import multiprocessing

            # spawn, not fork: the parent holds torch threads (and maybe CUDA and a process group)
            ctx = multiprocessing.get_context("spawn")
            self._pool = ProcessPoolExecutor(self.workers, mp_context=ctx, initializer=_init_worker)
        return self._pool.submit(self.prepare, self.folder, rel, self.options)

    def _retry_alone(self, rel: str) -> Prepared:
        """After a crash: was it this photo? Run it alone in a fresh pool to find out."""
        self.crashes += 1
        self._discard_pool()
        try:
            return self._submit(rel).result()
        except BrokenProcessPool:
            self._discard_pool()
            return Prepared(rel, {"status": "unreadable", "reason": CRASHED}, None)

    def _discard_pool(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
