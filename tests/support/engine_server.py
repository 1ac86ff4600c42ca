"""A small stand-in for the engine daemon (protocol v1), for the plug-in tests.

It answers an edit with a fixed region (the middle half of the image) whose pixels are the colour
inverse of the source and whose alpha is a blend mask that is 0 on the region's border and 255 in
its middle. Prompts steer it: "noface" -> no_face error, "slow" -> long progress (for cancel), "download" ->
status messages of a daemon that downloads its model files while the job waits.
A cancel for a job id is honoured from any connection.
"""

from __future__ import annotations

import asyncio
import json
import threading

import websockets

from ffclip.plugin import identity
from ffclip.plugin.protocol import (
    STAGES,
    CancelledMessage,
    EditResult,
    EngineState,
    ErrorMessage,
    ProgressMessage,
    QueuedMessage,
    StatusMessage,
)

GREETING = {"version": "fake", "device": "cpu", "models": {"profile": "fake"}, "queue": 0}


def fake_region(width: int, height: int) -> tuple[int, int, int, int]:
    return width // 4, height // 4, max(1, width // 2), max(1, height // 2)


def fake_mask(w: int, h: int) -> bytes:
    out = bytearray(w * h)
    for y in range(h):
        for x in range(w):
            d = min(x, y, w - 1 - x, h - 1 - y)
            out[y * w + x] = 0 if d == 0 else min(255, d * 32)
    return bytes(out)


def fake_result(rgba: bytes, width: int, height: int) -> tuple[tuple[int, int, int, int], bytes]:
    x0, y0, w, h = fake_region(width, height)
    mask = fake_mask(w, h)
    out = bytearray(w * h * 4)
    for j in range(h):
        row = rgba[((y0 + j) * width + x0) * 4 : ((y0 + j) * width + x0 + w) * 4]
        seg = bytearray(row)
        for c in range(3):
            seg[c::4] = bytes(255 - v for v in row[c::4])
        seg[3::4] = mask[j * w : (j + 1) * w]
        out[j * w * 4 : (j + 1) * w * 4] = seg
    return (x0, y0, w, h), bytes(out)


class FakeEngineServer:
    def __init__(self, host: str = "127.0.0.1", port: int = 0, token: str | None = None):
        self.host, self.port, self.token = host, port, token
        self.key = identity.new_key()  # proves to a challenging plug-in that it is this user's engine
        self.cancelled: set[str] = set()
        self.requests: list[dict] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stop: asyncio.Future | None = None

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}/"

    def start(self) -> FakeEngineServer:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("fake engine did not start")
        return self

    def stop(self) -> None:
        if self._loop and self._stop:
            self._loop.call_soon_threadsafe(self._stop.set_result, None)
        if self._thread:
            self._thread.join(5)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = self._loop.create_future()
        async with websockets.serve(self._handle, self.host, self.port, max_size=None) as server:
            self.port = server.sockets[0].getsockname()[1]
            self._ready.set()
            await self._stop

    async def _handle(self, ws) -> None:
        challenge = ws.request.headers.get(identity.CHALLENGE_HEADER)
        proof = {"proof": identity.proof(self.key, challenge)} if challenge else {}
        await self._send(ws, StatusMessage({**GREETING, **proof}))
        try:
            async for message in ws:
                if isinstance(message, bytes):
                    await self._send(ws, ErrorMessage("bad_request", "stray binary"))
                    continue
                msg = json.loads(message)
                kind = msg.get("type")
                if kind == "status":
                    await self._send(ws, StatusMessage({**GREETING, "models": {}}))
                elif kind == "cancel":
                    self.cancelled.add(msg.get("id"))
                elif kind == "edit":
                    await self._edit(ws, msg)
        except websockets.ConnectionClosed:
            pass

    @staticmethod
    async def _send(ws, message) -> None:
        """A message built by the protocol's own types, as the daemon builds it."""
        await ws.send(json.dumps(message.to_message()))

    async def _edit(self, ws, msg: dict) -> None:
        job = msg.get("id")
        image = await ws.recv()
        selection = await ws.recv() if msg.get("selection") else None
        width, height = msg["image"]["width"], msg["image"]["height"]
        self.requests.append({**msg, "selection_bytes": selection, "image_bytes": len(image)})
        await self._send(ws, QueuedMessage(job, 0))
        prompts = " ".join(str(e.get("prompt")) for e in msg.get("edits") or [msg])
        if "download" in prompts:
            for done in (100_000_000, 300_000_000):
                download = {"file": "e4e_ffhq_encode.pt", "done": done, "total": 400_000_000, "files_left": 2}
                await self._send(ws, StatusMessage({"state": EngineState.DOWNLOADING, "download": download}))
            await self._send(ws, StatusMessage({"state": EngineState.LOADING}))
        if "noface" in prompts:
            await self._send(ws, ErrorMessage("no_face", "no face found in the image", job))
            return
        slow = "slow" in prompts
        for stage in STAGES:
            for value in (0.0, 0.5, 1.0):
                if job in self.cancelled:
                    await self._send(ws, CancelledMessage(job))
                    return
                await self._send(ws, ProgressMessage(job, stage, value))
                await asyncio.sleep(0.4 if slow else 0.0)
        region, rgba = fake_result(image, width, height)
        faces = [{"index": 0, "box": list(region), "quad": []}]
        await self._send(ws, EditResult(region, rgba, faces, id=job))
        await ws.send(rgba)


if __name__ == "__main__":  # manual use: python tests/support/engine_server.py PORT
    import sys
    import time

    from ffclip.bridge.daemon import announce

    engine = FakeEngineServer(port=int(sys.argv[1]) if len(sys.argv) > 1 else 8765).start()
    print("fake engine at", engine.url, flush=True)
    with announce(engine.url, "fake", key=engine.key):  # as `serve` does: a plug-in that started it checks
        while True:
            time.sleep(3600)
