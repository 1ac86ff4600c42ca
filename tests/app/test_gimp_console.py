"""Running GIMP from the host (app/gimp_console.py)."""

from __future__ import annotations

import importlib.util
import sys

import pytest

from tests.support.paths import REPO


def _load_batch():
    spec = importlib.util.spec_from_file_location("ffclip_batch_edit", REPO / "app" / "batch_edit.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


batch_edit = _load_batch()


@pytest.fixture(autouse=True)
def _state_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("FFCLIP_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.delenv("FFCLIP_ENGINE_URL", raising=False)


def test_a_console_is_found_again_from_its_environment(tmp_path, monkeypatch):
    """What a test hands a batch run (GimpConsole.environment) makes find() pick the same GIMP."""
    root = tmp_path / "chroot"
    (root / "usr/bin").mkdir(parents=True)
    (root / "usr/bin/gimp-console-3.0").touch()
    native = batch_edit.GimpConsole(["/opt/my gimp/gimp-console-3.0", "--verbose"], None, "/home/x")
    for console in (batch_edit.GimpConsole.chroot(root, "/tmp/h"), native):
        for name in ("FFCLIP_GIMP_CONSOLE", "FFCLIP_GIMP_ROOT", "FFCLIP_GIMP_HOME"):
            monkeypatch.delenv(name, raising=False)
        for name, value in console.environment().items():
            monkeypatch.setenv(name, value)
        assert batch_edit.GimpConsole.find() == console
