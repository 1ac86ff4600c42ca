"""The shipped HAProxy configuration (deploy/haproxy/haproxy.cfg) run for real, with a test's ports put in
place of its own (a copy: there is one configuration); skipped without the `haproxy` binary, failed in CI."""

from __future__ import annotations

import http.client
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.support.net import free_port

CONFIG = Path(__file__).resolve().parents[2] / "deploy" / "haproxy" / "haproxy.cfg"
SHIPPED = ("127.0.0.1:8765", "127.0.0.1:8766", "127.0.0.1:8767")  # the frontend, the two engines


def need_haproxy() -> str:
    """The haproxy binary: skipped here when missing, a failure in CI (.ci/run installs it)."""
    binary = shutil.which("haproxy") or next((p for p in ("/usr/sbin/haproxy",) if os.path.exists(p)), None)
    if binary:
        return binary
    why = "the haproxy binary is missing (apt-get install haproxy)"
    if os.environ.get("CI"):
        pytest.fail(f"{why}; CI is set, so this is a failure (.ci/run installs it)")
    pytest.skip(why)


class HAProxy:
    def __init__(self, binary: str, folder: Path, engine_ports: tuple[int, int]):
        self.port = free_port()
        text = CONFIG.read_text(encoding="utf-8")
        for shipped, port in zip(SHIPPED, (self.port, *engine_ports), strict=True):
            assert shipped in text, f"{CONFIG} no longer names {shipped}"
            text = text.replace(shipped, f"127.0.0.1:{port}")
        self.config = folder / "haproxy.cfg"
        self.config.write_text(text, encoding="utf-8")
        check = subprocess.run([binary, "-c", "-f", str(self.config)], capture_output=True, text=True, timeout=30)
        assert check.returncode == 0, check.stdout + check.stderr
        self.log = folder / "haproxy.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen([binary, "-db", "-f", str(self.config)], stdout=out, stderr=subprocess.STDOUT)
        self.url = f"ws://127.0.0.1:{self.port}/"
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                assert self.proc.poll() is None and time.monotonic() < deadline, self.log.read_text()
                time.sleep(0.05)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def ready(port: int) -> bool:
    """Whether the engine on `port` answers `GET /readyz` with 200."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("GET", "/readyz")
        return connection.getresponse().status == 200
    except OSError:
        return False
    finally:
        connection.close()


def wait_ready(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not ready(port):
        assert time.monotonic() < deadline, f"the engine on port {port} was not ready within {timeout:g} s"
        time.sleep(0.2)
