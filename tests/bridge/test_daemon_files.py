"""The files the daemon writes (bridge/daemon.py): engine.log and every rotation of it, and the engine
record, are 0600 from their creation inside a 0700 folder, and the log is bounded (issue 30)."""

from __future__ import annotations

import logging
import os
import stat

import pytest

from ffclip.bridge import daemon

pytestmark = pytest.mark.skipif(os.name == "nt", reason="POSIX modes")


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def state(tmp_path, monkeypatch):
    monkeypatch.setenv("FFCLIP_STATE_DIR", str(tmp_path / "state"))
    old = os.umask(0o022)
    root = logging.getLogger()
    handlers = list(root.handlers)
    yield tmp_path / "state"
    for handler in root.handlers[:]:
        if handler not in handlers:
            root.removeHandler(handler)
            handler.close()
    os.umask(old)


def test_engine_log_and_its_rotations_are_private(state) -> None:
    path = daemon.setup_logging(None, "info")
    assert path == state / "engine.log"
    assert _mode(state) == 0o700 and _mode(path) == 0o600
    (handler,) = [h for h in logging.getLogger().handlers if isinstance(h, daemon.PrivateRotatingFileHandler)]
    assert handler.maxBytes * (handler.backupCount + 1) <= 32 << 20  # bounded
    logging.getLogger("ffclip.bridge").info("job 1234 by alice")
    handler.doRollover()
    handler.doRollover()
    logging.getLogger("ffclip.bridge").info("job 5678 by alice")
    files = sorted(state.glob("engine.log*"))
    assert [f.name for f in files] == ["engine.log", "engine.log.1", "engine.log.2"]
    assert all(_mode(f) == 0o600 for f in files)


def test_the_engine_record_is_private(state) -> None:
    with daemon.announce("ws://127.0.0.1:1/", "0") as record:
        assert _mode(record) == 0o600 and _mode(record.parent) == 0o700
        assert daemon.running_engines()[0]["url"] == "ws://127.0.0.1:1/"


def test_a_detached_daemon_stops_writing_its_console_once_it_listens(state, monkeypatch) -> None:
    daemon.setup_logging(None, "info")
    root = logging.getLogger()
    console = [h for h in root.handlers if type(h) is logging.StreamHandler]
    daemon.quiet_console_when_detached()
    assert all(h in root.handlers for h in console)  # started from a terminal or a service: kept
    monkeypatch.setenv(daemon.DETACHED_ENV, "1")
    daemon.quiet_console_when_detached()
    assert not any(h in root.handlers for h in console)
    assert any(isinstance(h, daemon.PrivateRotatingFileHandler) for h in root.handlers)
