"""`fidelity` over the socket (issue 29) on `serve --profile tiny`: the status says the engine takes
`high`; a high edit inverts once, a re-edit of the same photo skips `invert`; an unknown fidelity
is a bad_request that leaves the connection usable."""

from __future__ import annotations

import json
import time
import uuid

import pytest

from ffclip.plugin.client import EngineClient
from ffclip.plugin.protocol import StatusMessage
from ffclip.plugin.websocket import WebSocket
from tests.support.daemon import Daemon

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    log = tmp_path_factory.mktemp("tiny") / "engine.log"
    process = Daemon("--port", "0", "--profile", "tiny", "--device", "cpu", "--log-file", str(log))
    client = EngineClient(process.url, timeout=120)
    client.connect()
    while client.status()["state"] == "loading":
        time.sleep(0.2)
    client.close()
    yield process
    assert process.stop() == 0


def _edit(ws: WebSocket, png: bytes, prompt: str, **fields) -> dict:
    job = uuid.uuid4().hex
    edit = {"type": "edit", "id": job, "prompt": prompt, "faces": "largest", **fields}
    edit["image"] = {"width": 512, "height": 512, "format": "png"}
    ws.send_text(json.dumps(edit))
    ws.send_binary(png)
    while True:
        message = json.loads(ws.recv(300))
        if message["type"] in ("result", "error", "cancelled"):
            if message["type"] == "result":
                ws.recv(60)
            return message


def test_high_fidelity_over_the_socket(daemon, photos_dir) -> None:
    png = (photos_dir / "astronaut.png").read_bytes()
    ws = WebSocket.connect(daemon.url)
    greeting = json.loads(ws.recv(10))
    assert StatusMessage(greeting).fidelities == ("standard", "high")
    assert greeting["models"]["high_fidelity"] == {"loaded": False, "missing": []}
    refused = _edit(ws, png, "smiling", fidelity="ultra")
    assert refused["type"] == "error" and refused["code"] == "bad_request" and "fidelity" in refused["message"]
    first = _edit(ws, png, "smiling", fidelity="high", preview=True)
    assert first["type"] == "result" and first["fidelity"] == "high" and "invert" in first["stages"]
    again = _edit(ws, png, "smiling", fidelity="high", strength=0.5)  # Apply at a new strength
    assert again["fidelity"] == "high" and again["stages"] == ["synthesize", "blend"]
    standard = _edit(ws, png, "smiling")
    assert standard["fidelity"] == "standard" and "invert" in standard["stages"]
    ws.close()


def test_the_fake_engine_takes_both_fidelities_for_client_development() -> None:
    """`serve --fake-engine` (developing a client without models) offers high and echoes it, each
    fidelity "inverting" once per photo as the engine does."""
    import numpy as np

    from ffclip.bridge.fake import FakeBackend
    from ffclip.bridge.messages import EditAnnouncement
    from ffclip.plugin.protocol import EditParams, ImageSpec

    fake = FakeBackend()
    assert StatusMessage(fake.describe()).fidelities == ("standard", "high")
    pixels = np.random.default_rng(0).integers(0, 255, (64, 64, 4), np.uint8).tobytes()

    def run(fidelity: str):
        request = EditAnnouncement("j", EditParams.single("smiling", fidelity=fidelity), ImageSpec(64, 64))
        return fake.run(request, pixels, None, lambda *_: None, lambda: False, {})

    first = run("high")
    assert first.fidelity == "high" and "invert" in first.stages
    assert "invert" not in run("high").stages
    standard = run("standard")  # the other fidelity's inversion is its own
    assert standard.fidelity == "standard" and "invert" in standard.stages
