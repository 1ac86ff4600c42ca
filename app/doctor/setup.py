"""`ffclip-engine doctor`: the engine set up from inside GIMP (gimp/setup.py, issue 26).

A set-up made by the plug-in leaves a record (setup.json in the data folder): the private
environment, the profile, the steps done, how it ended. The doctor reads it so that a user who set
up from GIMP, and never saw a terminal, gets told which step failed, whether the environment is
still whole, and whether the plug-in's start command still points into it.
"""

from __future__ import annotations

import time
from pathlib import Path

from ffclip.gimp import setup as gimp_setup

from .gimp import FAIL, INFO, OK, Check, Context

GROUP = "Set-up from GIMP"
RESUME = (
    "open FFCLIP Edit\u2026 in GIMP and press \u201cSet up the FFCLIP engine on this computer\u201d again "
    "(it resumes where it stopped)"
)


def setup_checks(ctx: Context, start_commands: list[list[str]] | None = None) -> list[Check]:
    """Nothing when no set-up was ever made from GIMP; else one check of how it stands.
    `start_commands`: the plug-ins' saved start commands, to see whether they use its environment."""
    record = gimp_setup.last_setup(ctx.environ)
    if record is None:
        return []
    env = Path(record.get("env") or gimp_setup.env_dir(ctx.environ))
    python = gimp_setup.env_python(env, "win32" if ctx.platform == "win32" else "linux")
    log = record.get("log") or str(gimp_setup.log_path(ctx.environ))
    profile = record.get("profile") or "real models"
    details = {"env": str(env), "profile": profile, "log": log, "steps": sorted(record.get("steps") or {})}
    failure = record.get("failure") or None
    if record.get("running"):
        return [Check("setup", GROUP, INFO, f"a set-up is running now (process {record['running']})", details=details)]
    if failure:
        step, message = failure.get("step", "?"), failure.get("message", "")
        stopped = "was stopped" if message == "cancelled" else f"failed: {message.splitlines()[0] if message else '?'}"
        return [
            Check(
                "setup",
                GROUP,
                FAIL,
                f"the set-up from GIMP {stopped} (step {step}, {_when(failure.get('when'))})",
                f"{RESUME}; its log: {log}",
                details=details,
            )
        ]
    if not record.get("finished"):
        text = "the set-up from GIMP did not finish"
        return [Check("setup", GROUP, FAIL, text, f"{RESUME}; its log: {log}", details=details)]
    if not python.is_file():
        text = f"the set-up's environment {env} is gone (its Python {python} is missing)"
        return [Check("setup", GROUP, FAIL, text, RESUME, details=details)]
    text = f"set up from GIMP {_when(record['finished'])}: {env} ({profile})"
    checks = [Check("setup", GROUP, OK, text, details=details)]
    if start_commands and not any(c and Path(str(c[0])) == python for c in start_commands):
        checks.append(
            Check(
                "setup.used",
                GROUP,
                INFO,
                f"the plug-in's start command does not use the set-up's environment (it runs {start_commands[0][0]})",
                details=details,
            )
        )
    return checks


def _when(stamp: float | None) -> str:
    return time.strftime("on %Y-%m-%d at %H:%M", time.localtime(stamp)) if stamp else "at an unknown time"
