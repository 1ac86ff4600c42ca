"""The live session (plugin/session.py) against an in-process engine with the fake backend: events
in order, the photo sent once per connection, supersede, cancel, a lost engine and a wrong token."""

from __future__ import annotations

import queue
import threading

import numpy as np
import pytest

from ffclip.bridge.fake import FakeBackend
from ffclip.bridge.testing import running_server
from ffclip.plugin import session as live
from ffclip.plugin.protocol import EditParams, ImageSpec
from ffclip.plugin.websocket import WebSocket

PHOTO = np.random.default_rng(7).integers(0, 256, (96, 128, 4), dtype=np.uint8)
FRAME, SPEC = PHOTO.tobytes(), ImageSpec(128, 96)
TERMINAL = (live.ResultReady, live.JobFailed, live.JobCancelled)


class Recorder:
    def __init__(self) -> None:
        self.events: queue.Queue = queue.Queue()

    def __call__(self, event: live.Event) -> None:
        self.events.put(event)

    def until_ended(self, jobs: list[str], timeout: float = 30.0) -> dict[str, list]:
        """job -> its terminal events, once every job has one (and nothing more came for 0.3 s)."""
        ends: dict[str, list] = {job: [] for job in jobs}
        while not all(ends.values()):
            event = self.events.get(timeout=timeout)
            if isinstance(event, TERMINAL) and event.job_id in ends:
                ends[event.job_id].append(event)
        try:
            while True:
                event = self.events.get(timeout=0.3)
                if isinstance(event, TERMINAL) and event.job_id in ends:
                    ends[event.job_id].append(event)
        except queue.Empty:
            return ends

    def next_of(self, kind: type, timeout: float = 30.0):
        while True:
            event = self.events.get(timeout=timeout)
            if isinstance(event, kind):
                return event


@pytest.fixture()
def binary_frames(monkeypatch) -> list[int]:
    """Sizes of the binary frames clients send."""
    sent: list[int] = []
    original = WebSocket.send_binary

    def counting(self, data, fragment_size=None):
        sent.append(len(data))
        return original(self, data, fragment_size)

    monkeypatch.setattr(WebSocket, "send_binary", counting)
    return sent


@pytest.fixture(scope="module")
def server():
    with running_server(lambda: FakeBackend(0.05), max_queue=16) as thread:
        yield thread


def test_events_in_order_and_the_photo_sent_once(server, binary_frames):
    rec = Recorder()
    session = live.EngineSession(server.url, rec)
    try:
        first = session.submit(EditParams.single("smiling", preview=True), FRAME, SPEC)
        assert isinstance(rec.next_of(live.StatusChanged).status["state"], str)
        kinds = []
        while True:
            event = rec.events.get(timeout=30)
            kinds.append(type(event))
            if isinstance(event, TERMINAL):
                break
        assert kinds[0] is live.Queued and kinds[-1] is live.ResultReady
        assert set(kinds[1:-1]) == {live.Progress}
        assert event.job_id == first and event.result.edits[0].prompt == "smiling"
        second = session.submit(EditParams.single("smiling", 0.5, preview=True), FRAME, SPEC)
        ends = rec.until_ended([second])
        assert isinstance(ends[second][0], live.ResultReady) and ends[second][0].result.region == event.result.region
        assert binary_frames == [len(FRAME)]  # the second edit reused the photo
        other = bytes(FRAME[:-1]) + b"\x01"
        third = session.submit(EditParams.single("smiling", preview=True), other, SPEC)
        assert isinstance(rec.until_ended([third])[third][0], live.ResultReady)
        assert binary_frames == [len(FRAME), len(FRAME)]  # a new photo travels
    finally:
        session.close()


def test_a_burst_of_superseding_previews_ends_in_one_result(server):
    rec = Recorder()
    session = live.EngineSession(server.url, rec)
    try:
        jobs = [
            session.submit(EditParams.single(f"p{i}", preview=True, supersede=True), FRAME, SPEC) for i in range(10)
        ]
        ends = rec.until_ended(jobs)
        assert all(len(e) == 1 for e in ends.values())  # exactly one end each
        assert isinstance(ends[jobs[-1]][0], live.ResultReady)
        assert all(isinstance(ends[job][0], live.JobCancelled) for job in jobs[:-1])
    finally:
        session.close()


def test_cancel_and_status(server):
    rec = Recorder()
    session = live.EngineSession(server.url, rec)
    try:
        job = session.submit(EditParams.single("smiling"), FRAME, SPEC)
        rec.next_of(live.Progress)
        session.cancel(job)
        assert isinstance(rec.until_ended([job])[job][0], live.JobCancelled)
        session.request_status()
        assert rec.next_of(live.StatusChanged).status["type"] == "status"
    finally:
        session.close()


def test_a_lost_engine_is_reported_and_the_next_request_reconnects(binary_frames):
    rec = Recorder()
    with running_server(lambda: FakeBackend(0.0)) as first_engine:
        port = first_engine.server.port
        session = live.EngineSession(first_engine.url, rec)
        job = session.submit(EditParams.single("smiling", preview=True), FRAME, SPEC)
        assert isinstance(rec.until_ended([job])[job][0], live.ResultReady)
    assert rec.next_of(live.Disconnected).error.code == "connection_failed"
    job = session.submit(EditParams.single("smiling", preview=True), FRAME, SPEC)
    failed = rec.until_ended([job])[job][0]  # nobody listens: the job fails, the session lives on
    assert isinstance(failed, live.JobFailed) and failed.error.code == "connection_failed"
    with running_server(lambda: FakeBackend(0.0), port=port):  # the engine is back
        job = session.submit(EditParams.single("smiling", preview=True), FRAME, SPEC)
        assert isinstance(rec.until_ended([job])[job][0], live.ResultReady)
        assert binary_frames == [len(FRAME), len(FRAME)]  # a new connection gets the photo again
    session.close()


def test_a_wrong_token_fails_the_job_with_unauthorized():
    rec = Recorder()
    with running_server(lambda: FakeBackend(0.0), token="s3cret") as engine:
        session = live.EngineSession(engine.url, rec, token="s")
        try:
            job = session.submit(EditParams.single("smiling"), FRAME, SPEC)
            ends = rec.until_ended([job])
            assert ends[job][0].error.code in ("unauthorized", "connection_failed")
        finally:
            session.close()
        good = live.EngineSession(engine.url, rec, token="s3cret")
        try:
            job = good.submit(EditParams.single("smiling"), FRAME, SPEC)
            assert isinstance(rec.until_ended([job])[job][0], live.ResultReady)
        finally:
            good.close()


def test_submit_never_waits_for_the_network(server, monkeypatch):
    """submit returns while the photo is still being sent (the writer thread sends it)."""
    rec = Recorder()
    session = live.EngineSession(server.url, rec)
    gate, sending, sent = threading.Event(), threading.Event(), threading.Event()
    original = WebSocket.send_binary

    def held_send(self, data, fragment_size=None):
        sending.set()
        gate.wait(30)  # the network is slow
        original(self, data, fragment_size)
        sent.set()

    monkeypatch.setattr(WebSocket, "send_binary", held_send)
    try:
        job = session.submit(EditParams.single("smiling", preview=True), FRAME, SPEC)
        assert sending.wait(30) and not sent.is_set()  # submit came back before the frame was out
        gate.set()
        assert isinstance(rec.until_ended([job])[job][0], live.ResultReady)
    finally:
        gate.set()
        session.close()


def test_an_engine_that_is_not_there_is_told_at_once_without_an_edit():
    """A dialog asks for the status when it opens: with nothing listening, the answer is an
    `Unreachable` event (the dialog says "not running"), not silence."""
    from tests.support.net import free_port

    rec = Recorder()
    session = live.EngineSession(f"ws://127.0.0.1:{free_port()}/", rec, connect_timeout=2.0)
    try:
        session.request_status()
        event = rec.next_of(live.Unreachable, timeout=5)
        assert event.error.code == "connection_failed"
        session.request_status()  # asked again: told again (the dialog polls until the engine is up)
        assert rec.next_of(live.Unreachable, timeout=5).error.code == "connection_failed"
    finally:
        session.close()
