"""A plug-in that starts its engine talks only to an engine of its user (plugin/identity.py with the
daemon's record and greeting; issue 30): whoever else holds the local port gets the handshake, nothing more."""

from __future__ import annotations

import threading

import pytest

from ffclip.bridge.daemon import announce
from ffclip.bridge.fake import FakeBackend
from ffclip.bridge.testing import running_server
from ffclip.plugin import identity
from ffclip.plugin.client import EngineClient
from ffclip.plugin.protocol import EditParams, ImageSpec
from ffclip.plugin.session import EngineSession, JobFailed, ResultReady
from tests.support.engine_server import FakeEngineServer
from tests.support.raw import PHOTO

SPEC = ImageSpec(PHOTO.shape[1], PHOTO.shape[0])
IMAGE = PHOTO.tobytes()


@pytest.fixture(autouse=True)
def state(tmp_path, monkeypatch):
    monkeypatch.setenv("FFCLIP_STATE_DIR", str(tmp_path))
    return tmp_path


def _session_outcome(url: str) -> object:
    events, done = [], threading.Event()

    def on_event(event) -> None:
        events.append(event)
        if isinstance(event, JobFailed | ResultReady):
            done.set()

    session = EngineSession(url, on_event, connect_timeout=5, verify_local=True)
    session.submit(EditParams.single("smiling"), IMAGE, SPEC)
    assert done.wait(20), events
    session.close()
    return next(e for e in events if isinstance(e, JobFailed | ResultReady))


def test_the_users_own_engine_proves_itself() -> None:
    key = identity.new_key()
    with running_server(lambda: FakeBackend(0.0), identity_key=key) as server, announce(server.url, "1", key=key):
        with EngineClient(server.url, timeout=20, verify_local=True) as client:
            assert len(client.last_status["proof"]) == 64
            assert client.edit(EditParams.single("smiling"), IMAGE, SPEC).region
        assert isinstance(_session_outcome(server.url), ResultReady)


def test_another_program_on_the_port_gets_nothing_but_the_handshake() -> None:
    with FakeEngineServer() as impostor:  # answers like an engine, with a key of its own: not in our records
        with pytest.raises(identity.NotOurEngine, match="not an FFCLIP engine started by this user"):
            EngineClient(impostor.url, timeout=10, verify_local=True).connect()
        outcome = _session_outcome(impostor.url)
        assert isinstance(outcome, JobFailed) and isinstance(outcome.error, identity.NotOurEngine)
        assert impostor.requests == []  # no edit, no image reached it


def test_a_record_proves_only_its_own_port_and_only_with_its_key(state) -> None:
    with FakeEngineServer() as engine:
        other = engine.url.replace(f":{engine.port}/", f":{engine.port + 1}/")
        with announce(other, "1", key=engine.key), pytest.raises(identity.NotOurEngine):  # key of another port
            EngineClient(engine.url, timeout=10, verify_local=True).connect()
        with announce(engine.url, "1", key=identity.new_key()), pytest.raises(identity.NotOurEngine):  # another key
            EngineClient(engine.url, timeout=10, verify_local=True).connect()
        with announce(engine.url, "1", key=engine.key):
            EngineClient(engine.url, timeout=10, verify_local=True).connect()
        EngineClient(engine.url, timeout=10).connect()  # not asked to verify (a team engine): no check


def test_challenges_are_fresh_and_well_formed() -> None:
    assert identity.new_challenge() != identity.new_challenge()
    assert identity.is_challenge(identity.new_challenge())
    for bad in (None, "", "0" * 31, "g" * 32, "0" * 33, "0" * 31 + "\n"):
        assert not identity.is_challenge(bad)
