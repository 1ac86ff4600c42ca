"""The layer contract (pyproject.toml [tool.importlinter], docs/architecture.md): `lint-imports`
keeps it on the tree as it is, and breaks on an import that points the wrong way."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.paths import REPO

PACKAGES = {"plugin": "plugin", "engine": "engine", "bridge": "bridge", "app": "app", "gimp": "gimp"}


def lint(tree: Path) -> subprocess.CompletedProcess:
    """lint-imports with the project's contracts, on the `ffclip` packages found in `tree`."""
    env = {"PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin", "PYTHONPATH": str(tree)}
    command = [sys.executable, "-c", "from importlinter.cli import lint_imports_command; lint_imports_command()"]
    command += ["--config", str(REPO / "pyproject.toml"), "--no-cache"]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)


def tree_with(tmp_path: Path, package: str, module: str, line: str) -> Path:
    """A copy of the packages as `ffclip.*` with `line` appended to one module."""
    root = tmp_path / "tree" / "ffclip"
    for name, folder in PACKAGES.items():
        shutil.copytree(REPO / folder, root / name, ignore=shutil.ignore_patterns("__pycache__", "data"))
    path = root / package / module
    path.write_text(path.read_text() + "\n" + line + "\n")
    return root.parent


@pytest.mark.process
def test_the_tree_keeps_every_contract(tmp_path):
    done = lint(tree_with(tmp_path, "engine", "pipeline.py", "# nothing planted"))
    assert done.returncode == 0, done.stdout[-2000:]
    assert "Contracts: 4 kept, 0 broken." in done.stdout


@pytest.mark.process
@pytest.mark.parametrize(
    ("package", "module", "line", "broken"),
    [
        ("engine", "pipeline.py", "from ffclip.bridge import server", "ffclip.engine.pipeline -> ffclip.bridge.server"),
        ("plugin", "protocol.py", "import ffclip.engine.imageio", "ffclip.plugin.protocol -> ffclip.engine.imageio"),
        ("bridge", "server.py", "from ffclip.app.cli import serve", "ffclip.bridge.server -> ffclip.app.cli.serve"),
        ("gimp", "live.py", "from ffclip.engine import pipeline", "ffclip.gimp.live -> ffclip.engine.pipeline"),
        ("engine", "imageio.py", "from ffclip.gimp import settings", "ffclip.engine.imageio -> ffclip.gimp.settings"),
        ("gimp", "edit.py", "import numpy", "ffclip.gimp.edit -> numpy"),
    ],
)
def test_an_import_that_points_the_wrong_way_breaks_a_contract(tmp_path, package, module, line, broken):
    done = lint(tree_with(tmp_path, package, module, line))
    assert done.returncode == 1 and " broken." in done.stdout, done.stdout[-2000:]
    assert broken in done.stdout
