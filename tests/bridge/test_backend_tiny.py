"""Must-show on `serve --profile tiny` (real pipeline, small untrained networks) with a real photo.

A photo edited over the socket returns `result` + an RGBA region whose alpha is the pipeline's blend
mask; progress arrives for every stage in order; a re-edit with a new prompt skips detect/align/invert;
the bad-input battery still ends in a valid edit; `ffclip-engine edit --url` uses the warm daemon.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid

import numpy as np
import pytest

from ffclip.plugin.protocol import STAGES
from ffclip.plugin.websocket import WebSocket
from tests.support.daemon import tiny_daemon

pytest.importorskip("ffclip.engine.pipeline")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    process = tiny_daemon(tmp_path_factory.mktemp("tiny") / "engine.log")
    yield process
    assert process.stop() == 0


@pytest.fixture(scope="module")
def photo(photos_dir) -> bytes:
    return (photos_dir / "astronaut.png").read_bytes()


def _edit(ws: WebSocket, png: bytes, prompt: str) -> tuple[list[dict], dict, bytes]:
    job = uuid.uuid4().hex
    edit = {
        "type": "edit",
        "id": job,
        "prompt": prompt,
        "strength": 1.0,
        "faces": "all",
        "preview": False,
        "image": {"width": 512, "height": 512, "format": "png"},
    }
    ws.send_text(json.dumps(edit))
    ws.send_binary(png)
    seen = []
    while True:
        message = json.loads(ws.recv(300))
        assert message["id"] == job
        if message["type"] in ("result", "error", "cancelled"):
            assert message["type"] == "result", message
            return seen, message, ws.recv(60)
        seen.append(message)


def test_photo_edit_over_the_socket_returns_the_blend_mask_as_alpha(daemon, photo):
    from ffclip.engine.imageio import load_image
    from ffclip.engine.inference import Engine
    from ffclip.engine.pipeline import Pipeline
    from ffclip.plugin.protocol import EditParams

    ws = WebSocket.connect(daemon.url)
    greeting = json.loads(ws.recv(10))
    assert greeting["profile"] == "tiny" and greeting["untrained"] is True
    seen, result, rgba = _edit(ws, photo, "a smiling face")
    stages = [m["stage"] for m in seen if m["type"] == "progress"]
    assert list(dict.fromkeys(stages)) == list(STAGES)
    assert stages == sorted(stages, key=STAGES.index)
    assert result["stages"] == list(STAGES) and result["untrained"] is True
    x, y, w, h = result["region"]
    region = np.frombuffer(rgba, np.uint8).reshape(h, w, 4)
    assert result["faces"] and len(result["faces"][0]["quad"]) == 4

    # The same edit in this process: the region's alpha is exactly its blend mask.
    local = Pipeline(Engine.load(profile="tiny")).edit(EditParams.single("a smiling face"), load_image(photo))
    assert tuple(local.region) == (x, y, w, h)
    assert np.array_equal(region[..., 3], local.mask[y : y + h, x : x + w])
    assert 0 < region[..., 3].mean() < 255 and region[..., 3].max() == 255

    seen, again, _ = _edit(ws, photo, "blond hair")  # new prompt, same photo
    assert again["stages"] == ["encode_text", "map", "synthesize", "blend"]
    assert again["skipped"] == ["detect", "align", "invert"]
    ws.send_text('{"type":"status"}')
    assert json.loads(ws.recv(10))["cache"]["inversion"]["hits"] >= 1
    ws.close()


def test_bad_input_battery_then_a_valid_edit(daemon, photo):
    ws = WebSocket.connect(daemon.url)
    ws.recv(10)
    codes = []

    def ask(text: str, *frames: bytes) -> None:
        ws.send_text(text)
        for frame in frames:
            ws.send_binary(frame)
        while True:  # an accepted job reports `queued` and progress before its error
            message = json.loads(ws.recv(120))
            if message["type"] == "error":
                codes.append(message["code"])
                return

    def edit(width, height, fmt="rgba8", **extra) -> str:
        message = {
            "type": "edit",
            "id": uuid.uuid4().hex,
            "prompt": "smile",
            "image": {"width": width, "height": height, "format": fmt},
        }
        return json.dumps({**message, **extra})

    ask("{oops")
    ask('{"type":"teleport"}')
    ask(edit(64, 64, prompt=7), bytes(64 * 64 * 4))
    ws.send_binary(b"\x01" * 99)
    codes.append(json.loads(ws.recv(10))["code"])
    ask(edit(64, 64), bytes(64 * 64 * 4 + 1))
    ask(edit(64, 64, "png"), b"plain text, not an image")
    ask(edit(512, 512, "png"), photo[: len(photo) // 3])
    ask(edit(1, 1), bytes(4))
    ask(edit(64, 64), bytes(64 * 64 * 4))
    ask(edit(20000, 20000), bytes(16))
    ask(edit(7000, 7000, "png"), bytes(200_000_000))
    assert codes == [
        "bad_request",
        "bad_request",
        "bad_request",
        "bad_request",
        "bad_image",
        "bad_image",
        "bad_image",
        "bad_image",
        "no_face",
        "too_large",
        "too_large",
    ]
    _, result, rgba = _edit(ws, photo, "smiling")
    assert len(rgba) == result["region"][2] * result["region"][3] * 4
    ws.close()


@pytest.mark.process
def test_edit_command_with_url_uses_the_daemon(daemon, photos_dir, tmp_path):
    out, mask = tmp_path / "out.png", tmp_path / "mask.png"
    command = [
        sys.executable,
        "-m",
        "ffclip.app",
        "edit",
        str(photos_dir / "astronaut.png"),
        "smiling",
        "-o",
        str(out),
        "--mask-out",
        str(mask),
        "--url",
        daemon.url,
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    from PIL import Image

    edited = np.asarray(Image.open(out).convert("RGB")).astype(int)
    original = np.asarray(Image.open(photos_dir / "astronaut.png").convert("RGB")).astype(int)
    alpha = np.asarray(Image.open(mask))
    assert edited.shape == original.shape and alpha.shape == original.shape[:2]
    assert np.array_equal(edited[alpha == 0], original[alpha == 0])  # untouched outside the mask
    assert (edited[alpha == 255] != original[alpha == 255]).any()
