"""`ffclip-engine install-gimp-plugin`: put the FFCLIP Edit plug-in where GIMP 3 finds it.

GIMP 3 loads a Python plug-in only from `<plug-ins>/<name>/<name>.py`, executable, with a
`#!/usr/bin/env python3` line and LF line endings; anything else is silently ignored, which is why
the menu entry "never appears". This command writes exactly that layout:

    <plug-ins>/ffclip-edit/ffclip-edit.py        the GIMP entry (gimp/ffclip-edit/ffclip-edit.py)
    <plug-ins>/ffclip-edit/ffclip_plugin/        a copy of this package (standard library only)
    <plug-ins>/ffclip-edit/ffclip-edit.json      settings: engine URL, token, autostart

Plug-in folders found: `--dest DIR`, else `$GIMP3_DIRECTORY/plug-ins`, the native
`~/.config/GIMP/3.0/plug-ins` and the Flatpak `~/.var/app/org.gimp.GIMP/config/GIMP/3.0/plug-ins`
(every one whose GIMP 3 profile exists; the native one when none does). Standard library only.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import stat
import sys
from pathlib import Path

from . import gimp_settings

NAME = "ffclip-edit"
ENTRY = f"{NAME}.py"
PACKAGE = "ffclip_plugin"
FLATPAK_APP = "org.gimp.GIMP"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dest", metavar="DIR", help="GIMP 3 plug-ins folder (default: found automatically)")
    parser.add_argument("--uninstall", action="store_true", help="remove the plug-in instead")
    parser.add_argument("--url", help=f"engine URL the plug-in uses (default {gimp_settings.DEFAULT_URL})")
    parser.add_argument("--token", help="access token, when the daemon runs with --token")
    auto = parser.add_mutually_exclusive_group()
    auto.add_argument(
        "--autostart",
        dest="autostart",
        action="store_true",
        default=None,
        help="let the plug-in start the engine when it is not running (local URL only; the default, "
        "except for the Flatpak GIMP, whose sandbox cannot run it)",
    )
    auto.add_argument("--no-autostart", dest="autostart", action="store_false", help="never start it")
    parser.add_argument(
        "--start-command",
        help="command that starts the engine (default: this Python's `ffclip-engine serve --port PORT`)",
    )
    parser.add_argument("--start-timeout", type=float, help="seconds to wait for a started engine (default 120)")
    parser.add_argument("--dry-run", action="store_true", help="print what would be done")


def run(args: argparse.Namespace) -> int:
    try:
        dests = [Path(args.dest).expanduser()] if args.dest else find_plugin_dirs()
    except RuntimeError as exc:
        print(f"install-gimp-plugin: {exc}", file=sys.stderr)
        return 1
    status = 0
    for dest in dests:
        try:
            if args.uninstall:
                removed = uninstall(dest, dry_run=args.dry_run)
                print(f"removed {removed}" if removed else f"nothing to remove in {dest}")
            else:
                flatpak = FLATPAK_APP in dest.parts
                target = install(dest, _settings_from_args(args), dry_run=args.dry_run, default_autostart=not flatpak)
                print(f"installed {target / ENTRY}")
        except (OSError, ValueError) as exc:
            print(f"install-gimp-plugin: {dest}: {exc}", file=sys.stderr)
            status = 1
    if status == 0 and not args.uninstall and not args.dry_run:
        print(
            "Restart GIMP: the entries are Filters > FFCLIP Edit... and Filters > FFCLIP Cancel.\n"
            "Start the engine with: ffclip-engine serve"
        )
    return status


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
    """The GIMP entry file: in the wheel (`ffclip.gimp`), in a checkout, or next to this package."""
    here = Path(__file__).resolve().parent
    candidates = [
        here.parent / "gimp" / NAME / ENTRY,  # source checkout / editable install
        here.parent / ENTRY,  # running from an installed plug-in folder
    ]
    try:
        from importlib.resources import files

        candidates.insert(0, Path(str(files("ffclip.gimp") / NAME / ENTRY)))
    except Exception:  # noqa: BLE001 - no ffclip.gimp package: use the other places
        pass
    for path in candidates:
        if path.is_file():
            return path
    looked = ", ".join(map(str, candidates))
    raise FileNotFoundError(f"cannot find the GIMP entry {ENTRY} (looked in {looked})")


def package_source() -> Path:
    return Path(__file__).resolve().parent


# --------------------------------------------------------------------------- install / uninstall


def default_start_command(url: str) -> list[str]:
    port = gimp_settings.url_port(url)
    return [sys.executable, "-m", "ffclip.engine", "serve", "--port", str(port)]


def _settings_from_args(args: argparse.Namespace) -> dict:
    given: dict = {}
    if args.url:
        given["url"] = gimp_settings.normalize_url(args.url)
    if args.token is not None:
        given["token"] = args.token or None
    if args.autostart is not None:
        given["autostart"] = bool(args.autostart)
    if args.start_command:
        given["start_command"] = shlex.split(args.start_command)
    if args.start_timeout is not None:
        given["start_timeout"] = float(args.start_timeout)
    return given


def install(dest: Path, given: dict | None = None, dry_run: bool = False, default_autostart: bool = True) -> Path:
    """Install into the plug-ins folder `dest`; returns `dest/ffclip-edit`.

    Settings already there are kept unless given again (a reinstall keeps the user's URL); a first
    install starts with autostart = `default_autostart`.
    """
    given = dict(given or {})
    target = Path(dest) / NAME
    entry = entry_source()
    package = package_source()
    had_settings = (target / gimp_settings.SETTINGS_NAME).is_file()
    settings = gimp_settings.load_settings(target if target.is_dir() else None)
    if not had_settings:
        settings["autostart"] = bool(default_autostart)
    settings.update(given)
    if not settings.get("start_command"):
        settings["start_command"] = default_start_command(settings["url"])
    if dry_run:
        print(f"would copy {entry} -> {target / ENTRY}")
        print(f"would copy {package} -> {target / PACKAGE}")
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
    pkg_target = target / PACKAGE
    if pkg_target.exists():
        shutil.rmtree(pkg_target)
    shutil.copytree(package, pkg_target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "tests"))
    gimp_settings.save_settings(target, settings)
    return target


def uninstall(dest: Path, dry_run: bool = False) -> Path | None:
    """Remove `dest/ffclip-edit` (only when it holds our entry); returns what was removed."""
    target = Path(dest) / NAME
    if not (target / ENTRY).is_file() and not (target / PACKAGE).is_dir():
        return None
    if not dry_run:
        shutil.rmtree(target)
    return target
