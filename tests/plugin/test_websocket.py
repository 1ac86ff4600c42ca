"""The standard-library websocket client (plugin/websocket.py): framing, URLs, keep-alive."""

from __future__ import annotations

import os
import time

import pytest

from ffclip.bridge.fake import FakeBackend
from ffclip.bridge.testing import running_server
from ffclip.plugin.client import EngineClient
from ffclip.plugin.websocket import ConnectionClosed, WebSocket, frame_header, mask_payload, parse_url


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
