"""What one client may take of the engine (bridge/limits.py wired into bridge/server.py): connections,
handshakes in progress, memory for frames, unsent replies — each tried against an in-process engine with
the fake backend, with the limits set small, while an honest client still gets its edit.
"""

from __future__ import annotations

import contextlib
import json
import socket
import time
import uuid

import numpy as np
import pytest

from ffclip.bridge.fake import FakeBackend
from ffclip.bridge.testing import running_server
from ffclip.bridge.tokens import TokenBook
from ffclip.plugin.websocket import OP_TEXT, ConnectionClosed, WebSocket, frame_header, mask_payload
from tests.support.raw import Raw
from tests.support.waiting import until

MALLORY, ALICE = "m" * 32, "a" * 32


def _book(tmp_path) -> TokenBook:
    path = tmp_path / "tokens"
    path.write_text(f"mallory {MALLORY}\nalice {ALICE}\n")
    path.chmod(0o600)
    return TokenBook.from_file(path)


def _raw(url: str, token: str | None = None) -> Raw:
    return Raw(url, headers={"Authorization": f"Bearer {token}"} if token else None)


def _edits(url: str, token: str | None = None) -> None:
    """An honest client's edit finishes with a result."""
    client = _raw(url, token)
    try:
        job_id = client.edit()
        _, end, binary = client.until_end(job_id)
        assert end["type"] == "result", end
        assert binary
    finally:
        client.close()


def _closed(sock: socket.socket, timeout: float = 5.0) -> bool:
    """Whether the engine closed this TCP connection (EOF or reset) within `timeout`."""
    sock.settimeout(timeout)
    try:
        while sock.recv(4096):
            pass
        return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


def _half_handshake(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # and never the rest
    return sock


def _status(url: str, token: str | None = None) -> dict:
    client = _raw(url, token)
    try:
        client.send({"type": "status"})
        return client.json()
    finally:
        client.close()


# --------------------------------------------------------------------------- connections


def test_one_token_holds_at_most_its_connections_and_another_token_still_edits(tmp_path) -> None:
    with running_server(lambda: FakeBackend(0.0), tokens=_book(tmp_path), max_connections_per_user=4) as server:
        held = [_raw(server.url, MALLORY) for _ in range(4)]
        ws = WebSocket.connect(server.url, headers={"Authorization": f"Bearer {MALLORY}"})
        refusal = json.loads(ws.recv(5))
        assert refusal["type"] == "error" and refusal["code"] == "busy", refusal
        assert "this token already holds 4 connections" in refusal["message"]
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(5)
        assert closed.value.code == 1013
        _edits(server.url, ALICE)
        held.pop().close()  # one closes: mallory may connect once more
        time.sleep(0.2)
        held.append(_raw(server.url, MALLORY))
        for client in held:
            client.close()


def test_without_tokens_the_limit_is_per_address() -> None:
    with running_server(lambda: FakeBackend(0.0), max_connections_per_user=2) as server:
        held = [_raw(server.url) for _ in range(2)]
        ws = WebSocket.connect(server.url)
        assert "this address already holds 2 connections" in json.loads(ws.recv(5))["message"]
        for client in held:
            client.close()


def test_connections_over_the_cap_are_closed_at_the_accept() -> None:
    with running_server(lambda: FakeBackend(0.0), max_connections=8) as server:
        assert server.server.admission.max_connections == 8
        held = [socket.create_connection(("127.0.0.1", server.server.port)) for _ in range(8)]
        extra = socket.create_connection(("127.0.0.1", server.server.port))
        assert _closed(extra, 2.0)
        for sock in held:
            sock.close()
        time.sleep(0.2)
        _edits(server.url)


def test_half_sent_handshakes_give_way_to_a_client_that_completes_its_own(tmp_path) -> None:
    config = {"max_handshakes": 16, "handshake_timeout": 30.0, "tokens": _book(tmp_path)}
    with running_server(lambda: FakeBackend(0.0), **config) as server:
        slow = [_half_handshake(server.server.port) for _ in range(40)]
        time.sleep(0.3)
        assert len(server.server.admission.handshaking) == 16
        assert all(_closed(sock, 2.0) for sock in slow[:24])  # the oldest were dropped
        _edits(server.url, ALICE)
        for sock in slow:
            sock.close()


def test_a_handshake_that_does_not_finish_in_time_is_closed() -> None:
    with running_server(lambda: FakeBackend(0.0), handshake_timeout=0.5) as server:
        sock = _half_handshake(server.server.port)
        assert _closed(sock, 3.0)
        silent = socket.create_connection(("127.0.0.1", server.server.port))
        assert _closed(silent, 3.0)


# --------------------------------------------------------------------------- memory


SIDE = 500  # a 500x500 RGBA8 frame: 1 MB
BUDGET = 4 << 20  # so one user may hold 2 MB


def _frame() -> bytes:
    rgba = np.random.default_rng(1).integers(0, 256, (SIDE, SIDE, 4), dtype=np.uint8)
    rgba[..., 3] = 255
    return rgba.tobytes()


def _half_sent(url: str, token: str | None = None) -> Raw:
    """An edit announced with a selection, whose image is sent and whose selection never comes."""
    client = _raw(url, token)
    client.announce(SIDE, SIDE, selection={"format": "a8"})
    client.binary(_frame())
    return client


def test_half_sent_edits_take_no_more_than_one_users_share_and_another_user_still_edits(tmp_path) -> None:
    config = {"tokens": _book(tmp_path), "memory_budget": BUDGET, "max_pixels": SIDE * SIDE}
    with running_server(lambda: FakeBackend(0.0), **config) as server:
        mallory = [_half_sent(server.url, MALLORY) for _ in range(2)]
        until(lambda: server.server._held()[("user", "mallory")] == 2 * SIDE * SIDE * 4)  # two frames
        third = _half_sent(server.url, MALLORY)
        refusal = third.error()
        assert refusal["code"] == "busy" and "share of the engine's memory" in refusal["message"], refusal
        status = _status(server.url, ALICE)
        assert status["limits"]["memory_budget_bytes"] == BUDGET
        assert status["memory"]["clients_bytes"] == 2 * SIDE * SIDE * 4
        _edits(server.url, ALICE)
        for client in (*mallory, third):
            client.close()
        until(lambda: sum(server.server._held().values()) == 0)


def test_a_half_sent_edit_expires_and_frees_its_frames() -> None:
    config = {"memory_budget": BUDGET, "max_pixels": SIDE * SIDE, "request_timeout": 0.5}
    with running_server(lambda: FakeBackend(0.0), **config) as server:
        client = _half_sent(server.url)
        error = client.error()
        assert error["code"] == "bad_request", error
        assert "announced 2 binary frame(s) but only 1 arrived within 0.5 s" in error["message"]
        # the error's own bytes count until its send returns, which may be after the client read it
        until(lambda: sum(server.server._held().values()) == 0)
        client.binary(bytes(SIDE * SIDE))  # the late selection is read and dropped without a word
        assert client.quiet(0.5)
        job_id = client.edit()  # and the connection is usable
        assert client.until_end(job_id)[1]["type"] == "result"
        client.close()


def test_a_connection_that_keeps_sending_is_not_expired() -> None:
    config = {"max_pixels": SIDE * SIDE, "request_timeout": 0.6}
    with running_server(lambda: FakeBackend(0.0), **config) as server:
        client = _raw(server.url)
        job_id = client.announce(SIDE, SIDE)
        frame = _frame()
        for start in range(0, len(frame), len(frame) // 4):  # four fragments, 0.3 s apart: 1.2 s in all
            end = start + len(frame) // 4
            client.ws._send_frame(0x0 if start else 0x2, frame[start:end], end >= len(frame))
            time.sleep(0.3)
        assert client.until_end(job_id)[1]["type"] == "result"
        client.close()


def test_idle_last_images_are_forgotten_when_memory_is_short_and_a_live_session_sends_its_photo_again() -> None:
    from ffclip.plugin.protocol import EditParams, ImageSpec
    from ffclip.plugin.session import EngineSession, ResultReady

    config = {"memory_budget": BUDGET, "max_pixels": SIDE * SIDE}
    with running_server(lambda: FakeBackend(0.0), **config) as server:
        events: list = []
        session = EngineSession(server.url, events.append)
        photo = _frame()
        first = session.submit(EditParams.single("smiling"), photo, ImageSpec(SIDE, SIDE))
        until(lambda: any(isinstance(e, ResultReady) and e.job_id == first for e in events))
        held = server.server.sessions.copy().pop()
        assert held.last_frames is not None  # the photo is kept for `reuse_image`
        other = _raw(server.url)  # the same address, so the same share: its frames push the idle photo out
        job_id = other.announce(SIDE, SIDE, selection={"format": "a8"})
        other.binary(_frame())
        other.binary(bytes([255]) * SIDE * SIDE)
        assert other.until_end(job_id)[1]["type"] == "result"
        until(lambda: held.last_frames is None)
        second = session.submit(EditParams.single("blond hair"), photo, ImageSpec(SIDE, SIDE))
        until(lambda: any(isinstance(e, ResultReady) and e.job_id == second for e in events))
        session.close()
        other.close()


# --------------------------------------------------------------------------- replies


def _flood(ws: WebSocket, message: dict, count: int) -> None:
    """`count` copies of `message`, framed and masked once and written with one sendall (a loop of
    send_text in this process would hold the GIL the in-process engine needs, and go 100× slower)."""
    payload = json.dumps(message).encode()
    key = b"\x01\x02\x03\x04"
    frame = frame_header(OP_TEXT, len(payload), True, key) + mask_payload(payload, key)
    ws.sock.settimeout(30)
    ws.sock.sendall(frame * count)


def test_a_client_asking_status_and_reading_nothing_holds_one_reply() -> None:
    with running_server(lambda: FakeBackend(0.0)) as server:
        ws = WebSocket.connect(server.url)
        ws.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        _flood(ws, {"type": "status"}, 30_000)
        time.sleep(0.5)
        (session,) = server.server.sessions
        assert session._backlog < 10_000, session._backlog  # one status waiting, not thirty thousand
        ws.close()


def test_a_client_whose_unsent_replies_pass_the_cap_is_disconnected(caplog) -> None:
    with running_server(lambda: FakeBackend(0.0), max_unsent_text=64 << 10) as server, caplog.at_level("WARNING"):
        ws = WebSocket.connect(server.url)
        with contextlib.suppress(OSError):  # the engine may close it while it still sends
            _flood(ws, {"type": "nonsense", "id": uuid.uuid4().hex}, 200_000)
        until(lambda: not server.server.sessions)
        assert "dropped 1 client(s) that read too slowly" in caplog.text
        _edits(server.url)


def test_accept_errors_are_logged_once_per_interval(caplog) -> None:
    with running_server(lambda: FakeBackend(0.0), log_interval=60.0) as server, caplog.at_level("WARNING"):
        loop = server.loop
        context = {"message": "socket.accept() out of system resource", "exception": OSError(24, "Too many")}
        for _ in range(500):
            loop.call_soon_threadsafe(loop.call_exception_handler, context)
        time.sleep(0.3)
    lines = [r for r in caplog.records if "file descriptors" in r.getMessage()]
    assert len(lines) == 1 and "could not accept 1 connection(s)" in lines[0].getMessage()
