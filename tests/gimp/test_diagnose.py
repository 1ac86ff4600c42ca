"""The dialog's Diagnose (gimp/diagnose.py): the doctor asked of the engine's own Python."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from ffclip.gimp import diagnose, setup

URL = "ws://127.0.0.1:8765/"


def fake_python(tmp_path: Path, body: str) -> str:
    script = tmp_path / "python"
    script.write_text(f"#!{sys.executable}\nimport sys\n{body}\n")
    script.chmod(0o755)
    return str(script)


def test_the_engine_python_is_the_start_commands_or_the_set_ups(tmp_path):
    python = fake_python(tmp_path, "")
    assert diagnose.engine_python({"start_command": [python, "-m", "ffclip.app", "serve"]}) == python
    assert diagnose.engine_python({"start_command": f"{python} -m ffclip.app serve"}) == python
    # a start command of another shape (a wrapper script, a service manager) says nothing of the engine's Python
    assert diagnose.engine_python({"start_command": ["systemctl", "--user", "start", "ffclip"]}) is None
    assert diagnose.engine_python({"start_command": ["/gone/python", "-m", "ffclip.app", "serve"]}) is None
    env = tmp_path / "env"
    made = setup.env_python(env)
    made.parent.mkdir(parents=True)
    made.write_text("")
    installed = {"env": str(env), "python": "/usr/bin/python3", "steps": {"python": {}, "engine": {}}}
    assert diagnose.engine_python({}, installed) == str(made)  # the environment's, not the host's
    assert diagnose.engine_python({}, {**installed, "steps": {"python": {}}}) is None  # no engine in it yet
    assert diagnose.engine_python({}, {**installed, "env": str(tmp_path / "gone")}) is None


@pytest.mark.process
@pytest.mark.skipif(os.name == "nt", reason="a #! script stands for the engine's Python")
def test_the_report_is_the_doctors_own_words_without_running_gimp(tmp_path):
    python = fake_python(tmp_path, "print('doctor', *sys.argv[1:]); print('oops', file=sys.stderr)")
    settings = {"start_command": [python, "-m", "ffclip.app", "serve"]}
    text = diagnose.report(settings, URL, tmp_path, environ={"PATH": os.environ["PATH"], "HOME": str(tmp_path)})
    assert text == f"doctor -m ffclip.app doctor --no-gimp --url {URL}\noops"


@pytest.mark.process
@pytest.mark.skipif(os.name == "nt", reason="a #! script stands for the engine's Python")
def test_a_doctor_that_hangs_is_given_up(tmp_path, monkeypatch):
    python = fake_python(tmp_path, "import time; time.sleep(30)")
    monkeypatch.setattr(diagnose, "DOCTOR_TIMEOUT_S", 0.5)
    text = diagnose.report({"start_command": [python, "-m", "ffclip.app", "serve"]}, URL, tmp_path, {"HOME": "/"})
    assert text.startswith("The doctor did not finish within 0.5 s")


def test_without_an_engine_the_plugin_says_what_it_knows(tmp_path):
    environ = {
        "HOME": str(tmp_path),
        "PATH": "",
        "XDG_DATA_HOME": str(tmp_path / "data"),
        "FLATPAK_ID": "org.gimp.GIMP",
    }
    text = diagnose.report({"start_command": None}, URL, tmp_path / "plug-in", environ)
    assert text.startswith("No FFCLIP engine is installed") and f"Engine URL: {URL}" in text
    assert "GIMP runs as a Flatpak" in text  # and the host commands follow
    assert "No Python 3.10 or newer found" in text  # an empty PATH: none to find


def test_the_last_set_up_is_told_in_words(tmp_path):
    environ = {"HOME": str(tmp_path), "PATH": "", "XDG_DATA_HOME": str(tmp_path / "data")}
    record = setup.record_path(environ)
    record.parent.mkdir(parents=True)
    failure = {"step": "torch", "message": "No network: pip could not reach the index\nmore", "when": 1.0}
    pip = {"summary": "pip 26.3", "done": 2.0}
    record.write_text(json.dumps({"steps": {"pip": pip}, "failure": failure, "profile": "tiny", "log": "/x.log"}))
    text = diagnose.report({}, URL, tmp_path, environ)
    assert "Last set-up (tiny)" in text and "    done: pip (pip 26.3)" in text
    assert "stopped at torch" in text and text.count("No network") == 1 and "more" not in text
    assert "    log: /x.log" in text and "'done'" not in text  # words, not the record's dictionaries
