"""Issue 16 must-show: one daemon session (tiny profile) answers face, car and church edits; a domain
loads on first use (status says `loading`), and with a budget that holds two domains' networks the
least recently used one is evicted, so the loaded networks never exceed it while domains alternate.
A domain whose files are missing answers `models_missing`, naming the files and the fetch command.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from ffclip.bridge.domains import DomainBackend, load_engine_backend
from ffclip.bridge.testing import running_server
from ffclip.plugin.client import EngineClient
from ffclip.plugin.protocol import EditParams, EngineError, ImageSpec

pytest.importorskip("ffclip.engine.pipeline")

from tests.support.paths import SCENES


def _rgba(path: Path) -> tuple[bytes, ImageSpec]:
    from ffclip.engine.imageio import load_image

    image = load_image(path)
    rgba = np.dstack([image[..., :3], np.full(image.shape[:2], 255, np.uint8)])
    return np.ascontiguousarray(rgba).tobytes(), ImageSpec(image.shape[1], image.shape[0])


def _tiny_bytes(domain: str) -> int:
    from ffclip.engine.inference import network_bytes
    from ffclip.engine.profiles import profile_for

    return network_bytes(profile_for("tiny", domain))


class StatusWatcher:
    """Polls `status` on its own connection while edits run, recording every domain state seen."""

    def __init__(self, url: str) -> None:
        self.client = EngineClient(url, timeout=60)
        self.client.connect()
        self.seen: dict[str, set[str]] = {}
        self.peak_domains_bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            status = self.client.status()
            for domain, state in (status.get("domains") or {}).items():
                self.seen.setdefault(domain, set()).add(state["state"])
            self.peak_domains_bytes = max(self.peak_domains_bytes, status["memory"]["domains_bytes"])
            time.sleep(0.05)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self.client.close()


@pytest.mark.slow
def test_one_session_edits_faces_cars_and_churches_within_the_memory_budget(photos_dir):
    budget = _tiny_bytes("face") + _tiny_bytes("car") + 1000  # two tiny domains fit, never three
    face = _rgba(photos_dir / "astronaut.png")
    car_rgba, car_spec = _rgba(SCENES / "trier_aula_palatina.webp")
    car_sel = np.zeros((car_spec.height, car_spec.width), np.uint8)
    car_sel[608:660, 388:505] = 255
    church = _rgba(SCENES / "reims_cathedral.webp")
    jobs = {
        "face": (EditParams.single("smiling"), *face, None),
        "car": (EditParams.single("a red car", domain="car", selection=True), car_rgba, car_spec, car_sel.tobytes()),
        "church": (EditParams.single("a gothic church", domain="church"), *church, None),
    }
    order = ["face", "car", "church", "face", "church", "car", "face", "car", "church"]
    with running_server(lambda: load_engine_backend("tiny", None, "cpu", "model", 40_000_000, budget)) as server:
        client = EngineClient(server.url, timeout=300)
        client.connect()
        first = client.status()
        assert first["domains"]["face"]["state"] == "ready"
        assert first["domains"]["car"]["state"] == first["domains"]["church"]["state"] == "available"
        assert first["memory"]["budget_bytes"] == budget
        watcher = StatusWatcher(server.url)
        history = []
        try:
            for domain in order:
                params, image, spec, selection = jobs[domain]
                result = client.edit(params, image, spec, selection)
                assert result.domain == domain and result.untrained and result.region[2] > 0
                if domain == "car":  # the selection is the edit's extent
                    x, y, w, h = result.region
                    assert (x, y, x + w, y + h) == (388, 608, 505, 660)
                status = client.status()
                memory = status["memory"]
                assert status["domains"][domain]["state"] == "ready"
                assert memory["domains_bytes"] <= budget and len(memory["loaded"]) <= 2
                assert memory["loaded"][-1] == domain  # the most recently used is kept
                history.append((domain, memory["loaded"], memory["rss_bytes"]))
        finally:
            watcher.stop()
        client.close()
    assert "loading" in watcher.seen["car"] and "loading" in watcher.seen["church"]
    assert watcher.peak_domains_bytes <= budget
    # least recently used out, until the next domain fits: the same as a plain LRU model of it
    expected, loaded, evictions = [], ["face"], 0
    for domain in order:
        if domain in loaded:
            loaded.remove(domain)
        else:
            while loaded and sum(map(_tiny_bytes, loaded)) + _tiny_bytes(domain) > budget:
                loaded.pop(0)
                evictions += 1
        loaded.append(domain)
        expected.append(list(loaded))
    assert [lo for _, lo, _ in history] == expected and memory["evictions"] == evictions == 5
    print("\ndomain, loaded after the edit, RSS MB:", [(d, lo, round(r / 1e6)) for d, lo, r in history])


def test_a_missing_domain_answers_models_missing_naming_its_files(tmp_path):
    store = tmp_path / "models"
    store.mkdir()
    backend = DomainBackend("real", str(store), "cpu")
    with pytest.raises(EngineError) as caught:
        backend.load("car")
    assert caught.value.code == "models_missing"
    for name in ("e4e_cars_encode.pt", "ffclip_car.pt", "clip_vit_b_32_openai.safetensors"):
        assert name in caught.value.message
    assert caught.value.message.endswith(f"ffclip-engine models fetch --models {store} car")
    states = backend.describe()["domains"]
    assert states["church"]["state"] == "missing" and states["church"]["fetch"].endswith(" church")
    assert states["car"]["missing"] == ["e4e-cars", "ffclip-car", "clip"]  # the names `models fetch` takes
    assert backend.describe()["memory"]["domains_bytes"] == 0


@pytest.mark.slow
def test_a_domain_over_the_budget_is_loaded_alone():
    import gc
    import weakref

    backend = DomainBackend("tiny", None, "cpu", budget=1)
    church = weakref.ref(backend.load("church").engine.generator)
    backend.load("car")
    assert backend.describe()["memory"]["loaded"] == ["car"] and backend.evictions == 1
    gc.collect()
    assert church() is None  # an evicted domain's networks are freed, not kept by a reference
    assert backend.domain_states()["church"]["state"] == "available"
    assert backend.load("car") is backend.load("car")  # loaded once
