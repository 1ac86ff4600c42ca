"""The daemon as a per-user desktop service (the command `ffclip-engine service` is cli/service.py).

Linux: a systemd user unit (`~/.config/systemd/user/ffclip-engine.service`), enabled and started with
`systemctl --user`. Other systems: the equivalent (a launchd agent, a scheduled task) is printed for
the user to install. `status` asks the running engine itself, so it also works without systemd.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from ffclip.plugin.paths import state_dir

UNIT_NAME = "ffclip-engine.service"
LAUNCHD_LABEL = "org.ffclip.engine"


def serve_command(args: argparse.Namespace) -> list[str]:
    """The `serve` command line the service runs (the current interpreter, so the same install)."""
    command = [sys.executable, "-m", "ffclip.app", "serve", "--host", args.host, "--port", str(args.port)]
    if args.models:
        command += ["--models", str(Path(args.models).expanduser().resolve())]
    elif args.profile != "real":
        command += ["--profile", args.profile]
    for option in ("token_file", "tokens_file", "tls_cert", "tls_key"):
        value = getattr(args, option, None)
        if value:
            command += ["--" + option.replace("_", "-"), str(Path(value).expanduser().resolve())]
    if getattr(args, "insecure_plain_token", False):
        command.append("--insecure-plain-token")
    if getattr(args, "devices", None):
        command += ["--devices", args.devices]
    elif args.device != "auto":
        command += ["--device", args.device]
    return command


def unit_dir(args: argparse.Namespace) -> Path:
    if args.unit_dir:
        return Path(args.unit_dir)
    config = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config) / "systemd" / "user"


def unit_text(command: list[str]) -> str:
    return f"""[Unit]
Description=FFCLIP Edit engine (text-driven face editing daemon for GIMP)

[Service]
Type=simple
ExecStart={" ".join(_systemd_quote(part) for part in command)}
Restart=on-failure
RestartSec=5
# SIGTERM lets running jobs end between two stages and tells every client.
KillSignal=SIGTERM
TimeoutStopSec=30
Environment=PYTHONUNBUFFERED=1
# The engine logs to {state_dir() / "engine.log"} ($XDG_STATE_HOME/ffclip-edit/engine.log).

[Install]
WantedBy=default.target
"""


def _systemd_quote(part: str) -> str:
    if part and all(c.isalnum() or c in "-_./:=,+@" for c in part):
        return part
    return '"' + part.replace("\\", "\\\\").replace('"', '\\"') + '"'


def install(unit_path: Path, text: str, args: argparse.Namespace) -> int:
    if args.print_only:
        print(f"# {unit_path}\n{text}")
        return 0
    unit_path.parent.mkdir(parents=True, exist_ok=True)
    unit_path.write_text(text, encoding="utf-8")
    print(f"wrote {unit_path}")
    if args.no_systemctl:
        return 0
    if shutil.which("systemctl") is None:
        print("systemctl not found: start the engine with:\n  " + shlex.join(serve_command(args)))
        return 0
    for step in (["daemon-reload"], ["enable", "--now", UNIT_NAME]):
        if _systemctl(step) != 0:
            print(f"systemctl --user {' '.join(step)} failed; the unit file is in place", file=sys.stderr)
            return 1
    print(f"the engine runs as the user service {UNIT_NAME}; logs: {state_dir() / 'engine.log'}")
    return 0


def uninstall(unit_path: Path, args: argparse.Namespace) -> int:
    if args.print_only:
        print(f"systemctl --user disable --now {UNIT_NAME}\nrm {unit_path}\nsystemctl --user daemon-reload")
        return 0
    systemctl = not args.no_systemctl and shutil.which("systemctl") is not None
    if systemctl:
        _systemctl(["disable", "--now", UNIT_NAME])
    if unit_path.exists():
        unit_path.unlink()
        print(f"removed {unit_path}")
    else:
        print(f"no unit at {unit_path}")
    if systemctl:
        _systemctl(["daemon-reload"])
    return 0


def _systemctl(arguments: list[str]) -> int:
    try:
        return subprocess.run(["systemctl", "--user", *arguments], check=False).returncode
    except OSError as exc:
        print(f"cannot run systemctl: {exc}", file=sys.stderr)
        return 1


def status(args: argparse.Namespace) -> int:
    """Print whether the unit is installed/active and what the engine on the port says. 0 = running."""
    if sys.platform.startswith("linux"):
        unit_path = unit_dir(args) / UNIT_NAME
        print(f"unit: {unit_path} ({'installed' if unit_path.exists() else 'not installed'})")
        if not args.no_systemctl and shutil.which("systemctl") is not None and unit_path.exists():
            active = subprocess.run(
                ["systemctl", "--user", "is-active", UNIT_NAME], capture_output=True, text=True, check=False
            )
            print(f"systemd: {active.stdout.strip() or 'unknown'}")
    print(f"log: {state_dir() / 'engine.log'}")
    return probe(args.host, args.port, _token(args.token_file))


def probe(host: str, port: int, token: str | None) -> int:
    from ffclip.plugin.client import EngineClient
    from ffclip.plugin.protocol import EngineError

    target = "127.0.0.1" if host in ("0.0.0.0", "") else host
    url = f"ws://{f'[{target}]' if ':' in target else target}:{port}/"
    try:
        with EngineClient(url, token=token, timeout=5.0) as client:
            info = client.last_status
    except EngineError as exc:
        if exc.code == "unauthorized":
            print(f"engine: running at {url} (needs a token)")
            return 0
        print(f"engine: not running at {url} ({exc.message})")
        return 3
    print(
        f"engine: running at {url}: state {info.get('state')}, profile {info.get('profile')}, "
        f"device {info.get('device')}, queue {info.get('queue')}, version {info.get('version')}"
    )
    return 0


def _token(token_file: str | None) -> str | None:
    if not token_file:
        return os.environ.get("FFCLIP_TOKEN") or None
    try:
        return Path(token_file).expanduser().read_text(encoding="utf-8").strip() or None
    except OSError:
        return None


def other_system_instructions(command: list[str], action: str) -> str:
    if sys.platform == "darwin":
        plist = Path.home() / "Library" / "LaunchAgents" / f"{LAUNCHD_LABEL}.plist"
        arguments = "\n".join(f"    <string>{part}</string>" for part in command)
        if action == "uninstall":
            return f"launchctl bootout gui/$(id -u) {plist}\nrm {plist}"
        return f"""Save this as {plist}:

<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">
<plist version="1.0">
<dict>
  <key>Label</key><string>{LAUNCHD_LABEL}</string>
  <key>ProgramArguments</key>
  <array>
{arguments}
  </array>
  <key>RunAtLoad</key><true/>
  <key>KeepAlive</key><dict><key>SuccessfulExit</key><false/></dict>
</dict>
</plist>

then run: launchctl bootstrap gui/$(id -u) {plist}"""
    line = subprocess.list2cmdline(command)
    if action == "uninstall":
        return "schtasks /Delete /TN FFCLIP-Engine /F"
    return f'Run in a command prompt:\n  schtasks /Create /TN FFCLIP-Engine /SC ONLOGON /TR "{line}"'
