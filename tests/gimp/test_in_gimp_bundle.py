"""The GIMP bundle (`gimp-bundle`, app/bundle.py) in a real GIMP 3: the zip unzipped into a fresh
profile's plug-ins folder registers the procedures; the extension file (`--gex`): what File → Open does
with it (`file-gex-load`), the extension left switched off, and once switched on (Edit → Manage
Extensions writes `(active yes)` into extensionrc) the plug-in's procedures registered at the next start
— which needs ffclip-edit.py to arrive executable through GIMP's streaming unpacker (docs/install.md)."""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
import zipfile

import pytest

from ffclip.app import bundle, install
from tests.support.gimp import result_lines

pytestmark = [pytest.mark.gimp, pytest.mark.slow]

INSTALL = """
import json
from gi.repository import Gimp, Gio
proc = Gimp.get_pdb().lookup_procedure("file-gex-load")
cfg = proc.create_config()
cfg.set_property("run-mode", Gimp.RunMode.NONINTERACTIVE)
cfg.set_property("file", Gio.File.new_for_path(GEX))
res = proc.run(cfg)
print("RESULT " + json.dumps({"status": res.index(0).value_nick}))
"""

LOOKUP = """
import json
from gi.repository import Gimp
pdb = Gimp.get_pdb()
names = ["python-fu-ffclip-edit", "python-fu-ffclip-cancel"]
print("RESULT " + json.dumps({name: pdb.procedure_exists(name) for name in names}))
"""


def fake_wheel(path):
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("placeholder.txt", path.name)
    return path


def test_the_unzipped_bundle_is_a_plugin_gimp_loads(console):
    """What a user does: unzip into the plug-ins folder, start GIMP; the menu entries are there."""
    if shutil.which("unzip") is None:
        pytest.skip("needs unzip")
    gimp = dataclasses.replace(console, home=f"{console.home or console.home_dir()}-zip")  # a profile of its own
    scratch = gimp.scratch()
    wheel = fake_wheel(scratch / f"ffclip_edit-{install.source_version()}-py3-none-any.whl")
    pip = fake_wheel(scratch / "pip-24.0-py3-none-any.whl")
    out = bundle.write_bundle(scratch / "ffclip-edit.zip", wheel, pip)
    plugins = gimp.plugin_dir()
    plugins.mkdir(parents=True)
    try:
        unzipped = subprocess.run(["unzip", "-q", str(out), "-d", str(plugins)], capture_output=True, text=True)
        assert unzipped.returncode == 0, unzipped.stderr
        done = gimp.run_python(LOOKUP, timeout=300)
        assert result_lines(done) == [{"python-fu-ffclip-edit": True, "python-fu-ffclip-cancel": True}], (
            done.stdout[-2000:] + done.stderr[-2000:]
        )
    finally:
        shutil.rmtree(gimp.home_dir(), ignore_errors=True)
        shutil.rmtree(scratch, ignore_errors=True)


def test_gimp_installs_the_gex_and_runs_it_once_switched_on(console):
    scratch = console.scratch()
    wheel = fake_wheel(scratch / f"ffclip_edit-{install.source_version()}-py3-none-any.whl")
    pip = fake_wheel(scratch / "pip-24.0-py3-none-any.whl")
    gex = bundle.write_gex(scratch / "ffclip-edit.gex", wheel, pip)

    done = console.run_python(INSTALL.replace("GEX", repr(console.inside(gex))), timeout=300)
    assert result_lines(done) == [{"status": "success"}], done.stdout[-2000:] + done.stderr[-2000:]
    profile = console.home_dir() / ".config" / "GIMP" / "3.0"
    plugin = profile / "extensions" / bundle.EXTENSION_ID / install.NAME
    assert (plugin / install.ENTRY).stat().st_mode & 0o777 == 0o755
    assert sorted(p.name for p in (plugin / bundle.WHEELS).iterdir()) == sorted([wheel.name, pip.name])

    done = console.run_python(LOOKUP, timeout=300)
    assert result_lines(done) == [{"python-fu-ffclip-edit": False, "python-fu-ffclip-cancel": False}], done.stdout
    rc = profile / "extensionrc"
    entry = re.compile(r'(\(GimpExtension "' + re.escape(bundle.EXTENSION_ID) + r'"\s*\(active )no\)')
    assert entry.search(rc.read_text()), rc.read_text()  # installed, switched off

    rc.write_text(entry.sub(r"\1yes)", rc.read_text()))  # what the switch in Manage Extensions does
    done = console.run_python(LOOKUP, timeout=300)
    assert result_lines(done) == [{"python-fu-ffclip-edit": True, "python-fu-ffclip-cancel": True}], (
        done.stdout[-2000:] + done.stderr[-2000:]
    )
