"""`ffclip-engine doctor` against the real GIMP 3 (marker `gimp`; see tests/gimp/test_in_gimp.py for how
GIMP is found): all checks ✔ after `ffclip-engine install-gimp-plugin` with a running tiny engine, then
each breakage, one at a time, gives exactly its ✘ and fix. The doctor runs as a user runs it (the
command, `--json`), in a fresh GIMP profile: HOME is the GIMP's home as seen from this machine, and
the state, data and plug-in-state folders are fresh too. Breakages that change the engine come last.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from ffclip.app import install
from ffclip.app.batch_edit import GimpConsole
from tests.support.net import free_port

pytestmark = pytest.mark.gimp
NATIVE = "plugin.native-3.0"
PYTHON = sys.executable


def need(ok: bool, why: str) -> None:
    if ok:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{why} (CI is set, so this is a failure; run `bash .ci/setup-gimp.sh`)")
    pytest.skip(why)


class World:
    """A fresh GIMP profile, its doctor environment and the engine on `port`."""

    def __init__(self, console: GimpConsole, home: Path, env: dict, scratch: Path):
        self.console, self.home, self.env, self.scratch = console, home, env, scratch
        self.port = free_port()
        self.url = f"ws://127.0.0.1:{self.port}/"
        self.proc: subprocess.Popen | None = None
        self.profile: str | None = None

    @property
    def plugins(self) -> Path:
        return self.home / ".config" / "GIMP" / "3.0" / "plug-ins"

    @property
    def target(self) -> Path:
        return self.plugins / install.NAME

    def ffclip(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        cmd = [PYTHON, "-m", "ffclip.app", *args]
        return subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=timeout)

    def install(self, *args: str) -> None:
        start = f"{PYTHON} -m ffclip.app serve --profile tiny --port {self.port}"
        out = self.ffclip("install-gimp-plugin", "--no-autostart", "--start-command", start, *args)
        assert out.returncode == 0, out.stderr

    def doctor(self) -> dict:
        out = self.ffclip("doctor", "--json")
        assert out.returncode in (0, 1), out.stdout + out.stderr
        data = json.loads(out.stdout)
        assert (out.returncode == 0) == data["ok"]
        data["by_id"] = {c["id"]: c for c in data["checks"]}
        return data

    def engine(self, profile: str | None) -> None:
        """Run `ffclip-engine serve --profile PROFILE` on the plug-in's port (None: no engine)."""
        if profile == self.profile:
            return
        self.stop()
        if profile is None:
            return
        cmd = [PYTHON, "-m", "ffclip.app", "serve", "--profile", profile, "--port", str(self.port)]
        if profile == "real":
            cmd.append("--no-fetch")  # an engine without models, not one downloading them (no network here)
        # the engine's console goes to a file: an unread pipe would fill and stop it
        self.engine_out = self.scratch / f"engine-{profile}.out"
        with open(self.engine_out, "wb") as out:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(cmd, env=self.env, stdout=subprocess.DEVNULL, stderr=out)
        self.profile = profile
        self._wait_ready()

    def _wait_ready(self) -> None:
        from ffclip.plugin.client import EngineClient
        from ffclip.plugin.protocol import ConnectionFailed

        deadline = time.monotonic() + 300
        while True:
            if self.proc.poll() is not None:
                pytest.fail(f"the engine exited: {self.engine_out.read_text()[-2000:]}")
            try:
                with EngineClient(self.url, timeout=10) as client:
                    if client.last_status.get("state") in ("ready", "missing"):
                        return
            except ConnectionFailed:
                pass
            if time.monotonic() > deadline:
                pytest.fail("the engine did not become ready in 300 s")
            time.sleep(0.5)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc, self.profile = None, None


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    try:
        found = GimpConsole.find()
    except FileNotFoundError as exc:
        need(False, str(exc))
    scratch = tmp_path_factory.mktemp("doctor")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XDG_", "FFCLIP_", "GIMP3_"))}
    if found.root is not None:
        need(os.geteuid() == 0, f"running GIMP in the chroot {found.root} needs root")
        inside = f"/tmp/ffclip-doctor-{uuid.uuid4().hex[:8]}"
        console = GimpConsole(found.command, found.root, inside)
        env["FFCLIP_GIMP_ROOT"] = str(found.root)
    else:
        inside = str(scratch / "home")
        console = GimpConsole(found.command, None, inside)
        env["FFCLIP_GIMP_CONSOLE"] = " ".join(found.command)
    home = console.home_dir()
    home.mkdir(parents=True)
    env.update(
        HOME=str(home),  # the doctor's HOME is the GIMP's home: its native profile is GIMP's profile
        FFCLIP_GIMP_HOME=inside,
        XDG_STATE_HOME=str(scratch / "state"),
        XDG_DATA_HOME=str(scratch / "data"),  # an empty model store
        FFCLIP_STATE_DIR=str(scratch / "plugin-state"),
    )
    w = World(console, home, env, scratch)
    w.engine("tiny")
    w.install("--url", w.url)  # the user's command: no --dest, GIMP's profile is found
    yield w
    w.stop()
    shutil.rmtree(home, ignore_errors=True)


def failed(report: dict) -> dict:
    return {i: report["by_id"][i] for i in report["failed"]}


# --------------------------------------------------------------------------- all ✔, then one breakage at a time


def test_all_checks_pass_after_install(world):
    report = world.doctor()
    assert report["failed"] == [], json.dumps(report["checks"], indent=1)
    by_id = report["by_id"]
    for name in ("installed", "version", "executable", "interpreter", "settings"):
        assert by_id[f"{NATIVE}.{name}"]["status"] == "ok"
    registers = by_id["gimp.registers"]
    assert registers["status"] == "ok" and "python-fu-ffclip-edit" in registers["text"]
    assert registers["details"]["gimp"].startswith("3.")
    for cid in ("engine.reachable", "engine.version", "engine.state", "engine.token", "models.tiny", "device"):
        assert by_id[cid]["status"] == "ok", by_id[cid]
    assert "profile tiny" in by_id["engine.state"]["text"]


def test_exec_bit_removed(world):
    entry = world.target / install.ENTRY
    mode = entry.stat().st_mode
    entry.chmod(mode & ~0o111)
    try:
        report = world.doctor()
    finally:
        entry.chmod(mode)
    bad = failed(report)
    assert set(bad) == {f"{NATIVE}.executable", "gimp.registers"}
    assert bad[f"{NATIVE}.executable"]["fix"].startswith(f"chmod +x {entry}")
    assert bad["gimp.registers"]["cause"] == f"{NATIVE}.executable"  # GIMP really ignored it
    assert bad["gimp.registers"]["fix"] == bad[f"{NATIVE}.executable"]["fix"]


def test_plugin_from_an_older_version(world):
    version = world.target / install.VERSION_NAME
    old = version.read_text()
    version.write_text("0.0.9\n")
    try:
        report = world.doctor()
    finally:
        version.write_text(old)
    bad = failed(report)
    assert set(bad) == {f"{NATIVE}.version"}  # GIMP still registers it: only the version is wrong
    assert "plug-in 0.0.9" in bad[f"{NATIVE}.version"]["text"]
    assert bad[f"{NATIVE}.version"]["fix"].startswith(f"ffclip-engine install-gimp-plugin --dest {world.plugins}")


def test_plugin_installed_only_in_another_profile(world):
    flatpak_home = world.home / ".var"
    flatpak = flatpak_home / "app" / install.FLATPAK_APP / "config" / "GIMP" / "3.0" / "plug-ins"
    world.install("--dest", str(flatpak), "--url", world.url)
    shutil.rmtree(world.target)
    try:
        report = world.doctor()
    finally:
        shutil.rmtree(flatpak_home)
        world.install("--url", world.url)
    bad = failed(report)
    assert set(bad) == {f"{NATIVE}.installed", "gimp.registers"}
    assert str(flatpak.parent) in bad[f"{NATIVE}.installed"]["text"]
    assert bad[f"{NATIVE}.installed"]["fix"].startswith(
        f"ffclip-engine install-gimp-plugin --dest {world.plugins} --url {world.url}"
    )
    assert bad["gimp.registers"]["cause"] == f"{NATIVE}.installed"
    assert report["by_id"]["plugin.flatpak-3.0.installed"]["status"] == "ok"


def test_engine_on_another_port(world):
    world.engine("tiny")
    elsewhere = f"ws://127.0.0.1:{free_port()}/"
    world.install("--url", elsewhere)
    try:
        report = world.doctor()
    finally:
        world.install("--url", world.url)
    bad = failed(report)
    assert set(bad) == {"engine.reachable"}
    assert f"runs at {world.url}" in bad["engine.reachable"]["text"]
    assert bad["engine.reachable"]["fix"].splitlines()[0] == (
        f"ffclip-engine install-gimp-plugin --dest {world.plugins} --url {world.url}"
    )


def test_engine_not_running(world):
    world.engine(None)
    bad = failed(world.doctor())
    assert set(bad) == {"engine.reachable"}
    assert bad["engine.reachable"]["fix"].startswith(f"ffclip-engine serve --profile tiny --port {world.port}")


def test_models_missing(world):
    world.engine("real")  # with the empty model store of XDG_DATA_HOME
    bad = failed(world.doctor())
    assert set(bad) == {"engine.state", "models.real"}
    assert bad["models.real"]["fix"] == "ffclip-engine models fetch"
    assert bad["engine.state"]["cause"] == "models.real"
    assert bad["engine.state"]["fix"].startswith("ffclip-engine models fetch")
    assert f"ffclip-engine serve --port {world.port})" in bad["engine.state"]["fix"]  # still the real profile
