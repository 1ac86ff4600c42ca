"""The daemon's engines, one per domain (face, car, church), loaded on first use and kept under a
memory budget.

Faces load when the daemon starts (as before domains existed); a car or church edit loads its
domain's networks on the device thread when it first needs them (`status.domains.<d>.state` is
`loading` meanwhile) and sharing the CLIP text encoder and the inversion cache with the others.
Before a domain loads, the least recently used ones are evicted until its networks (sized exactly
on the meta device) fit the budget with those that stay; a domain larger than the whole budget on
its own is loaded alone. A domain whose files are absent answers `models_missing`, naming them and
the command that fetches them.

`run` is called from the device thread only; `describe` and `cache_stats` from the event loop, so
the per-domain states are guarded by a lock and copied out.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from ffclip.plugin.protocol import DOMAINS, EditResult, EngineError, EngineState

from .backend import Backend, EngineBackend
from .jobs import release_memory
from .messages import EditAnnouncement

log = logging.getLogger("ffclip.bridge")

DEFAULT_BUDGET = 2_500_000_000  # bytes of domain networks: two real domains (~1.0–1.25 GB each)
DEFAULT_CACHE = 512 << 20  # the inversion cache every domain shares


class DomainBackend:
    """Backend for every domain: per-domain EngineBackends, loaded lazily, evicted least recently used."""

    def __init__(
        self,
        profile: str,
        models_dir: str | None,
        device: str,
        editor: str = "model",
        max_pixels: int | None = None,
        budget: int = DEFAULT_BUDGET,
        cache_bytes: int = DEFAULT_CACHE,
        load_image: Callable | None = None,
        precision: str = "auto",
    ) -> None:
        from ffclip.engine.cache import LRUCache

        self.profile, self.models_dir, self.device, self.precision = profile, models_dir, device, precision
        self.editor, self.max_pixels, self.budget = editor, max_pixels, budget
        self.cache = LRUCache(cache_bytes)
        self._load_image = load_image
        self._lock = threading.Lock()
        self._loaded: OrderedDict[str, EngineBackend] = OrderedDict()  # least recently used first
        self._bytes: dict[str, int] = {}  # Engine.nbytes() of each loaded domain
        self._states: dict[str, dict[str, Any]] = {}
        # domain -> {"download_errors": {name: why}, "manual": {name: how}}: why the daemon's own
        # fetch of those files failed (bridge/provision.py), said with every models_missing
        self._fetch_notes: dict[str, dict[str, dict[str, str]]] = {}
        self._text: Any = None  # the CLIP text encoder every domain's engine shares
        self._face_models: dict[str, Any] = {"profile": profile, "device": device}
        self.evictions = 0
        self.loads = 0

    # ------------------------------------------------------------------ loading

    def load(self, domain: str, warm_up: bool = False) -> EngineBackend:
        """The domain's backend, loaded (after evicting what the budget needs) when absent.
        Raises EngineError models_missing / internal."""
        backend = self._loaded.get(domain)
        if backend is not None:
            self._loaded.move_to_end(domain)
            return backend
        self._check_files(domain)
        need = self._estimate(domain)
        self._make_room(need)
        self._set_state(domain, state=EngineState.LOADING)
        started = time.monotonic()
        try:
            backend = self._build(domain)
        except EngineError:
            raise
        except Exception as exc:  # noqa: BLE001 - reported in status and to the job, never a crash
            log.exception("loading the %s models failed", domain)
            text = f"{type(exc).__name__}: {exc}"[:300]
            self._set_state(domain, state=EngineState.FAILED, error=text)
            raise EngineError("internal", f"the {domain} models failed to load ({text}); see the engine log") from None
        if warm_up:
            _warm_up(backend)
        nbytes = backend.engine.nbytes() if backend.engine is not None else 0
        with self._lock:
            self._loaded[domain] = backend
            self._bytes[domain] = nbytes
            self.loads += 1
        self._set_state(domain, state=EngineState.READY, bytes=nbytes, seconds=round(time.monotonic() - started, 2))
        if domain == "face" and backend.engine is not None:
            self._face_models = dict(backend.engine.describe())
        log.info("%s domain loaded in %.1f s (%.0f MB of networks)", domain, time.monotonic() - started, nbytes / 1e6)
        return backend

    def _build(self, domain: str) -> EngineBackend:
        from ffclip.engine.inference import Engine
        from ffclip.engine.pipeline import Pipeline

        engine = None
        if self.editor != "passthrough" or self.profile == "tiny":
            where = {"profile": self.profile, "models_dir": self.models_dir, "device": self.device}
            engine = Engine.load(**where, domain=domain, text=self._text, precision=self.precision)
            self._text = engine.text
        pipeline = Pipeline(engine, editor=self.editor, max_pixels=self.max_pixels, domain=domain, cache=self.cache)
        return EngineBackend(engine, pipeline, self._load_image)

    def _check_files(self, domain: str) -> None:
        missing = self.missing_names(domain)
        if missing:
            hint = self.fetch_hint(domain)
            self._set_state(domain, state=EngineState.MISSING, missing=missing, fetch=hint)
            what = "faces" if domain == "face" else f"the {domain} domain"
            files = ", ".join(self.missing_files(domain))
            lines = [f"{what} needs model files that are not here ({files}); run: {hint}"]
            notes = self._fetch_notes.get(domain, {})
            for name in self.missing_names(domain):
                if name in notes.get("download_errors", {}):
                    lines.append(f"{name}: the engine could not download it: {notes['download_errors'][name]}")
                if name in notes.get("manual", {}):
                    lines.append(f"{name}: {notes['manual'][name]}")
            raise EngineError("models_missing", "\n".join(lines))

    def note_fetch_failures(self, domain: str, errors: dict[str, str], manual: dict[str, str]) -> None:
        """What went wrong when the daemon fetched the domain's files itself, and the manual route."""
        self._fetch_notes[domain] = {"download_errors": dict(errors), "manual": dict(manual)}

    def missing_names(self, domain: str) -> list[str]:
        """Store names of the domain's models that the store lacks (none for the tiny profile and the
        passthrough editor)."""
        if self.profile == "tiny" or self.editor == "passthrough":
            return []
        from ffclip.engine.store import ModelStore

        store = ModelStore(self.models_dir)
        return store.missing(store.needed(domain))

    def missing_files(self, domain: str) -> list[str]:
        """Official file names of the domain's models that the store lacks."""
        from ffclip.engine.store import ModelStore

        store = ModelStore(self.models_dir)
        return [store.spec(name).filename for name in self.missing_names(domain)]

    def fetch_hint(self, domain: str) -> str:
        from ffclip.engine.store import ModelStore

        hint = ModelStore(self.models_dir).fetch_hint
        return hint if domain == "face" else f"{hint} {domain}"

    def _estimate(self, domain: str) -> int:
        if self.editor == "passthrough" and self.profile != "tiny":
            return 0
        from ffclip.engine.inference import network_bytes
        from ffclip.engine.profiles import profile_for

        return network_bytes(profile_for(self.profile, domain))

    def _make_room(self, need: int) -> None:
        """Evict the least recently used domains until `need` more bytes fit the budget."""
        while self._loaded and self.used_bytes() + need > self.budget:
            domain, backend = next(iter(self._loaded.items()))
            with self._lock:
                del self._loaded[domain]
                del self._bytes[domain]
                self.evictions += 1
            self._set_state(domain, state=EngineState.AVAILABLE, bytes=0)
            log.info("evicted the %s domain (memory budget %.0f MB)", domain, self.budget / 1e6)
            del backend
            release_memory()  # the evicted domain's memory back to the OS now
        if need > self.budget:
            log.warning(
                "one domain needs %.0f MB, over the budget of %.0f MB: loading it alone", need / 1e6, self.budget / 1e6
            )

    def used_bytes(self) -> int:
        with self._lock:
            return sum(self._bytes.values())

    def _set_state(self, domain: str, **fields: Any) -> None:
        with self._lock:
            self._states[domain] = fields

    # ------------------------------------------------------------------ Backend

    def run(self, request: EditAnnouncement, image, selection, progress, should_cancel, memo) -> EditResult:
        domain = request.params.domain
        backend = self.load(domain)
        try:
            return backend.run(request, image, selection, progress, should_cancel, memo)
        finally:
            if request.params.fidelity == "high" and backend.engine is not None:
                # HyperStyle loads on the first high edit: the domain's networks weigh that much more
                nbytes = backend.engine.nbytes()
                with self._lock:
                    if self._loaded.get(domain) is backend:
                        self._bytes[domain] = nbytes

    def describe(self) -> dict:
        domains = self.domain_states()
        face = domains.get("face", {})
        state = (
            face.get("state") if face.get("state") in (EngineState.MISSING, EngineState.FAILED) else EngineState.READY
        )
        models = dict(self._face_models)
        with self._lock:
            face_backend = self._loaded.get("face")
        describe_fidelity = getattr(getattr(face_backend, "engine", None), "describe_fidelity", None)
        if describe_fidelity is not None:  # HyperStyle's files may have been fetched since the faces loaded
            models.update(describe_fidelity())
        if face.get("state") == EngineState.MISSING:
            models.update(missing=face["missing"], fetch=face["fetch"], **self._fetch_notes.get("face", {}))
        models["editor"] = self.editor
        with self._lock:
            loaded = list(self._loaded)
        memory = {"budget_bytes": self.budget, "domains_bytes": self.used_bytes(), "loaded": loaded}
        memory.update(evictions=self.evictions, loads=self.loads)
        return {"state": state, "models": models, "device": self.device, "domains": domains, "memory": memory}

    def domain_states(self) -> dict[str, dict[str, Any]]:
        """Per domain: state (ready, loading, available, missing, failed) and what goes with it."""
        with self._lock:
            states = {d: dict(s) for d, s in self._states.items()}
        for domain in DOMAINS:
            if states.get(domain, {}).get("state") in (None, EngineState.MISSING):  # files may have come since
                missing = self.missing_names(domain)
                if missing:
                    states[domain] = {
                        "state": EngineState.MISSING,
                        "missing": missing,
                        "fetch": self.fetch_hint(domain),
                    }
                else:
                    states[domain] = {"state": EngineState.AVAILABLE}
            if states[domain].get("state") != EngineState.MISSING:
                states[domain].update(self.fidelity_of(domain))
        return {d: states[d] for d in DOMAINS}

    def fidelity_of(self, domain: str) -> dict[str, Any]:
        """`fidelities` and `high_fidelity` of a domain (issue 29), as its engine describes them once
        loaded; before that from the model store (the tiny profile has a HyperStyle for faces and
        cars; HyperStyle publishes none for churches; the passthrough editor inverts nothing)."""
        with self._lock:
            backend = self._loaded.get(domain)
        describe = getattr(getattr(backend, "engine", None), "describe_fidelity", None)
        if describe is not None:
            return describe()
        from ffclip.engine.domains import high_fidelity_models
        from ffclip.engine.store import ModelStore

        names = high_fidelity_models(domain)
        if self.editor == "passthrough" or not names:
            why = "the passthrough editor" if names else f"HyperStyle for the {domain} domain (none published)"
            return {"fidelities": ["standard"], "high_fidelity": {"loaded": False, "missing": [why]}}
        if self.profile == "tiny":
            return {"fidelities": ["standard", "high"], "high_fidelity": {"loaded": False, "missing": []}}
        store = ModelStore(self.models_dir)
        missing = store.missing(names)
        if not missing:
            return {"fidelities": ["standard", "high"], "high_fidelity": {"loaded": False, "missing": []}}
        fetch = f"{store.fetch_hint} high" + ("" if domain == "face" else f"-{domain}")
        return {"fidelities": ["standard"], "high_fidelity": {"loaded": False, "missing": missing, "fetch": fetch}}

    def cache_stats(self) -> dict:
        stats: dict = {}
        try:
            stats["inversion"] = dict(self.cache.stats("bytes"))
            if self._text is not None:
                stats["text"] = dict(self._text.stats())
        except Exception:  # noqa: BLE001 - stats are read while the worker may be updating them
            log.debug("cache stats unavailable", exc_info=True)
        return stats


def _warm_up(backend: EngineBackend) -> None:
    started = time.monotonic()
    try:
        backend.pipeline.warm_up()
    except Exception:  # noqa: BLE001 - a failed warm-up only means a slower first edit
        log.warning("warm-up failed; the first edit will be slower", exc_info=True)
    else:
        log.info("warm-up done in %.1f s", time.monotonic() - started)


def load_domain_backend(
    profile: str,
    models_dir: str | None,
    device: str,
    editor: str,
    max_pixels: int,
    budget: int = DEFAULT_BUDGET,
    load_image: Callable | None = None,
    precision: str = "auto",
) -> DomainBackend:
    """The daemon's backend: faces loaded (and warmed up) now, the other domains on first use. Missing
    face models leave faces `missing` (edits answer models_missing) while the others still work."""
    backend = DomainBackend(
        profile, models_dir, device, editor, max_pixels, budget, load_image=load_image, precision=precision
    )
    try:
        backend.load("face", warm_up=True)
    except EngineError as exc:
        log.warning("faces unavailable: %s", exc.message)
    return backend


def load_engine_backend(
    profile: str,
    models_dir: str | None,
    device: str,
    editor: str,
    max_pixels: int,
    budget: int | None = None,
    precision: str = "auto",
) -> Backend:
    """The daemon's loader: the face models now and every other domain on first use, within
    `budget` bytes of domain networks; missing checkpoints are reported per domain, not a crash."""
    from ffclip.engine.imageio import load_image
    from ffclip.engine.inference import resolve_device

    resolved = resolve_device(device)
    if resolved.type == "cuda" and resolved.index is not None:
        import torch

        # This runs on the worker's own device thread, where its jobs run too: CUDA's current device
        # is per thread, so each worker's kernels, streams and graphs stay on its GPU.
        torch.cuda.set_device(resolved)
    device = str(resolved)
    budget = DEFAULT_BUDGET if budget is None else budget
    return load_domain_backend(profile, models_dir, device, editor, max_pixels, budget, load_image, precision)
