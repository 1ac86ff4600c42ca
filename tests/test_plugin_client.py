"""The stdlib side: websocket framing, PNG codec, compositing, protocol helpers, edit_file."""

from __future__ import annotations

import io
import os
import socket
import threading
import time

import numpy as np
import pytest
from PIL import Image

from ffclip.bridge.fake import FakeBackend
from ffclip.bridge.testing import running_server
from ffclip.plugin import imageops, png
from ffclip.plugin.client import ConnectionFailed, EngineClient, edit_file
from ffclip.plugin.protocol import EditParams, ImageSpec, parse_faces
from ffclip.plugin.websocket import ConnectionClosed, WebSocket, frame_header, mask_payload, parse_url

RNG = np.random.default_rng(7)


def test_mask_payload_matches_bytewise_xor():
    for size in (0, 1, 5, 4096, (1 << 20) + 3):
        data = os.urandom(size)
        key = os.urandom(4)
        expected = bytes(b ^ key[i % 4] for i, b in enumerate(data[:5000]))
        assert mask_payload(data, key)[:5000] == expected
        assert mask_payload(mask_payload(data, key), key) == data


def test_frame_header_lengths():
    assert frame_header(2, 125)[1] == 125
    assert frame_header(2, 126)[1] == 126 and len(frame_header(2, 126)) == 4
    assert frame_header(2, 1 << 16)[1] == 127 and len(frame_header(2, 1 << 16)) == 10
    assert frame_header(1, 5, mask_key=b"abcd")[1] == 0x85


def test_parse_url():
    assert parse_url("ws://127.0.0.1:8765/") == ("127.0.0.1", 8765, "/", False)
    assert parse_url("wss://host") == ("host", 443, "/", True)
    with pytest.raises(ValueError):
        parse_url("http://host/")


@pytest.mark.parametrize("mode", ["RGBA", "RGB", "L", "LA", "P", "I;16"])
def test_png_reader_matches_pillow(mode):
    base = Image.fromarray(RNG.integers(0, 256, (23, 37, 4), dtype=np.uint8), "RGBA")
    image = base.convert("RGB").quantize(64) if mode == "P" else base.convert(mode if mode != "I;16" else "L")
    if mode == "I;16":
        image = Image.fromarray(RNG.integers(0, 65536, (23, 37), dtype=np.uint16))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    width, height, rgba = png.read_png(buffer.getvalue())
    assert (width, height) == image.size
    if mode == "I;16":
        expected = (np.asarray(image) >> 8).astype(np.uint8)
        assert np.array_equal(np.frombuffer(rgba, np.uint8).reshape(23, 37, 4)[..., 0], expected)
    else:
        assert rgba == image.convert("RGBA").tobytes()


def test_png_writer_roundtrip_and_errors():
    pixels = RNG.integers(0, 256, (9, 11, 4), dtype=np.uint8).tobytes()
    data = png.write_png(11, 9, pixels)
    assert Image.open(io.BytesIO(data)).convert("RGBA").tobytes() == pixels
    assert png.png_size(data) == (11, 9)
    for bad in (b"not a png", data[:40]):
        with pytest.raises(png.PNGError):
            png.read_png(bad)


def test_composite_python_and_numpy_agree():
    base = RNG.integers(0, 256, (20, 30, 4), dtype=np.uint8).tobytes()
    patch = RNG.integers(0, 256, (6, 7, 4), dtype=np.uint8).tobytes()
    region = (5, 4, 7, 6)
    fast = imageops.composite(base, 30, 20, region, patch)
    slow = imageops._composite_python(base, 30, region, patch)
    assert fast == slow
    out = np.frombuffer(fast, np.uint8).reshape(20, 30, 4)
    assert np.array_equal(out[:4], np.frombuffer(base, np.uint8).reshape(20, 30, 4)[:4])
    mask = np.frombuffer(imageops.region_mask(30, 20, region, patch), np.uint8).reshape(20, 30)
    assert mask[4:10, 5:12].tobytes() == patch[3::4] and mask.sum() == sum(patch[3::4])


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


def test_idle_connections_that_miss_pings_are_closed_and_the_client_reconnects():
    with running_server(lambda: FakeBackend(0.0), ping_interval=0.2, ping_timeout=0.5) as thread:
        client = EngineClient(thread.url, timeout=10)
        client.connect()
        first = client._ws
        raw = WebSocket.connect(thread.url)
        raw.recv(5)
        time.sleep(1.5)  # neither reads meanwhile, so neither answers the engine's pings
        with pytest.raises(ConnectionClosed):
            while True:
                raw.recv(2)
        assert client.status()["type"] == "status"  # reconnected transparently
        assert client._ws is not first
        client.close()


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
