"""A small RFC 6455 websocket client on the standard library (no third-party imports).

Enough for the engine protocol: the opening handshake (with extra headers such as Authorization),
masked text and binary frames (optionally fragmented), reassembly of fragmented messages, automatic
answers to pings, and the closing handshake. Sending is thread-safe (a Cancel button may send while
another thread waits for messages); receiving is meant for one thread.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import select
import socket
import struct
import threading
from urllib.parse import urlsplit

from .tls import TLSVerify

OP_CONT, OP_TEXT, OP_BINARY = 0x0, 0x1, 0x2
OP_CLOSE, OP_PING, OP_PONG = 0x8, 0x9, 0xA
_DATA_OPS = (OP_TEXT, OP_BINARY)
_CONTROL_OPS = (OP_CLOSE, OP_PING, OP_PONG)
_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_MASK_CHUNK = 1 << 20  # mask big payloads a megabyte at a time (multiple of 4)
_MAX_HEADER_BYTES = 65536


class WebSocketError(Exception):
    """Any failure of the websocket connection."""


class HandshakeError(WebSocketError):
    """The server answered the opening handshake with something other than 101."""

    def __init__(self, status: int, reason: str, body: bytes = b""):
        super().__init__(f"handshake refused: HTTP {status} {reason}".strip())
        self.status = status
        self.reason = reason
        self.body = body


class ConnectionClosed(WebSocketError):
    """The connection is closed; `code` and `reason` come from the close frame (1006: none)."""

    def __init__(self, code: int = 1006, reason: str = ""):
        super().__init__(f"connection closed ({code}{': ' + reason if reason else ''})")
        self.code = code
        self.reason = reason


def parse_url(url: str) -> tuple[str, int, str, bool]:
    """`ws://host:port/path` → (host, port, path, secure)."""
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss"):
        raise ValueError(f"not a websocket URL (ws:// or wss://): {url}")
    if not parts.hostname:
        raise ValueError(f"websocket URL has no host: {url}")
    secure = parts.scheme == "wss"
    port = parts.port or (443 if secure else 80)
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return parts.hostname, port, path, secure


def mask_payload(payload: bytes | bytearray | memoryview, key: bytes) -> bytes:
    """XOR `payload` with the 4-byte `key`, using big-int arithmetic per chunk (fast, no loops)."""
    return b"".join(_masked_chunks(memoryview(payload), key))


def _masked_chunks(payload: memoryview, key: bytes):
    block = key * (_MASK_CHUNK // 4)
    full = int.from_bytes(block, "little")
    for start in range(0, len(payload), _MASK_CHUNK):
        part = payload[start : start + _MASK_CHUNK]
        mask = full if len(part) == _MASK_CHUNK else int.from_bytes(block[: len(part)], "little")
        yield (int.from_bytes(part, "little") ^ mask).to_bytes(len(part), "little")


def frame_header(opcode: int, length: int, fin: bool = True, mask_key: bytes | None = None) -> bytes:
    first = (0x80 if fin else 0) | opcode
    mask_bit = 0x80 if mask_key is not None else 0
    if length < 126:
        head = struct.pack("!BB", first, mask_bit | length)
    elif length < 1 << 16:
        head = struct.pack("!BBH", first, mask_bit | 126, length)
    else:
        head = struct.pack("!BBQ", first, mask_bit | 127, length)
    return head + (mask_key or b"")


class WebSocket:
    """One client connection. Use `WebSocket.connect(url)`."""

    def __init__(self, sock: socket.socket, buffered: bytes = b"", max_message: int = 1 << 31):
        self.sock = sock
        self.max_message = max_message
        self._buffer = bytearray(buffered)
        self._send_lock = threading.Lock()
        self._close_sent = False
        self._midframe = False
        self.closed = False
        self.close_code: int | None = None
        self.close_reason = ""

    # ------------------------------------------------------------------ opening

    @classmethod
    def connect(
        cls,
        url: str,
        headers: dict[str, str] | None = None,
        timeout: float = 10.0,
        max_message: int = 1 << 31,
        tls: TLSVerify | None = None,
    ) -> WebSocket:
        """Open the TCP (or TLS) connection and run the opening handshake. For wss://, `tls` says how
        the certificate is verified (default: the system's trust store); it is checked before a byte
        of the handshake (and its Authorization header) is sent."""
        host, port, path, secure = parse_url(url)
        sock = socket.create_connection((host, port), timeout=timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if secure:
                verify = tls or TLSVerify()
                sock = verify.context().wrap_socket(sock, server_hostname=host)
                verify.check_peer(sock, f"{host}:{port}")
            leftover = _handshake(sock, host, port, path, headers or {})
        except BaseException:
            sock.close()
            raise
        return cls(sock, leftover, max_message)

    # ------------------------------------------------------------------ sending

    def send_text(self, text: str) -> None:
        self._send_message(OP_TEXT, text.encode("utf-8"))

    def send_binary(self, data: bytes | bytearray | memoryview, fragment_size: int | None = None) -> None:
        self._send_message(OP_BINARY, data, fragment_size)

    def ping(self, data: bytes = b"") -> None:
        self._send_frame(OP_PING, data)

    def _send_message(self, opcode: int, data, fragment_size: int | None = None) -> None:
        view = memoryview(data).cast("B")
        if not fragment_size or len(view) <= fragment_size:
            self._send_frame(opcode, view)
            return
        with self._send_lock:  # fragments of one message must not interleave with another message
            for start in range(0, len(view), fragment_size):
                part = view[start : start + fragment_size]
                last = start + fragment_size >= len(view)
                self._write_frame(opcode if start == 0 else OP_CONT, part, last)

    def _send_frame(self, opcode: int, data, fin: bool = True) -> None:
        with self._send_lock:
            self._write_frame(opcode, data, fin)

    def _write_frame(self, opcode: int, data, fin: bool) -> None:
        if self._close_sent or self.closed:
            raise ConnectionClosed(self.close_code or 1006, "connection is closing")
        key = os.urandom(4)
        view = memoryview(data).cast("B")
        try:
            self.sock.sendall(frame_header(opcode, len(view), fin, key))
            for chunk in _masked_chunks(view, key):
                self.sock.sendall(chunk)
        except OSError as exc:
            self._abort()
            raise ConnectionClosed(1006, f"send failed: {exc}") from exc

    # ------------------------------------------------------------------ receiving

    def recv(self, timeout: float | None = None) -> str | bytes:
        """The next text (str) or binary (bytes) message; answers pings on the way.

        `timeout` bounds the wait for each piece of data (an inactivity timeout): a server that sends
        keep-alive pings never trips it. Raises TimeoutError, or ConnectionClosed once closed.
        """
        if self.closed:
            raise ConnectionClosed(self.close_code or 1006, self.close_reason)
        self.sock.settimeout(timeout)
        try:
            return self._recv_message()
        except TimeoutError:
            if self._midframe:  # part of a frame is consumed: the stream cannot be resumed
                self._abort()
            raise

    def _recv_message(self) -> str | bytes:
        opcode: int | None = None
        parts: list[bytes] = []
        size = 0
        while True:
            self._midframe = bool(parts)
            fin, op, payload = self._read_frame()
            self._midframe = False
            if op in _CONTROL_OPS:
                self._on_control(op, payload)
                continue
            if op == OP_CONT:
                if opcode is None:
                    self._fail(1002, "unexpected continuation frame")
            elif opcode is not None:
                self._fail(1002, "expected a continuation frame")
            else:
                opcode = op
            size += len(payload)
            if size > self.max_message:
                self._fail(1009, f"message larger than {self.max_message} bytes")
            parts.append(payload)
            if fin:
                break
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        if opcode == OP_TEXT:
            try:
                return data.decode("utf-8")
            except UnicodeDecodeError:
                self._fail(1007, "invalid UTF-8 in a text message")
        return data

    def poll(self) -> None:
        """Handle control frames already waiting (pings, a close) without blocking.

        Raises ConnectionClosed when the server closed the connection meanwhile. Data messages are
        not expected while idle; one that is waiting is kept for the next recv().
        """
        while not self._buffer and not self.closed:
            readable, _, _ = select.select([self.sock], [], [], 0)
            if not readable and not _tls_pending(self.sock):
                return
            if not self._fill(1 << 16):
                self._abort()
                raise ConnectionClosed(1006, "connection lost")
        while self._buffer and not self.closed:
            header = _peek_header(self._buffer)
            if header is None or header[1] not in _CONTROL_OPS or len(self._buffer) < header[2]:
                return
            _, op, _ = header
            _, _, payload = self._read_frame()
            self._on_control(op, payload)
        if self.closed:
            raise ConnectionClosed(self.close_code or 1006, self.close_reason)

    def _read_frame(self) -> tuple[bool, int, bytes]:
        head = self._read_exact(2)
        self._midframe = True
        fin, opcode = bool(head[0] & 0x80), head[0] & 0x0F
        if head[0] & 0x70:
            self._fail(1002, "reserved bits set (no extension was negotiated)")
        masked, length = bool(head[1] & 0x80), head[1] & 0x7F
        if length == 126:
            (length,) = struct.unpack("!H", self._read_exact(2))
        elif length == 127:
            (length,) = struct.unpack("!Q", self._read_exact(8))
        if opcode not in (OP_CONT, *_DATA_OPS, *_CONTROL_OPS):
            self._fail(1002, f"unknown opcode {opcode}")
        if opcode in _CONTROL_OPS and (length > 125 or not fin):
            self._fail(1002, "invalid control frame")
        if length > self.max_message:
            self._fail(1009, f"frame larger than {self.max_message} bytes")
        key = self._read_exact(4) if masked else None
        payload = self._read_exact(length)
        if key is not None:  # servers must not mask, but unmasking costs nothing to be lenient
            payload = mask_payload(payload, key)
        return fin, opcode, payload

    def _on_control(self, opcode: int, payload: bytes) -> None:
        if opcode == OP_PING:
            with contextlib.suppress(ConnectionClosed):
                self._send_frame(OP_PONG, payload)
        elif opcode == OP_CLOSE:
            code, reason = 1005, ""
            if len(payload) >= 2:
                (code,) = struct.unpack("!H", payload[:2])
                reason = payload[2:].decode("utf-8", "replace")
            self.close_code, self.close_reason = code, reason
            if not self._close_sent:
                self._send_close(code if code != 1005 else 1000, "")
            self._abort()
            raise ConnectionClosed(code, reason)

    def _read_exact(self, n: int) -> bytes:
        if n > len(self._buffer):
            if n - len(self._buffer) > _MASK_CHUNK:
                return self._read_large(n)
            while len(self._buffer) < n:
                if not self._fill(max(n - len(self._buffer), 1 << 16)):
                    self._abort()
                    raise ConnectionClosed(self.close_code or 1006, "connection lost")
        data = bytes(self._buffer[:n])
        del self._buffer[:n]
        return data

    def _read_large(self, n: int) -> bytes:
        """Read a big payload straight into one preallocated buffer (no repeated copies)."""
        out = bytearray(n)
        view = memoryview(out)
        have = len(self._buffer)
        view[:have] = self._buffer
        self._buffer.clear()
        while have < n:
            got = self._recv_into(view[have:])
            if not got:
                self._abort()
                raise ConnectionClosed(self.close_code or 1006, "connection lost")
            have += got
        return bytes(out)

    def _fill(self, size: int) -> bool:
        try:
            chunk = self.sock.recv(size)
        except TimeoutError:
            raise
        except OSError as exc:
            self._abort()
            raise ConnectionClosed(1006, f"receive failed: {exc}") from exc
        self._buffer += chunk
        return bool(chunk)

    def _recv_into(self, view: memoryview) -> int:
        try:
            return self.sock.recv_into(view)
        except TimeoutError:
            raise
        except OSError as exc:
            self._abort()
            raise ConnectionClosed(1006, f"receive failed: {exc}") from exc

    # ------------------------------------------------------------------ closing

    def close(self, code: int = 1000, reason: str = "", timeout: float = 2.0) -> None:
        """Closing handshake: send a close frame, wait briefly for the server's, drop the socket."""
        if self.closed:
            return
        try:
            if not self._close_sent:
                self._send_close(code, reason)
            self.sock.settimeout(timeout)
            while True:  # discard anything until the server's close frame (or EOF / timeout)
                _, op, payload = self._read_frame()
                if op == OP_CLOSE:
                    break
        except (OSError, WebSocketError):
            pass
        finally:
            self._abort()

    def _send_close(self, code: int, reason: str) -> None:
        payload = struct.pack("!H", code) + reason.encode("utf-8")[:123]
        with contextlib.suppress(ConnectionClosed):
            self._send_frame(OP_CLOSE, payload)
        self._close_sent = True

    def _fail(self, code: int, reason: str):
        self._send_close(code, reason)
        self.close_code, self.close_reason = code, reason
        self._abort()
        raise ConnectionClosed(code, reason)

    def _abort(self) -> None:
        if not self.closed:
            self.closed = True
            with contextlib.suppress(OSError):
                self.sock.close()


def _peek_header(buffer: bytearray) -> tuple[bool, int, int] | None:
    """(fin, opcode, total frame bytes) of the frame at the head of `buffer`, if its header is there."""
    if len(buffer) < 2:
        return None
    length, offset = buffer[1] & 0x7F, 2
    if length == 126:
        if len(buffer) < 4:
            return None
        (length,), offset = struct.unpack("!H", buffer[2:4]), 4
    elif length == 127:
        if len(buffer) < 10:
            return None
        (length,), offset = struct.unpack("!Q", buffer[2:10]), 10
    if buffer[1] & 0x80:
        offset += 4
    return bool(buffer[0] & 0x80), buffer[0] & 0x0F, offset + length


def _tls_pending(sock: socket.socket) -> bool:
    """Bytes already decrypted inside a TLS socket (select cannot see them)."""
    pending = getattr(sock, "pending", None)
    return bool(pending()) if callable(pending) else False


def _handshake(sock: socket.socket, host: str, port: int, path: str, headers: dict[str, str]) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode("ascii")
    host_header = host if ":" not in host else f"[{host}]"
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: {host_header}:{port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
        "User-Agent: ffclip-plugin",
    ]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
    response = bytearray()
    while b"\r\n\r\n" not in response:
        chunk = sock.recv(4096)
        if not chunk:
            raise HandshakeError(0, "connection closed during the handshake")
        response += chunk
        if len(response) > _MAX_HEADER_BYTES:
            raise HandshakeError(0, "handshake response too long")
    head, _, rest = bytes(response).partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    parts = status_line.split(" ", 2)
    try:
        status = int(parts[1])
    except (IndexError, ValueError):
        raise HandshakeError(0, f"not an HTTP response: {status_line[:80]!r}") from None
    fields = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        fields[name.strip().lower()] = value.strip()
    if status != 101:
        raise HandshakeError(status, parts[2] if len(parts) > 2 else "", _read_body(sock, rest, fields))
    expected = base64.b64encode(hashlib.sha1(key.encode("ascii") + _GUID).digest()).decode("ascii")
    if fields.get("sec-websocket-accept") != expected:
        raise HandshakeError(status, "bad Sec-WebSocket-Accept")
    if fields.get("upgrade", "").lower() != "websocket":
        raise HandshakeError(status, "server did not upgrade to websocket")
    return rest


def _read_body(sock: socket.socket, rest: bytes, fields: dict[str, str]) -> bytes:
    """A refusal's body (it explains the refusal), bounded and best-effort."""
    try:
        length = min(int(fields.get("content-length", "0")), 65536)
    except ValueError:
        return rest[:65536]
    body = bytearray(rest)
    try:
        while len(body) < length:
            chunk = sock.recv(length - len(body))
            if not chunk:
                break
            body += chunk
    except OSError:
        pass
    return bytes(body[:length])
