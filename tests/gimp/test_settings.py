"""The plug-in's settings file and the running-job file (gimp/settings.py)."""

from __future__ import annotations

import json

import pytest

from ffclip.gimp import edit as gimp_edit
from ffclip.gimp import settings as gimp_settings


@pytest.fixture(autouse=True)
def _state_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("FFCLIP_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.delenv("FFCLIP_ENGINE_URL", raising=False)


def test_stale_job_state_is_ignored():
    gimp_settings.write_job_state("ws://127.0.0.1:1/", "abc")
    path = gimp_settings.job_state_path()
    data = json.loads(path.read_text())
    data["pid"] = 2**22 + 12345  # no such process
    path.write_text(json.dumps(data))
    assert "ended without cleaning up" in gimp_edit.cancel_running()
    assert gimp_settings.read_job_state() is None


def test_settings_roundtrip_and_url_resolution(tmp_path):
    assert gimp_settings.load_settings(tmp_path)["url"] == gimp_settings.DEFAULT_URL
    gimp_settings.save_settings(tmp_path, {"url": "ws://h:1", "autostart": True, "junk": 1})
    s = gimp_settings.load_settings(tmp_path)
    assert s["url"] == "ws://h:1" and s["autostart"] is True and "junk" not in s
    (tmp_path / gimp_settings.SETTINGS_NAME).write_text("{broken")
    assert gimp_settings.load_settings(tmp_path)["url"] == gimp_settings.DEFAULT_URL
    assert gimp_settings.resolve_url("", {"url": "ws://a:2"}, {}) == "ws://a:2"
    assert gimp_settings.resolve_url(None, {"url": "ws://a:2"}, {"FFCLIP_ENGINE_URL": "b:3"}) == "ws://b:3"
    assert gimp_settings.resolve_url("http://c:4/", {}, {}) == "ws://c:4/"
    with pytest.raises(ValueError):
        gimp_settings.normalize_url("ftp://x")
