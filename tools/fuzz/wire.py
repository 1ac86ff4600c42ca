"""Fuzzing the wire: the protocol parser alone, and the real daemon in-process over a websocket.

The daemon's promises (docs/protocol.md) are the checks: bad input gets an `error` with a protocol
code (never `internal`), the connection stays open, every accepted job ends in exactly one terminal
message, and the server still answers afterwards.
"""

from __future__ import annotations

import json
import logging
import random
import struct
import uuid
from collections import deque
from pathlib import Path
from typing import Any

from . import mutators as M
from . import seeds

WIRE_MAX_PIXELS = 200_000  # the daemon's pixel limit here: max frame = 800 KB + 64 KB
MAX_FRAGMENTS = 64  # fragments a message here (websockets closes a connection at 4096: too slow to fuzz)
# a hang guard, not a speed limit: a busy machine (a test suite beside a niced fuzz run) can take
# tens of seconds for the first face detection
REPLY_TIMEOUT = 180.0
CODES = {"bad_request", "bad_image", "too_large", "no_face", "busy", "cancelled", "models_missing"}


# --------------------------------------------------------------------------- random JSON


def json_value(rng: random.Random, depth: int = 0) -> Any:
    """A random JSON value: the edge cases of each type, and containers of them."""
    kind = rng.randrange(9 if depth < 3 else 6)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice((True, False))
    if kind == 2:
        return rng.choice((0, 1, -1, 15, 16, 17, 2**31, -(2**63), 2**64, 10**30, rng.randrange(-1000, 100000)))
    if kind == 3:
        return rng.choice((0.0, -0.0, 0.5, -4.0, 4.0, 4.000001, 1e308, -1e-308, rng.uniform(-10, 10)))
    if kind == 4:
        return rng.choice(("", " ", "all", "largest", "rgba8", "png", "a8", "0,1", "x" * 1001, "\u00e9\U0001f600"))
    if kind == 5:
        return uuid.UUID(int=rng.getrandbits(128)).hex
    if kind == 6:
        return [json_value(rng, depth + 1) for _ in range(rng.choice((0, 1, 2, 5, 65)))]
    if kind == 7:
        keys = ("prompt", "strength", "width", "height", "format", "id", "type", "x", "")
        return {rng.choice(keys): json_value(rng, depth + 1) for _ in range(rng.choice((0, 1, 3)))}
    return rng.choice(({"prompt": "smiling", "strength": 1.0}, {"width": 64, "height": 48, "format": "rgba8"}))


def edit_message(rng: random.Random, width: int = 64, height: int = 48, fmt: str = "rgba8") -> dict:
    """A valid `edit` announcement, in one of its forms."""
    message: dict[str, Any] = {"type": "edit", "id": uuid.UUID(int=rng.getrandbits(128)).hex}
    if rng.random() < 0.5:
        message["edits"] = [{"prompt": "smiling", "strength": 0.8}, {"prompt": "grey hair", "strength": 1.2}]
    else:
        message.update(prompt="smiling", strength=1.0)
    message["faces"] = rng.choice(("all", "largest", [0], [0, 1]))
    message["preview"] = rng.random() < 0.5
    message["image"] = {"width": width, "height": height, "format": fmt}
    if rng.random() < 0.2:
        message["selection"] = {"format": "a8"}
    if rng.random() < 0.2:
        message["supersede"] = True
    return message


def _paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(value, dict):
        for key, item in value.items():
            out += _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            out += _paths(item, (*prefix, i))
    return out


def mutate_value(rng: random.Random, message: dict) -> Any:
    """Replace, delete or add one field anywhere in the message (the type too)."""
    message = json.loads(json.dumps(message))
    path = rng.choice(_paths(message)[1:] or [()])
    if not path:
        return json_value(rng)
    *parents, last = path
    holder: Any = message
    for key in parents:
        holder = holder[key]
    choice = rng.random()
    if choice < 0.6:
        holder[last] = json_value(rng)
    elif choice < 0.8:
        del holder[last]
    elif isinstance(holder, dict):
        holder[rng.choice(("reuse_image", "selection", "supersede", "edits", "prompt", "zz"))] = json_value(rng)
    else:
        holder.append(json_value(rng))
    return message


def message_text(rng: random.Random, message: dict) -> str:
    """The message as a text frame: mutated as a value, as text, truncated, or deeply nested."""
    choice = rng.random()
    if choice < 0.5:
        return json.dumps(mutate_value(rng, message))
    text = json.dumps(message).encode()
    if choice < 0.75:
        return M.blind(rng, text).decode("utf-8", "replace")
    if choice < 0.85:
        return text[: rng.randrange(len(text))].decode("utf-8", "replace")
    if choice < 0.92:
        depth = rng.choice((100, 10_000, 200_000))
        return rng.choice(("[", '{"a":')) * depth
    return rng.choice(("NaN", "[1e999]", '{"type": "edit", "id": "x", "strength": NaN}', "\u0000", " ", "null"))


# --------------------------------------------------------------------------- the parser alone


class ParserTarget:
    """decode + parse_edit (what the daemon runs on every text message) on mutated messages."""

    name = "protocol-parser"
    description = "plugin.protocol.decode and bridge.messages.parse_edit on mutated messages"

    def setup(self, workdir: Path, marker: Path) -> None:
        pass

    def sound(self) -> bytes:
        return json.dumps(edit_message(random.Random(0))).encode()

    def mutant(self, rng: random.Random) -> bytes:
        return message_text(rng, edit_message(rng)).encode("utf-8", "surrogatepass")

    def run(self, data: bytes, path: Path) -> str:
        from ffclip.bridge.messages import parse_edit
        from ffclip.plugin.protocol import EngineError, decode

        try:
            message = decode(data.decode("utf-8", "surrogatepass"))
            if message["type"] == "edit":
                parse_edit(message, WIRE_MAX_PIXELS)
        except EngineError as exc:
            if exc.code in CODES:
                return exc.code
            raise
        return "ok"

    def budget(self, data: bytes) -> int | None:
        return None


# --------------------------------------------------------------------------- the daemon


class Client:
    """A raw websocket client that reads every reply and keeps the books the checks need."""

    def __init__(self, url: str) -> None:
        from ffclip.plugin.websocket import WebSocket

        self.ws = WebSocket.connect(url)
        self.live: set[str] = set()  # queued, not ended
        self.replies: list[dict] = []
        self.fences = 0
        self._expect("status")

    def send(self, text: str) -> None:
        self.ws.send_text(text)

    def binary(self, data: bytes, fragment: int | None = None) -> None:
        self.ws.send_binary(data, fragment)

    def read(self, timeout: float = REPLY_TIMEOUT) -> dict:
        raw = self.ws.recv(timeout)
        if not isinstance(raw, str):
            raise AssertionError(f"a binary frame of {len(raw)} bytes nobody announced")
        message = json.loads(raw)
        if not isinstance(message, dict) or not isinstance(message.get("type"), str):
            raise AssertionError(f"a reply that is not a message: {raw[:200]}")
        if message["type"] == "error" and message.get("code") not in CODES:
            raise AssertionError(f"error {message.get('code')}: {message.get('message')}")
        if message["type"] == "result":
            frame = self.ws.recv(timeout)
            x, y, w, h = message["region"]
            if not isinstance(frame, bytes) or len(frame) != w * h * 4:
                raise AssertionError("a result without its frame")
        job = message.get("id")
        if message["type"] == "queued":
            self.live.add(job)
        elif message["type"] in ("result", "cancelled", "error") and job is not None:
            # a job ends once; an error or cancelled may also end an announcement never queued
            if job not in self.live and message["type"] == "result":
                raise AssertionError(f"a result for {job}, which is not a job in progress")
            self.live.discard(job)
        self.replies.append(message)
        return message

    def _expect(self, kind: str) -> dict:
        while True:
            message = self.read()
            if message["type"] == kind:
                return message

    def settle(self) -> None:
        """A fence round trip (the server is alive and in step), then every queued job's end.

        The fence is a message of a unique unknown type, which the server refuses by name: a
        `status` cannot serve, since the script may have asked for one itself and the server also
        sends it unasked, so that its reply would be taken for the fence's and the later replies
        counted for the next script (what a slow CI machine showed)."""
        self.fences += 1
        fence = f"fence-{self.fences}"
        self.send(json.dumps({"type": fence}))
        while True:
            message = self.read()
            if message["type"] == "error" and repr(fence) in message.get("message", ""):
                self.replies.pop()  # the fence's reply is not the script's
                break
        while self.live:
            self.read()

    def close(self) -> None:
        self.ws.close()


def _label(replies: list[dict]) -> str:
    codes = [m["code"] for m in replies if m["type"] == "error"]
    if codes:
        return f"error:{codes[0]}"
    kinds = {m["type"] for m in replies}
    return "result" if "result" in kinds else ("cancelled" if "cancelled" in kinds else "no reply")


class _ServerTarget:
    """Shared by the daemon targets: one in-process server, one client, reconnecting when needed."""

    def make_backend(self) -> Any:
        raise NotImplementedError

    def setup(self, workdir: Path, marker: Path) -> None:
        from ffclip.bridge.testing import ServerThread

        # No keepalive pings: a niced run on a busy machine can be starved for longer than the
        # ping timeout, and the server then drops the connection (what the first 10 000-mutant run
        # met once, not reproducible alone); keepalive is not what is fuzzed here.
        config = {"max_pixels": WIRE_MAX_PIXELS, "max_queue": 64, "ping_interval": None}
        self.server = ServerThread(self.make_backend, **config)
        self.server.start()
        self.client = Client(self.server.url)
        self.log = _Recorder()
        for name in ("ffclip", "websockets"):
            logging.getLogger(name).addHandler(self.log)

    def close(self) -> None:
        for name in ("ffclip", "websockets"):
            logging.getLogger(name).removeHandler(self.log)
        self.client.close()
        self.server.stop()

    def budget(self, data: bytes) -> int | None:
        return None  # the server's threads allocate as they please while a mutant is measured

    def _run_script(self, script: list[tuple[str, Any]]) -> str:
        client = self.client
        if client.ws.closed:
            client = self.client = Client(self.server.url)
        start = len(client.replies)
        self.log.lines.clear()
        try:
            for kind, payload in script:
                if kind == "text":
                    client.send(payload)
                elif kind == "binary":
                    client.binary(payload[0], payload[1])
            client.settle()
        except Exception as exc:
            self.client = Client(self.server.url)  # a fresh connection for the next mutant
            if type(exc).__name__ in ("ConnectionClosed", "TimeoutError"):
                said = " | ".join(self.log.lines) or "nothing"
                raise AssertionError(f"the server {type(exc).__name__}: {exc}; its log said: {said}") from None
            raise
        return _label(client.replies[start:])


class _Recorder(logging.Handler):
    """The server's last warnings, so that a dropped connection comes with the server's reason."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: deque[str] = deque(maxlen=5)

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.name}: {record.getMessage()[:200]}")


def decode_script(data: bytes) -> list[tuple[str, Any]]:
    """A script encoded as bytes (so a mutant is a byte string, like every other target's)."""
    script, at = [], 0
    while at < len(data):
        kind, fragment, size = struct.unpack_from("<BII", data, at)
        at += 9
        payload = data[at : at + size]
        at += size
        if kind == 0:
            script.append(("text", payload.decode("utf-8", "surrogatepass")))
        else:
            script.append(("binary", (payload, fragment or None)))
    return script


def encode_script(script: list[tuple[str, Any]]) -> bytes:
    out = []
    for kind, payload in script:
        if kind == "text":
            body = payload.encode("utf-8", "surrogatepass")
            out.append(struct.pack("<BII", 0, 0, len(body)) + body)
        else:
            body, fragment = payload
            out.append(struct.pack("<BII", 1, fragment or 0, len(body)) + body)
    return b"".join(out)


class ServerTarget(_ServerTarget):
    """The daemon (FakeBackend) over a websocket: mutated messages, announcements followed by too
    few, too many, mis-sized, oversized or fragmented frames, unannounced frames."""

    name = "wire"
    description = "the daemon in-process (FakeBackend): mutated messages and binary frames"
    sound_label = "result"

    def make_backend(self) -> Any:
        from ffclip.bridge.fake import FakeBackend

        return FakeBackend()

    def sound(self) -> bytes:
        rng = random.Random(0)
        message = edit_message(rng)
        message.pop("selection", None)
        return encode_script([("text", json.dumps(message)), ("binary", (_pixels(rng, 64 * 48 * 4), None))])

    def mutant(self, rng: random.Random) -> bytes:
        script: list[tuple[str, Any]] = []
        for _ in range(rng.choice((1, 1, 2, 3))):
            script += self._action(rng)
        return encode_script(script)

    def _action(self, rng: random.Random) -> list[tuple[str, Any]]:
        width, height = rng.choice(((64, 48), (16, 16), (100, 80)))
        message = edit_message(rng, width, height)
        frames = 1 + ("selection" in message)
        sizes = [width * height * 4, width * height][:frames]
        choice = rng.random()
        if choice < 0.35:  # a mutated message, then the frames a valid one would have
            out = [("text", message_text(rng, message))]
            return out + [("binary", (_pixels(rng, n), None)) for n in sizes]
        if choice < 0.7:  # a valid announcement, then frames that do not fit it
            out = [("text", json.dumps(message))]
            count = rng.choice((0, frames - 1, frames, frames, frames + 1))
            for i in range(max(count, 0)):
                n = sizes[i] if i < len(sizes) else rng.choice((1, 100))
                if rng.random() < 0.5:  # the wrong size: one byte off, empty, over the frame limit
                    n = rng.choice((n - 1, n + 1, 0, WIRE_MAX_PIXELS * 4 + (1 << 16) + 1))
                out.append(("binary", (_pixels(rng, max(n, 0)), _fragment(rng, max(n, 0)))))
            if rng.random() < 0.2:
                out.insert(rng.randrange(1, len(out) + 1), ("text", '{"type": "status"}'))
            return out
        if choice < 0.8:  # a frame nobody announced
            return [("binary", (_pixels(rng, rng.choice((0, 1, 12288, 900_000))), None))]
        if choice < 0.9:  # a cancel or status, mutated
            base = rng.choice(({"type": "cancel", "id": "x"}, {"type": "status"}, {"type": "nope"}))
            return [("text", message_text(rng, base))]
        reuse = {"type": "edit", "id": uuid.uuid4().hex, "prompt": "x", "reuse_image": True, "supersede": True}
        return [("text", message_text(rng, reuse) if rng.random() < 0.5 else json.dumps(reuse))]

    def run(self, data: bytes, path: Path) -> str:
        return self._run_script(decode_script(data))


def _fragment(rng: random.Random, n: int) -> int | None:
    """A fragment size for an n-byte message: at most MAX_FRAGMENTS fragments, since each costs
    about a millisecond on both sides (and websockets closes a connection with 1009 when a message
    comes in more than 4096 fragments, as docs/protocol.md says)."""
    size = rng.choice((None, None, 7, 4096))
    return None if size is None else max(size, -(-n // MAX_FRAGMENTS))


def _pixels(rng: random.Random, n: int) -> bytes:
    return rng.randbytes(n) if n <= 1 << 16 else bytes([rng.randrange(256)]) * n


class DaemonImageTarget(_ServerTarget):
    """The daemon with the engine's image decoding (passthrough pipeline: no models) on mutated PNG
    frames: `bad_image`, `too_large` or `no_face`, never `internal`."""

    name = "daemon-png"
    description = "the daemon in-process (engine backend, passthrough): mutated PNG frames"
    sound_label = "error:no_face"  # a photo without a face, decoded and searched

    def make_backend(self) -> Any:
        from ffclip.bridge.backend import EngineBackend
        from ffclip.engine.imageio import load_image
        from ffclip.engine.pipeline import Pipeline

        return EngineBackend(None, Pipeline(None, editor="passthrough", max_pixels=WIRE_MAX_PIXELS), load_image)

    def setup(self, workdir: Path, marker: Path) -> None:
        self.seeds = [s for s in seeds.image_seeds("png")]
        super().setup(workdir, marker)

    def sound(self) -> bytes:
        return self.seeds[0]

    def mutant(self, rng: random.Random) -> bytes:
        seed = rng.choice(self.seeds)
        return M.png_chunk_mutation(rng, seed) if rng.random() < 0.6 else M.blind(rng, seed)

    def run(self, data: bytes, path: Path) -> str:
        width, height = 40, 32
        if len(data) >= 24 and data[12:16] == b"IHDR":  # announce what the PNG says: on to the decoder
            width, height = struct.unpack(">II", data[16:24])
            width, height = min(width, 1 << 20), min(height, 1 << 20)
        message = edit_message(random.Random(len(data)), width, height, "png")
        message.pop("selection", None)
        return self._run_script([("text", json.dumps(message)), ("binary", (data, None))])
