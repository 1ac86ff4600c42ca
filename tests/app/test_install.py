"""Installing the plug-in into GIMP profiles (app/install.py, `ffclip-engine install-gimp-plugin`): the
layout GIMP 3 loads, the command line, the profiles found."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from ffclip.app import install
from ffclip.gimp import edit as gimp_edit


@pytest.fixture(autouse=True)
def _state_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("FFCLIP_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.delenv("FFCLIP_ENGINE_URL", raising=False)


def run(args: gimp_edit.ProcedureArgs, *rest, **options):
    """What the GIMP entry does with its procedure arguments."""
    return gimp_edit.run_edit(args.params(), args.output, args.url, *rest, **options)


@pytest.mark.process
def test_install_layout(tmp_path):
    dest = tmp_path / "plug-ins"
    target = install.install(dest, {"url": "ws://127.0.0.1:9000"})
    entry = target / "ffclip-edit.py"
    assert target == dest / "ffclip-edit"
    text = entry.read_bytes()
    assert text.startswith(b"#!/usr/bin/env python3\n") and b"\r\n" not in text
    assert entry.stat().st_mode & stat.S_IXUSR
    assert (target / "ffclip" / "gimp" / "edit.py").is_file()
    assert (target / "ffclip" / "plugin" / "client.py").is_file()
    assert not (target / "ffclip" / "gimp" / "batch_edit.py").exists()  # not needed inside GIMP
    assert not list(target.rglob("__pycache__"))
    settings = json.loads((target / "ffclip-edit.json").read_text())
    assert settings["url"] == "ws://127.0.0.1:9000"
    assert settings["start_command"][-2:] == ["--port", "9000"]
    assert settings["autostart"] is True
    # The copied package imports on its own, without the project (as GIMP's Python will).
    code = "import ffclip.gimp.edit as g, ffclip.plugin.client as c; print(g.PROCEDURE)"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-S", "-c", code], cwd=target, env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "python-fu-ffclip-edit", out.stderr
    # reinstall keeps the saved URL; uninstall removes everything
    install.install(dest, {})
    assert json.loads((target / "ffclip-edit.json").read_text())["url"] == "ws://127.0.0.1:9000"
    assert install.uninstall(dest) == target and not target.exists()
    assert install.uninstall(dest) is None


@pytest.mark.process
def test_install_command_line(tmp_path):
    dest = tmp_path / "p"
    run = [sys.executable, "-m", "ffclip.app", "install-gimp-plugin", "--dest", str(dest)]
    out = subprocess.run([*run, "--url", "localhost:8766", "--autostart"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    settings = json.loads((dest / "ffclip-edit" / "ffclip-edit.json").read_text())
    assert settings["url"] == "ws://localhost:8766" and settings["autostart"] is True
    out = subprocess.run([*run, "--no-autostart"], capture_output=True, text=True)
    settings = json.loads((dest / "ffclip-edit" / "ffclip-edit.json").read_text())
    assert settings["url"] == "ws://localhost:8766" and settings["autostart"] is False
    out = subprocess.run([*run, "--uninstall"], capture_output=True, text=True)
    assert out.returncode == 0 and not (dest / "ffclip-edit").exists()


def test_plugin_folders_found(tmp_path):
    home = tmp_path / "home"
    env = {"HOME": str(home)}
    assert install.find_plugin_dirs(env, home) == [home / ".config/GIMP/3.0/plug-ins"]
    flatpak = home / ".var/app/org.gimp.GIMP/config/GIMP/3.0"
    flatpak.mkdir(parents=True)
    assert install.find_plugin_dirs(env, home) == [flatpak / "plug-ins"]
    (home / ".config/GIMP/3.0").mkdir(parents=True)
    assert install.find_plugin_dirs(env, home) == [home / ".config/GIMP/3.0/plug-ins", flatpak / "plug-ins"]
    assert install.find_plugin_dirs({**env, "GIMP3_DIRECTORY": "/x"}, home) == [Path("/x/plug-ins")]


def test_the_install_message_names_the_engine_the_plugin_will_reach():
    from ffclip.app.cli.install_gimp_plugin import serve_command

    assert serve_command("ws://127.0.0.1:8765/") == "with: ffclip-engine serve"
    assert serve_command("ws://127.0.0.1:9120/") == "with: ffclip-engine serve --port 9120"
    remote = serve_command("wss://gpu.studio.lan:9120/")
    assert remote.startswith("on gpu.studio.lan with: ffclip-engine serve --host 0.0.0.0 --tokens-file TOKENS")
    assert remote.endswith("--port 9120 --tls-cert CERT.pem --tls-key KEY.pem")
