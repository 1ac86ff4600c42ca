"""The dialog's Diagnose button: the doctor's report, from inside GIMP.

`ffclip-engine doctor` lives in the engine's installation, not in the plug-in, so the report is
asked of the engine's own Python (the start command's interpreter, or the one the set-up made)
with `--no-gimp` (GIMP is the program asking). Where no engine is installed, the plug-in says what
it knows itself: its settings, the last set-up and the Python it would use. Standard library only.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

DOCTOR_TIMEOUT_S = 120.0
NO_WINDOW = getattr(subprocess, "CREATE_NO_WINDOW", 0)  # Windows: no console flashing up


def engine_python(settings: dict, record: dict | None = None) -> str | None:
    """The Python the engine runs in: the start command's `python -m ffclip.app ...`, else the
    set-up's environment once the engine is installed there."""
    command = settings.get("start_command") or []
    if isinstance(command, str):
        command = command.split()
    if len(command) >= 3 and command[1:3] == ["-m", "ffclip.app"] and Path(command[0]).is_file():
        return command[0]
    record = record or {}
    if "engine" not in (record.get("steps") or {}) or not record.get("env"):
        return None  # the set-up did not get as far as installing the engine
    from .setup import env_python

    python = env_python(Path(record["env"]))
    return str(python) if python.is_file() else None


def doctor_command(settings: dict, url: str, record: dict | None = None) -> list[str] | None:
    python = engine_python(settings, record)
    if python is None:
        return None
    return [python, "-m", "ffclip.app", "doctor", "--no-gimp", "--url", url]


def report(settings: dict, url: str, plugin_dir: str | Path, environ: dict | None = None) -> str:
    """The text the Diagnose window shows (blocking: call it off GTK's main loop)."""
    environ = dict(os.environ if environ is None else environ)
    record = _last_setup(environ)
    command = doctor_command(settings, url, record)
    if command is not None:
        try:
            done = subprocess.run(
                command,
                capture_output=True,
                text=True,
                errors="replace",
                timeout=DOCTOR_TIMEOUT_S,
                env=environ,
                creationflags=NO_WINDOW,
            )
            return (done.stdout + done.stderr).strip() or f"the doctor printed nothing (exit status {done.returncode})"
        except subprocess.TimeoutExpired:
            return f"The doctor did not finish within {DOCTOR_TIMEOUT_S:g} s ({' '.join(command)})."
        except OSError as exc:
            return f"The doctor could not be run ({' '.join(command)}): {exc}"
    return _plugin_report(settings, url, plugin_dir, record, environ)


def _plugin_report(settings: dict, url: str, plugin_dir: str | Path, record: dict | None, environ: dict) -> str:
    from . import setup

    lines = ["No FFCLIP engine is installed on this computer that the plug-in knows of.", ""]
    lines.append(f"Plug-in folder: {plugin_dir}")
    lines.append(f"Engine URL: {url}")
    lines.append(f"Start command: {' '.join(map(str, settings.get('start_command') or [])) or '(none)'}")
    lines.append(f"GIMP's Python: {sys.executable} {sys.version.split()[0]}")
    if setup.in_flatpak(environ):
        lines.append("GIMP runs as a Flatpak: it cannot set the engine up itself; run these in a terminal:")
        lines += [f"    {line}" for line in setup.host_commands(plugin_dir)]
    found = setup.find_python(environ)
    if found:
        lines.append(f"Python for the set-up: {found[0]} {'.'.join(map(str, found[1]))}")
    else:
        lines.append("No Python 3.10 or newer found for the set-up.")
    if record:
        lines += ["", *_setup_lines(record)]
    return "\n".join(lines)


def _setup_lines(record: dict) -> list[str]:
    """The set-up's record in words: when, which steps are done, how it ended, where its log is."""
    lines = [f"Last set-up ({record.get('profile') or 'real models'}), started {_when(record.get('started'))}:"]
    for name, step in (record.get("steps") or {}).items():
        summary = step.get("summary", "") if isinstance(step, dict) else ""
        lines.append(f"    done: {name}" + (f" ({summary})" if summary else ""))
    failure = record.get("failure") or {}
    if record.get("running"):
        lines.append(f"    running now (process {record['running']})")
    elif failure:
        message = str(failure.get("message", "")).strip().splitlines() or ["?"]
        lines.append(f"    stopped at {failure.get('step', '?')} {_when(failure.get('when'))}: {message[0]}")
    elif record.get("finished"):
        lines.append(f"    finished {_when(record['finished'])}")
    if record.get("env"):
        lines.append(f"    environment: {record['env']}")
    if record.get("log"):
        lines.append(f"    log: {record['log']}")
    return lines


def _when(stamp: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(stamp)) if stamp else "(unknown)"


def _last_setup(environ: dict) -> dict | None:
    from . import setup

    try:
        return setup.last_setup(environ)
    except (OSError, ValueError):
        return None
