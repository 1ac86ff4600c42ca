"""The daemon as a per-user desktop service (the command `ffclip-engine service` is cli/service.py).

Linux: a systemd user unit (`~/.config/systemd/user/ffclip-engine.service`), enabled and started with
`systemctl --user`. Other systems: the equivalent (a launchd agent, a scheduled task) is printed for
the user to install. `status` asks the running engine itself, so it also works without systemd.
"""

from __future__ import annotations

import argparse
import os
import plistlib
import shlex
import shutil
import subprocess
import sys
import unicodedata
from pathlib import Path

from ffclip.plugin.paths import state_dir

UNIT_NAME = "ffclip-engine.service"
LAUNCHD_LABEL = "org.ffclip.engine"
TASK_NAME = "FFCLIP-Engine"
_SYSTEMD_PLAIN = "-_./:=,+@"  # besides letters and digits: what an unquoted ExecStart= word may hold as itself
_CMD_OPERATORS = "&|<>^()"  # what cmd.exe acts on outside double quotes


class ServiceFileError(ValueError):
    """An argument that a service file cannot hold as itself: refused, nothing is written."""


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
    log = _checked(str(state_dir() / "engine.log"), "a systemd unit")  # a newline would end the comment line
    return f"""[Unit]
Description=FFCLIP Edit engine (text-driven face editing daemon for GIMP)

[Service]
Type=simple
ExecStart={exec_start(command)}
Restart=on-failure
RestartSec=5
# SIGTERM drains: queued and running jobs finish (serve --drain-grace, 60 s), then it tells every client.
KillSignal=SIGTERM
TimeoutStopSec=90
Environment=PYTHONUNBUFFERED=1
# The engine logs to {log} ($XDG_STATE_HOME/ffclip-edit/engine.log).

[Install]
WantedBy=default.target
"""


def exec_start(command: list[str]) -> str:
    """The ExecStart= value that systemd reads back as exactly `command` (systemd.service "Command lines")."""
    program = command[0]
    # systemd runs the first word as a literal path: no variable expansion, so no `$$` either, and a
    # leading `-`, `@`, `+`, `!` or `:` would be read as a flag even when quoted.
    if not program.startswith("/") or "$" in program:
        raise ServiceFileError(f"systemd cannot run {program!r}: it needs an absolute program path without '$'")
    return " ".join(_systemd_quote(part) for part in command)


def _systemd_quote(part: str) -> str:
    """One word of a command line (systemd.syntax "Quoting"): `%` doubled (specifiers are expanded
    inside quotes too), `$` doubled (variables are expanded when the command runs), and in double quotes
    `\\` and `"` backslash-escaped (C escapes apply there)."""
    _checked(part, "a systemd unit")
    if part and all(c.isalnum() or c in _SYSTEMD_PLAIN for c in part):
        return part
    part = part.replace("%", "%%").replace("$", "$$")
    return '"' + part.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _checked(part: str, where: str) -> str:
    """`part`, or ServiceFileError when it holds what `where` cannot carry as itself: a control character
    (a newline in a unit starts a new directive; XML 1.0 has no form for most of them), a lone surrogate
    (a file name that is not UTF-8) or U+FFFE/U+FFFF (not XML characters)."""
    bad = next((c for c in part if unicodedata.category(c) in ("Cc", "Cs") or c in "\ufffe\uffff"), None)
    if bad is not None:
        raise ServiceFileError(f"cannot write {part!r} into {where}: it holds the character {bad!r}")
    return part


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


def other_system_instructions(command: list[str], action: str, platform: str | None = None) -> str:
    if (platform or sys.platform) == "darwin":
        plist = shlex.quote(str(Path.home() / "Library" / "LaunchAgents" / f"{LAUNCHD_LABEL}.plist"))
        if action == "uninstall":
            return f"launchctl bootout gui/$(id -u) {plist}\nrm {plist}"
        return f"Save this as {plist}:\n\n{launchd_plist(command)}\nthen run: launchctl bootstrap gui/$(id -u) {plist}"
    if action == "uninstall":
        return f"schtasks /Delete /TN {TASK_NAME} /F"
    return f"Run in a command prompt:\n  {schtasks_command(command)}"


def launchd_plist(command: list[str]) -> str:
    """The launchd agent that runs `command`: plistlib escapes `&`, `<` and `>`; what XML 1.0 cannot hold
    is refused (plistlib would turn a CR into a LF)."""
    agent = {
        "Label": LAUNCHD_LABEL,
        "ProgramArguments": [_checked(part, "a launchd plist") for part in command],
        "RunAtLoad": True,
        "KeepAlive": {"SuccessfulExit": False},
    }
    return plistlib.dumps(agent, sort_keys=False).decode("utf-8")


def schtasks_command(command: list[str]) -> str:
    """The cmd.exe line that makes a Task Scheduler task run `command` at logon.

    Three parsers read it. The task splits its command line by the MS C runtime rules, so each argument
    is quoted by them (list2cmdline); schtasks splits its own arguments by the same rules, so the whole
    /TR value is one more argument quoted again; cmd.exe, first, toggles "quoted" at every `"` (escaped
    or not) and acts on its operators outside, so those get a `^`. Refused: a `"` in an argument (how
    schtasks splits /TR into program and arguments is not documented for escaped quotes; no Windows path
    holds one) and `%` (cmd expands %NAME% even between quotes and has no escape for it at its prompt).
    """
    for part in command:
        _checked(part, "a scheduled task")
        if '"' in part or "%" in part:
            raise ServiceFileError(f"cannot write {part!r} into a scheduled task: '\"' and '%' cannot be passed")
    create = ["schtasks", "/Create", "/TN", TASK_NAME, "/SC", "ONLOGON", "/TR", subprocess.list2cmdline(command)]
    return _cmd_escape(subprocess.list2cmdline(create))


def _cmd_escape(line: str) -> str:
    """`line` as typed at a cmd.exe prompt: a `^` before each operator outside the quotes cmd sees."""
    out, quoted = [], False
    for c in line:
        quoted ^= c == '"'
        out.append("^" + c if not quoted and c in _CMD_OPERATORS else c)
    return "".join(out)
