"""The real tiny engine on two and three CPU workers under concurrent edits (issue 31).

dlib's detector crashed the process when two workers detected at once. Here four clients send
twelve edits at once (four photos and a two-face composite, faces chosen in several ways, a car,
previews, a selection), round after round, against one server with several workers; each round's
photos differ by one pixel, so every round detects, aligns and inverts anew instead of hitting
the inversion cache. Every job must end in exactly one terminal message, and every result must
equal (region, faces, RGBA bytes) what a one-worker server answers to the same requests.
"""

from __future__ import annotations

import io
import json
import threading
import uuid
from dataclasses import dataclass

import cv2
import numpy as np
import pytest
from PIL import Image

from ffclip.bridge.testing import running_server
from ffclip.plugin.protocol import DEFAULT_MAX_PIXELS
from ffclip.plugin.websocket import WebSocket

ROUNDS = 50  # in all, shared between the two- and three-worker servers
CLIENTS = 4
EDITS_PER_CLIENT = 3
TERMINAL = ("result", "error", "cancelled")


def tiny_loader():
    from ffclip.bridge.domains import load_engine_backend

    return load_engine_backend("tiny", None, "cpu", "model", DEFAULT_MAX_PIXELS)


def _read(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def base_photos(photos_dir) -> list[np.ndarray]:
    """Small copies (detection in tens of ms) of the four photos, and a two-face composite."""
    small = []
    for name in ("obama.jpg", "biden.jpg", "astronaut.png", "obama_partial_face.jpg"):
        rgb = _read(photos_dir / name)
        f = 320 / max(rgb.shape[:2])
        small.append(cv2.resize(rgb, None, fx=f, fy=f, interpolation=cv2.INTER_AREA))
    left, right = small[0], cv2.resize(small[1], (small[0].shape[1] * 2 // 3, small[0].shape[0]))
    small.append(np.concatenate([left, right], axis=1))
    return small


@dataclass(frozen=True)
class Request:
    photo: int
    fields: tuple  # (key, value) pairs of the edit message besides id and image
    selection: bool = False

    def message(self, job: str, image: np.ndarray) -> dict:
        h, w = image.shape[:2]
        msg = {"type": "edit", "id": job, **dict(self.fields)}
        msg["image"] = {"width": w, "height": h, "format": "png"}
        if self.selection:
            msg["selection"] = {"format": "a8"}
        return msg


def _edits(*pairs) -> tuple:
    return (("edits", [{"prompt": p, "strength": s} for p, s in pairs]),)


# Twelve edits, three per client: photos, face choices, previews, several attributes, a car, a selection.
REQUESTS = [
    Request(0, _edits(("smiling", 1.0))),
    Request(4, _edits(("grey hair", 0.8)) + (("faces", "all"),)),
    Request(2, _edits(("smiling", 1.5)) + (("preview", True),)),
    Request(1, _edits(("blond hair", 1.0), ("smiling", 0.5)) + (("faces", "largest"),)),
    Request(4, _edits(("bald", 1.2)) + (("faces", [1]),)),
    Request(3, _edits(("smiling", 1.0))),
    Request(2, _edits(("a red car", 1.0)) + (("domain", "car"),)),
    Request(0, _edits(("surprised", 0.7)) + (("preview", True),), selection=True),
    Request(1, _edits(("angry", 1.0)) + (("faces", [0]),)),
    Request(4, _edits(("beard", 1.0)) + (("faces", "largest"), ("preview", True))),
    Request(3, _edits(("grey hair", 2.0)) + (("faces", [0]),)),
    Request(0, _edits(("a sports car", 0.8)) + (("domain", "car"), ("preview", True))),
]


def round_photos(base: list[np.ndarray], round_: int) -> list[bytes]:
    """PNGs of this round: one pixel (far from any face) carries the round number."""
    out = []
    for rgb in base:
        img = rgb.copy()
        img[-1, -1] = (round_ % 256, round_ // 256, 7)
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="PNG", compress_level=1)
        out.append(buf.getvalue())
    return out


def selection_for(image: np.ndarray) -> bytes:
    h, w = image.shape[:2]
    sel = np.zeros((h, w), np.uint8)
    sel[: h * 2 // 3, w // 5 : w * 4 // 5] = 255
    return sel.tobytes()


class Client(threading.Thread):
    """One connection that sends its edits back to back, then reads every answer."""

    def __init__(self, url: str, jobs: list[tuple[str, Request]], pngs: list[bytes], shapes: list):
        super().__init__(daemon=True)
        self.url, self.jobs, self.pngs, self.shapes = url, jobs, pngs, shapes
        self.ends: dict[str, list[tuple]] = {}
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            ws = WebSocket.connect(self.url)
            try:
                self._talk(ws)
            finally:
                ws.close()
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc

    def _talk(self, ws: WebSocket) -> None:
        for job, request in self.jobs:
            shape = self.shapes[request.photo]
            ws.send_text(json.dumps(request.message(job, np.empty(shape))))
            ws.send_binary(self.pngs[request.photo])
            if request.selection:
                ws.send_binary(selection_for(np.empty(shape)))
        waiting = {job for job, _ in self.jobs}
        while waiting:
            message = ws.recv(120)
            if not isinstance(message, str):
                continue
            message = json.loads(message)
            if message["type"] not in TERMINAL:
                continue
            job = message["id"]
            if message["type"] == "result":
                rgba = ws.recv(120)
                end = ("result", tuple(message["region"]), json.dumps(message["faces"]), bytes(rgba))
            else:
                end = (message["type"], message.get("code"))
            self.ends.setdefault(job, []).append(end)
            waiting.discard(job)


def run_round(url: str, pngs: list[bytes], shapes: list) -> list[tuple]:
    """The twelve edits from four clients at once; each request's one terminal answer, in order."""
    ids = [uuid.uuid4().hex for _ in REQUESTS]
    clients = [
        Client(url, [(ids[i], REQUESTS[i]) for i in range(c, len(REQUESTS), CLIENTS)], pngs, shapes)
        for c in range(CLIENTS)
    ]
    for client in clients:
        client.start()
    for client in clients:
        client.join(300)
    ends: dict[str, list[tuple]] = {}
    for client in clients:
        assert client.error is None, repr(client.error)
        ends.update(client.ends)
    assert set(ends) == set(ids)
    assert all(len(v) == 1 for v in ends.values()), {k: len(v) for k, v in ends.items()}  # exactly one end
    return [ends[job][0] for job in ids]


def describe(end: tuple) -> str:
    return f"{end[0]} region={end[1]}" if end[0] == "result" else f"{end[0]} {end[1]}"


@pytest.mark.slow
def test_concurrent_edits_on_two_and_three_workers_equal_one_worker(photos_dir):
    base = base_photos(photos_dir)
    shapes = [p.shape for p in base]
    with (
        running_server([tiny_loader]) as one,
        running_server([tiny_loader] * 2) as two,
        running_server([tiny_loader] * 3) as three,
    ):
        for round_ in range(ROUNDS):
            pngs = round_photos(base, round_)
            reference = run_round(one.url, pngs, shapes)
            server = two if round_ % 2 == 0 else three
            got = run_round(server.url, pngs, shapes)
            for i, (ours, ref) in enumerate(zip(got, reference, strict=True)):
                assert ours == ref, f"round {round_}, request {i}: {describe(ours)} vs one worker's {describe(ref)}"
        assert {r[0] for r in reference} == {"result"}  # every request is one the engine can do
        for server in (two, three):
            workers = server.call(_workers(server))
            assert all(done > 0 for done in workers), workers  # every worker took part


async def _workers(thread) -> list[int]:
    return [w.done for w in thread.server.workers]
