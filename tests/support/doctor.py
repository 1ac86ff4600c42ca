"""The doctor's checks run on fake machines: an environment of folders under a test's tmp_path, GIMP played by
tests/support/fake_gimp_console.py (GIMP 3's loading rules), the plug-in installed there."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from ffclip.app import install
from ffclip.app.doctor import gimp as gd
from ffclip.engine import __version__
from ffclip.gimp.settings import url_port
from tests.support.paths import REPO

FAKE_GIMP = REPO / "tests" / "support" / "fake_gimp_console.py"


GB = 1 << 30


def environment(tmp_path: Path, **extra) -> dict:
    env = {
        "HOME": str(tmp_path / "home"),
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "XDG_STATE_HOME": str(tmp_path / "state"),
        "XDG_DATA_HOME": str(tmp_path / "data"),
        "FFCLIP_STATE_DIR": str(tmp_path / "plugin-state"),
        "FFCLIP_GIMP_CONSOLE": f"{sys.executable} {FAKE_GIMP}",
    }
    env.update(extra)
    return env


def context(env: dict, **kw) -> gd.Context:
    kw.setdefault("device_probe", lambda: {"cuda": False, "ram_available": 64 * GB})
    kw.setdefault("timeout", 3.0)
    return gd.Context.from_environ(env, version=__version__, **kw)


def native_plugins(env: dict) -> Path:
    return Path(env["HOME"]) / ".config" / "GIMP" / "3.0" / "plug-ins"


def install_plugin(dest: Path, url: str, **settings) -> Path:
    port = str(url_port(url))
    start = [sys.executable, "-m", "ffclip.app", "serve", "--profile", "tiny", "--port", port]
    given = {"url": url, "autostart": False, "start_command": start, **settings}
    return install.install(dest, given)


def by_id(checks) -> dict[str, gd.Check]:
    return {c.id: c for c in checks}
