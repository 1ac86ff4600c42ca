"""The daemon's protocol (docs/protocol.md) driven by the stdlib client, against an in-process server.

The backend is the fake one (fast, deterministic): these tests are about the protocol, the queue and
the hardening; tests/bridge/test_backend_tiny.py runs the same flows on the real tiny models.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid

import numpy as np
import pytest

from ffclip.bridge.backend import UnavailableBackend
from ffclip.bridge.fake import FakeBackend
from ffclip.bridge.testing import ServerThread, running_server
from ffclip.plugin.client import EngineClient
from ffclip.plugin.png import write_png
from ffclip.plugin.protocol import STAGES, Cancelled, EditParams, EngineError, ImageSpec
from ffclip.plugin.websocket import ConnectionClosed, HandshakeError, WebSocket
from tests.support.raw import PHOTO, RNG, Raw


@pytest.fixture(scope="module")
def server():
    with running_server(lambda: FakeBackend(0.0)) as thread:
        yield thread


class RecordingBackend(FakeBackend):
    """The fake backend, noting each stage it starts: (job id, stage), in the order they ran."""

    def __init__(self, stage_seconds: float) -> None:
        super().__init__(stage_seconds)
        self.started: list[tuple[str, str]] = []

    def run(self, request, image, selection, progress, should_cancel, memo):
        def record(stage: str, value: float) -> None:
            if value == 0.0:
                self.started.append((request.id, stage))
            progress(stage, value)

        return super().run(request, image, selection, record, should_cancel, memo)

    def stages_of(self, job_id: str) -> list[str]:
        return [stage for job, stage in self.started if job == job_id]

    def first(self, job_id: str) -> int:
        return next(n for n, (job, _) in enumerate(self.started) if job == job_id)

    def last(self, job_id: str) -> int:
        """-1 for a job that ran no stage (cancelled before its first, or all of them cached)."""
        return max((n for n, (job, _) in enumerate(self.started) if job == job_id), default=-1)


@pytest.fixture(scope="module")
def slow_server():
    """Stages of 0.1 s: jobs run long enough to be cancelled and to queue up."""
    with running_server(lambda: RecordingBackend(0.1), max_queue=4) as thread:
        yield thread


def test_status_on_connect_and_on_request(server):
    raw = Raw(server.url)
    for status in (raw.greeting, (raw.send({"type": "status"}), raw.json())[1]):
        assert status["type"] == "status" and status["protocol"] == 1
        assert {"version", "device", "models", "queue", "state", "cache", "limits"} <= set(status)
        assert status["state"] == "ready" and status["untrained"] is True
    raw.close()


def test_edit_reports_every_stage_in_order_then_one_result(server):
    raw = Raw(server.url)
    job = raw.edit()
    seen, result, rgba = raw.until_end(job)
    assert seen[0] == {"type": "queued", "id": job, "position": 0}
    stages = [m["stage"] for m in seen if m["type"] == "progress"]
    assert list(dict.fromkeys(stages)) == list(STAGES)  # each stage, in order
    assert stages == sorted(stages, key=STAGES.index)  # never back to an earlier stage
    x, y, w, h = result["region"]
    assert result["format"] == "rgba8" and len(rgba) == w * h * 4
    alpha = np.frombuffer(rgba, np.uint8).reshape(h, w, 4)[..., 3]
    assert alpha.max() == 255 and alpha[0, 0] == 0  # feathered blend mask
    assert result["stages"] == list(STAGES) and result["skipped"] == []
    assert raw.quiet()
    raw.close()


def test_reedit_with_new_prompt_skips_detect_align_invert(server):
    photo = RNG.integers(0, 256, (80, 80, 4), dtype=np.uint8)
    raw = Raw(server.url)
    _, first, _ = raw.until_end(raw.edit(photo, prompt="smiling"))
    hits = raw.greeting["cache"]["inversion"]["hits"]
    _, second, _ = raw.until_end(raw.edit(photo, prompt="blond hair", strength=0.5))
    assert first["stages"] == list(STAGES)
    assert second["stages"] == ["encode_text", "map", "synthesize", "blend"]
    assert second["skipped"] == ["detect", "align", "invert"]
    raw.send({"type": "status"})
    assert raw.json()["cache"]["inversion"]["hits"] == hits + 1
    raw.close()


def _png(image: np.ndarray) -> bytes:
    h, w = image.shape[:2]
    return write_png(w, h, np.ascontiguousarray(image).tobytes(), 4)


def test_bad_inputs_each_get_their_code_and_the_connection_stays_usable(server):
    raw = Raw(server.url)
    assert raw.greeting["limits"]["max_frame_bytes"] < 200_000_000

    raw.send("{not json")
    assert raw.error()["code"] == "bad_request"
    raw.send("[1, 2]")
    assert raw.error()["code"] == "bad_request"
    raw.send({"type": "fly"})
    assert raw.error()["code"] == "bad_request"
    raw.send({"type": "cancel"})
    assert raw.error()["code"] == "bad_request"

    for fields in ({"prompt": None}, {"strength": "strong"}, {"faces": "some"}, {"preview": 1}):
        job = raw.edit(**fields)  # the announced frame follows and is discarded
        error = raw.error()
        assert (error["code"], error["id"]) == ("bad_request", job), fields
    raw.send({"type": "edit", "id": "w", "prompt": "x", "image": {"width": "64", "height": 64, "format": "rgba8"}})
    raw.binary(bytes(64 * 64 * 4))
    assert raw.error()["code"] == "bad_request"

    raw.binary(b"\x00" * 1000)  # no announcement
    error = raw.error()
    assert error["code"] == "bad_request" and "id" not in error

    job = uuid.uuid4().hex
    raw.send({"type": "edit", "id": job, "prompt": "x", "image": {"width": 64, "height": 64, "format": "rgba8"}})
    raw.binary(b"\x00" * (64 * 64 * 4 - 1))  # one byte short
    error = raw.error()
    assert (error["code"], error["id"]) == ("bad_image", job)

    for data in (b"GIF89a not a png at all", _png(PHOTO)[:300]):
        h, w = PHOTO.shape[:2]
        job = uuid.uuid4().hex
        raw.send({"type": "edit", "id": job, "prompt": "x", "image": {"width": w, "height": h, "format": "png"}})
        raw.binary(data)
        _, end, _ = raw.until_end(job)
        assert (end["type"], end["code"]) == ("error", "bad_image"), end

    one = np.zeros((1, 1, 4), np.uint8)
    job = raw.edit(one)
    assert raw.error()["code"] == "bad_image"

    _, end, _ = raw.until_end(raw.edit(np.full((64, 64, 4), 128, np.uint8)))
    assert end["code"] == "no_face" and "face" in end["message"]

    job = uuid.uuid4().hex  # 20000 x 20000: refused on the announcement, the frame discarded
    raw.send(
        {
            "type": "edit",
            "id": job,
            "prompt": "x",
            "image": {"width": 20000, "height": 20000, "format": "rgba8"},
        }
    )
    raw.binary(b"\x00" * 1024)
    error = raw.error()
    assert (error["code"], error["id"]) == ("too_large", job)

    huge = bytes(200_000_000)
    job = uuid.uuid4().hex  # a 200 MB frame after a plausible announcement
    raw.send({"type": "edit", "id": job, "prompt": "x", "image": {"width": 7000, "height": 7000, "format": "png"}})
    raw.binary(huge)
    error = raw.error()
    assert (error["code"], error["id"]) == ("too_large", job)
    raw.binary(huge)  # and one without any announcement
    error = raw.error()
    assert error["code"] == "too_large" and "id" not in error
    del huge

    assert raw.quiet()
    _, result, rgba = raw.until_end(raw.edit())  # the same connection still edits
    assert result["type"] == "result" and len(rgba) == result["region"][2] * result["region"][3] * 4
    raw.close()


def test_oversized_text_and_fragmented_frames(server):
    raw = Raw(server.url)
    raw.send("x" * (2 << 20))  # a 2 MiB text message
    assert raw.error()["code"] == "too_large"
    job = uuid.uuid4().hex
    h, w = PHOTO.shape[:2]
    raw.send({"type": "edit", "id": job, "prompt": "x", "image": {"width": w, "height": h, "format": "rgba8"}})
    raw.binary(PHOTO.tobytes(), fragment_size=4096)  # a fragmented image is fine
    _, end, _ = raw.until_end(job)
    assert end["type"] == "result"
    raw.binary(bytes(170_000_000), fragment_size=1 << 20)  # fragments adding up past the limit
    assert raw.error()["code"] == "too_large"
    _, end, _ = raw.until_end(raw.edit())
    assert end["type"] == "result"
    raw.close()


def test_text_instead_of_announced_binary_drops_that_edit_only(server):
    raw = Raw(server.url)
    job = uuid.uuid4().hex
    raw.send({"type": "edit", "id": job, "prompt": "x", "image": {"width": 64, "height": 64, "format": "rgba8"}})
    raw.send({"type": "status"})
    error = raw.error()
    assert (error["code"], error["id"]) == ("bad_request", job)
    assert raw.json()["type"] == "status"
    raw.close()


def test_duplicate_live_id_is_refused_without_touching_the_first_job(slow_server):
    raw = Raw(slow_server.url)
    job = raw.edit()
    assert raw.json()["type"] == "queued"
    raw.edit(job_id=job)
    seen, end, _ = _collect(raw, job)
    assert end["type"] == "result"
    assert [e for e in seen if e["type"] == "error" and "id" not in e]  # the duplicate's refusal
    raw.close()


def _collect(raw: Raw, job: str) -> tuple[list[dict], dict, bytes | None]:
    seen = []
    while True:
        message = raw.json()
        if message.get("id") == job and message["type"] in ("result", "error", "cancelled"):
            return seen, message, raw.ws.recv(20) if message["type"] == "result" else None
        seen.append(message)


def test_queue_positions_and_cancel_of_queued_and_running_jobs(slow_server):
    raw = Raw(slow_server.url)
    a, b, c = raw.edit(), raw.edit(), raw.edit()
    positions = {}
    while len(positions) < 3:
        message = raw.json()
        if message["type"] == "queued":
            positions.setdefault(message["id"], message["position"])
    assert [positions[j] for j in (a, b, c)] == [0, 1, 2]
    raw.send({"type": "cancel", "id": b})  # queued: dropped at once
    raw.send({"type": "cancel", "id": a})  # running: stops between two stages
    ends = {}
    while len(ends) < 3:
        message = raw.json()
        if message["type"] in ("result", "error", "cancelled"):
            assert message["id"] not in ends, "two terminal messages for one job"
            ends[message["id"]] = message["type"]
            if message["type"] == "result":
                raw.ws.recv(20)
    assert ends == {a: "cancelled", b: "cancelled", c: "result"}
    backend = slow_server.server.backend
    assert "blend" not in backend.stages_of(a)  # a stopped early (its cached stages are not run)
    assert backend.stages_of(b) == []  # b never ran
    assert backend.stages_of(c)[-1] == "blend" and backend.first(c) > backend.last(a)  # c ran after a stopped
    raw.send({"type": "cancel", "id": c})  # already ended: ignored
    raw.send({"type": "cancel", "id": "never-existed"})
    assert raw.quiet()
    raw.close()


def test_cancel_from_another_connection_reaches_the_owner(slow_server):
    owner, other = Raw(slow_server.url), Raw(slow_server.url)
    job = owner.edit()
    assert owner.json()["type"] == "queued"
    time.sleep(0.15)
    other.send({"type": "cancel", "id": job})
    seen, end, _ = owner.until_end(job)
    assert end == {"type": "cancelled", "id": job}
    assert other.quiet(0.2)
    owner.close()
    other.close()


def test_a_client_that_vanishes_gets_its_jobs_dropped(slow_server):
    gone = Raw(slow_server.url)
    jobs = [gone.edit() for _ in range(3)]
    assert gone.json()["type"] == "queued"
    time.sleep(0.15)
    gone.ws._abort()  # TCP drop, no closing handshake: like a killed process
    raw = Raw(slow_server.url)
    mine = raw.edit()
    _, end, _ = raw.until_end(mine)
    assert end["type"] == "result"
    backend = slow_server.server.backend
    # the vanished client's running job stopped at its next stage, its two waiting jobs never ran
    assert "blend" not in backend.stages_of(jobs[0]) and backend.first(mine) > backend.last(jobs[0])
    assert backend.stages_of(jobs[1]) == [] and backend.stages_of(jobs[2]) == []
    raw.send({"type": "status"})
    status = raw.json()
    assert status["jobs"].get("abandoned", 0) >= 2 and status["queue"] == 0
    raw.close()


def test_busy_when_the_queue_is_full(slow_server):
    raw = Raw(slow_server.url)
    jobs = [raw.edit() for _ in range(7)]  # 1 running + 4 waiting fit
    ends = {}
    while len(ends) < 7:
        message = raw.json()
        if message["type"] in ("result", "error", "cancelled"):
            ends[message["id"]] = message.get("code", message["type"])
            if message["type"] == "result":
                raw.ws.recv(20)
            else:
                for job in jobs:  # cancel the rest to keep the module's server quick
                    if job not in ends:
                        raw.send({"type": "cancel", "id": job})
    assert "busy" in ends.values()
    raw.close()


def test_a_reader_that_never_reads_does_not_block_the_worker(server):
    big = RNG.integers(0, 256, (1500, 1500, 4), dtype=np.uint8)
    raw = Raw(server.url)
    done = raw.greeting["jobs"].get("done", 0)
    stuck = Raw(server.url)
    stuck.ws.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    for _ in range(8):  # ~2.2 MB of results each, never read
        stuck.edit(big)
    for _ in range(3):
        _, end, _ = raw.until_end(raw.edit())
        assert end["type"] == "result"
    # all 8 results of the client that never reads were made (they wait on its own outbox)
    for _ in range(100):
        raw.send({"type": "status"})
        finished = raw.json()["jobs"].get("done", 0) - done
        if finished >= 8 + 3:
            break
        time.sleep(0.1)
    assert finished == 8 + 3
    stuck.ws._abort()
    raw.close()


def test_client_helper_edit_status_and_cancel(slow_server):
    client = EngineClient(slow_server.url, timeout=20)
    greeting = client.connect()
    assert greeting["protocol"] == 1 and client.status()["type"] == "status"
    stages = []
    result = client.edit(
        EditParams.single("smiling"), PHOTO.tobytes(), ImageSpec(128, 96), on_progress=lambda s, v: stages.append(s)
    )
    assert list(dict.fromkeys(stages)) == list(STAGES) and len(result.rgba) == result.region[2] * result.region[3] * 4

    def cancel_soon(job_id: str) -> None:
        time.sleep(0.25)
        EngineClient(slow_server.url).__enter__().cancel(job_id)

    job = uuid.uuid4().hex
    threading.Thread(target=cancel_soon, args=(job,), daemon=True).start()
    with pytest.raises(Cancelled):
        client.edit(EditParams.single("smiling"), PHOTO.tobytes(), ImageSpec(128, 96), job_id=job)
    with pytest.raises(EngineError) as info:
        client.edit(EditParams.single("smiling"), np.full((64, 64, 4), 7, np.uint8).tobytes(), ImageSpec(64, 64))
    assert info.value.code == "no_face"
    client.close()


def test_token_origin_and_unauthorized():
    with running_server(lambda: FakeBackend(0.0), token="s3cret") as thread:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
            ws = WebSocket.connect(thread.url, headers=headers)
            first = json.loads(ws.recv(5))
            assert first["type"] == "error" and first["code"] == "unauthorized"
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(5)
            assert closed.value.code == 1008
        with pytest.raises(EngineError) as info:
            EngineClient(thread.url).connect()
        assert info.value.code == "unauthorized"
        good = Raw(thread.url, {"Authorization": "Bearer s3cret"})
        assert good.greeting["type"] == "status" and good.greeting["auth"] is True
        _, end, _ = good.until_end(good.edit())
        assert end["type"] == "result"
        with pytest.raises(HandshakeError) as refused:  # a web page, even with the token
            WebSocket.connect(thread.url, headers={"Origin": "https://evil.example", "Authorization": "Bearer s3cret"})
        assert refused.value.status == 403
        good.close()


class _Leaky(FakeBackend):
    """A backend whose errors and description mention files of the engine's machine."""

    def describe(self) -> dict:
        info = super().describe()
        info["models"]["sources"] = {"e4e": "/home/someone/.local/share/ffclip/models/e4e_ffhq_encode.pt"}
        return info

    def run(self, request, image, selection, progress, should_cancel, memo):
        if request.params.prompts == ("explode",):
            raise RuntimeError("failed reading /opt/secret/weights/mapper.pt")
        raise EngineError("bad_image", "cannot decode /tmp/upload/abc/photo.png: truncated")


def test_no_message_names_a_file_path():
    with running_server(_Leaky) as thread:
        raw = Raw(thread.url)
        texts = [json.dumps(raw.greeting)]
        for prompt in ("explode", "smile"):
            _, end, _ = raw.until_end(raw.edit(prompt=prompt))
            texts.append(json.dumps(end))
        assert json.loads(texts[1])["code"] == "internal"
        for text in texts:
            for fragment in ("/home/", "/opt/", "/tmp/", ".local/share"):
                assert fragment not in text, text
        assert "e4e_ffhq_encode.pt" in texts[0]  # the file name alone is fine
        raw.close()


def test_models_missing_is_reported_and_answers_edits():
    missing = UnavailableBackend(
        "models_missing",
        "the engine has no model weights (e4e_ffhq_encode.pt); fetch them with: ffclip-engine models fetch",
        {"profile": "real", "missing": ["e4e_ffhq_encode.pt"], "fetch": "ffclip-engine models fetch"},
    )
    with running_server(lambda: missing) as thread:
        raw = Raw(thread.url)
        assert raw.greeting["state"] == "missing"
        assert raw.greeting["models"]["fetch"] == "ffclip-engine models fetch"
        _, end, _ = raw.until_end(raw.edit())
        assert end["code"] == "models_missing" and "ffclip-engine models fetch" in end["message"]
        raw.close()


def test_shutdown_ends_every_job_with_one_terminal_message():
    thread = ServerThread(lambda: FakeBackend(0.2), drain_grace=0.0).start()  # no drain: see test_server_drain.py
    raw = Raw(thread.url)
    jobs = [raw.edit() for _ in range(3)]
    assert raw.json()["type"] == "queued"
    time.sleep(0.3)
    stopper = threading.Thread(target=thread.stop)
    stopper.start()
    ends = {}
    try:
        while True:
            message = raw.json()
            if message["type"] in ("result", "error", "cancelled"):
                assert message["id"] not in ends
                ends[message["id"]] = message.get("code", message["type"])
    except ConnectionClosed as closed:
        assert closed.code == 1001
    stopper.join(15)
    assert ends == {job: "cancelled" for job in jobs}


def test_selection_mask_limits_the_edit(server):
    raw = Raw(server.url)
    h, w = PHOTO.shape[:2]
    job = uuid.uuid4().hex
    raw.send(
        {
            "type": "edit",
            "id": job,
            "prompt": "x",
            "image": {"width": w, "height": h, "format": "rgba8"},
            "selection": {"format": "a8"},
        }
    )
    raw.binary(PHOTO.tobytes())
    raw.binary(bytes(w * h))  # nothing selected
    _, end, rgba = raw.until_end(job)
    assert end["type"] == "result"
    assert np.frombuffer(rgba, np.uint8)[3::4].max() == 0
    raw.close()
