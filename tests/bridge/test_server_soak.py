"""Soak: 5 clients × 10 jobs with random cancels and one client killed mid-job, against a daemon process.

Checks: every job of a live client ends in exactly one terminal message, the daemon stays up and
idle afterwards, and its resident memory returns to the idle level (after a warm-up) within 10 %.
Runs on the fake backend always, and on the real tiny models when they can load (marked slow).
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from ffclip.plugin.websocket import WebSocket
from tests.support.daemon import Daemon

pytestmark = pytest.mark.process  # every test here starts a process

TERMINAL = ("result", "error", "cancelled")
KILLED_CLIENT = """
import sys
import numpy as np
from ffclip.plugin.client import EngineClient
from ffclip.plugin.protocol import EditParams, ImageSpec
image = np.load(sys.argv[2])
client = EngineClient(sys.argv[1], timeout=60)
client.connect()
def progress(stage, value):
    print("running", flush=True)
for _ in range(3):
    spec = ImageSpec(image.shape[1], image.shape[0])
    client.edit(EditParams.single("smiling"), image.tobytes(), spec, on_progress=progress)
"""


def fake_images() -> list[np.ndarray]:
    rng = np.random.default_rng(11)
    return [rng.integers(0, 256, (192, 256, 4), dtype=np.uint8) for _ in range(4)]


def photo_images(photos_dir: Path) -> list[np.ndarray]:
    from PIL import Image

    base = np.asarray(Image.open(photos_dir / "astronaut.png").convert("RGBA"))
    return [base, base[:, ::-1].copy(), base[10:470, 20:500].copy(), base[0:400, 40:512].copy()]


class Client(threading.Thread):
    """Keeps up to 3 jobs in flight, cancels about a quarter of them at a random point, records
    every terminal message."""

    def __init__(self, url: str, images: list[np.ndarray], jobs: int, seed: int, cancel_rate: float = 0.25):
        super().__init__(daemon=True)
        self.url, self.images, self.total = url, images, jobs
        self.random = random.Random(seed)
        self.cancel_rate = cancel_rate
        self.ends: dict[str, list[str]] = {}
        self.cancelled: set[str] = set()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc

    def _run(self) -> None:
        ws = WebSocket.connect(self.url)
        ws.recv(10)  # greeting
        submitted, live = 0, {}  # job id -> messages left before it is cancelled (None: never)
        while submitted < self.total or live:
            while submitted < self.total and len(live) < 3:
                cancel = self.random.choice([0, 1, 3, 6, 10]) if self.random.random() < self.cancel_rate else None
                live[self._submit(ws)] = cancel
                submitted += 1
            for job, left in list(live.items()):
                if left == 0:
                    ws.send_text(json.dumps({"type": "cancel", "id": job}))
                    self.cancelled.add(job)
                    live[job] = None
            message = json.loads(_next_text(ws))
            job = message.get("id")
            if message.get("type") in TERMINAL:
                self.ends.setdefault(job, []).append(message.get("code", message["type"]))
                live.pop(job, None)
                if message["type"] == "result":
                    assert isinstance(ws.recv(60), bytes)
            elif live.get(job) is not None:
                live[job] -= 1
        try:  # anything after the last terminal message would be a duplicate
            extra = ws.recv(0.5)
            if isinstance(extra, str) and json.loads(extra).get("type") in TERMINAL:
                self.ends.setdefault(json.loads(extra)["id"], []).append("duplicate")
        except TimeoutError:
            pass
        ws.close()

    def _submit(self, ws: WebSocket) -> str:
        image = self.images[self.random.randrange(len(self.images))]
        job = uuid.uuid4().hex
        h, w = image.shape[:2]
        prompt = self.random.choice(["smiling", "blond hair", "old person", "beard"])
        edit = {
            "type": "edit",
            "id": job,
            "prompt": prompt,
            "strength": 1.0,
            "faces": "all",
            "preview": False,
            "image": {"width": w, "height": h, "format": "rgba8"},
        }
        ws.send_text(json.dumps(edit))
        ws.send_binary(image.tobytes())
        return job


def _next_text(ws: WebSocket) -> str:
    while True:
        message = ws.recv(120)
        if isinstance(message, str):
            return message


def status(url: str) -> dict:
    ws = WebSocket.connect(url)
    message = json.loads(ws.recv(10))
    ws.close()
    return message


def soak(url: str, images: list[np.ndarray], tmp_path: Path, clients: int = 5, jobs: int = 10) -> dict:
    warm = Client(url, images, len(images) * 2, seed=99, cancel_rate=0.0)  # warm-up: every photo inverted once
    warm.start()
    warm.join(300)
    assert warm.error is None, warm.error
    time.sleep(3.0)  # the engine returns freed memory to the OS after 1 s of idleness
    idle = status(url)["memory"]["rss_bytes"]

    np.save(tmp_path / "victim.npy", images[0])
    victim = subprocess.Popen(
        [sys.executable, "-c", KILLED_CLIENT, url, str(tmp_path / "victim.npy")], stdout=subprocess.PIPE, text=True
    )
    workers = [Client(url, images, jobs, seed=n) for n in range(clients)]
    started = time.monotonic()
    for worker in workers:
        worker.start()
    assert victim.stdout.readline().strip() == "running"  # its job is on the device now
    victim.send_signal(signal.SIGKILL)
    victim.wait(10)
    for worker in workers:
        worker.join(300)
    seconds = time.monotonic() - started

    for worker in workers:
        assert worker.error is None, worker.error
        assert len(worker.ends) == jobs
        assert all(len(ends) == 1 for ends in worker.ends.values()), worker.ends
    time.sleep(3.0)
    after = status(url)
    return {
        "idle_rss": idle,
        "after_rss": after["memory"]["rss_bytes"],
        "seconds": seconds,
        "after": after,
        "outcomes": [e[0] for w in workers for e in w.ends.values()],
        "cancel_requests": sum(len(w.cancelled) for w in workers),
    }


def check(report: dict) -> None:
    after = report["after"]
    assert after["queue"] == 0 and after["running"] is False
    assert after["jobs"].get("abandoned", 0) + after["jobs"].get("cancelled", 0) >= 1
    outcomes = report["outcomes"]
    assert "result" in outcomes and "cancelled" in outcomes
    growth = (report["after_rss"] - report["idle_rss"]) / report["idle_rss"]
    print(
        f"\nsoak: {len(outcomes)} jobs in {report['seconds']:.1f} s, "
        f"{outcomes.count('result')} results, {outcomes.count('cancelled')} cancelled, "
        f"rss idle {report['idle_rss'] / 2**20:.1f} MiB → after {report['after_rss'] / 2**20:.1f} MiB "
        f"({growth:+.1%}), cache {after['cache']}"
    )
    assert abs(growth) <= 0.10


def test_soak_fake_backend(tmp_path):
    daemon = Daemon("--port", "0", "--fake-engine", "--fake-stage-seconds", "0.02", "--log-file", str(tmp_path / "log"))
    try:
        report = soak(daemon.url, fake_images(), tmp_path)
        assert daemon.proc.poll() is None  # still up
        check(report)
    finally:
        assert daemon.stop() == 0


@pytest.mark.slow
def test_soak_tiny_profile(tmp_path, photos_dir):
    pytest.importorskip("ffclip.engine.pipeline")
    daemon = Daemon("--port", "0", "--profile", "tiny", "--device", "cpu", "--log-file", str(tmp_path / "log"))
    try:
        report = soak(daemon.url, photo_images(photos_dir), tmp_path)
        assert daemon.proc.poll() is None
        check(report)
    finally:
        assert daemon.stop() == 0
