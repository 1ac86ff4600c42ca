"""Clients that recover when their engine goes away (plugin/client.py, plugin/session.py; issue 28): the
connection breaks before the job's end, or the engine drains; the edit goes once more, under a new id,
on a new connection — here to a second engine behind the same address (tests/support/relay.py)."""

from __future__ import annotations

import queue
import threading

import numpy as np
import pytest

from ffclip.bridge.fake import FakeBackend
from ffclip.bridge.testing import running_server
from ffclip.plugin import session as events
from ffclip.plugin.client import EngineClient
from ffclip.plugin.protocol import ConnectionLost, Draining, EditParams, ImageSpec
from ffclip.plugin.session import EngineSession
from tests.support.raw import PHOTO
from tests.support.relay import Relay
from tests.support.waiting import until

SPEC = ImageSpec(PHOTO.shape[1], PHOTO.shape[0])
IMAGE = np.ascontiguousarray(PHOTO).tobytes()


@pytest.fixture
def engines():
    """Two engines (0.1 s a stage) and a relay in front of the first."""
    with running_server(lambda: FakeBackend(0.1)) as first, running_server(lambda: FakeBackend(0.1)) as second:
        relay = Relay(first.server.port)
        yield first, second, relay
        relay.close()


def test_an_edit_whose_engine_dies_is_sent_again_to_another(engines):
    first, second, relay = engines
    client = EngineClient(relay.url, timeout=20)
    moves: list = []
    results: list = []
    worker = threading.Thread(
        target=lambda: results.append(
            client.edit(EditParams.single("smiling"), IMAGE, SPEC, on_moved=lambda *a: moves.append(a))
        )
    )
    worker.start()
    until(lambda: first.server.queue.running)  # on the first engine's device
    relay.target_port = second.server.port
    relay.cut()  # the host dies: no close frame
    worker.join(20)
    assert len(results) == 1 and results[0].stages  # the result, not an error
    ((new_id, why),) = moves
    assert isinstance(why, ConnectionLost) and results[0].id == new_id
    assert second.server.stats["done"] == 1 and first.server.stats["done"] == 0
    client.close()


def test_an_edit_refused_by_a_draining_engine_goes_to_another(engines):
    first, second, relay = engines
    client = EngineClient(relay.url, timeout=20)
    client.connect()
    keeper = EngineClient(first.url, timeout=20)  # a job that keeps the first engine draining
    keeping = threading.Thread(target=lambda: keeper.edit(EditParams.single("x"), IMAGE, SPEC))
    keeping.start()
    until(lambda: first.server.queue.running)
    threading.Thread(target=first.stop, daemon=True).start()
    until(lambda: first.server.draining)
    relay.target_port = second.server.port
    moves: list = []
    result = client.edit(EditParams.single("smiling"), IMAGE, SPEC, on_moved=lambda *a: moves.append(a))
    assert result.stages and isinstance(moves[0][1], Draining) and len(moves) == 1
    keeping.join(20)
    client.close()


def test_a_live_session_sends_its_reused_image_again_in_full_after_its_engine_died(engines):
    first, second, relay = engines
    seen: queue.Queue = queue.Queue()
    session = EngineSession(relay.url, seen.put)
    params = EditParams.single("smiling", preview=True, supersede=True)

    def next_end(job_id: str) -> events.Event:
        while True:
            event = seen.get(timeout=20)
            if getattr(event, "job_id", None) == job_id and not isinstance(event, events.Progress | events.Queued):
                return event

    assert isinstance(next_end(session.submit(params, IMAGE, SPEC)), events.ResultReady)
    reused = session.submit(params, IMAGE, SPEC)  # the same image: sent as reuse_image
    until(lambda: first.server.queue.running)
    relay.target_port = second.server.port
    relay.cut()
    moved = next_end(reused)
    assert isinstance(moved, events.Resending) and isinstance(moved.error, ConnectionLost)
    assert isinstance(next_end(moved.new_id), events.ResultReady)
    # the second engine never held the image: it came in full (the edit and its frame), not first as a
    # reuse_image that the engine refuses
    (on_second,) = second.server.sessions
    assert second.server.stats["done"] == 1 and on_second.messages == 2
    session.close()


def test_a_session_sends_a_job_again_once_only(engines):
    first, second, relay = engines
    seen: queue.Queue = queue.Queue()
    session = EngineSession(relay.url, seen.put)
    job = session.submit(EditParams.single("smiling"), IMAGE, SPEC)
    until(lambda: first.server.queue.running)
    relay.cut()  # the same engine again: the job goes once more ...
    moved = None
    while moved is None:
        event = seen.get(timeout=20)
        moved = event if isinstance(event, events.Resending) and event.job_id == job else None
    until(lambda: first.server.queue.running and first.server.queue.running[0].id == moved.new_id)
    relay.cut()  # ... and not a second time
    while True:
        event = seen.get(timeout=20)
        if getattr(event, "job_id", None) == moved.new_id and isinstance(event, events.JobFailed):
            assert isinstance(event.error, ConnectionLost)
            break
        assert not isinstance(event, events.Resending | events.ResultReady), event
    session.close()
