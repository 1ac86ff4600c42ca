"""Where FFCLIP Edit keeps its per-user files: one folder that the daemon and the GIMP side share.

Standard library only (shipped into GIMP with the rest of ffclip.plugin).
"""

from __future__ import annotations

import os
from pathlib import Path

APP_DIR = "ffclip-edit"
ENGINE_LOG = "engine.log"  # the daemon's own log (rotated)
ENGINE_START_LOG = "engine-start.log"  # console output of a daemon the plug-in started (early crashes)
PLUGIN_LOG = "plugin.log"  # the plug-in's unexpected errors
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
