"""`ffclip-engine serve` at SIGTERM drains (bridge/daemon.py, server.py; issue 28): /readyz says so, the
queued jobs finish within --drain-grace, then it exits 0."""

from __future__ import annotations

import json
import signal
import time
import uuid

import pytest

from ffclip.plugin.websocket import ConnectionClosed, WebSocket
from tests.support.daemon import Daemon
from tests.support.haproxy import ready
from tests.support.raw import PHOTO


@pytest.mark.process
def test_sigterm_finishes_the_queued_jobs_then_exits(tmp_path):
    args = ("--fake-engine", "--fake-stage-seconds", "0.1", "--drain-grace", "30")
    daemon = Daemon("--port", "0", *args, "--log-file", str(tmp_path / "l"))
    ws = WebSocket.connect(daemon.url)
    assert json.loads(ws.recv(5))["type"] == "status"
    jobs = []
    for _ in range(3):  # 0.7 s each
        jobs.append(uuid.uuid4().hex)
        ws.send_text(
            json.dumps(
                {
                    "type": "edit",
                    "id": jobs[-1],
                    "prompt": "x",
                    "image": {"width": 128, "height": 96, "format": "rgba8"},
                }
            )
        )
        ws.send_binary(PHOTO.tobytes())
    time.sleep(0.3)
    assert ready(daemon.port)
    daemon.proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    assert not ready(daemon.port)  # draining: 503
    ends = {}
    with pytest.raises(ConnectionClosed):
        while True:
            message = ws.recv(20)
            if isinstance(message, str) and json.loads(message)["type"] in ("result", "error", "cancelled"):
                message = json.loads(message)
                ends[message["id"]] = message["type"]
    assert ends == {job: "result" for job in jobs}
    assert daemon.proc.wait(20) == 0
    assert "drained" in (tmp_path / "l").read_text()
