"""FrameFilter: oversized messages become marker frames, everything else passes byte for byte."""

from __future__ import annotations

import os

import pytest

from ffclip.bridge.framing import FrameFilter
from ffclip.plugin.websocket import OP_BINARY, OP_CONT, OP_PING, OP_TEXT, frame_header, mask_payload

HANDSHAKE = b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\n"


def frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    key = os.urandom(4)
    return frame_header(opcode, len(payload), fin, key) + mask_payload(payload, key)


def parse(stream: bytes) -> list[tuple[bool, int, bytes]]:
    """Decode masked client frames (after the handshake) → (fin, opcode, payload)."""
    frames, pos = [], 0
    while pos < len(stream):
        fin, opcode, length = bool(stream[pos] & 0x80), stream[pos] & 0x0F, stream[pos + 1] & 0x7F
        pos += 2
        if length == 126:
            length, pos = int.from_bytes(stream[pos : pos + 2], "big"), pos + 2
        elif length == 127:
            length, pos = int.from_bytes(stream[pos : pos + 8], "big"), pos + 8
        key, pos = stream[pos : pos + 4], pos + 4
        frames.append((fin, opcode, mask_payload(stream[pos : pos + length], key)))
        pos += length
    return frames


def run(stream: bytes, chunk: int, binary_limit: int = 1000, text_limit: int = 100) -> tuple[FrameFilter, bytes]:
    filt = FrameFilter(binary_limit, text_limit)
    out = b"".join(filt.feed(stream[i : i + chunk]) for i in range(0, len(stream), chunk))
    assert out.startswith(HANDSHAKE)
    return filt, out[len(HANDSHAKE) :]


@pytest.mark.parametrize("chunk", [1, 3, 7, 64, 1 << 20])
def test_frames_within_limits_pass_unchanged(chunk):
    frames = (
        frame(OP_TEXT, b'{"type":"status"}')
        + frame(OP_BINARY, bytes(range(256)) * 3)
        + frame(OP_PING, b"hi")
        + frame(OP_BINARY, b"a" * 400, fin=False)
        + frame(OP_PING, b"")
        + frame(OP_CONT, b"b" * 500)
    )
    _, out = run(HANDSHAKE + frames, chunk)
    assert out == frames


@pytest.mark.parametrize("chunk", [1, 5, 100, 1 << 20])
def test_an_oversized_message_becomes_one_marker(chunk):
    stream = HANDSHAKE + frame(OP_TEXT, b"ok") + frame(OP_BINARY, bytes(5000)) + frame(OP_TEXT, b"after")
    filt, out = run(stream, chunk)
    frames = parse(out)
    assert [f[2] for f in frames][0] == b"ok" and frames[2][2] == b"after"
    fin, opcode, payload = frames[1]
    assert fin and opcode == OP_BINARY and filt.oversize_of(payload) == ("binary", 5000)
    assert filt.oversize_of(b"ok") is None


def test_oversized_text_and_fragmented_messages():
    stream = (
        HANDSHAKE
        + frame(OP_TEXT, b"t" * 150)  # text limit is 100
        + frame(OP_BINARY, bytes(2000), fin=False)  # oversized from the first fragment
        + frame(OP_PING, b"p")
        + frame(OP_CONT, bytes(10), fin=True)
        + frame(OP_BINARY, bytes(600), fin=False)  # goes over the limit in its second fragment
        + frame(OP_CONT, bytes(600), fin=False)
        + frame(OP_CONT, bytes(600), fin=True)
    )
    filt, out = run(stream, 9)
    frames = parse(out)
    assert filt.oversize_of(frames[0][2]) == ("text", 150)
    assert frames[1][1] == OP_PING  # control frames inside a dropped message still pass
    assert filt.oversize_of(frames[2][2]) == ("binary", 2010)
    assert frames[3] == (False, OP_BINARY, bytes(600))
    fin, opcode, payload = frames[4]
    assert fin and opcode == OP_CONT and filt.oversize_of(bytes(600) + payload) == ("binary", 1800)


def test_the_marker_cannot_be_forged_by_another_connection():
    first, second = FrameFilter(10, 10), FrameFilter(10, 10)
    assert first.prefix != second.prefix
    assert second.oversize_of(first.prefix.encode() + b"b99") is None


def test_empty_oversize_continuation_and_big_lengths():
    stream = HANDSHAKE + frame(OP_BINARY, bytes(70000), fin=False) + frame(OP_CONT, b"", fin=True)
    filt, out = run(stream, 4096, binary_limit=65536)
    (frame_,) = parse(out)
    assert filt.oversize_of(frame_[2]) == ("binary", 70000)


@pytest.mark.parametrize("chunk", [1, 1 << 20])
def test_the_limits_are_inclusive(chunk):
    """A message of exactly the limit passes; one byte more is replaced, also when fragmented."""
    exact = frame(OP_BINARY, bytes(1000)) + frame(OP_TEXT, b"t" * 100)
    split = frame(OP_BINARY, bytes(600), fin=False) + frame(OP_CONT, bytes(400))
    _, out = run(HANDSHAKE + exact + split, chunk)
    assert out == exact + split
    over = frame(OP_BINARY, bytes(600), fin=False) + frame(OP_CONT, bytes(401))
    filt, out = run(HANDSHAKE + frame(OP_TEXT, b"t" * 101) + over, chunk)
    frames = parse(out)
    assert filt.oversize_of(frames[0][2]) == ("text", 101)
    assert frames[1] == (False, OP_BINARY, bytes(600)) and filt.oversize_of(bytes(600) + frames[2][2]) == (
        "binary",
        1001,
    )


def test_a_marker_counts_only_at_the_end_of_a_message():
    filt = FrameFilter(10, 10)
    marker = filt.prefix.encode() + b"b5"
    assert filt.oversize_of(marker) == ("binary", 5)
    assert filt.oversize_of(b"x" * 1000 + marker) == ("binary", 5)
    assert filt.oversize_of(marker + b"0" * 100) is None  # the prefix far from the end: client data
    assert filt.oversize_of(filt.prefix + "t7") == ("text", 7)
    assert filt.oversize_of(filt.prefix + "t7x") is None


def test_an_unmasked_frame_does_not_desynchronise_the_filter():
    """Clients must mask; an unmasked frame passes unchanged for websockets to refuse, and the frame
    after it is still parsed at the right place (an odd length must not be read as a mask bit)."""
    unmasked = frame_header(OP_BINARY, 5, True, None) + b"abcde"
    stream = HANDSHAKE + unmasked + frame(OP_BINARY, bytes(5000)) + frame(OP_TEXT, b"after")
    filt, out = run(stream, 3)
    assert out.startswith(unmasked)
    frames = parse(out[len(unmasked) :])
    assert filt.oversize_of(frames[0][2]) == ("binary", 5000) and frames[1][2] == b"after"


def test_a_handshake_is_buffered_up_to_64_kib_then_passed_on():
    """An overlong request is not buffered forever: past 64 KiB it goes on to websockets, which refuses
    it, and what follows is parsed as frames."""
    filt = FrameFilter(10, 10)
    assert filt.feed(b"G" * (1 << 16)) == b""  # still a possible request
    assert filt.feed(b"G") == b"G" * ((1 << 16) + 1)
    (marker,) = parse(filt.feed(frame(OP_BINARY, bytes(50))))
    assert filt.oversize_of(marker[2]) == ("binary", 50)


def test_the_handshake_ends_at_the_first_blank_line():
    filt = FrameFilter(10, 10)
    out = filt.feed(b"\r\n\r\n" + frame(OP_TEXT, b"x" * 20))
    assert out[:4] == b"\r\n\r\n" and filt.oversize_of(parse(out[4:])[0][2]) == ("text", 20)


def test_the_marker_secret_is_128_random_bits():
    prefixes = {FrameFilter(1, 1).prefix for _ in range(50)}
    assert len(prefixes) == 50
    for prefix in prefixes:
        secret = prefix.removeprefix("\x00ffclip-oversize:").removesuffix(":")
        assert len(secret) == 32 and int(secret, 16) >= 0


def test_a_fragmented_text_message_is_limited_like_a_whole_one():
    """The FIN bit is bit 7 of the first byte alone: a non-final TEXT frame (opcode 1) is not final."""
    stream = HANDSHAKE + frame(OP_TEXT, b"a" * 60, fin=False) + frame(OP_CONT, b"b" * 60) + frame(OP_TEXT, b"ok")
    filt, out = run(stream, 7)
    frames = parse(out)
    assert frames[0] == (False, OP_TEXT, b"a" * 60)
    fin, opcode, payload = frames[1]
    assert fin and opcode == OP_CONT and filt.oversize_of("a" * 60 + payload.decode("latin-1")) == ("text", 120)
    assert frames[2] == (True, OP_TEXT, b"ok")
