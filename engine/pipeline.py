"""The photo pipeline: detect -> align -> invert -> encode text -> map -> synthesize -> blend.

`Pipeline.edit` turns an ordinary photo (any size, grey/RGB/RGBA, 8 or 16 bit) and a prompt into
the edited photo, the blend mask and the edited region as RGBA (what the daemon sends back).
Detection, alignment, inversion and the reconstruction G(w) are cached per photo and face, so a
second edit of the same photo with another prompt or strength only maps, synthesizes and blends.

`editor="passthrough"` replaces invert/map/synthesize by the aligned crop itself, rendered from
the photo at the resolution the paste-back expects, with the whole crop counted as changed: the
warp, the paste-back and the seam can then be measured on real photos without any weights.

A pipeline edits one domain (its engine's): faces, or a car or church — there `detect` frames the
selection (engine/scene.py) and `align` renders the frame for e4e; everything after is shared.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from ffclip.engine.cache import LRUCache
from ffclip.engine.domains import domain_spec
from ffclip.engine.face.align import AlignTransform, align_face
from ffclip.engine.face.blend import BlendConfig, Compositor, change_mask, match_colours, warp_to_photo
from ffclip.engine.face.detect import DetectorConfig, FaceDetector, FaceInfo
from ffclip.engine.imageio import LUMA, as_hwc, as_rgb8, rgb_float, to_uint8
from ffclip.engine.interface import EditEngine
from ffclip.engine.models.mapper import edited_latent
from ffclip.engine.scene import SceneCrop, frame_scene, render_frame
from ffclip.plugin.protocol import DEFAULT_MAX_PIXELS, BadRequest, EditParams, EditResult, EngineError, check_image_size

log = logging.getLogger(__name__)

ENCODER_SIZE = 256  # e4e's input resolution
PASSTHROUGH_SIZE = 1024  # crop size of the passthrough editor when no engine tells its size
PREVIEW_SIZE = 256
CHANGE_SIZE = 256  # edit and reconstruction are compared (change mask, colour reference) at this size
WARM_UP_PROMPT = "a face"
DELTAS_PER_FACE = 16  # prompts whose Δw each cached face keeps (36 KB each at 18×512)


@dataclass
class PhotoEdit:
    """The edited photo; `result()` is what the wire carries of it."""

    image: np.ndarray  # full edited image, same shape/dtype as the input (alpha kept)
    mask: np.ndarray  # (H, W) uint8 final blend mask
    region: tuple[int, int, int, int]  # x, y, w, h bounding box of mask > 0
    rgba: np.ndarray  # (h, w, 4) uint8 edited region (RGB) with alpha = blend mask
    faces: list[FaceInfo | SceneCrop]  # the faces (or the framed car / church) that were edited
    stages: list[str]  # stages actually run (cache hits skip detect/align/invert)
    size: int = 0  # resolution the faces were synthesized at
    untrained: bool = False  # the engine is a random model (tiny profile): edits are noise
    domain: str = "face"
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage run
    debug: list[dict[str, np.ndarray]] = field(default_factory=list)  # per face, when requested

    def result(self, params: EditParams) -> EditResult:
        return EditResult(
            region=self.region,
            rgba=np.ascontiguousarray(self.rgba, dtype=np.uint8).tobytes(),
            faces=[f.to_wire() for f in self.faces],
            edits=params.edits,
            stages=list(self.stages),
            preview=params.preview,
            size=self.size,
            untrained=self.untrained,
            domain=self.domain,
            fidelity=params.fidelity,
        )


@dataclass
class _Inversion:
    """One fidelity's inversion of a face, each part made on first use: W+, for `high` HyperStyle's
    weight offsets (the photo's own generator, W·(1 + Δ)), the reconstruction G(w) and Δw per prompt."""

    w: Any = None  # W+ latent (1, n_latent, dim) torch tensor on the CPU
    offsets: list[Any] | None = None  # high: Δ per generator convolution (None where not tuned), on the CPU
    recon: dict[int, np.ndarray] = field(default_factory=dict)  # size -> G(w), (S, S, 3) float16 0..255
    # prompt -> Δw (1, n_latent, dim) on the CPU: a change of strengths (a live slider) needs
    # neither CLIP nor the mapper
    deltas: LRUCache = field(default_factory=lambda: LRUCache(DELTAS_PER_FACE))

    def nbytes(self) -> int:
        tensors = ([self.w] if self.w is not None else []) + self.deltas.values()
        tensors += [d for d in self.offsets or () if d is not None]
        return sum(r.nbytes for r in self.recon.values()) + sum(t.numel() * t.element_size() for t in tensors)

    def synthesis_options(self) -> dict[str, Any]:
        """What the engine's synthesis takes for this inversion (the offsets, for `high`)."""
        return {} if self.offsets is None else {"offsets": self.offsets}


@dataclass
class _FaceEntry:
    """Per (photo, face) cache entry: the alignment, and an inversion per fidelity used (the offsets
    of `high` are counted in the cache's byte budget with the rest: ~95 MB a face at 1024²)."""

    transform: AlignTransform
    aligned: np.ndarray  # (256, 256, 3) uint8, e4e's aligned crop (a car's: 192 × 256)
    inversions: dict[str, _Inversion] = field(default_factory=dict)

    def inversion(self, fidelity: str) -> _Inversion:
        return self.inversions.setdefault(fidelity, _Inversion())

    def nbytes(self) -> int:
        return self.aligned.nbytes + sum(inv.nbytes() for inv in self.inversions.values())


@dataclass
class _Generated:
    """One face's new content, before it is pasted back."""

    content: np.ndarray  # (S, S, 3) float32 0..255, the crop to paste
    change: np.ndarray | None = None  # (s, s) float32 0..1 where the edit differs from G(w); None = all
    reference: np.ndarray | None = None  # (s, s, 3) float32 0..255, G(w) at low resolution (colour matching)


def image_key(image: np.ndarray) -> str:
    digest = hashlib.sha256(np.ascontiguousarray(image).data)
    digest.update(f"{image.shape}{image.dtype}".encode())
    return digest.hexdigest()


class _Rgb8:
    """`as_rgb8` of the photo, made on first use (a re-edit never needs it)."""

    def __init__(self, image: np.ndarray) -> None:
        self.image = image
        self.value: np.ndarray | None = None

    def get(self) -> np.ndarray:
        if self.value is None:
            self.value = as_rgb8(self.image)
        return self.value


class _Stages:
    """Progress, cancellation and timing bookkeeping for one edit."""

    def __init__(self, progress: Callable[[str, float], None] | None, should_cancel: Callable[[], bool] | None):
        self.progress = progress
        self.should_cancel = should_cancel
        self.run: list[str] = []
        self.timings: dict[str, float] = {}
        self._start = 0.0
        self._name = ""

    def begin(self, name: str) -> None:
        self.check()
        self._name, self._start = name, time.perf_counter()
        self.report(0.0)

    def report(self, value: float) -> None:
        if self.progress is not None:
            self.progress(self._name, float(min(max(value, 0.0), 1.0)))

    def end(self) -> None:
        self.run.append(self._name)
        self.timings[self._name] = time.perf_counter() - self._start
        self.report(1.0)

    def skip(self, name: str) -> None:
        self.check()
        if self.progress is not None:
            self.progress(name, 1.0)

    def check(self) -> None:
        """Stop here when the job was cancelled (between stages, and between synthesis levels)."""
        if self.should_cancel is not None and self.should_cancel():
            raise EngineError("cancelled", "the edit was cancelled")


class Pipeline:
    def __init__(
        self,
        engine: EditEngine | None,
        editor: str = "model",
        cache_bytes: int = 512 << 20,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        detector: DetectorConfig | None = None,
        blend: BlendConfig | None = None,
        domain: str | None = None,
        cache: LRUCache | None = None,
    ) -> None:
        """`domain`: what this pipeline edits (default: the engine's, else faces). `cache`: an
        inversion cache shared with other domains' pipelines (their keys never collide)."""
        if editor not in ("model", "passthrough"):
            raise ValueError(f"editor must be 'model' or 'passthrough', not {editor!r}")
        if editor == "model" and engine is None:
            raise ValueError("the model editor needs an engine")
        engine_domain = getattr(engine, "domain", None) if engine is not None else None
        if domain is not None and engine_domain is not None and domain != engine_domain:
            raise ValueError(f"a {domain} pipeline needs a {domain} engine, not a {engine_domain} one")
        self.domain = domain_spec(domain or engine_domain or "face").name
        self.engine = engine
        self.editor = editor
        self.max_pixels = max_pixels
        self.detector = FaceDetector(detector)
        self.blend_config = blend or BlendConfig()
        self._cache = cache if cache is not None else LRUCache(cache_bytes)

    # -- public -------------------------------------------------------------------------------

    def warm_up(self) -> None:
        """Pay the one-time costs before the first edit: dlib's models (~1 s), and one pass of every
        network on a blank face with the shapes an edit uses (oneDNN's kernel selection, first
        touches of the weights, CUDA graphs). The daemon runs this while its status is "loading"."""
        if self.domain == "face":
            self.detector.load_models()
        if self.editor != "model":
            return
        import torch

        engine = self.engine
        width, height = _encoder_input(engine)
        w = engine.invert(torch.zeros(1, 3, height, width))
        w_hat = engine.map(w, engine.encode_text([WARM_UP_PROMPT]))
        size, low = _synthesis_sizes(engine, preview=False)
        engine.synthesize_levels(w_hat, (size, low))
        engine.synthesize(w, size=low)

    @property
    def untrained(self) -> bool:
        return bool(getattr(self.engine, "untrained", False)) if self.editor == "model" else False

    def cache_stats(self) -> dict:
        return self._cache.stats("bytes")

    def detect(self, image: np.ndarray) -> list[FaceInfo]:
        """All faces of a photo, most confident first (cached like edits)."""
        image = self._validate_image(image)
        return self._detect(image_key(image), _Rgb8(image), _Stages(None, None))

    def edit(
        self,
        params: EditParams,
        image: np.ndarray,
        selection: np.ndarray | None = None,
        progress: Callable[[str, float], None] | None = None,
        should_cancel: Callable[[], bool] | None = None,
        debug: bool = False,
        key: str | None = None,
    ) -> PhotoEdit:
        """Edit the faces of `image` ((H, W, C), C in 1/3/4, uint8 or uint16, already EXIF-oriented)
        inside `selection` ((H, W) uint8, 0 = must not change, 255 = free; None = everywhere).
        `debug` fills PhotoEdit.debug with per-face crops and masks. `key` is `image_key(image)`
        when the caller has it already (hashing a 12 MP photo costs ~50 ms per live preview)."""
        if params.domain != self.domain:
            raise BadRequest(f"this pipeline edits the {self.domain} domain, not {params.domain}")
        image = self._validate_image(image)
        selection = _validate_selection(selection, image)
        stages = _Stages(progress, should_cancel)
        key = key or image_key(image)
        rgb8 = _Rgb8(image)  # made only if detection or alignment runs (not on a re-edit)

        texts: dict[str, Any] = {}
        if self.domain == "face":
            beside = self._text_beside(params, key)
            try:
                faces = self._detect(key, rgb8, stages)
            finally:
                texts = beside.result() if beside is not None else {}
            chosen = self._choose(faces, params.faces, selection, image.shape[1], image.shape[0])
            entries = self._align(key, rgb8, chosen, stages)
        else:
            chosen, entries = self._frame(key, rgb8, selection, image.shape[1], image.shape[0], stages)
        size, generated = self._generate(params, key, image, chosen, entries, stages, texts)

        stages.begin("blend")
        result = self._blend(image, chosen, entries, generated, selection, debug)
        stages.end()
        result.stages, result.timings, result.untrained, result.size = stages.run, stages.timings, self.untrained, size
        result.domain = self.domain
        return result

    # -- validation -----------------------------------------------------------------------------

    def _validate_image(self, image: Any) -> np.ndarray:
        image = as_hwc(image)
        check_image_size(image.shape[1], image.shape[0], self.max_pixels)
        return image

    # -- stages ---------------------------------------------------------------------------------

    def _text_beside(self, params: EditParams, key: str) -> _Beside | None:
        """When the photo is new, its prompts' CLIP embeddings computed on a second thread while dlib
        detects (its detector releases the GIL and keeps one core busy; the other would idle): a
        cold edit's encode_text then costs nothing. The result is the engine's own encode_text."""
        if self.editor != "model" or ("faces", key) in self._cache:
            return None
        prompts = list(dict.fromkeys(params.prompts))
        return _Beside(lambda: _by_prompt(prompts, self.engine.encode_text(prompts)))

    def _detect(self, key: str, rgb8: _Rgb8, stages: _Stages) -> list[FaceInfo]:
        faces = self._cache.get(("faces", key))
        if faces is not None:
            stages.skip("detect")
            return faces
        stages.begin("detect")
        faces = self.detector.detect(rgb8.get())
        self._cache.put(("faces", key), faces, sum(f.landmarks.nbytes + 512 for f in faces))
        stages.end()
        return faces

    def _choose(
        self,
        faces: list[FaceInfo],
        wanted: str | list[int],
        selection: np.ndarray | None,
        width: int,
        height: int,
    ) -> list[FaceInfo]:
        if not faces:
            raise EngineError("no_face", "no face found in the image")
        if wanted == "largest":
            return [max(faces, key=lambda f: f.area)]
        if wanted == "all":
            chosen = [f for f in faces if selection is None or _touches(selection, f, width, height)]
            if not chosen:
                raise EngineError("no_face", "no face inside the selection")
            return chosen
        missing = [i for i in wanted if i >= len(faces)]
        if missing or not wanted:
            raise EngineError(
                "bad_request", f"face index {missing or wanted} not found: the photo has {len(faces)} face(s)"
            )
        return [faces[i] for i in dict.fromkeys(wanted)]

    def _align(self, key: str, rgb8: _Rgb8, chosen: list[FaceInfo], stages: _Stages) -> list[_FaceEntry]:
        entries = [self._cache.get(_entry_key(key, f)) for f in chosen]
        if all(e is not None for e in entries):
            stages.skip("align")
            return entries
        stages.begin("align")
        for n, face in enumerate(chosen):
            if entries[n] is None:
                aligned, transform = align_face(rgb8.get(), face.quad, face.qsize, output_size=ENCODER_SIZE)
                entries[n] = _FaceEntry(transform, aligned)
                self._store(key, face, entries[n])
            stages.report((n + 1) / len(chosen))
        stages.end()
        return entries

    def _frame(
        self, key: str, rgb8: _Rgb8, selection: np.ndarray | None, width: int, height: int, stages: _Stages
    ) -> tuple[list[SceneCrop], list[_FaceEntry]]:
        """A car's or church's detect and align: frame the selection (or the whole image), render the
        frame at e4e's input size; both cached per (photo, frame) like a face."""
        spec = domain_spec(self.domain)
        crop = frame_scene(selection, width, height, spec, self.blend_config)
        entry = self._cache.get(_entry_key(key, crop))
        if entry is not None:
            stages.skip("detect")
            stages.skip("align")
            return [crop], [entry]
        stages.begin("detect")  # framing is instant; reported so that every stage runs in order
        stages.end()
        stages.begin("align")
        entry = _FaceEntry(crop.transform, render_frame(rgb8.get(), crop, *spec.encoder_input))
        self._store(key, crop, entry)
        stages.end()
        return [crop], [entry]

    def _store(self, key: str, item: FaceInfo | SceneCrop, entry: _FaceEntry) -> None:
        self._cache.put(_entry_key(key, item), entry, entry.nbytes())

    def _generate(
        self,
        params: EditParams,
        key: str,
        image: np.ndarray,
        chosen: list[FaceInfo],
        entries: list[_FaceEntry],
        stages: _Stages,
        texts: dict[str, Any],
    ) -> tuple[int, list[_Generated]]:
        """(the synthesis resolution, each face's new content); `texts`: embeddings already computed."""
        if self.editor == "passthrough":
            for name in ("invert", "encode_text", "map"):
                stages.skip(name)
            stages.begin("synthesize")
            size = PREVIEW_SIZE if params.preview else int(getattr(self.engine, "size", PASSTHROUGH_SIZE))
            work = rgb_float(image)
            generated = [_Generated(_render_crop(work, e.transform, size)) for e in entries]
            stages.end()
            return size, generated
        return self._generate_model(params, key, chosen, entries, stages, texts)

    def _generate_model(
        self,
        params: EditParams,
        key: str,
        chosen: list[FaceInfo],
        entries: list[_FaceEntry],
        stages: _Stages,
        texts: dict[str, Any],
    ) -> tuple[int, list[_Generated]]:
        import torch

        engine = self.engine
        device = engine.device
        high = params.fidelity == "high"
        if high:
            _check_high_fidelity(engine)
        invs = [e.inversion(params.fidelity) for e in entries]
        todo = [n for n, inv in enumerate(invs) if inv.w is None]
        if todo:
            # One face at a time: a face's W+ must not depend on which other faces happened to be
            # inverted with it (a batch's arithmetic differs in the last bits), or an edit's result
            # would depend on what the cache held before it.
            stages.begin("invert")
            for done, n in enumerate(todo):
                x = entries[n].aligned.astype(np.float32)[None] / 127.5 - 1.0
                batch = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous().to(device)
                if high:  # HyperStyle: its W code and the photo's generator offsets, once per (photo, face)
                    codes, offsets = _invert_high(engine, batch, stages, done, len(todo))
                    invs[n].offsets = [None if d is None else d.detach().float().cpu().clone() for d in offsets]
                    invs[n].w = codes.detach().float().cpu().clone()
                else:
                    invs[n].w = engine.invert(batch).detach().float().cpu().clone()
                self._store(key, chosen[n], entries[n])
                stages.report((done + 1) / len(todo))
            stages.end()
        else:
            stages.skip("invert")

        w_all = torch.cat([inv.w for inv in invs]).to(device)
        deltas = self._deltas(params, w_all, key, chosen, entries, invs, stages, texts)
        # ŵ = w + Σ αᵢ·Δwᵢ, each Δwᵢ from the mapper with its own prompt
        w_hat = edited_latent(w_all, [(edit.strength, deltas[edit.prompt]) for edit in params.edits])

        # The edit comes with its own 256² copy from the same pass (the generator's RGB skip there);
        # the reconstruction G(w), needed only for the change mask and the colour reference, is
        # synthesized once per face and only up to 256² (~40 % of a 1024² synthesis).
        stages.begin("synthesize")
        size, low = _synthesis_sizes(engine, params.preview)
        generated = []
        for n, entry in enumerate(entries):
            inv = invs[n]
            # a preview may run in bfloat16 (precision.py); the reconstruction below, cached and shared
            # with Apply, always in the full precision; `high` draws both with the photo's offsets
            levels = engine.synthesize_levels(
                w_hat[n : n + 1],
                (size, low),
                between_levels=stages.check,
                preview=params.preview,
                **inv.synthesis_options(),
            )
            recon = inv.recon.get(low)
            if recon is None:
                recon = _to_image(engine.synthesize(w_all[n : n + 1], size=low, **inv.synthesis_options()))
                recon = inv.recon[low] = recon.astype(np.float16)
                self._store(key, chosen[n], entry)
            recon = recon.astype(np.float32)
            change = change_mask(_to_image(levels[low]), recon, self.blend_config)
            generated.append(_Generated(_to_image(levels[size]), change, recon))
            stages.report((n + 1) / len(entries))
        stages.end()
        return size, generated

    def _deltas(
        self,
        params: EditParams,
        w_all: Any,
        key: str,
        chosen: list[FaceInfo],
        entries: list[_FaceEntry],
        invs: list[_Inversion],
        stages: _Stages,
        texts: dict[str, Any],
    ) -> dict[str, Any]:
        """prompt -> Δw of every face (F, n_latent, dim) on the engine's device: from the faces' caches
        (per fidelity: Δw depends on the W+ it edits), or CLIP (unless `texts` has the embedding) and
        the mapper for the prompts they lack (the stages are skipped when none does)."""
        import torch

        missing = [p for p in dict.fromkeys(params.prompts) if any(inv.deltas.get(p) is None for inv in invs)]
        if missing:
            stages.begin("encode_text")
            todo = [p for p in missing if p not in texts]
            if todo:
                texts = {**texts, **_by_prompt(todo, self.engine.encode_text(todo))}
            text = torch.cat([texts[p] for p in missing])
            stages.end()
            stages.begin("map")
            for i, prompt in enumerate(missing):
                # per face, and only where it is missing: as for W+, a face's Δw must not depend on the
                # faces mapped beside it
                for n, inv in enumerate(invs):
                    if inv.deltas.get(prompt) is None:
                        delta = self.engine.delta(w_all[n : n + 1], text[i : i + 1]).float().cpu()
                        inv.deltas.put(prompt, delta.clone())
            for face, entry in zip(chosen, entries, strict=True):
                self._store(key, face, entry)
            stages.end()
        else:
            stages.skip("encode_text")
            stages.skip("map")
        device = w_all.device
        return {p: torch.cat([inv.deltas.get(p) for inv in invs]).to(device) for p in dict.fromkeys(params.prompts)}

    def _blend(
        self,
        image: np.ndarray,
        chosen: list[FaceInfo],
        entries: list[_FaceEntry],
        generated: list[_Generated],
        selection: np.ndarray | None,
        debug: bool,
    ) -> PhotoEdit:
        height, width = image.shape[:2]
        pastes = []
        for face, entry, gen in zip(chosen, entries, generated, strict=True):
            crop = face.crop_alpha(self.blend_config) if isinstance(face, SceneCrop) else None
            paste = warp_to_photo(
                entry.transform, gen.content, gen.change, (width, height), self.blend_config, gen.reference, crop
            )
            if paste is not None:
                x, y, w, h = paste.region
                match_colours(paste, rgb_float(image[y : y + h, x : x + w]), face.qsize, self.blend_config)
            pastes.append(paste)
        comp = Compositor([p.region for p in pastes if p is not None])
        for paste in pastes:
            if paste is None:
                continue
            weight = None
            if selection is not None:
                x, y, w, h = paste.region
                weight = selection[y : y + h, x : x + w].astype(np.float32) / 255.0
            comp.add(paste, weight)
        result = _composite(image, comp)
        result.faces = list(chosen)
        if debug:
            result.debug = [
                _debug_images(entry, gen, paste) for entry, gen, paste in zip(entries, generated, pastes, strict=True)
            ]
        return result


class _Beside:
    """One call run on a thread of its own while the caller goes on; `result()` waits for it. An error
    is not raised here: the result is then empty, and the stage that needs it calls again and fails
    there, reporting the error in its place."""

    def __init__(self, work: Callable[[], dict[str, Any]]) -> None:
        self._work = work
        self._result: dict[str, Any] = {}
        self._thread = threading.Thread(target=self._run, name="ffclip-beside", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._result = self._work()
        except Exception:  # noqa: BLE001 - see the class's docstring
            log.debug("work beside the detection failed; the stage will redo it", exc_info=True)

    def result(self) -> dict[str, Any]:
        self._thread.join()
        return self._result


def _by_prompt(prompts: list[str], embeddings: Any) -> dict[str, Any]:
    """encode_text's (B, 1, D) rows by prompt, each (1, 1, D)."""
    return {p: embeddings[i : i + 1] for i, p in enumerate(prompts)}


def _check_high_fidelity(engine: Any) -> None:
    """`fidelity: high` needs HyperStyle's files: models_missing naming them, never a silent fallback."""
    describe = getattr(engine, "describe_fidelity", None)
    if describe is None:
        raise EngineError("models_missing", "this engine has no high-fidelity inversion (HyperStyle)")
    high = describe()["high_fidelity"]
    if high["missing"]:
        from ffclip.engine.store import SPEC_BY_NAME

        names = [f"{n} ({SPEC_BY_NAME[n].filename})" if n in SPEC_BY_NAME else n for n in high["missing"]]
        raise EngineError(
            "models_missing",
            f"fidelity high needs HyperStyle's files, missing from the model store: {', '.join(names)}; "
            f"fetch them with `{high.get('fetch', 'ffclip-engine models fetch high')}`, or edit with fidelity standard",
        )


def _invert_high(engine: Any, batch: Any, stages: _Stages, done: int, faces: int) -> tuple[Any, list[Any]]:
    """engine.invert_high with progress after each refinement and a cancel check there."""
    n_iters = 5

    def between(i: int) -> None:
        stages.report((done + (i + 1) / n_iters) / faces)
        stages.check()

    try:
        n_iters = engine.hyperstyle().n_iters
        return engine.invert_high(batch, between)
    except RuntimeError as exc:  # ModelsMissing: the files went away since the check
        if getattr(exc, "missing", None) is None:
            raise
        raise EngineError("models_missing", str(exc)) from None


def _entry_key(key: str, item: FaceInfo | SceneCrop) -> tuple:
    """The cache key of one face (by detection index) or framed scene (by domain and frame)."""
    if isinstance(item, SceneCrop):
        return (*item.cache_id, key)
    return ("face", key, item.index)


def _encoder_input(engine: Any) -> tuple[int, int]:
    """(width, height) of the engine's e4e input (a face's 256², a car's 256 × 192)."""
    return tuple(getattr(engine, "encoder_input", (ENCODER_SIZE, ENCODER_SIZE)))


def _validate_selection(selection: Any, image: np.ndarray) -> np.ndarray | None:
    if selection is None:
        return None
    sel = np.asarray(selection)
    if sel.ndim == 3 and sel.shape[2] == 1:
        sel = sel[..., 0]
    if sel.shape != image.shape[:2]:
        raise BadRequest(f"selection is {sel.shape}, the image {image.shape[:2]}")
    if sel.dtype != np.uint8:
        raise BadRequest(f"selection must be uint8, got {sel.dtype}")
    return sel


def _touches(selection: np.ndarray, face: FaceInfo, width: int, height: int) -> bool:
    """Whether the selection reaches into the face's crop (hair edits go beyond the face box)."""
    x0, y0 = np.floor(face.quad.min(axis=0)).astype(int)
    x1, y1 = np.ceil(face.quad.max(axis=0)).astype(int) + 1
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
    return x1 > x0 and y1 > y0 and bool(selection[y0:y1, x0:x1].any())


def _render_crop(work: np.ndarray, transform: AlignTransform, size: int) -> np.ndarray:
    """The aligned crop at any size, sampled from the photo itself (passthrough editor)."""
    mapx, mapy = transform.sample_maps(size)
    # Minified crops (photo face larger than the crop) are sampled from a pre-shrunk photo.
    factor = transform.qsize / size
    if factor > 1.5:
        small = cv2.resize(work, None, fx=1.0 / factor, fy=1.0 / factor, interpolation=cv2.INTER_AREA)
        sx, sy = small.shape[1] / work.shape[1], small.shape[0] / work.shape[0]
        mapx, mapy = (mapx + 0.5) * sx - 0.5, (mapy + 0.5) * sy - 0.5
        work = small
    return cv2.remap(work, mapx, mapy, cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT_101)


def _synthesis_sizes(engine: Any, preview: bool) -> tuple[int, int]:
    """The edit's size, and the size at which it is compared with the reconstruction."""
    size = engine.preview_size if preview else engine.size
    return size, min(CHANGE_SIZE, size)


def _to_image(t: Any) -> np.ndarray:
    """(1, 3, S, S) tensor in about [-1, 1] -> (S, S, 3) float32 in 0..255 (scaled where the
    tensor is, e.g. on the GPU, and copied once)."""
    x = (t.detach()[0].float() + 1.0).mul_(127.5).clamp_(0.0, 255.0)
    return x.permute(1, 2, 0).contiguous().cpu().numpy()


def _composite(image: np.ndarray, comp: Compositor) -> PhotoEdit:
    """Blend the faces into the photo; pixels where the 8-bit mask is 0 stay bit-identical."""
    height, width = image.shape[:2]
    bx, by, bw, bh = comp.box
    mask = np.zeros((height, width), np.uint8)
    box_mask = np.clip(np.rint(comp.alpha * 255.0), 0, 255).astype(np.uint8)
    mask[by : by + bh, bx : bx + bw] = box_mask
    out = image.copy()
    ys, xs = np.nonzero(box_mask)
    if len(ys) == 0:
        return PhotoEdit(out, mask, (0, 0, 0, 0), np.zeros((0, 0, 4), np.uint8), [], [])
    # everything below works on the tight box of mask > 0 only
    x0, y0, x1, y1 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
    region = (int(x0 + bx), int(y0 + by), int(x1 - x0), int(y1 - y0))
    rows, cols = slice(region[1], region[1] + region[3]), slice(region[0], region[0] + region[2])
    sub_mask = box_mask[y0:y1, x0:x1]
    keep = sub_mask == 0
    layer = np.clip(comp.layer((slice(y0, y1), slice(x0, x1))), 0.0, 255.0)  # the RGBA layer re-composites
    colour = image.shape[2] if image.shape[2] != 4 else 3
    if colour == 1:
        layer = (layer @ LUMA)[..., None]
    scale = 257.0 if image.dtype == np.uint16 else 1.0
    m = (sub_mask.astype(np.float32) / 255.0)[..., None]
    orig = image[rows, cols, :colour]
    blended = orig.astype(np.float32) * (1.0 - m)
    blended += layer * scale * m
    blended = np.clip(np.rint(blended, out=blended), 0, np.iinfo(image.dtype).max, out=blended).astype(image.dtype)
    blended[keep] = orig[keep]
    out[rows, cols, :colour] = blended

    rgb = to_uint8(np.repeat(layer, 3, axis=2) if colour == 1 else layer)
    rgb[keep] = as_rgb8(image[rows, cols])[keep]
    rgba = np.concatenate([rgb, sub_mask[..., None]], axis=2)
    return PhotoEdit(out, mask, region, np.ascontiguousarray(rgba), [], [])


def _debug_images(entry: _FaceEntry, gen: _Generated, paste: Any) -> dict[str, np.ndarray]:
    images = {"aligned": entry.aligned, "edit": to_uint8(gen.content)}
    if gen.reference is not None:
        images["reconstruction"] = to_uint8(gen.reference)
    if gen.change is not None:
        images["change_mask"] = to_uint8(gen.change * 255.0)
    if paste is not None:
        images["blend_alpha"] = to_uint8(paste.alpha * 255.0)
    return images
