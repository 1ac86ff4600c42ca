"""A websocket client that sends anything and reads every message, to check the engine's answers
one by one (the plug-in's clients would hide what is wrong); and the photo the daemon tests send."""

from __future__ import annotations

import json
import uuid

import numpy as np

from ffclip.plugin.websocket import ConnectionClosed, WebSocket

RNG = np.random.default_rng(4)
PHOTO = RNG.integers(0, 256, (96, 128, 4), dtype=np.uint8)
PHOTO[..., 3] = 255


class Raw:
    """A client that can send anything, to check the engine's answers message by message."""

    def __init__(self, url: str, headers: dict | None = None):
        self.ws = WebSocket.connect(url, headers=headers)
        self.greeting = self.json()

    def send(self, message) -> None:
        self.ws.send_text(message if isinstance(message, str) else json.dumps(message))

    def binary(self, data: bytes, fragment_size: int | None = None) -> None:
        self.ws.send_binary(data, fragment_size)

    def json(self, timeout: float = 20.0) -> dict:
        message = self.ws.recv(timeout)
        assert isinstance(message, str), f"expected a text message, got {len(message)} bytes"
        return json.loads(message)

    def announce(self, width: int, height: int, fmt: str = "rgba8", job_id: str | None = None, **fields) -> str:
        """Send an `edit` message (the caller sends the frames)."""
        job_id = job_id or uuid.uuid4().hex
        message = {
            "type": "edit",
            "id": job_id,
            "prompt": "smiling",
            "strength": 1.0,
            "faces": "all",
            "preview": False,
            "image": {"width": width, "height": height, "format": fmt},
        }
        message.update(fields)
        self.send(message)
        return job_id

    def edit(self, image: np.ndarray = PHOTO, job_id: str | None = None, **fields) -> str:
        h, w = image.shape[:2]
        job_id = self.announce(w, h, job_id=job_id, **fields)
        self.binary(np.ascontiguousarray(image).tobytes())
        return job_id

    def until_end(self, job_id: str) -> tuple[list[dict], dict, bytes | None]:
        """Messages of `job_id` up to its terminal one (and the result's binary frame)."""
        seen = []
        while True:
            message = self.json()
            assert message.get("id") == job_id, message
            if message["type"] in ("result", "error", "cancelled"):
                binary = self.ws.recv(20) if message["type"] == "result" else None
                return seen, message, binary
            seen.append(message)

    def until_queued(self, jobs: list[str], timeout: float = 30.0) -> dict[str, dict]:
        """Read until each of `jobs` is `queued` (or already ended); the terminal messages read on
        the way are returned, for `ends_until_closed(ends=...)`."""
        waiting, ends = set(jobs), {}
        while waiting:
            message = self.ws.recv(timeout)
            if isinstance(message, str):
                message = json.loads(message)
                if message["type"] in ("result", "error", "cancelled"):
                    ends[message["id"]] = message
                if message["type"] in ("queued", "result", "error", "cancelled"):
                    waiting.discard(message.get("id"))
        return ends

    def ends_until_closed(self, timeout: float = 30.0, ends: dict[str, dict] | None = None) -> dict[str, dict]:
        """Each job's terminal message (result, error, cancelled), read until the engine closes the
        connection; a job that ends twice fails the test."""
        ends = dict(ends or {})
        while True:
            try:
                message = self.ws.recv(timeout)
            except ConnectionClosed:
                return ends
            if isinstance(message, str):
                message = json.loads(message)
                if message["type"] in ("result", "error", "cancelled"):
                    assert message["id"] not in ends, message
                    ends[message["id"]] = message

    def error(self) -> dict:
        message = self.json()
        assert message["type"] == "error", message
        return message

    def quiet(self, seconds: float = 0.3) -> bool:
        """True when nothing else arrives for a while."""
        try:
            message = self.ws.recv(seconds)
        except TimeoutError:
            return True
        raise AssertionError(f"unexpected message: {message!r}")

    def close(self) -> None:
        self.ws.close()
