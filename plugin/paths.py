"""Where FFCLIP Edit keeps its per-user files: one folder that the daemon and the GIMP side share.

Standard library only (shipped into GIMP with the rest of ffclip.plugin).
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import IO

APP_DIR = "ffclip-edit"
ENGINE_LOG = "engine.log"  # the daemon's own log (rotated)
ENGINE_START_LOG = "engine-start.log"  # console output of a daemon the plug-in started (early crashes)
ENGINE_START_LOG_LIMIT = 1 << 20  # bytes; at a start, a larger engine-start.log is moved to engine-start.log.1
PLUGIN_LOG = "plugin.log"  # the plug-in's unexpected errors
ENGINES_DIR = "engines"  # each running engine's record, <pid>.json (its URL, version and identity key)
JOB_STATE = "current-job.json"  # the job FFCLIP Cancel can reach


def state_dir(environ: dict | None = None) -> Path:
    """Logs: $FFCLIP_STATE_DIR, else $XDG_STATE_HOME/ffclip-edit, else ~/.local/state/ffclip-edit
    (%LOCALAPPDATA%\\ffclip-edit on Windows)."""
    environ = os.environ if environ is None else environ
    if environ.get("FFCLIP_STATE_DIR"):
        return Path(environ["FFCLIP_STATE_DIR"])
    if environ.get("XDG_STATE_HOME"):
        return Path(environ["XDG_STATE_HOME"]) / APP_DIR
    if os.name == "nt" and environ.get("LOCALAPPDATA"):
        return Path(environ["LOCALAPPDATA"]) / APP_DIR
    return Path(environ.get("HOME") or Path.home()) / ".local" / "state" / APP_DIR


def data_dir(environ: dict | None = None, platform: str | None = None) -> Path:
    """Data that is made, not configured (the engine's private Python environment, the set-up's
    record): $FFCLIP_DATA_DIR, else $XDG_DATA_HOME/ffclip-edit, else %LOCALAPPDATA%\\ffclip-edit on
    Windows, ~/Library/Application Support/ffclip-edit on macOS, ~/.local/share/ffclip-edit."""
    environ = os.environ if environ is None else environ
    platform = platform or sys.platform
    if environ.get("FFCLIP_DATA_DIR"):
        return Path(environ["FFCLIP_DATA_DIR"])
    if environ.get("XDG_DATA_HOME"):
        return Path(environ["XDG_DATA_HOME"]) / APP_DIR
    home = Path(environ.get("HOME") or environ.get("USERPROFILE") or Path.home())
    if platform == "win32":
        return Path(environ.get("LOCALAPPDATA") or home / "AppData" / "Local") / APP_DIR
    if platform == "darwin":
        return home / "Library" / "Application Support" / APP_DIR
    return home / ".local" / "share" / APP_DIR


def runtime_dir(environ: dict | None = None) -> Path:
    """Short-lived files (the running job): $FFCLIP_STATE_DIR, else $XDG_RUNTIME_DIR/ffclip-edit,
    else the state folder."""
    environ = os.environ if environ is None else environ
    if environ.get("FFCLIP_STATE_DIR"):
        return Path(environ["FFCLIP_STATE_DIR"])
    runtime = environ.get("XDG_RUNTIME_DIR")
    if runtime and Path(runtime).is_dir():
        return Path(runtime) / APP_DIR
    return state_dir(environ)


def private_folder(path: Path) -> Path:
    """Create `path` (and its parents) readable by this user only (0700); an existing one of ours is
    narrowed to 0700 too. Logs there carry job ids, owner names and addresses."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    with contextlib.suppress(OSError, AttributeError):  # AttributeError: Windows has no getuid
        if path.stat().st_uid == os.getuid():
            os.chmod(path, 0o700)
    return path


def open_private(path: str | os.PathLike, mode: str = "a", encoding: str | None = None) -> IO:
    """Open `path` for writing ("w") or appending ("a", "ab") as a file only its owner may read: 0600 from
    its creation (no umask window), an existing file narrowed to 0600."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if "a" in mode else os.O_TRUNC) | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags, 0o600)
    if hasattr(os, "fchmod"):
        with contextlib.suppress(OSError):
            os.fchmod(fd, 0o600)
    return os.fdopen(fd, mode, encoding=encoding if "b" not in mode else None)


def rotate_if_larger(path: str | os.PathLike, limit: int) -> None:
    """Move `path` to `path.1` (replacing it) when it has grown past `limit` bytes."""
    with contextlib.suppress(OSError):
        if os.path.getsize(path) > limit:
            os.replace(path, f"{os.fspath(path)}.1")
