"""The daemon gets its model files by itself: fetch what the store lacks, then load the engine.

`Provisioner` wraps the daemon's loader (`domains.load_engine_backend`). It runs on the worker thread, like
the loader, so the event loop never waits on the network; while it downloads, `describe()` (read by
the event loop for every status message, under a lock, a few microseconds) says `downloading`
with the current file's progress. When the files are in, the engine loads as it always did. What
could not come is reported in the status (`missing`, what went wrong, the manual route) and in the
answer to every edit, as a missing model always was.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from ffclip.engine.store import ModelStore, VerifyResult
from ffclip.plugin.protocol import EngineState

from .backend import Backend, UnavailableBackend

log = logging.getLogger("ffclip.bridge")


class _Stopped(Exception):
    """The daemon is shutting down: the download ends here (its .part file is resumed next time)."""


class _LogStream:
    """The downloader's text progress (a line per 10 %) into the engine log."""

    def __init__(self) -> None:
        self._line = ""

    def write(self, text: str) -> int:
        self._line += text
        while "\n" in self._line:
            line, self._line = self._line.split("\n", 1)
            if line.strip():
                log.info("download: %s", line.strip())
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False


class Provisioner:
    """load() preceded by fetching the model files the store lacks (see the module docstring)."""

    def __init__(self, load: Callable[[], Backend], models_dir: str | None, **download_options: Any) -> None:
        self._load = load
        self.store = ModelStore(models_dir)
        self._options = download_options
        self._lock = threading.Lock()
        self._download: dict[str, Any] | None = None
        self._stop = threading.Event()
        self.failures: dict[str, str] = {}  # store name -> what went wrong, manual route included

    # --- read from the event loop ---

    def describe(self) -> dict | None:
        """{'state': 'downloading', 'download': {...}} while fetching, else None (loading)."""
        with self._lock:
            if self._download is None:
                return None
            download = dict(self._download)
        return {"state": EngineState.DOWNLOADING, "download": download, "models": {"state": EngineState.DOWNLOADING}}

    def stop(self) -> None:
        self._stop.set()

    # --- the worker thread ---

    def __call__(self) -> Backend:
        try:
            self._fetch_missing()
        finally:
            with self._lock:
                self._download = None
        return self._report_failures(self._load())

    def _fetch_missing(self) -> None:
        tried: list[str] = []
        # asked again after each file: a mapper-only FFCLIP file brings stylegan2 in
        while not self._stop.is_set():
            todo = [n for n in self.store.missing() if n not in tried]
            if not todo:
                return
            name = todo[0]
            tried.append(name)
            self._start(self.store.spec(name).filename, len(todo))
            log.info("fetching %s (%d file(s) to go) into %s", name, len(todo), self.store.root)
            try:
                result = self.store.fetch(name, out=_LogStream(), on_progress=self._progress, **self._options)
            except _Stopped:
                log.info("fetching %s stopped: the engine is shutting down", name)
                return
            except Exception as exc:  # noqa: BLE001 - the daemon keeps running and says why
                log.exception("fetching %s failed", name)
                route = self.store.manual_route(name)
                result = VerifyResult(name, "invalid", f"{type(exc).__name__}: {exc}\n  {route}")
            if result.ok:
                log.info("%s: in the store, sha256 %s, %s", name, result.sha256, result.trust)
            else:
                self.failures[name] = result.message
                log.warning("%s could not be fetched: %s", name, result.message)

    def _start(self, filename: str, files_left: int) -> None:
        with self._lock:
            self._download = {"file": filename, "done": 0, "total": None, "files_left": files_left}

    def _progress(self, done: int, total: int | None) -> None:
        if self._stop.is_set():
            raise _Stopped
        with self._lock:
            if self._download is not None:
                self._download["done"], self._download["total"] = int(done), total

    def _report_failures(self, backend: Backend) -> Backend:
        """A models_missing backend that also says why the daemon's own fetch failed, and how to
        get the files by hand."""
        from .domains import DomainBackend

        if isinstance(backend, DomainBackend) and self.failures:
            missing = backend.missing_names("face")
            errors = {n: m.splitlines()[0] for n, m in self.failures.items() if n in missing}
            backend.note_fetch_failures("face", errors, {n: self.store.manual_route(n) for n in missing})
            return backend
        if not (isinstance(backend, UnavailableBackend) and backend.code == "models_missing" and self.failures):
            return backend
        missing = list(backend.models.get("missing", []))
        errors = {n: m.splitlines()[0] for n, m in self.failures.items() if n in missing}
        manual = {n: self.store.manual_route(n) for n in missing}
        lines = [backend.message]
        lines += [f"{n}: the engine could not download it: {errors[n]}" for n in missing if n in errors]
        lines += [f"{n}: {manual[n]}" for n in missing]
        models = {**backend.models, "download_errors": errors, "manual": manual}
        return UnavailableBackend(backend.code, "\n".join(lines), models)
