"""The four attacks of issue 30, at once, against `serve` as a process with a tight file limit, while
another user keeps editing (bridge/limits.py and server.py): idle connections by the hundred, half-sent
handshakes reopened as fast as they are dropped, big edits announced and never finished, and a status
flood that reads nothing. The honest user's edits all finish, the engine's memory stays within its budget
and its log stays small. Bounded: a few hundred sockets, about a minute, everything closed at the end."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time

import pytest

from ffclip.plugin.client import EngineClient
from ffclip.plugin.protocol import EditParams, ImageSpec
from ffclip.plugin.websocket import OP_BINARY, OP_TEXT, WebSocket, frame_header
from tests.support.daemon import Daemon
from tests.support.raw import PHOTO

pytestmark = [
    pytest.mark.process,
    pytest.mark.slow,
    pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="/proc"),
]

MALLORY, ALICE = "mallory-" + "m" * 24, "alice-" + "a" * 26
BUDGET = 128 << 20
BIG = 10_000_000  # pixels of each never-finished edit: a 40 MB frame
ZERO_KEY = b"\0\0\0\0"  # a valid mask that leaves the payload as it is (no masking cost in this process)


def _frame(opcode: int, payload: bytes) -> bytes:
    return frame_header(opcode, len(payload), True, ZERO_KEY) + payload


def _rss(pid: int, field: str = "VmRSS") -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise AssertionError(field)


def _connect(url: str, token: str) -> WebSocket | None:
    """An authenticated connection, or None when the engine refuses it (its greeting is an error)."""
    try:
        ws = WebSocket.connect(url, headers={"Authorization": f"Bearer {token}"}, timeout=10)
        greeting = json.loads(ws.recv(10))
    except (OSError, ValueError):
        return None
    if greeting.get("type") != "status":
        ws.close()
        return None
    return ws


def _unfinished_edit(ws: WebSocket) -> None:
    """Announce a 10 MP edit with a selection, send its image, never the selection."""
    announce = {
        "type": "edit",
        "id": os.urandom(8).hex(),
        "prompt": "smiling",
        "strength": 1.0,
        "faces": "all",
        "preview": False,
        "image": {"width": 4000, "height": BIG // 4000, "format": "rgba8"},
        "selection": {"format": "a8"},
    }
    ws.sock.sendall(_frame(OP_TEXT, json.dumps(announce).encode()))
    ws.sock.sendall(_frame(OP_BINARY, bytes(BIG * 4)))


def _flood(ws: WebSocket, message: bytes, count: int) -> None:
    """`count` copies of a text message, reading none of the answers (until the socket is closed)."""
    ws.sock.settimeout(None)
    with contextlib.suppress(OSError):
        ws.sock.sendall(_frame(OP_TEXT, message) * count)


class Handshakes(threading.Thread):
    """Keeps `count` half-sent HTTP handshakes open: each one the engine drops is opened again."""

    def __init__(self, port: int, count: int):
        super().__init__(daemon=True)
        self.port, self.count, self.stop, self.tries = port, count, threading.Event(), 0
        self.socks: list[socket.socket] = []

    def _open(self) -> socket.socket | None:
        self.tries += 1
        try:
            sock = socket.create_connection(("127.0.0.1", self.port), timeout=0.5)
            sock.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            sock.setblocking(False)
            return sock
        except OSError:
            return None

    def run(self) -> None:
        while not self.stop.is_set():
            kept = []
            for sock in self.socks:
                try:
                    if sock.recv(1) == b"":
                        raise ConnectionResetError
                    kept.append(sock)
                except BlockingIOError:
                    kept.append(sock)
                except OSError:
                    sock.close()
            self.socks = kept + [s for s in (self._open() for _ in range(self.count - len(kept))) if s]
            self.stop.wait(0.2)
        for sock in self.socks:
            sock.close()


def test_four_attacks_at_once_leave_the_honest_user_her_edits(tmp_path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"mallory {MALLORY}\nalice {ALICE}\n")
    tokens.chmod(0o600)
    log = tmp_path / "engine.log"
    daemon = Daemon(
        "--port", "0", "--fake-engine", "--tokens-file", str(tokens), "--max-pixels", str(BIG),
        "--memory-budget", str(BUDGET), "--log-file", str(log), "--request-timeout", "120",
        open_files=256,
    )  # fmt: skip
    held: list[WebSocket] = []
    handshakes = Handshakes(daemon.port, 300)
    try:
        baseline = _rss(daemon.proc.pid)
        # 3. eight big edits announced, their images sent, their selections never
        for _ in range(8):
            ws = _connect(daemon.url, MALLORY)
            if ws is not None:
                held.append(ws)
                _unfinished_edit(ws)
        # 1. idle connections by the hundred (the 248 starved everyone of file handles)
        for _ in range(248):
            ws = _connect(daemon.url, MALLORY)
            if ws is not None:
                held.append(ws)
        assert len(held) <= 16  # mallory's share of connections
        # 4. a status flood from one of them, reading nothing
        flood = threading.Thread(target=_flood, args=(held[-1], b'{"type": "status"}', 600_000), daemon=True)
        flood.start()
        # 2. half-sent handshakes, reopened as fast as the engine drops them
        handshakes.start()
        time.sleep(2)
        spec = ImageSpec(PHOTO.shape[1], PHOTO.shape[0])
        done = []
        with EngineClient(daemon.url, token=ALICE, timeout=60, connect_timeout=10) as alice:
            for i in range(6):
                photo = PHOTO.copy()
                photo[0, 0, 0] = i  # a new photo each time: the whole pipeline runs
                done.append(alice.edit(EditParams.single("smiling"), photo.tobytes(), spec))
            status = alice.status()
        assert len(done) == 6 and all(r.region for r in done)
        flood.join(60)
        assert not flood.is_alive()  # the engine read all 600 000 while it served alice
        assert handshakes.tries > 300  # the engine dropped some and they were opened again
        peak = _rss(daemon.proc.pid, "VmHWM")
        print(f"held {len(held)}, handshakes tried {handshakes.tries}, RSS +{(peak - baseline) >> 20} MB at peak")
        assert peak - baseline < BUDGET + (64 << 20), (peak - baseline) >> 20
        assert status["limits"]["memory_budget_bytes"] == BUDGET
    finally:
        handshakes.stop.set()
        handshakes.join(10)
        for ws in held:
            ws.sock.close()
        daemon.stop()
    text = log.read_text()
    print(f"log {log.stat().st_size} bytes:\n" + "\n".join(line for line in text.splitlines() if "WARNING" in line))
    assert log.stat().st_size < 1 << 20 and "Traceback" not in text, text[-3000:]
    assert "refused" in text and "over the memory budget" in text
