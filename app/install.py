"""Put the FFCLIP Edit plug-in where GIMP 3 finds it (the command is `ffclip-engine install-gimp-plugin`).

GIMP 3 loads a Python plug-in only from `<plug-ins>/<name>/<name>.py`, executable, with a
`#!/usr/bin/env python3` line and LF line endings; anything else is silently ignored, which is why
the menu entry "never appears". This command writes exactly that layout:

    <plug-ins>/ffclip-edit/ffclip-edit.py        the GIMP entry (gimp/ffclip-edit/ffclip-edit.py)
    <plug-ins>/ffclip-edit/ffclip/plugin/        a copy of ffclip.plugin: protocol and client
    <plug-ins>/ffclip-edit/ffclip/gimp/          a copy of ffclip.gimp: the plug-in's logic and dialog
    <plug-ins>/ffclip-edit/ffclip-edit.json      settings: engine URL, token, TLS, autostart
    <plug-ins>/ffclip-edit/VERSION               the ffclip-edit version that installed it (the doctor's check)

Both copies are standard library only; the entry puts its folder first on sys.path, so GIMP's
Python imports them as `ffclip.plugin` and `ffclip.gimp`, the same names as in the project.

Plug-in folders found: `--dest DIR`, else `$GIMP3_DIRECTORY/plug-ins`, else the `plug-ins` folder of
every GIMP 3 profile that exists (3.0, 3.2, ...): native (`~/.config/GIMP`, macOS
`~/Library/Application Support/GIMP`, Windows `%APPDATA%\\GIMP`), Flatpak
(`~/.var/app/org.gimp.GIMP/config/GIMP`) and Snap (`~/snap/gimp/current/.config/GIMP`); the native
3.0 one when none exists yet. Standard library only.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import sys
from dataclasses import dataclass
from pathlib import Path

from ffclip.gimp import settings as gimp_settings

NAME = "ffclip-edit"
ENTRY = f"{NAME}.py"
VERSION_NAME = "VERSION"  # <plug-in>/VERSION: which ffclip-edit installed this copy
PACKAGE = "ffclip"  # <plug-in>/ffclip/{plugin,gimp}: the project's own import names
OLD_PACKAGE = "ffclip_plugin"  # the layout of earlier versions, removed on reinstall
_NOT_SHIPPED = shutil.ignore_patterns("__pycache__", "*.pyc", NAME)  # the entry folder is copied on its own
FLATPAK_APP = "org.gimp.GIMP"
SNAP_NAME = "gimp"
_PROFILE_VERSION = re.compile(r"3\.(\d+)")  # GIMP 3.x keeps one profile folder per minor version


# --------------------------------------------------------------------------- locations


@dataclass(frozen=True)
class GimpProfile:
    """A GIMP 3 user profile folder (`.../GIMP/3.0`) and the kind of GIMP that reads it."""

    kind: str  # GIMP3_DIRECTORY | native | flatpak | snap | a GIMP the doctor ran
    path: Path

    @property
    def plugin_dir(self) -> Path:
        return self.path / "plug-ins"


def profile_bases(
    environ: dict | None = None, home: Path | None = None, platform: str | None = None
) -> list[tuple[str, Path]]:
    """(kind, the `GIMP` folder holding one profile per GIMP version) for this kind of system."""
    environ = os.environ if environ is None else environ
    home = Path(home or environ.get("HOME") or Path.home())
    platform = platform or sys.platform
    if platform == "darwin":
        return [("native", home / "Library" / "Application Support" / "GIMP")]
    if platform == "win32":
        return [("native", Path(environ.get("APPDATA") or home / "AppData" / "Roaming") / "GIMP")]
    return [
        ("native", Path(environ.get("XDG_CONFIG_HOME") or home / ".config") / "GIMP"),
        ("flatpak", home / ".var" / "app" / FLATPAK_APP / "config" / "GIMP"),
        ("snap", home / "snap" / SNAP_NAME / "current" / ".config" / "GIMP"),
    ]


def candidate_plugin_dirs(
    environ: dict | None = None, home: Path | None = None, platform: str | None = None
) -> list[tuple[str, Path]]:
    """(kind, GIMP 3.0 plug-ins folder) for every place a GIMP 3 may read plug-ins from, in order."""
    environ = os.environ if environ is None else environ
    out: list[tuple[str, Path]] = []
    if environ.get("GIMP3_DIRECTORY"):
        out.append(("GIMP3_DIRECTORY", Path(environ["GIMP3_DIRECTORY"]) / "plug-ins"))
    out += [(kind, base / "3.0" / "plug-ins") for kind, base in profile_bases(environ, home, platform)]
    return out


def find_profiles(
    environ: dict | None = None, home: Path | None = None, platform: str | None = None
) -> list[GimpProfile]:
    """Every GIMP 3 profile that exists: `$GIMP3_DIRECTORY`, then each 3.x folder of every base."""
    environ = os.environ if environ is None else environ
    found: list[GimpProfile] = []
    explicit = environ.get("GIMP3_DIRECTORY")
    if explicit and Path(explicit).is_dir():
        found.append(GimpProfile("GIMP3_DIRECTORY", Path(explicit)))
    for kind, base in profile_bases(environ, home, platform):
        try:
            names = [p.name for p in base.iterdir() if p.is_dir() and _PROFILE_VERSION.fullmatch(p.name)]
        except OSError:
            continue
        for name in sorted(names, key=lambda n: int(_PROFILE_VERSION.fullmatch(n).group(1))):
            found.append(GimpProfile(kind, base / name))
    return found


def find_plugin_dirs(environ: dict | None = None, home: Path | None = None, platform: str | None = None) -> list[Path]:
    """The plug-ins folders to install into: `$GIMP3_DIRECTORY`'s, else those of every existing
    GIMP 3 profile, else the native 3.0 one."""
    candidates = candidate_plugin_dirs(environ, home, platform)
    explicit = [p for kind, p in candidates if kind == "GIMP3_DIRECTORY"]
    if explicit:
        return explicit
    existing = [p.plugin_dir for p in find_profiles(environ, home, platform) if p.kind != "GIMP3_DIRECTORY"]
    return existing or [p for kind, p in candidates if kind == "native"]


def sandboxed(dest: Path) -> bool:
    """Whether the GIMP reading `dest` runs sandboxed (Flatpak, Snap): it cannot start the engine."""
    parts = Path(dest).parts
    snap = any(a == "snap" and b == SNAP_NAME for a, b in zip(parts, parts[1:], strict=False))
    return FLATPAK_APP in parts or snap


# --------------------------------------------------------------------------- sources


def entry_source() -> Path:
    """The GIMP entry file: package data of ffclip.gimp (checkout, editable install or wheel)."""
    path = _gimp_package() / NAME / ENTRY
    if not path.is_file():
        raise FileNotFoundError(f"cannot find the GIMP entry {ENTRY} (looked in {path.parent})")
    return path


def _gimp_package() -> Path:
    from ffclip import gimp

    return Path(gimp.__file__).resolve().parent


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

    return {"plugin": Path(plugin.__file__).resolve().parent, "gimp": _gimp_package()}


def source_version() -> str:
    """The version this installer writes into `<plug-in>/VERSION`: the engine's, the same distribution."""
    from ffclip.engine import __version__

    return __version__


def entry_text(source: Path) -> str:
    """The entry as installed: LF line endings and an interpreter line, whatever the source had."""
    text = source.read_text(encoding="utf-8").replace("\r\n", "\n")
    return text if text.startswith("#!") else "#!/usr/bin/env python3\n" + text


def shipped_files(source: Path) -> list[Path]:
    """The files (relative to `source`) that the installer copies out of a package folder."""
    out: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(source):
        ignored = _NOT_SHIPPED(dirpath, dirnames + filenames)
        dirnames[:] = sorted(d for d in dirnames if d not in ignored)
        out += [Path(dirpath, f).relative_to(source) for f in sorted(filenames) if f not in ignored]
    return out


# --------------------------------------------------------------------------- what is installed


def installed_version(target: Path) -> str | None:
    """The version recorded in an installed plug-in folder (None: installed before versions were kept)."""
    try:
        text = (Path(target) / VERSION_NAME).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return text or None


def differing_files(target: Path) -> list[str]:
    """Files of the installed plug-in `target` that are missing or differ from what `install` writes now."""
    target = Path(target)
    out: list[str] = []
    entry = target / ENTRY
    if not entry.is_file() or entry.read_bytes() != entry_text(entry_source()).encode("utf-8"):
        out.append(ENTRY)
    for name, source in package_sources().items():
        for rel in shipped_files(source):
            copy = target / PACKAGE / name / rel
            if not copy.is_file() or copy.read_bytes() != (source / rel).read_bytes():
                out.append(f"{PACKAGE}/{name}/{rel.as_posix()}")
    return out


# --------------------------------------------------------------------------- install / uninstall


def default_start_command(url: str) -> list[str]:
    port = gimp_settings.url_port(url)
    return [sys.executable, "-m", "ffclip.app", "serve", "--port", str(port)]


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
        print(f"would write {target / VERSION_NAME}: {source_version()}")
        print(f"would write {target / gimp_settings.SETTINGS_NAME}: {_shown(settings)}")
        return target
    target.mkdir(parents=True, exist_ok=True)
    entry_path = target / ENTRY
    tmp = entry_path.with_suffix(".py.tmp")
    tmp.write_text(entry_text(entry), encoding="utf-8", newline="\n")
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
    (target / VERSION_NAME).write_text(source_version() + "\n", encoding="utf-8")
    gimp_settings.save_settings(target, settings)
    return target


def _shown(settings: dict) -> dict:
    """`settings` as printed: the token hidden, since terminals, logs and screen shares keep what is printed."""
    return {**settings, "token": "<hidden>"} if settings.get("token") else settings


def uninstall(dest: Path, dry_run: bool = False) -> Path | None:
    """Remove `dest/ffclip-edit` (only when it holds our entry); returns what was removed."""
    target = Path(dest) / NAME
    if not (target / ENTRY).is_file() and not (target / PACKAGE).is_dir() and not (target / OLD_PACKAGE).is_dir():
        return None
    if not dry_run:
        shutil.rmtree(target)
    return target
