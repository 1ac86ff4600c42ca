"""Oversized frames without closing the connection and without buffering them.

The websockets library answers a message above `max_size` by closing the connection (1009), and
below that limit it buffers the whole message. The protocol promises more: an oversized frame gets a
`too_large` error and the connection stays usable. `FrameFilter` sits between the socket and the
websockets parser and rewrites the incoming byte stream: the payload of a data message that goes over
its limit is skipped as it arrives (constant memory) and replaced by one small marker frame that the
session recognises (the marker carries a per-connection secret, so a client cannot forge one). Every
other byte passes through untouched.

The filter also sees a binary message's length before its payload arrives, which makes it the place
to hold memory to a budget (bridge/limits.py): `admit(n)` is asked before `n` more bytes of a binary
message are let through, and a message it refuses is skipped like an oversized one (marker kind
`m`). `inflight` counts the binary bytes let through that the session has not taken yet (they sit in
the websockets library's buffers meanwhile), and `touched` is when the last byte arrived.
"""

from __future__ import annotations

import secrets
import struct
import time
from collections.abc import Callable

_CONT, _TEXT, _BINARY = 0x0, 0x1, 0x2
_HANDSHAKE_END = b"\r\n\r\n"
_MAX_HANDSHAKE = 1 << 16  # beyond this the request is bad anyway: let websockets refuse it


class FrameFilter:
    def __init__(self, binary_limit: int, text_limit: int, admit: Callable[[int], bool] | None = None):
        self.binary_limit = binary_limit
        self.text_limit = text_limit
        self.admit = admit  # admit(n): whether n more bytes of a binary message may be held
        self.inflight = 0
        self.touched = time.monotonic()
        self.prefix = f"\x00ffclip-oversize:{secrets.token_hex(16)}:"
        self._prefix_bytes = self.prefix.encode("ascii")
        self._in_handshake = True
        self._head = bytearray()  # an incomplete handshake or frame header
        self._passing = 0  # payload bytes still to pass through
        self._skipping = 0  # payload bytes still to drop
        self._after_skip: bytes = b""  # marker frame to emit once the skipped payload is over
        self._message_op: int | None = None  # opcode of the fragmented message in progress
        self._message_size = 0
        self._dropping = False  # the rest of the current message is being dropped
        self._emitted = False  # part of the current (dropped) message already went through
        self._refused = False  # the current message is dropped because `admit` refused it

    # ------------------------------------------------------------------ the session's side

    def oversize_of(self, data: str | bytes) -> tuple[str, int] | None:
        """("text" | "binary" | "memory", original size) of a message replaced by a marker, else None."""
        prefix = self._prefix_bytes if isinstance(data, bytes | bytearray) else self.prefix
        start = data.rfind(prefix, max(0, len(data) - len(prefix) - 24))  # type: ignore[arg-type]
        if start < 0:
            return None
        tail = data[start + len(prefix) :]
        tail = tail.decode("ascii") if isinstance(tail, bytes | bytearray) else tail
        try:
            return _KINDS.get(tail[:1], "binary"), int(tail[1:])
        except ValueError:
            return None

    def taken(self, data: bytes) -> None:
        """The session took a binary message: its bytes no longer wait in the library's buffers."""
        self.inflight = max(0, self.inflight - len(data))

    # ------------------------------------------------------------------ the socket's side

    def feed(self, data: bytes) -> bytes:
        """Bytes from the socket → the bytes websockets should see."""
        out: list = []
        self.touched = time.monotonic()
        view = memoryview(data)
        if self._in_handshake:
            view = self._handshake(view, out)
        while view:
            if self._passing:
                n = min(self._passing, len(view))
                out.append(view[:n])
                self._passing -= n
                view = view[n:]
            elif self._skipping:
                n = min(self._skipping, len(view))
                self._skipping -= n
                view = view[n:]
                if not self._skipping and self._after_skip:
                    out.append(self._after_skip)
                    self._after_skip = b""
            else:
                view = self._header(view, out)
        if len(out) == 1 and isinstance(out[0], memoryview) and len(out[0]) == len(data):
            return data  # the common case: nothing rewritten, no copy
        return b"".join(out)

    def _handshake(self, view: memoryview, out: list) -> memoryview:
        self._head += view
        end = self._head.find(_HANDSHAKE_END)
        if end < 0:
            if len(self._head) > _MAX_HANDSHAKE:
                self._in_handshake = False
                out.append(bytes(self._head))
                self._head.clear()
            return memoryview(b"")
        end += len(_HANDSHAKE_END)
        out.append(bytes(self._head[:end]))
        rest = memoryview(bytes(self._head[end:]))
        self._head.clear()
        self._in_handshake = False
        return rest

    def _header(self, view: memoryview, out: list) -> memoryview:
        """Collect one frame header, then decide whether its payload passes or is skipped."""
        need = _header_size(self._head, view)
        take = min(need - len(self._head), len(view))
        self._head += view[:take]
        view = view[take:]
        if len(self._head) < need:
            return view
        header = bytes(self._head)
        self._head.clear()
        fin, opcode, length = _parse_header(header)
        self._route(header, fin, opcode, length, out)
        return view

    def _route(self, header: bytes, fin: bool, opcode: int, length: int, out: list) -> None:
        if opcode in (_TEXT, _BINARY):
            self._message_op, self._message_size = opcode, length
            self._dropping, self._emitted, self._refused = False, False, False
            if length > self._limit() or not self._admitted(length):
                self._drop(length, fin, out)
            else:
                self._pass(header, length, out)
                self._emitted = True
        elif opcode == _CONT and self._message_op is not None:
            self._message_size += length
            if self._dropping or self._message_size > self._limit() or not self._admitted(length):
                self._drop(length, fin, out)
            else:
                self._pass(header, length, out)
        else:  # control frames, and anything malformed for websockets to judge
            self._pass(header, length, out)
            return
        if fin:
            self._message_op = None

    def _admitted(self, length: int) -> bool:
        """Whether `length` more bytes of the current message may be held (binary messages only)."""
        if self._message_op != _BINARY or length == 0:
            return True
        if self.admit is not None and not self.admit(length):
            self._refused = True
            return False
        self.inflight += length
        return True

    def _limit(self) -> int:
        return self.text_limit if self._message_op == _TEXT else self.binary_limit

    def _pass(self, header: bytes, length: int, out: list) -> None:
        out.append(header)
        self._passing = length

    def _drop(self, length: int, fin: bool, out: list) -> None:
        self._dropping = True
        self._skipping = length
        if not fin:
            return
        kind = b"t" if self._message_op == _TEXT else (b"m" if self._refused else b"b")
        marker = self._prefix_bytes + kind + str(self._message_size).encode("ascii")
        # A message that already went partly through must be completed by a continuation frame.
        frame = marker_frame(_CONT if self._emitted else _BINARY, marker)
        if length:
            self._after_skip = frame
        else:
            out.append(frame)


_KINDS = {"t": "text", "b": "binary", "m": "memory"}


def marker_frame(opcode: int, payload: bytes) -> bytes:
    """A final, masked (all-zero key) client frame carrying `payload` (< 126 bytes)."""
    return struct.pack("!BB", 0x80 | opcode, 0x80 | len(payload)) + b"\x00\x00\x00\x00" + payload


def _header_size(head: bytearray, more: memoryview) -> int:
    """Bytes in the frame header starting with `head` + `more` (2 until the length byte is known)."""
    if len(head) >= 2:
        second = head[1]
    elif len(head) + len(more) >= 2:
        second = (head + bytes(more[: 2 - len(head)]))[1]
    else:
        return 2
    size = 2 + {126: 2, 127: 8}.get(second & 0x7F, 0)
    return size + (4 if second & 0x80 else 0)


def _parse_header(header: bytes) -> tuple[bool, int, int]:
    fin, opcode = bool(header[0] & 0x80), header[0] & 0x0F
    length = header[1] & 0x7F
    if length == 126:
        (length,) = struct.unpack("!H", header[2:4])
    elif length == 127:
        (length,) = struct.unpack("!Q", header[2:10])
    return fin, opcode, length
