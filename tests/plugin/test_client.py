"""The stdlib side: websocket framing, PNG codec, compositing, protocol helpers, edit_file."""

from __future__ import annotations

import socket
import threading

import numpy as np
import pytest
from PIL import Image

from ffclip.bridge.fake import FakeBackend
from ffclip.bridge.testing import running_server
from ffclip.plugin.client import ConnectionFailed, EngineClient, edit_file
from ffclip.plugin.protocol import EditParams, ImageSpec, parse_faces

RNG = np.random.default_rng(7)


def test_protocol_helpers():
    assert parse_faces("0, 2") == (0, 2) and parse_faces("Largest") == "largest"
    assert parse_faces(1) == (1,)
    with pytest.raises(ValueError):
        parse_faces("some")
    message = EditParams.single("smile", selection=True).to_message("id1", ImageSpec(10, 20))
    assert message["image"] == {"width": 10, "height": 20, "format": "rgba8"}
    assert message["selection"] == {"format": "a8"}


def test_unreachable_engine_raises_connection_failed():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(ConnectionFailed):
        EngineClient(f"ws://127.0.0.1:{port}/", timeout=2).connect()


def test_a_non_websocket_server_is_not_an_engine():
    listener = socket.create_server(("127.0.0.1", 0))

    def answer():
        conn, _ = listener.accept()
        conn.recv(4096)
        conn.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
        conn.close()

    threading.Thread(target=answer, daemon=True).start()
    with pytest.raises(ConnectionFailed):
        EngineClient(f"ws://127.0.0.1:{listener.getsockname()[1]}/", timeout=5).connect()
    listener.close()


def test_edit_file_composites_the_region_and_writes_the_mask(tmp_path):
    photo = RNG.integers(0, 256, (60, 80, 3), dtype=np.uint8)
    source = tmp_path / "in.png"
    Image.fromarray(photo).save(source)
    with running_server(lambda: FakeBackend(0.0)) as thread:
        summary = edit_file(
            thread.url, source, EditParams.single("smiling"), tmp_path / "out.png", mask_out=tmp_path / "mask.png"
        )
        jpeg = tmp_path / "in.jpg"
        Image.fromarray(photo).save(jpeg)
        again = edit_file(thread.url, jpeg, EditParams.single("smiling"), tmp_path / "out2.png")
    out = np.asarray(Image.open(tmp_path / "out.png"))
    mask = np.asarray(Image.open(tmp_path / "mask.png"))
    x, y, w, h = summary["region"]
    assert out.shape == photo.shape  # opaque input → RGB output
    outside = np.ones(photo.shape[:2], bool)
    outside[y : y + h, x : x + w] = False
    assert np.array_equal(out[outside], photo[outside]) and (mask[outside] == 0).all()
    inside = mask == 255
    assert inside.any() and np.array_equal(out[inside], 255 - photo[inside])  # the fake inverts
    assert summary["stages"][0] == "detect" and again["region"] == summary["region"]
