"""What the plug-in's clients refuse to do for an engine (plugin/client.py, session.py, tls.py; issue 30):
read a message larger than the request can bring back, or send a token unencrypted to another computer."""

from __future__ import annotations

import base64
import hashlib
import json
import socket
import struct
import threading

import pytest

from ffclip.plugin.client import EngineClient, PlainTokenRefused
from ffclip.plugin.protocol import PROTOCOL_VERSION, EditParams, EngineError, ImageSpec, reply_limit
from ffclip.plugin.session import EngineSession, JobFailed
from ffclip.plugin.tls import check_plain_token
from ffclip.plugin.websocket import WebSocketError

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class LyingEngine:
    """A websocket server that greets like an engine, then answers the first edit with a frame header
    announcing `announce` bytes, and sends nothing more."""

    def __init__(self, greeting_size: int = 0, announce: int = 0):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"ws://127.0.0.1:{self.listener.getsockname()[1]}/"
        self.greeting_size, self.announce = greeting_size, announce
        self.connections = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        sock, _ = self.listener.accept()
        self.connections += 1
        with sock:
            request = b""
            while b"\r\n\r\n" not in request:
                request += sock.recv(4096)
            key = next(
                line.split(b":", 1)[1].strip()
                for line in request.split(b"\r\n")
                if line.lower().startswith(b"sec-websocket-key")
            )
            accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
            sock.sendall(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n"
            )
            if self.greeting_size:
                sock.sendall(_header(0x1, self.greeting_size))  # and never the payload
            else:
                status = {"type": "status", "protocol": PROTOCOL_VERSION, "state": "ready", "version": "x"}
                payload = json.dumps(status).encode()
                sock.sendall(_header(0x1, len(payload)) + payload)
                sock.recv(1 << 16)  # the edit
                sock.sendall(_header(0x2, self.announce))
            threading.Event().wait(30)

    def close(self) -> None:
        self.listener.close()


def _header(opcode: int, length: int) -> bytes:
    return bytes([0x80 | opcode, 127]) + struct.pack("!Q", length)


def test_a_greeting_larger_than_any_text_reply_is_refused_at_its_header() -> None:
    engine = LyingEngine(greeting_size=reply_limit() + 1)
    with pytest.raises((EngineError, WebSocketError), match="larger than"):
        EngineClient(engine.url, timeout=20).connect()  # without the cap: waits 20 s for 4 MB that never come
    engine.close()


def test_a_result_larger_than_the_image_can_give_is_refused_at_its_header() -> None:
    spec = ImageSpec(64, 64)
    engine = LyingEngine(announce=reply_limit(spec.pixels) + 1)
    client = EngineClient(engine.url, timeout=20)
    with pytest.raises((EngineError, WebSocketError), match="larger than"):
        client.edit(EditParams.single("smiling"), bytes(spec.pixels * 4), spec)
    engine.close()


def test_the_reply_limit_is_what_a_request_can_bring_back() -> None:
    assert reply_limit() == 4 << 20  # text: status, progress, a result's header
    assert reply_limit(40_000_000) == 160_000_000  # the largest image's RGBA result
    assert reply_limit(1000) == 4 << 20


@pytest.mark.parametrize(
    ("url", "token", "allowed", "refused"),
    [
        ("ws://gpu.lan:8765/", "secret", False, True),
        ("ws://10.0.0.5:8765/", "secret", False, True),
        ("ws://[2001:db8::1]:8765/", "secret", False, True),
        ("ws://gpu.lan:8765/", "secret", True, False),  # the explicit setting
        ("wss://gpu.lan:8765/", "secret", False, False),
        ("ws://gpu.lan:8765/", None, False, False),  # nothing to leak
        ("ws://127.0.0.1:8765/", "secret", False, False),
        ("ws://127.8.0.1:8765/", "secret", False, False),
        ("ws://localhost:8765/", "secret", False, False),
        ("ws://[::1]:8765/", "secret", False, False),
    ],
)
def test_a_token_goes_unencrypted_only_to_this_computer(url, token, allowed, refused) -> None:
    if refused:
        with pytest.raises(PlainTokenRefused, match="not sending the token over plain ws://"):
            check_plain_token(url, token, allowed)
    else:
        check_plain_token(url, token, allowed)


def test_neither_client_connects_to_send_a_token_in_the_clear(monkeypatch) -> None:
    engine = LyingEngine()
    remote = engine.url.replace("127.0.0.1", "remote.example")
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: pytest.fail("it connected"))
    with pytest.raises(PlainTokenRefused):
        EngineClient(remote, token="secret", timeout=5).connect()
    events = []
    session = EngineSession(remote, events.append, token="secret", connect_timeout=5)
    session.submit(EditParams.single("smiling"), bytes(16 * 16 * 4), ImageSpec(16, 16))
    for _ in range(100):
        if any(isinstance(e, JobFailed) for e in events):
            break
        threading.Event().wait(0.05)
    session.close()
    failed = [e for e in events if isinstance(e, JobFailed)]
    assert failed and isinstance(failed[0].error, PlainTokenRefused), events
    assert engine.connections == 0
    engine.close()
