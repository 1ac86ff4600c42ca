"""A stand-in for `gimp-console-3.0 -i -n -d --batch-interpreter python-fu-eval -b - --quit`, for the
doctor's tests on machines (and runs) without GIMP: FFCLIP_GIMP_CONSOLE="python fake_gimp_console.py".

It runs the Python code given on standard input with a fake `gi.repository.Gimp` whose PDB holds the
procedures of the plug-ins GIMP 3 would load from its profile `$HOME/.config/GIMP/3.0` (GIMP's rules:
`plug-ins/<name>/<name>.py`, executable, a first line `#!...python3` without a CR). A plug-in's
procedure names come from importing its copied `ffclip.gimp.edit` in a separate interpreter without
site-packages, as GIMP's own Python would import the copy. `$FAKE_GIMP_FAIL=1`: GIMP crashes.
tests/app/doctor/test_gimp.py runs the same doctor against the real GIMP 3.
"""

from __future__ import annotations

import os
import subprocess
import sys
import types
from pathlib import Path

PROFILE = Path(os.environ["HOME"]) / ".config" / "GIMP" / "3.0"


def loadable(entry: Path) -> bool:
    if not entry.is_file() or not os.access(entry, os.X_OK):
        return False
    first = entry.read_bytes().split(b"\n", 1)[0]
    return first.startswith(b"#!") and b"python3" in first and b"\r" not in first


def procedures(folder: Path) -> list[str]:
    code = "import ffclip.gimp.edit as e; print(e.PROCEDURE); print(e.CANCEL_PROCEDURE)"
    out = subprocess.run([sys.executable, "-S", "-c", code], cwd=folder, capture_output=True, text=True)
    if out.returncode:
        print(f"ffclip-edit.py: plug-in query failed:\n{out.stderr}", file=sys.stderr)
        return []
    return out.stdout.split()


def registered() -> dict[str, str]:
    found: dict[str, str] = {}
    plugins = PROFILE / "plug-ins"
    for folder in sorted(plugins.iterdir()) if plugins.is_dir() else []:
        if loadable(folder / f"{folder.name}.py"):
            found.update(dict.fromkeys(procedures(folder), folder.name))
    return found


class Procedure:
    def __init__(self, name: str):
        self.name = name

    def get_menu_label(self) -> str:
        return self.name

    def get_menu_paths(self) -> list[str]:
        return ["<Image>/Filters"]


class PDB:
    def __init__(self, names):
        self.names = names

    def lookup_procedure(self, name: str):
        return Procedure(name) if name in self.names else None


def main() -> int:
    if os.environ.get("FAKE_GIMP_FAIL"):
        print("gimp-console-3.0: fatal error: Segmentation fault", file=sys.stderr)
        return 139
    PROFILE.mkdir(parents=True, exist_ok=True)  # GIMP makes its profile on its first start
    pdb = PDB(registered())
    gimp = types.SimpleNamespace(get_pdb=lambda: pdb, version=lambda: "3.0.4-fake", directory=lambda: str(PROFILE))
    gi = types.ModuleType("gi")
    gi.require_version = lambda *args: None
    repository = types.ModuleType("gi.repository")
    repository.Gimp = gimp
    sys.modules.update({"gi": gi, "gi.repository": repository})
    exec(compile(sys.stdin.read(), "<batch>", "exec"), {"__name__": "__main__"})
    print("batch command executed successfully", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
