"""`ffclip-engine serve` and `service` as processes: binding rules, single instance, signals, logs."""

from __future__ import annotations

import json
import signal
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from ffclip.plugin.client import EngineClient
from ffclip.plugin.protocol import EditParams, EngineError, ImageSpec
from ffclip.plugin.websocket import ConnectionClosed, WebSocket
from tests.support.daemon import Daemon, daemon_env, run_cli

pytestmark = pytest.mark.process  # every test here starts a process

PHOTO = np.random.default_rng(1).integers(0, 256, (64, 64, 4), dtype=np.uint8)


def test_non_loopback_bind_needs_a_token():
    result = run_cli("serve", "--host", "0.0.0.0", "--port", "0", "--fake-engine")
    assert result.returncode == 2
    assert "--token" in result.stderr and "refusing" in result.stderr


def test_token_on_all_interfaces_refuses_clients_without_it(tmp_path):
    daemon = Daemon(
        "--host",
        "0.0.0.0",
        "--port",
        "0",
        "--token",
        "tok",
        "--insecure-plain-token",  # plain ws:// off loopback needs it (tests/bridge/test_daemon_tls.py: the refusal)
        "--fake-engine",
        "--log-file",
        str(tmp_path / "e.log"),
    )
    try:
        with pytest.raises(EngineError) as info:
            EngineClient(daemon.url, timeout=5).connect()
        assert info.value.code == "unauthorized"
        with pytest.raises(EngineError):
            EngineClient(daemon.url, token="wrong", timeout=5).connect()
        with EngineClient(daemon.url, token="tok", timeout=10) as client:
            result = client.edit(EditParams.single("smiling"), PHOTO.tobytes(), ImageSpec(64, 64))
            assert result.region[2] > 0
    finally:
        assert daemon.stop() == 0
    log = (tmp_path / "e.log").read_text()
    assert "tok" not in log.replace("token", "")  # the token is never logged
    assert "tokens travel unencrypted on 0.0.0.0 (--insecure-plain-token)" in log  # said once, at the start
    connected = [line for line in log.splitlines() if " connected" in line and "client " in line]
    gone = [line for line in log.splitlines() if line.endswith(" disconnected")]
    assert connected and gone and not any("client ?" in line for line in gone), gone  # the address, also at the end


def test_second_serve_on_the_same_port_says_already_running(tmp_path):
    state = tmp_path / "state"
    daemon = Daemon("--port", "0", "--fake-engine", env=daemon_env(XDG_STATE_HOME=str(state)))
    try:
        second = run_cli(
            "serve", "--port", str(daemon.port), "--fake-engine", env=daemon_env(XDG_STATE_HOME=str(state))
        )
        assert second.returncode == 3
        assert "already running" in second.stderr
        status = run_cli("service", "status", "--port", str(daemon.port), "--no-systemctl")
        assert status.returncode == 0 and "engine: running" in status.stdout
    finally:
        assert daemon.stop(signal.SIGINT) == 0
    assert (state / "ffclip-edit" / "engine.log").is_file()  # the XDG state folder by default
    stopped = run_cli("service", "status", "--port", str(daemon.port), "--no-systemctl")
    assert stopped.returncode == 3 and "not running" in stopped.stdout


def test_sigterm_ends_every_job_and_exits_cleanly(tmp_path):
    # no drain grace: every job is left at the stop (the drain itself: test_daemon_drain.py)
    args = ("--fake-engine", "--fake-stage-seconds", "0.2", "--drain-grace", "0")
    daemon = Daemon("--port", "0", *args, "--log-file", str(tmp_path / "l"))
    ws = WebSocket.connect(daemon.url)
    assert json.loads(ws.recv(5))["type"] == "status"
    jobs = []
    for _ in range(3):
        job = uuid.uuid4().hex
        jobs.append(job)
        message = {
            "type": "edit",
            "id": job,
            "prompt": "x",
            "image": {"width": 64, "height": 64, "format": "rgba8"},
        }
        ws.send_text(json.dumps(message))
        ws.send_binary(PHOTO.tobytes())
    time.sleep(0.5)
    daemon.proc.send_signal(signal.SIGTERM)
    ends = {}
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            message = ws.recv(10)
            if isinstance(message, str):
                message = json.loads(message)
                if message["type"] in ("result", "error", "cancelled"):
                    assert message["id"] not in ends
                    ends[message["id"]] = message.get("code", message["type"])
    assert closed.value.code == 1001
    assert ends == {job: "cancelled" for job in jobs}  # none was run to its end first
    assert daemon.proc.wait(10) == 0
    assert "stopped" in daemon.proc.stdout.read()
    log = (tmp_path / "l").read_text()
    assert " done in " not in log, log  # no job was finished on the device before stopping


def test_a_200mb_frame_does_not_grow_the_daemon(tmp_path):
    daemon = Daemon("--port", "0", "--fake-engine", "--log-file", str(tmp_path / "l"))
    try:
        ws = WebSocket.connect(daemon.url)
        before = json.loads(ws.recv(5))["memory"]["rss_bytes"]
        ws.send_binary(bytes(200_000_000))
        error = json.loads(ws.recv(30))
        assert error["code"] == "too_large"
        ws.send_text('{"type":"status"}')
        after = json.loads(ws.recv(5))["memory"]["rss_bytes"]
        assert after - before < 20 << 20, (before, after)
        ws.close()
    finally:
        daemon.stop()


def test_service_install_and_uninstall_write_a_user_unit(tmp_path):
    unit_dir = tmp_path / "units"
    common = ("--unit-dir", str(unit_dir), "--no-systemctl")
    installed = run_cli("service", "install", "--profile", "tiny", "--port", "8777", *common)
    assert installed.returncode == 0, installed.stderr
    unit = (unit_dir / "ffclip-engine.service").read_text()
    assert "ExecStart=" in unit and "serve --host 127.0.0.1 --port 8777 --profile tiny" in unit
    assert "WantedBy=default.target" in unit
    exposed = run_cli("service", "install", "--host", "0.0.0.0", *common)
    assert exposed.returncode == 2  # a network-wide service needs a token file
    removed = run_cli("service", "uninstall", *common)
    assert removed.returncode == 0 and not Path(unit_dir / "ffclip-engine.service").exists()
