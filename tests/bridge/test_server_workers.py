"""Several workers on one queue (`serve --devices`, issue 15): a photo goes back to the worker that
holds its inversion even while another is idle, status lists the workers and what each does, live
sessions' supersede and reuse_image keep working, shutdown ends every job once; and the real (tiny)
engine on `--devices cpu,cpu`: two model copies with their own caches."""

from __future__ import annotations

import json
import threading
import time
import uuid

import numpy as np
import pytest

from ffclip.bridge.fake import FakeBackend
from ffclip.bridge.testing import ServerThread, running_server
from ffclip.plugin import session as live
from ffclip.plugin.client import EngineClient
from ffclip.plugin.protocol import EditParams, EngineError, ImageSpec
from ffclip.plugin.websocket import ConnectionClosed, WebSocket
from tests.support.waiting import until

RNG = np.random.default_rng(8)
PHOTOS = [RNG.integers(0, 256, (48, 64, 4), dtype=np.uint8) for _ in range(3)]
SPEC = ImageSpec(64, 48)
TERMINAL = ("result", "error", "cancelled")


class Gated(FakeBackend):
    """One worker's fake backend: records the jobs it ran; a prompt starting with "hold" waits at
    its first stage until the test opens that prompt's gate."""

    def __init__(self, index: int, gates: dict[str, threading.Event], stage_seconds: float = 0.0):
        super().__init__(stage_seconds, device=f"fake:{index}")
        self.index, self.gates, self.ran = index, gates, []

    def run(self, request, image, selection, progress, should_cancel, memo):
        self.ran.append(request.id)
        prompt = request.params.prompts[0]
        if prompt.startswith("hold"):
            progress("detect", 0.0)
            while not self.gates.setdefault(prompt, threading.Event()).wait(0.01):
                if should_cancel():
                    raise EngineError("cancelled", "the edit was cancelled")
        return super().run(request, image, selection, progress, should_cancel, memo)


def workers(n: int, stage_seconds: float = 0.0) -> tuple[list[Gated], dict[str, threading.Event]]:
    gates: dict[str, threading.Event] = {}
    return [Gated(i, gates, stage_seconds) for i in range(n)], gates


def loaders(backends: list[Gated]) -> list:
    return [lambda b=b: b for b in backends]


class Raw:
    def __init__(self, url: str):
        self.ws = WebSocket.connect(url)
        assert json.loads(self.ws.recv(10))["type"] == "status"
        self.ends: dict[str, list[str]] = {}

    def edit(self, prompt: str, image: np.ndarray | None = None, **fields) -> str:
        job = uuid.uuid4().hex
        message = {"type": "edit", "id": job, "prompt": prompt, **fields}
        if image is not None:
            message["image"] = {"width": image.shape[1], "height": image.shape[0], "format": "rgba8"}
        self.ws.send_text(json.dumps(message))
        if image is not None:
            self.ws.send_binary(image.tobytes())
        return job

    def until(self, jobs: set[str], timeout: float = 20) -> dict[str, list[str]]:
        while not jobs <= set(self.ends):
            message = self.ws.recv(timeout)
            if isinstance(message, str):
                message = json.loads(message)
                if message["type"] in TERMINAL:
                    self.ends.setdefault(message["id"], []).append(message.get("code", message["type"]))
        return self.ends


def status(url: str) -> dict:
    with EngineClient(url, timeout=10) as client:
        return client.status()


def test_a_photo_sent_again_waits_for_its_worker_while_the_other_is_idle():
    backends, gates = workers(2)
    with running_server(loaders(backends)) as server:
        with EngineClient(server.url, timeout=20) as client:
            first = client.edit(EditParams.single("first"), PHOTOS[0].tobytes(), SPEC)
        holder = next(b for b in backends if first.id in b.ran)
        other = backends[1 - holder.index]
        busy = Raw(server.url)
        held = [busy.edit("hold-1", PHOTOS[1]), busy.edit("hold-2", PHOTOS[2])]
        until(lambda: all(any(j in b.ran for j in held) for b in backends))  # both workers busy
        shown = status(server.url)["workers"]
        assert [w["job"] for w in shown] == [{"user": None, "stage": "detect"}] * 2
        assert {w["device"] for w in shown} == {"fake:0", "fake:1"}
        again = Raw(server.url)  # another connection sends the same photo: routed by its bytes
        job = again.edit("again", PHOTOS[0])
        until(lambda: status(server.url)["queue"] == 1)
        other_hold = next(j for j in held if j in other.ran)
        gates["hold-1" if other_hold == held[0] else "hold-2"].set()  # the non-holder becomes idle
        until(lambda: status(server.url)["workers"][other.index]["job"] is None)
        time.sleep(0.3)
        assert job not in other.ran and status(server.url)["queue"] == 1  # it waits for its worker
        for gate in ("hold-1", "hold-2"):
            gates.setdefault(gate, threading.Event()).set()
        assert again.until({job})[job] == ["result"]
        assert job in holder.ran
        final = status(server.url)
        assert final["routing"] == {"new": 3, "routed": 1}
        assert final["workers"][holder.index]["cache"]["inversion"]["hits"] == 1
        assert final["workers"][holder.index]["jobs_done"] == 3 and final["workers"][other.index]["jobs_done"] == 1
        busy.ws.close()
        again.ws.close()


def test_live_supersede_and_reuse_image_with_two_workers():
    backends, _ = workers(2, stage_seconds=0.04)
    events, lock = [], threading.Lock()

    def on_event(event):
        with lock:
            events.append(event)

    with running_server(loaders(backends)) as server:
        session = live.EngineSession(server.url, on_event)
        image = PHOTOS[0].tobytes()
        try:
            jobs = []
            for n in range(6):  # typing: each request supersedes the one before, the photo is sent once
                jobs.append(
                    session.submit(EditParams.single(f"smiling {n}", preview=True, supersede=True), image, SPEC)
                )
                time.sleep(0.05)
            until(lambda: any(isinstance(e, live.ResultReady) and e.job_id == jobs[-1] for e in events), 20)
            time.sleep(0.3)
        finally:
            session.close()
    ends: dict[str, list[str]] = {}
    for event in events:
        if isinstance(event, live.ResultReady | live.JobCancelled | live.JobFailed):
            ends.setdefault(event.job_id, []).append(type(event).__name__)
    assert set(ends) == set(jobs) and all(len(v) == 1 for v in ends.values()), ends  # each ends once
    assert ends[jobs[-1]] == ["ResultReady"] and "JobFailed" not in sum(ends.values(), [])
    ran = [b for b in backends if b.ran]
    assert len(ran) == 1  # one photo: every preview went to the worker holding it


def test_shutdown_ends_running_and_waiting_jobs_of_every_worker_once():
    backends, _ = workers(2)
    thread = ServerThread(loaders(backends), drain_grace=0.0).start()  # no drain: test_server_drain.py
    raw = Raw(thread.url)
    jobs = {raw.edit(f"hold-{n}", PHOTOS[n % 3]) for n in range(5)}
    until(lambda: all(b.ran for b in backends) and status(thread.url)["queue"] == 3)  # 2 running, 3 waiting
    closed = []

    def read() -> None:  # the client reads on, as a client does, until the engine closes
        try:
            raw.until(jobs | {"never"}, timeout=20)
        except ConnectionClosed as exc:
            closed.append(exc.code)

    reader = threading.Thread(target=read)
    reader.start()
    thread.stop()
    reader.join(20)
    assert closed == [1001]
    assert set(raw.ends) == jobs and all(v == ["cancelled"] for v in raw.ends.values()), raw.ends


@pytest.mark.process
@pytest.mark.slow
def test_tiny_engine_on_two_cpu_workers(photos_dir, tmp_path):
    from tests.support.daemon import Daemon, daemon_env

    log = tmp_path / "engine.log"
    daemon = Daemon(
        *("--port", "0", "--profile", "tiny", "--devices", "cpu,cpu", "--log-file", str(log)),
        env=daemon_env(XDG_STATE_HOME=str(tmp_path / "state")),
    )
    try:
        client = EngineClient(daemon.url, timeout=300)
        client.connect()
        until(lambda: all(w["state"] == "ready" for w in client.status()["workers"]), 300)
        png = (photos_dir / "astronaut.png").read_bytes()
        first = client.edit(EditParams.single("smiling", preview=True), png, ImageSpec(512, 512, "png"))
        again = client.edit(EditParams.single("grey hair", preview=True), None, None)  # reuse_image
        shown = client.status()
        client.close()
    finally:
        assert daemon.stop() == 0
    assert "invert" in first.stages and {"detect", "align", "invert"} <= set(again.skipped)
    assert shown["device"] == "cpu,cpu" and len(shown["workers"]) == 2
    caches = [w["cache"]["inversion"]["entries"] for w in shown["workers"]]
    assert sorted(caches)[0] == 0 and sorted(caches)[1] > 0  # one model copy holds the photo
    text = log.read_text()
    worker = {line.split(" started on worker ")[1][0] for line in text.splitlines() if " started on worker " in line}
    assert len(worker) == 1  # the re-edit ran where the inversion is
