"""The `edit` request's limits, at their boundaries, over the wire (docs/protocol.md).

Each field is tried just inside and just outside what the protocol allows, against an in-process daemon
with the fake backend; the expected outcome (accepted, or an error code) is written out here from the
protocol's table, not taken from the parser. Talking to the daemon rather than to the parser keeps these
tests valid when the validation moves (issue 13: one `EditParams.from_message` in plugin/protocol.py).
"""

from __future__ import annotations

import json
import math
import uuid

import numpy as np
import pytest

from ffclip.bridge.fake import FakeBackend
from ffclip.bridge.testing import running_server
from ffclip.plugin.websocket import WebSocket

MAX_PIXELS = 40_000  # this test daemon's --max-pixels
IMAGE = np.random.default_rng(9).integers(0, 256, (16, 16, 4), dtype=np.uint8).tobytes()  # the smallest allowed


@pytest.fixture(scope="module")
def server():
    with running_server(lambda: FakeBackend(0.0), max_pixels=MAX_PIXELS) as thread:
        yield thread


@pytest.fixture
def ws(server):
    sock = WebSocket.connect(server.url)
    assert json.loads(sock.recv(10))["type"] == "status"
    yield sock
    sock.close()


def _edit(**fields) -> dict:
    message = {"type": "edit", "id": uuid.uuid4().hex, "prompt": "smile", "image": _image(16, 16)}
    message.update(fields)
    return {k: v for k, v in message.items() if v is not DROP}


def _image(width, height, fmt="rgba8") -> dict:
    return {"width": width, "height": height, "format": fmt}


DROP = object()


def outcome(ws: WebSocket, message: dict | str, frames: list[bytes] | None = None) -> str:
    """'result', or the error code the engine answers; the stream must be back in step after it."""
    ws.send_text(message if isinstance(message, str) else json.dumps(message))
    image = message.get("image") if isinstance(message, dict) else None
    if frames is None:
        frames = [] if image is None else [_frame_for(image)]
        if isinstance(message, dict) and message.get("selection") is not None:
            frames.append(bytes([255]) * (len(frames[0]) // 4 if frames else 256))
    for frame in frames:
        ws.send_binary(frame)
    while True:
        reply = json.loads(ws.recv(20))
        if reply["type"] == "result":
            ws.recv(20)
            answer = "result"
            break
        if reply["type"] == "error":
            answer = reply["code"]
            break
    ws.send_text('{"type":"status"}')  # in step: the next message is the status, nothing left over
    assert json.loads(ws.recv(20))["type"] == "status"
    return answer


def _frame_for(image) -> bytes:
    try:
        width, height = int(image["width"]), int(image["height"])
    except (TypeError, KeyError, ValueError):
        return IMAGE
    if 0 < width * height <= MAX_PIXELS and width > 0 and height > 0:
        rng = np.random.default_rng(width * 1000 + height)
        return rng.integers(0, 256, (height, width, 4), dtype=np.uint8).tobytes()
    return IMAGE


CASES = {
    # id: 1–128 characters
    "id 128 chars": (_edit(id="i" * 128), "result"),
    "id 129 chars": (_edit(id="i" * 129), "bad_request"),
    "id empty": (_edit(id=""), "bad_request"),
    "id blank": (_edit(id="   "), "bad_request"),
    "id a number": (_edit(id=7), "bad_request"),
    "id missing": (_edit(id=DROP), "bad_request"),
    # prompt: 1–1000 characters, not blank
    "prompt 1000 chars": (_edit(prompt="p" * 1000), "result"),
    "prompt 1001 chars": (_edit(prompt="p" * 1001), "bad_request"),
    "prompt blank": (_edit(prompt=" \t "), "bad_request"),
    "prompt a list": (_edit(prompt=["smile"]), "bad_request"),
    "prompt missing": (_edit(prompt=DROP), "bad_request"),
    # strength: a finite number in [-4, 4], 1.0 when absent
    "strength -4": (_edit(strength=-4), "result"),
    "strength 4.0": (_edit(strength=4.0), "result"),
    "strength 4.0001": (_edit(strength=4.0001), "bad_request"),
    "strength -4.0001": (_edit(strength=-4.0001), "bad_request"),
    "strength true": (_edit(strength=True), "bad_request"),
    "strength a string": (_edit(strength="1"), "bad_request"),
    "strength NaN": (json.dumps(_edit(strength=math.nan)), "bad_request"),
    "strength Infinity": (json.dumps(_edit(strength=math.inf)), "bad_request"),
    "strength absent": (_edit(), "result"),
    # preview: true or false
    "preview true": (_edit(preview=True), "result"),
    "preview 1": (_edit(preview=1), "bad_request"),
    "preview 'false'": (_edit(preview="false"), "bad_request"),
    # faces: "all", "largest" or 1–64 indices >= 0
    "faces largest": (_edit(faces="largest"), "result"),
    "faces [0]": (_edit(faces=[0]), "result"),
    "faces 64 indices": (_edit(faces=list(range(64))), "result"),
    "faces 65 indices": (_edit(faces=list(range(65))), "bad_request"),
    "faces []": (_edit(faces=[]), "bad_request"),
    "faces [-1]": (_edit(faces=[-1]), "bad_request"),
    "faces [true]": (_edit(faces=[True]), "bad_request"),
    "faces [0.0]": (_edit(faces=[0.0]), "bad_request"),
    "faces 'none'": (_edit(faces="none"), "bad_request"),
    "faces 0": (_edit(faces=0), "bad_request"),
    # image: integer sides of at least 16 px, at most --max-pixels in all, rgba8 or png
    "image 16x16": (_edit(image=_image(16, 16)), "result"),
    "image 15x16": (_edit(image=_image(15, 16)), "bad_image"),
    "image 16x15": (_edit(image=_image(16, 15)), "bad_image"),
    "image 200x200 = max": (_edit(image=_image(200, 200)), "result"),
    "image 200x201 > max": (_edit(image=_image(200, 201)), "too_large"),
    "image 0 wide": (_edit(image=_image(0, 16)), "bad_image"),
    "image -16 high": (_edit(image=_image(16, -16)), "bad_image"),
    "image width 16.0": (_edit(image=_image(16.0, 16)), "bad_request"),
    "image height true": (_edit(image=_image(16, True)), "bad_request"),
    "image format jpeg": (_edit(image=_image(16, 16, "jpeg")), "bad_request"),
    "image a list": (_edit(image=[16, 16]), "bad_request"),
    "image missing": (_edit(image=DROP), "bad_request"),
    # selection: absent or {"format": "a8"}
    "selection a8": (_edit(selection={"format": "a8"}), "result"),
    "selection y8": (_edit(selection={"format": "y8"}), "bad_request"),
    "selection a string": (_edit(selection="a8"), "bad_request"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_each_field_at_its_limits(ws, name: str) -> None:
    message, expected = CASES[name]
    assert outcome(ws, message) == expected


def test_a_refused_edit_with_a_selection_has_both_frames_discarded(ws) -> None:
    message = _edit(prompt="", selection={"format": "a8"})
    assert outcome(ws, message, [IMAGE, bytes([255]) * 256]) == "bad_request"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("{oops", "bad_request"),
        ("[1, 2]", "bad_request"),
        ('{"id": "x"}', "bad_request"),
        ('{"type": 5}', "bad_request"),
    ],
)
def test_messages_that_are_not_requests(ws, text: str, expected: str) -> None:
    assert outcome(ws, text, []) == expected


def test_the_prompt_is_taken_without_its_surrounding_blanks() -> None:
    """Two prompts that differ only in blanks are one prompt (one text-cache entry)."""
    with running_server(lambda: FakeBackend(0.0)) as fresh:
        sock = WebSocket.connect(fresh.url)
        sock.recv(10)
        assert outcome(sock, _edit(prompt="  a new prompt ")) == "result"
        assert outcome(sock, _edit(prompt="a new prompt")) == "result"
        assert fresh.server.backend.cache_stats()["text"]["entries"] == 1
        sock.close()


class WildProgress(FakeBackend):
    """Reports a stage's progress as 1/3, then below 0 and above 1."""

    def _stage(self, stage, progress) -> None:
        progress(stage, 1 / 3)
        progress(stage, -0.5)
        progress(stage, 1.5)


def test_progress_values_are_clamped_to_0_1_and_rounded() -> None:
    with running_server(lambda: WildProgress(0.0)) as wild:
        sock = WebSocket.connect(wild.url)
        sock.recv(10)
        sock.send_text(json.dumps(_edit()))
        sock.send_binary(IMAGE)
        values = []
        while True:
            reply = json.loads(sock.recv(20))
            if reply["type"] == "progress":
                values.append(reply["value"])
            if reply["type"] == "result":
                break
        sock.close()
    assert values[:3] == [0.3333, 0.0, 1.0]


def test_a_refused_edit_without_an_image_announces_no_frame(ws) -> None:
    """So a binary frame after it is not swallowed as its image: it is reported as unannounced."""
    ws.send_text(json.dumps(_edit(image=DROP)))
    assert json.loads(ws.recv(20))["code"] == "bad_request"
    ws.send_binary(IMAGE)
    reply = json.loads(ws.recv(5))  # a hang guard: a swallowed frame gets no answer at all
    assert reply["code"] == "bad_request" and "without an edit announcement" in reply["message"]
