"""What gets fuzzed: each target builds its seed files, makes mutants and feeds them to the code
under test, naming the outcome. `TARGETS` maps the names the command line takes to the targets."""

from __future__ import annotations

import codecs
import contextlib
import io
import random
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from . import mutators as M
from . import seeds

IMAGE_MAX_PIXELS = 1_000_000  # the pixel limit the image targets decode under


def regional(rng: random.Random, data: bytes, regions: list[tuple[int, int]]) -> bytes:
    """A blind mutation inside one of the file's structural regions (headers, pickles), where a
    mutation of a large file's bytes would otherwise almost always land in tensor data."""
    start, end = rng.choice(regions)
    return data[:start] + M.blind(rng, data[start:end]) + data[end:]


def read_outcome(read: Callable[[Path], Any], path: Path) -> str:
    """'ok', or the refusal label of what reading `path` raised (anything else is re-raised)."""
    try:
        read(path)
    except Exception as exc:  # noqa: BLE001 - sorted into refusals; anything else re-raised
        return checkpoint_label(exc)
    return "ok"


def checkpoint_label(exc: BaseException) -> str:
    """The refusal a checkpoint error stands for."""
    from ffclip.engine.checkpoints.errors import CheckpointError, UnsafeCheckpointError

    if isinstance(exc, UnsafeCheckpointError):
        return "unsafe"
    damaged = getattr(sys.modules["ffclip.engine.checkpoints.errors"], "DamagedCheckpointError", None)
    if damaged is not None and isinstance(exc, damaged):
        return "damaged"
    if isinstance(exc, CheckpointError):
        return "refused"
    raise exc


class CheckpointTarget:
    """`load_checkpoint` on mutants of a 1 MB checkpoint in one torch format."""

    memory_bound = "2 x the file's size + 64 KiB"
    trace_memory = True
    # the reader's fixed bookkeeping, whatever the file claims: the zip directory's objects, the
    # pickle machine, the error message (10-30 KB; more than 2x a mutant of a few KB)
    overhead = 64 << 10

    def __init__(self, legacy: bool) -> None:
        self.legacy = legacy
        self.name = "checkpoint-legacy" if legacy else "checkpoint-zip"
        fmt = "legacy (torch < 1.6, pickle + raw storages)" if legacy else "zip (torch >= 1.6)"
        self.description = f"load_checkpoint on a 1 MB checkpoint, {fmt}"

    def setup(self, workdir: Path, marker: Path) -> None:
        self.marker = str(marker).encode()
        self.seed = seeds.torch_bytes(seeds.checkpoint_object(), self.legacy)
        # zipfile decodes a member name without the UTF-8 flag as cp437, a codec imported on first
        # use (~100 KB once): imported here, so that the first mutant with that flag cleared is not
        # charged for it (a one-time cost, which a small mutant's 2x budget cannot cover)
        codecs.lookup("cp437")
        if self.legacy:
            self.regions = seeds.legacy_regions(self.seed)
            self.pickle_span = self.regions[3]
        else:
            self.members = M.zip_members(self.seed)
            self.regions = seeds.zip_regions(self.seed)

    def mutant(self, rng: random.Random) -> bytes:
        choice = rng.random()
        if self.legacy and choice < 0.5:
            start, end = self.pickle_span
            return self.seed[:start] + M.pickle_mutation(rng, self.seed[start:end], self.marker) + self.seed[end:]
        if not self.legacy and choice < 0.5:
            return M.zip_member_mutation(rng, self.members, self.marker)
        if choice < 0.8:
            return regional(rng, self.seed, self.regions)
        return M.blind(rng, self.seed)

    def run(self, data: bytes, path: Path) -> str:
        from ffclip.engine.checkpoints.safe_load import load_checkpoint

        return read_outcome(load_checkpoint, path)

    def sound(self) -> bytes:
        return self.seed

    def budget(self, data: bytes) -> int | None:
        return 2 * len(data) + self.overhead


class TorchScriptTarget:
    """`read_torchscript_state_dict` on mutants of a TorchScript archive laid out like OpenAI's CLIP."""

    name = "torchscript"
    description = "read_torchscript_state_dict on a tiny CLIP archive in OpenAI's layout"

    def setup(self, workdir: Path, marker: Path) -> None:
        self.marker = str(marker).encode()
        self.seed = seeds.torchscript_bytes()
        self.members = M.zip_members(self.seed)
        self.regions = seeds.zip_regions(self.seed)

    def mutant(self, rng: random.Random) -> bytes:
        choice = rng.random()
        if choice < 0.6:
            return M.zip_member_mutation(rng, self.members, self.marker)
        if choice < 0.85:
            return regional(rng, self.seed, self.regions)
        return M.blind(rng, self.seed)

    def run(self, data: bytes, path: Path) -> str:
        from ffclip.engine.checkpoints.torchscript import read_torchscript_state_dict

        return read_outcome(read_torchscript_state_dict, path)

    def sound(self) -> bytes:
        return self.seed

    def budget(self, data: bytes) -> int | None:
        return None  # the archive is mostly code text; its tensors' objects outweigh the file


class ImportTarget:
    """`ffclip-engine models import` (the command, as a user runs it) on mutants of a full-size
    official-layout e4e checkpoint: loading, recognising and checking the layout."""

    def __init__(self, legacy: bool) -> None:
        self.legacy = legacy
        self.name = "import-legacy" if legacy else "import-zip"
        self.description = "`ffclip-engine models import` of an official-layout e4e file" + (
            " (legacy format)" if legacy else ""
        )

    def setup(self, workdir: Path, marker: Path) -> None:
        self.marker = str(marker).encode()
        self.store = workdir / "store"
        self.seed = seeds.official_e4e_bytes(self.legacy)
        if self.legacy:
            self.regions = seeds.legacy_regions(self.seed)
            self.pickle_span = self.regions[3]
        else:
            self.members = M.zip_members(self.seed)
            self.regions = seeds.zip_regions(self.seed)

    def mutant(self, rng: random.Random) -> bytes:
        choice = rng.random()
        if choice < 0.6:
            if self.legacy:
                start, end = self.pickle_span
                mutated = M.pickle_mutation(rng, self.seed[start:end], self.marker)
                return self.seed[:start] + mutated + self.seed[end:]
            return M.zip_member_mutation(rng, self.members, self.marker)
        if choice < 0.85:
            return regional(rng, self.seed, self.regions)
        return M.blind(rng, self.seed)

    def run(self, data: bytes, path: Path) -> str:
        from ffclip.app.cli import main

        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = main(["models", "import", str(path), "--models", str(self.store)])
        text = err.getvalue()
        if "Traceback" in text:
            raise AssertionError(f"a traceback was printed: {text[-300:]}")
        if code == 0:
            return "ok"
        if code == 1 and text.startswith("import refused: "):
            return "refused: damaged" if " is damaged" in text else "refused"
        raise AssertionError(f"exit {code}: {text[:300]}")

    def sound(self) -> bytes:
        return self.seed

    def budget(self, data: bytes) -> int | None:
        return None  # ~800 tensor objects of a few hundred bytes each outweigh the 300 KB file


class ImageTarget:
    """`load_image` (what edit, faces, invert-folder and the daemon decode with) on mutants of
    photos in one format, under a pixel limit of IMAGE_MAX_PIXELS."""

    memory_bound = f"16 bytes x max_pixels ({IMAGE_MAX_PIXELS}) + 4 x the file's size + 4 MB"
    trace_memory = True

    def __init__(self, fmt: str) -> None:
        self.fmt = fmt
        self.name = f"image-{fmt}"
        what = "JPEGs whose EXIF orientation lies" if fmt == "exif" else f"{fmt.upper()} files"
        self.description = f"load_image on {what} (max_pixels {IMAGE_MAX_PIXELS})"

    def setup(self, workdir: Path, marker: Path) -> None:
        self.seeds = seeds.exif_seeds() if self.fmt == "exif" else seeds.image_seeds(self.fmt)

    def mutant(self, rng: random.Random) -> bytes:
        seed = rng.choice(self.seeds)
        if self.fmt == "png" and rng.random() < 0.5:
            return M.png_chunk_mutation(rng, seed)
        if self.fmt == "exif" and rng.random() < 0.5:
            return regional(rng, seed, [(0, min(len(seed), 200))])  # the APP1 segment with the EXIF
        return M.blind(rng, seed)

    def run(self, data: bytes, path: Path) -> str:
        from ffclip.engine.imageio import decode_image, orient
        from ffclip.plugin.protocol import EngineError

        try:
            pixels, orientation = decode_image(data, max_pixels=IMAGE_MAX_PIXELS)
            orient(pixels, orientation)
        except EngineError as exc:
            if exc.code in ("bad_image", "too_large"):
                return exc.code
            raise
        mismatch = second_decoder_disagrees(data, pixels)
        if mismatch:  # an accepted file decodes to other pixels elsewhere: a finding, reported as an escape
            raise AssertionError(f"differential: {mismatch}")
        return "ok"

    def sound(self) -> bytes:
        return self.seeds[0]

    def budget(self, data: bytes) -> int | None:
        # the decoded array at 16 bit RGBA (8 bytes a pixel), a converted copy of it, the file
        return 16 * IMAGE_MAX_PIXELS + 4 * len(data) + (4 << 20)


def second_decoder_disagrees(data: bytes, ours: np.ndarray) -> str | None:
    """Whether OpenCV's decoders (libpng, libjpeg-turbo, libtiff, libwebp builds of its own) read other
    pixels from a file that the reader accepted: `ours` is decode_image's, before the EXIF
    orientation (which OpenCV ignores here, except a TIFF's, which Pillow's loader applies too)."""
    import cv2

    theirs = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if theirs is None:
        return "OpenCV refuses a file the reader accepted"
    if theirs.ndim == 2:
        theirs = theirs[..., None]
    elif theirs.shape[2] == 2:  # grey + alpha, as the reader expands it
        theirs = np.dstack([theirs[..., 0]] * 3 + [theirs[..., 1]])
    elif theirs.shape[2] in (3, 4):
        theirs = theirs[..., [2, 1, 0, 3][: theirs.shape[2]]]
    ours = _as_opencv_reads(data, ours, theirs.shape)
    if theirs.shape[2] == 4 and ours.shape[2] == 3 and _tiff_extra_samples(data) == (0,):
        theirs = theirs[..., :3]  # "unspecified" extra samples: Pillow drops them, OpenCV takes them for alpha
    if theirs.shape != ours.shape or theirs.dtype != ours.dtype:
        return f"OpenCV decodes {theirs.shape} {theirs.dtype}, the reader {ours.shape} {ours.dtype}"
    differ = np.count_nonzero(theirs != ours)
    return f"{differ} values differ from OpenCV's decoding" if differ else None


def _as_opencv_reads(data: bytes, ours: np.ndarray, shape: tuple) -> np.ndarray:
    """Our pixels in OpenCV's representation where both are right: libpng ignores an empty tRNS chunk
    (Pillow adds an opaque alpha), and OpenCV reads an RGBA TIFF with unassociated alpha through
    libtiff's RGBA interface, which premultiplies it (rounded)."""
    top = np.iinfo(ours.dtype).max
    if ours.shape[2] == 4 and len(shape) == 3 and shape[2] == 3 and (ours[..., 3] == top).all():
        return ours[..., :3]
    if ours.shape[2] == 4 and ours.dtype == np.uint8 and _tiff_extra_samples(data) == (2,):  # unassociated
        wide = ours.astype(np.int64)
        rgb = (wide[..., :3] * wide[..., 3:] + 127) // 255
        return np.concatenate([rgb, wide[..., 3:]], axis=-1).astype(np.uint8)
    return ours


def _tiff_extra_samples(data: bytes) -> tuple | None:
    """A TIFF's ExtraSamples tag (what its samples beyond the colour ones are), None for other files."""
    if data[:4] not in (b"II*\x00", b"MM\x00*"):
        return None
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        return img.tag_v2.get(338)


def all_targets() -> dict[str, object]:
    from . import wire

    targets: list[object] = [
        CheckpointTarget(legacy=False),
        CheckpointTarget(legacy=True),
        TorchScriptTarget(),
        ImportTarget(legacy=False),
        ImportTarget(legacy=True),
        *(ImageTarget(fmt) for fmt in ("jpeg", "png", "tiff", "webp", "exif")),
        wire.ParserTarget(),
        wire.ServerTarget(),
        wire.DaemonImageTarget(),
    ]
    return {t.name: t for t in targets}  # type: ignore[attr-defined]
