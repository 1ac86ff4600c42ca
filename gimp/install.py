"""Put the FFCLIP Edit plug-in where GIMP 3 finds it (the command is `ffclip-engine install-gimp-plugin`).

GIMP 3 loads a Python plug-in only from `<plug-ins>/<name>/<name>.py`, executable, with a
`#!/usr/bin/env python3` line and LF line endings; anything else is silently ignored, which is why
the menu entry "never appears". This command writes exactly that layout:

    <plug-ins>/ffclip-edit/ffclip-edit.py        the GIMP entry (gimp/ffclip-edit/ffclip-edit.py)
    <plug-ins>/ffclip-edit/ffclip/plugin/        a copy of ffclip.plugin: protocol and client
    <plug-ins>/ffclip-edit/ffclip/gimp/          a copy of ffclip.gimp's modules: the plug-in's logic
    <plug-ins>/ffclip-edit/ffclip-edit.json      settings: engine URL, token, autostart

Both copies are standard library only; the entry puts its folder first on sys.path, so GIMP's
Python imports them as `ffclip.plugin` and `ffclip.gimp`, the same names as in the project.

Plug-in folders found: `--dest DIR`, else `$GIMP3_DIRECTORY/plug-ins`, the native
`~/.config/GIMP/3.0/plug-ins` and the Flatpak `~/.var/app/org.gimp.GIMP/config/GIMP/3.0/plug-ins`
(every one whose GIMP 3 profile exists; the native one when none does). Standard library only.
"""

from __future__ import annotations

import os
import shutil
import stat
import sys
from pathlib import Path

from . import settings as gimp_settings

NAME = "ffclip-edit"
ENTRY = f"{NAME}.py"
PACKAGE = "ffclip"  # <plug-in>/ffclip/{plugin,gimp}: the project's own import names
OLD_PACKAGE = "ffclip_plugin"  # the layout of earlier versions, removed on reinstall
_NOT_SHIPPED = shutil.ignore_patterns("__pycache__", "*.pyc", "tests", NAME, "batch_edit.py")
FLATPAK_APP = "org.gimp.GIMP"


# --------------------------------------------------------------------------- locations


def candidate_plugin_dirs(environ: dict | None = None, home: Path | None = None) -> list[tuple[str, Path]]:
    """(kind, plug-ins folder) for every place a GIMP 3 may read plug-ins from, in order."""
    environ = os.environ if environ is None else environ
    home = Path(home or environ.get("HOME") or Path.home())
    out: list[tuple[str, Path]] = []
    if environ.get("GIMP3_DIRECTORY"):
        out.append(("GIMP3_DIRECTORY", Path(environ["GIMP3_DIRECTORY"]) / "plug-ins"))
    if sys.platform == "darwin":
        native = home / "Library" / "Application Support" / "GIMP" / "3.0"
    elif os.name == "nt":
        native = Path(environ.get("APPDATA") or home / "AppData" / "Roaming") / "GIMP" / "3.0"
    else:
        native = Path(environ.get("XDG_CONFIG_HOME") or home / ".config") / "GIMP" / "3.0"
    out.append(("native", native / "plug-ins"))
    out.append(("flatpak", home / ".var" / "app" / FLATPAK_APP / "config" / "GIMP" / "3.0" / "plug-ins"))
    return out


def find_plugin_dirs(environ: dict | None = None, home: Path | None = None) -> list[Path]:
    """The plug-ins folders to install into: those whose GIMP 3 profile exists, else the native one."""
    candidates = candidate_plugin_dirs(environ, home)
    explicit = [p for kind, p in candidates if kind == "GIMP3_DIRECTORY"]
    if explicit:
        return explicit
    existing = [p for _, p in candidates if p.parent.is_dir()]
    return existing or [p for kind, p in candidates if kind == "native"]


# --------------------------------------------------------------------------- sources


def entry_source() -> Path:
    """The GIMP entry file: package data of this package (checkout, editable install or wheel), or
    the entry of the plug-in folder this copy runs from."""
    here = Path(__file__).resolve().parent
    candidates = [here / NAME / ENTRY, here.parent.parent / ENTRY]
    for path in candidates:
        if path.is_file():
            return path
    looked = ", ".join(map(str, candidates))
    raise FileNotFoundError(f"cannot find the GIMP entry {ENTRY} (looked in {looked})")


def training_prompts_source() -> Path | None:
    """engine/data/prompts.txt of the installed project (None when only the plug-in is at hand)."""
    try:
        from importlib.resources import files

        path = Path(str(files("ffclip.engine") / "data" / "prompts.txt"))
    except (ImportError, TypeError, ModuleNotFoundError):
        return None
    return path if path.is_file() else None


def package_sources() -> dict[str, Path]:
    """Subpackage name -> source folder, for the copies under `<plug-in>/ffclip/`."""
    from ffclip import plugin

    return {"plugin": Path(plugin.__file__).resolve().parent, "gimp": Path(__file__).resolve().parent}


# --------------------------------------------------------------------------- install / uninstall


def default_start_command(url: str) -> list[str]:
    port = gimp_settings.url_port(url)
    return [sys.executable, "-m", "ffclip.engine", "serve", "--port", str(port)]


def install(dest: Path, given: dict | None = None, dry_run: bool = False, default_autostart: bool = True) -> Path:
    """Install into the plug-ins folder `dest`; returns `dest/ffclip-edit`.

    Settings already there are kept unless given again (a reinstall keeps the user's URL); a first
    install starts with autostart = `default_autostart`.
    """
    given = dict(given or {})
    target = Path(dest) / NAME
    entry = entry_source()
    packages = package_sources()
    had_settings = (target / gimp_settings.SETTINGS_NAME).is_file()
    settings = gimp_settings.load_settings(target if target.is_dir() else None)
    if not had_settings:
        settings["autostart"] = bool(default_autostart)
    settings.update(given)
    if not settings.get("start_command"):
        settings["start_command"] = default_start_command(settings["url"])
    if dry_run:
        print(f"would copy {entry} -> {target / ENTRY}")
        for name, source in packages.items():
            print(f"would copy {source} -> {target / PACKAGE / name}")
        print(f"would write {target / gimp_settings.SETTINGS_NAME}: {settings}")
        return target
    target.mkdir(parents=True, exist_ok=True)
    text = entry.read_text(encoding="utf-8").replace("\r\n", "\n")
    if not text.startswith("#!"):
        text = "#!/usr/bin/env python3\n" + text
    entry_path = target / ENTRY
    tmp = entry_path.with_suffix(".py.tmp")
    tmp.write_text(text, encoding="utf-8", newline="\n")
    tmp.chmod(tmp.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH | stat.S_IRGRP | stat.S_IROTH)
    os.replace(tmp, entry_path)
    for old in (target / PACKAGE, target / OLD_PACKAGE):
        if old.exists():
            shutil.rmtree(old)
    for name, source in packages.items():
        shutil.copytree(source, target / PACKAGE / name, ignore=_NOT_SHIPPED)
    prompts = training_prompts_source()
    if prompts is not None:  # the dialog completes prompts from FFCLIP's training list
        shutil.copyfile(prompts, target / PACKAGE / "gimp" / "prompts.txt")
    gimp_settings.save_settings(target, settings)
    return target


def uninstall(dest: Path, dry_run: bool = False) -> Path | None:
    """Remove `dest/ffclip-edit` (only when it holds our entry); returns what was removed."""
    target = Path(dest) / NAME
    if not (target / ENTRY).is_file() and not (target / PACKAGE).is_dir() and not (target / OLD_PACKAGE).is_dir():
        return None
    if not dry_run:
        shutil.rmtree(target)
    return target
