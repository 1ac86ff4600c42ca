"""`fidelity` over the socket (issue 29) on `serve --profile tiny`: the status says the engine takes
`high`; a high edit inverts once, a re-edit of the same photo skips `invert`; an unknown fidelity
is a bad_request that leaves the connection usable."""

from __future__ import annotations

import json
import uuid

import pytest

from ffclip.plugin.protocol import StatusMessage
from ffclip.plugin.websocket import WebSocket
from tests.support.daemon import tiny_daemon

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    process = tiny_daemon(tmp_path_factory.mktemp("tiny") / "engine.log")
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


def test_the_domains_backend_counts_hyperstyle_once_loaded_and_says_what_is_missing(photos_dir) -> None:
    """The daemon's backend: HyperStyle's networks (loaded on the first high edit) count in the
    domains' memory; the status reads the faces engine's fidelities when asked (files fetched later
    are seen without a restart)."""
    import numpy as np

    from ffclip.bridge.domains import DomainBackend
    from ffclip.bridge.messages import EditAnnouncement
    from ffclip.engine.imageio import load_image
    from ffclip.plugin.protocol import EditParams, ImageSpec

    backend = DomainBackend("tiny", None, "cpu")
    backend.load("face")
    before = backend.used_bytes()
    assert StatusMessage(backend.describe()).fidelities == ("standard", "high")
    image = np.ascontiguousarray(load_image(photos_dir / "astronaut.png")[..., :3])
    rgba = np.dstack([image, np.full(image.shape[:2], 255, np.uint8)])
    request = EditAnnouncement(
        "j", EditParams.single("smiling", faces="largest", fidelity="high"), ImageSpec(rgba.shape[1], rgba.shape[0])
    )
    result = backend.run(request, rgba.tobytes(), None, lambda *_: None, lambda: False, {})
    assert result.fidelity == "high" and backend.used_bytes() > before
    engine = backend.load("face").engine
    engine.set_hyperstyle(lambda: None, lambda: ["hyperstyle"])
    engine._hyperstyle = None  # noqa: SLF001 - as if the files had gone before it loaded
    assert backend.describe()["models"]["high_fidelity"]["missing"] == ["hyperstyle"]


def test_each_domain_says_its_fidelities_before_it_loads(tmp_path) -> None:
    """status.domains.<d>.fidelities / high_fidelity, what the dialog reads for a car: from the store
    before the domain loads, from its engine after; never high for churches."""
    from ffclip.bridge.domains import DomainBackend
    from ffclip.engine.store import ModelStore

    tiny = DomainBackend("tiny", None, "cpu").domain_states()
    assert tiny["car"]["fidelities"] == ["standard", "high"] and tiny["church"]["fidelities"] == ["standard"]
    store = ModelStore(tmp_path)
    for name in ("e4e-cars", "ffclip-car", "clip"):  # present (the states look at presence only)
        store.path(name).parent.mkdir(parents=True, exist_ok=True)
        store.path(name).write_bytes(b"")
    real = DomainBackend("real", str(tmp_path), "cpu").domain_states()
    assert real["car"]["state"] == "available" and real["car"]["fidelities"] == ["standard"]
    assert real["car"]["high_fidelity"]["missing"] == ["hyperstyle-cars", "hyperstyle-w-encoder-cars"]
    assert real["car"]["high_fidelity"]["fetch"].endswith("high-car")
    assert "fidelities" not in real["face"]  # missing: the state says what to fetch first
    for name in ("hyperstyle-cars", "hyperstyle-w-encoder-cars"):
        store.path(name).write_bytes(b"")
    assert DomainBackend("real", str(tmp_path), "cpu").domain_states()["car"]["fidelities"] == ["standard", "high"]
