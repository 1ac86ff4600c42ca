"""The releasable packages (pyproject.toml, MANIFEST.in): `python -m build` makes a wheel and an sdist
that `twine check` passes; the wheel carries the GIMP entry, the plug-in's packages and the engine's
data, and nothing of the tests; the sdist carries what the wheel build needs, the tests and the docs.
Installing the wheel into a clean venv and serving from it needs torch there (several GB): that is
tools/release_check.sh, run before each release (docs/release-check.txt), not CI."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import zipfile

import pytest

from ffclip.engine import __version__
from tests.support.paths import REPO

LEFTOVERS = ("*.egg-info", "build", "dist", "__pycache__", "*.pyc", ".git", ".*cache", ".hypothesis", ".venv")


def needs(module: str) -> None:
    """Skip without `module` (build, twine: the dev extras), except in CI, where they are installed."""
    try:
        __import__(module)
    except ImportError:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"needs {module} (pip install '.[dev]')")


def clean_copy(dest):
    """The checkout as a fresh clone plus the work in progress: git's tracked and unignored files. A
    build in the checkout itself would read the leftover ffclip_edit.egg-info/SOURCES.txt of earlier
    builds and package what MANIFEST.in no longer names."""
    listed = subprocess.run(["git", "ls-files", "-z", "-c", "-o", "--exclude-standard"], cwd=REPO, capture_output=True)
    if listed.returncode != 0:  # an unpacked sdist, not a git checkout
        shutil.copytree(REPO, dest, ignore=shutil.ignore_patterns(*LEFTOVERS))
        return dest
    for name in listed.stdout.decode().split("\0"):
        source = REPO / name
        if name and source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    return dest


@pytest.mark.slow
@pytest.mark.process
def test_build_makes_a_wheel_and_an_sdist_that_twine_accepts(tmp_path):
    needs("build")
    needs("twine")
    source = clean_copy(tmp_path / "source")
    dist = tmp_path / "dist"
    built = subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(dist), str(source)], capture_output=True, text=True
    )
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    wheel = dist / f"ffclip_edit-{__version__}-py3-none-any.whl"  # the version: engine/__init__.py's
    sdist = dist / f"ffclip_edit-{__version__}.tar.gz"
    assert sorted(p.name for p in dist.iterdir()) == sorted([wheel.name, sdist.name])
    checked = subprocess.run(
        [sys.executable, "-m", "twine", "--no-color", "check", "--strict", str(wheel), str(sdist)],
        capture_output=True,
        text=True,
    )
    assert checked.returncode == 0 and checked.stdout.count("PASSED") == 2, checked.stdout + checked.stderr

    with zipfile.ZipFile(wheel) as zf:
        files = zf.namelist()
        metadata = zf.read(f"ffclip_edit-{__version__}.dist-info/METADATA").decode()
    for expected in (
        "ffclip/gimp/ffclip-edit/ffclip-edit.py",  # the GIMP entry (install-gimp-plugin, gimp-bundle)
        "ffclip/gimp/help.html",
        "ffclip/gimp/edit.py",
        "ffclip/plugin/client.py",
        "ffclip/engine/data/prompts.txt",
        "ffclip/app/bundle.py",
        "ffclip/app/cli/gimp_bundle.py",
    ):
        assert expected in files, expected
    assert not [f for f in files if f.startswith("tests/") or "__pycache__" in f or f.endswith(".pyc")]
    assert f"Version: {__version__}" in metadata and "Description-Content-Type: text/markdown" in metadata
    requires = [line for line in metadata.splitlines() if line.startswith("Requires-Dist: ")]
    assert 'Requires-Dist: build>=1.2; extra == "dev"' in requires  # build and twine: dev extras only
    assert not [
        line
        for line in requires
        if line.startswith(("Requires-Dist: pytest", "Requires-Dist: twine")) and "extra" not in line
    ]

    top = f"ffclip_edit-{__version__}/"
    with tarfile.open(sdist) as tf:
        members = [m.removeprefix(top) for m in tf.getnames()]
    for expected in (
        "pyproject.toml",
        "MANIFEST.in",
        "README.md",
        "gimp/ffclip-edit/ffclip-edit.py",
        "engine/data/prompts.txt",
        "tests/conftest.py",
        "tests/app/test_bundle.py",
        "tests/data/photos/obama.jpg",
        "tools/release_check.sh",
        "docs/install.md",
    ):
        assert expected in members, expected
    assert not [m for m in members if "__pycache__" in m or m.endswith(".pyc")]
