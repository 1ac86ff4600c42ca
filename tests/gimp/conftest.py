"""Fixtures of the tests that run a real GIMP 3 (tests/gimp/test_in_gimp*.py): the GIMP (native or the trixie chroot of
.ci/setup-gimp.sh) with a fresh profile, the tiny engine as a process, the plug-in installed in that profile."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid

import pytest

from ffclip.app import gimp_console
from tests.support.gimp import need
from tests.support.net import free_port


@pytest.fixture(scope="module")
def console(tmp_path_factory):
    try:
        found = gimp_console.GimpConsole.find()
    except FileNotFoundError as exc:
        need(False, str(exc))
    if found.root is not None:
        need(os.geteuid() == 0, f"running GIMP in the chroot {found.root} needs root")
        home = f"/tmp/ffclip-test-{uuid.uuid4().hex[:8]}"
    else:
        home = str(tmp_path_factory.mktemp("gimp-home"))
    gimp = gimp_console.GimpConsole(found.command, found.root, home)
    gimp.home_dir().mkdir(parents=True, exist_ok=True)
    yield gimp
    shutil.rmtree(gimp.home_dir(), ignore_errors=True)


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    """`ffclip-engine serve --profile tiny` on a free port, ready."""
    from ffclip.plugin.client import EngineClient
    from ffclip.plugin.protocol import ConnectionFailed

    port = free_port()
    log = tmp_path_factory.mktemp("engine") / "engine.log"
    cmd = [sys.executable, "-m", "ffclip.app", "serve", "--profile", "tiny", "--port", str(port)]
    console = log.with_name("console.txt")  # a file, not an unread pipe that would fill and stop it
    with open(console, "wb") as out:
        proc = subprocess.Popen([*cmd, "--log-file", str(log)], stdout=subprocess.DEVNULL, stderr=out)
    url = f"ws://127.0.0.1:{port}/"
    deadline = time.monotonic() + 300
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"the tiny engine exited ({proc.returncode}): {console.read_text()[-2000:]}")
            try:
                client = EngineClient(url, timeout=10)
                status = client.connect()
                if status.get("state", "ready") == "ready":
                    status = client.status() if status.get("state") is None else status
                    client.close()
                    break
                client.close()
            except ConnectionFailed:
                pass
            if time.monotonic() > deadline:
                pytest.fail("the tiny engine did not become ready in 300 s")
            time.sleep(0.5)
        assert status.get("untrained") is True or status.get("profile") == "tiny"
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module")
def installed(console, engine):
    """The plug-in, installed into the test profile by the installer command."""
    dest = console.plugin_dir()
    cmd = [sys.executable, "-m", "ffclip.app", "install-gimp-plugin", "--dest", str(dest)]
    out = subprocess.run([*cmd, "--url", engine, "--no-autostart"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return dest / "ffclip-edit"
