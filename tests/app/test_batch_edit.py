"""The batch edit of a folder through GIMP (app/batch_edit.py), without GIMP: output names, the GIMP-
side driver, the message when GIMP is missing."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

from ffclip.gimp import edit as gimp_edit
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


def run(args: gimp_edit.ProcedureArgs, *rest, **options):
    """What the GIMP entry does with its procedure arguments."""
    return gimp_edit.run_edit(args.params(), args.output, args.url, *rest, **options)


def test_batch_helpers(tmp_path):
    files = [tmp_path / n for n in ("a.jpg", "a.png", "b.tif")]
    assert batch_edit.output_names(files, "png") == {files[0]: "a.jpg.png", files[1]: "a.png.png", files[2]: "b.png"}
    code = batch_edit.driver_code(
        {"procedure": "p", "status": "/s", "files": [], "args": {"prompt": 'it\'s "x"'}, "flatten": True}
    )
    compile(code, "driver", "exec")
    console = batch_edit.GimpConsole(["/usr/bin/gimp-console-3.0"], tmp_path, "/tmp/h")
    assert console.host("/tmp/h") == tmp_path / "tmp/h"
    assert console.inside(tmp_path / "tmp" / "x") == "/tmp/x"
    argv, _ = console.argv("-i")
    assert argv[:3] == ["chroot", str(tmp_path), "env"] and "HOME=/tmp/h" in argv


@pytest.mark.process
def test_batch_without_gimp_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("FFCLIP_GIMP_ROOT", str(tmp_path / "nothing"))
    (tmp_path / "in").mkdir()
    out = subprocess.run(
        [sys.executable, str(REPO / "app" / "batch_edit.py"), str(tmp_path / "in"), "x", "-o", str(tmp_path / "out")],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2 and "setup-gimp.sh" in out.stderr
