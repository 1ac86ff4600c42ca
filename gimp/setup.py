"""Setting up the engine on this computer, from inside GIMP: a private Python environment with torch
and the engine, the desktop service, the plug-in's settings, the engine started.

Standard library only: this module is copied into the GIMP plug-in folder (app/install.py) and runs in
GIMP's Python. The work is done by other processes — the host's Python (3.10+), then the private
environment's pip and `ffclip-engine` — whose output goes to the set-up log (state folder, setup.log).

The steps (STEPS), each skipped on a re-run when what it made is still there and works:

1. python       a host Python 3.10+ (FFCLIP_PYTHON, python3.13 ... python3.10, python3, python; `py -3`)
2. environment  `python -m venv --without-pip <data>/engine` (a broken half-made one is remade)
3. pip          pip bootstrapped from the bundled wheel: `<env python> <pip.whl>/pip install --no-index <pip.whl>`
                (Debian and others leave out ensurepip; the bundled pip is also one that reports progress)
4. torch        the CUDA build where an NVIDIA GPU is present, the CPU build otherwise (torch_index)
5. engine       the bundled `wheels/ffclip_edit-<version>-py3-none-any.whl`, its dependencies from the index
6. service      `ffclip-engine service install` where a user service manager answers; elsewhere (a chroot,
                a container, macOS, Windows) the plug-in's autostart starts the engine, and the record says so
7. start        the plug-in's settings (autostart, start_command; an existing local URL and token kept),
                then the engine started (or the service's awaited) until it answers on its URL; its own
                model download follows (the dialog shows it)

A record (`setup.json` in the data folder, written atomically) keeps what each step made; a lock file
(`setup.lock`, the pid) keeps a second set-up out. Cancelling kills the running step's process tree and
keeps the record, so the next run resumes.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ffclip.gimp import settings as gimp_settings
from ffclip.plugin import paths
from ffclip.plugin.paths import data_dir

__all__ = [
    "STEPS",
    "SetupBusy",
    "SetupCancelled",
    "SetupError",
    "SetupEvent",
    "SetupResult",
    "Setup",
    "data_dir",
    "find_python",
    "host_commands",
    "in_flatpak",
    "last_setup",
    "torch_index",
]

PROCEDURE = "python-fu-ffclip-setup"
MENU_LABEL = "FFCLIP Set up the engine..."
STEPS = ("python", "environment", "pip", "torch", "engine", "service", "start")
PROFILES = ("", "tiny")
MIN_PYTHON = (3, 10)
PYTHON_NAMES = ("python3.13", "python3.12", "python3.11", "python3.10", "python3", "python")
ENV_FOLDER = "engine"  # <data>/engine: the private environment
RECORD_NAME = "setup.json"
LOCK_NAME = "setup.lock"
LOG_NAME = "setup.log"
LOG_LIMIT = 8 << 20  # bytes; a larger setup.log is moved to setup.log.1 when a set-up starts
WHEELS = "wheels"  # <plug-in>/wheels: the engine's wheel and pip's (the bundle, app/bundle.py)
ENGINE_WHEEL = re.compile(r"ffclip_edit-([^-]+)-py3-none-any\.whl")
PIP_WHEEL = re.compile(r"pip-([^-]+)-py3-none-any\.whl")
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
TORCH_CUDA_INDEX_WINDOWS = "https://download.pytorch.org/whl/cu128"  # PyPI's Windows torch is CPU only
RAW_PROGRESS_PIP = (24, 1)  # `--progress-bar raw` ("Progress N of M" lines) from this pip on
STOP_WAIT = 90.0  # seconds for an outdated engine to drain and stop (serve drains for up to 60 s)
START_WAIT = 180.0  # seconds for a started engine to answer (torch's first import can be slow)
TAIL_LINES = 15
LOW_DISK = 256 << 20  # bytes: a folder with less room than a step's largest download and this is full
_NO_PYTHON_HELP = {
    "linux": "Debian/Ubuntu: sudo apt install python3; Fedora: sudo dnf install python3; Arch: sudo pacman -S python",
    "win32": "install Python 3.12 from https://www.python.org/downloads/ (or: winget install Python.Python.3.12)",
    "darwin": "install Python 3.12 from https://www.python.org/downloads/ (or: brew install python@3.12)",
}


# --------------------------------------------------------------------------- what the caller sees


@dataclass(frozen=True)
class SetupEvent:
    """One line of progress: step `step` of `steps` (1-based), what is happening, and how far."""

    step: int
    steps: int
    name: str
    text: str
    fraction: float | None = None
    done_bytes: int | None = None
    total_bytes: int | None = None


class SetupError(Exception):
    """A step failed: which one, why (one clear sentence or two), its log's last lines, what to do."""

    def __init__(
        self,
        step: str,
        message: str,
        log_tail: list[str] | None = None,
        retry: str = "",
        log_path: Path | None = None,
    ):
        super().__init__(message)
        self.step = step
        self.message = message
        self.log_tail = list(log_tail or [])
        self.retry = retry or "Run the set-up again; it resumes where it stopped."
        self.log_path = Path(log_path) if log_path is not None else Path(LOG_NAME)


class SetupCancelled(SetupError):
    """The user cancelled; the record is kept, the next set-up resumes."""


class SetupBusy(SetupError):
    """Another set-up (its pid in the message) holds the lock."""

    def __init__(self, step: str, message: str, pid: int | None = None, **kwargs):
        super().__init__(step, message, **kwargs)
        self.pid = pid


@dataclass
class SetupResult:
    python: Path  # the private environment's interpreter
    url: str
    start_command: list[str]
    profile: str
    service: str  # what was registered, or why not


# --------------------------------------------------------------------------- finding things


def in_flatpak(environ: dict | None = None) -> bool:
    """GIMP runs in a Flatpak sandbox: it cannot create processes on the host."""
    environ = os.environ if environ is None else environ
    return bool(environ.get("FLATPAK_ID")) or Path("/.flatpak-info").exists()


def find_python(environ: dict | None = None) -> tuple[Path, tuple[int, int]] | None:
    """A host Python >= 3.10 that can make a virtual environment: (its interpreter, (major, minor)).

    FFCLIP_PYTHON first, then python3.13 ... python3.10, python3 and python on PATH, then `py -3` on
    Windows. On Windows and macOS, GIMP's own embedded Python counts only if it is a full one (venv and
    ensurepip); on Linux GIMP runs the system's python3, which is fine."""
    environ = os.environ if environ is None else environ
    for argv in _python_candidates(environ):
        found = _probe_python(argv, environ)
        if found is not None:
            return found
    return None


def _python_candidates(environ: dict) -> list[list[str]]:
    out: list[list[str]] = []
    if environ.get("FFCLIP_PYTHON"):
        out.append([environ["FFCLIP_PYTHON"]])
    search = environ.get("PATH", os.defpath)
    for name in PYTHON_NAMES:
        found = shutil.which(name, path=search)
        if found and [found] not in out:
            out.append([found])
    if sys.platform == "win32":
        launcher = shutil.which("py", path=search)
        if launcher:
            out.append([launcher, "-3"])
    return out


_PROBE = (
    "import sys, venv\n"
    "try:\n import ensurepip; e = 1\nexcept ImportError:\n e = 0\n"
    "print(sys.version_info[0], sys.version_info[1], e, sys.executable)\n"
)


def _probe_python(argv: list[str], environ: dict) -> tuple[Path, tuple[int, int]] | None:
    try:
        out = subprocess.run(
            [*argv, "-I", "-c", _PROBE],
            capture_output=True,
            text=True,
            timeout=30,
            env=child_environment(environ),
            stdin=subprocess.DEVNULL,
            **_no_window(),
        )
    except (OSError, subprocess.SubprocessError):
        return None
    parts = out.stdout.strip().split(" ", 3) if out.returncode == 0 else []
    if len(parts) != 4 or not parts[0].isdigit() or not parts[1].isdigit():
        return None
    version = (int(parts[0]), int(parts[1]))
    if version < MIN_PYTHON:
        return None
    exe = Path(parts[3] or argv[0])
    if sys.platform in ("win32", "darwin") and _is_gimps(exe) and parts[2] != "1":
        return None  # GIMP's embedded Python without ensurepip: not a full Python
    return exe, version


def _is_gimps(exe: Path) -> bool:
    return any("gimp" in part.lower() for part in exe.parts)


def child_environment(environ: dict | None = None) -> dict:
    """The environment for the host's Python and the private environment's programs: GIMP's own Python
    settings (PYTHONHOME, PYTHONPATH on Windows and macOS) and a virtual environment's must not reach them."""
    environ = dict(os.environ if environ is None else environ)
    for key in ("PYTHONHOME", "PYTHONPATH", "PYTHONSTARTUP", "PYTHONUSERBASE", "VIRTUAL_ENV", "__PYVENV_LAUNCHER__"):
        environ.pop(key, None)
    environ["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    environ.setdefault("PYTHONUNBUFFERED", "1")
    environ.setdefault("PYTHONIOENCODING", "utf-8")
    return environ


def env_dir(environ: dict | None = None) -> Path:
    return data_dir(environ) / ENV_FOLDER


def env_python(env: Path, platform: str | None = None) -> Path:
    if (platform or sys.platform) == "win32":
        return env / "Scripts" / "python.exe"
    return env / "bin" / "python"


def nvidia_gpu(environ: dict | None = None) -> bool:
    """An NVIDIA GPU with its driver: /proc/driver/nvidia/version, or nvidia-smi that lists one."""
    environ = os.environ if environ is None else environ
    if environ.get("FFCLIP_GPU") in ("nvidia", "none"):  # tests, and users whose detection is wrong
        return environ["FFCLIP_GPU"] == "nvidia"
    if Path("/proc/driver/nvidia/version").exists():
        return True
    smi = shutil.which("nvidia-smi", path=environ.get("PATH", os.defpath))
    if not smi:
        return False
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=20, **_no_window())
    except (OSError, subprocess.SubprocessError):
        return False
    return out.returncode == 0 and "GPU" in out.stdout


def torch_index(environ: dict | None = None, platform: str | None = None) -> tuple[str | None, str]:
    """(the index URL torch comes from, None for the package index's default; which build).

    FFCLIP_TORCH_INDEX overrides ("" = the default index). Otherwise: with an NVIDIA GPU, PyPI's torch on
    Linux (a CUDA build) and PyTorch's CUDA index on Windows; without one, PyTorch's CPU index on Linux and
    Windows (PyPI's Linux torch would fetch gigabytes of CUDA libraries for nothing) and PyPI on macOS
    (CPU and MPS). Only torch comes from there (that index mirrors torch's own dependencies); the engine's
    other dependencies come from the default index, torch then already satisfied."""
    environ = os.environ if environ is None else environ
    platform = platform or sys.platform
    if "FFCLIP_TORCH_INDEX" in environ:
        given = environ["FFCLIP_TORCH_INDEX"].strip()
        return (given or None), "as FFCLIP_TORCH_INDEX says"
    if platform == "darwin":
        return None, "CPU/MPS"
    if nvidia_gpu(environ):
        return (TORCH_CUDA_INDEX_WINDOWS if platform == "win32" else None), "CUDA"
    return TORCH_CPU_INDEX, "CPU"


def bundled_wheels(plugin_dir: Path) -> tuple[Path | None, Path | None]:
    """(the engine's wheel, pip's wheel) in `<plug-in>/wheels` (the newest of each), None where missing."""
    folder = Path(plugin_dir) / WHEELS
    try:
        names = sorted(p.name for p in folder.iterdir())
    except OSError:
        return None, None

    def newest(pattern: re.Pattern) -> Path | None:
        found = [(_version_key(m.group(1)), n) for n in names if (m := pattern.fullmatch(n))]
        return folder / max(found)[1] if found else None

    return newest(ENGINE_WHEEL), newest(PIP_WHEEL)


def _version_key(text: str) -> tuple:
    return tuple(int(p) if p.isdigit() else -1 for p in re.split(r"[.+]", text))


def wheel_version(wheel: Path) -> str:
    m = ENGINE_WHEEL.fullmatch(wheel.name) or PIP_WHEEL.fullmatch(wheel.name)
    return m.group(1) if m else ""


def torch_requirement(engine_wheel: Path | None) -> str:
    """The engine's own torch requirement (its wheel's metadata), so both steps agree."""
    if engine_wheel is not None:
        with (
            contextlib.suppress(OSError, zipfile.BadZipFile, KeyError, UnicodeDecodeError, StopIteration),
            zipfile.ZipFile(engine_wheel) as z,
        ):
            name = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
            for line in z.read(name).decode("utf-8").splitlines():
                m = re.match(r"Requires-Dist:\s*(torch\b[^;]*)$", line.strip())
                if m:
                    return m.group(1).replace(" ", "")
    return "torch"


def start_command(python: Path, port: int, profile: str = "", platform: str | None = None) -> list[str]:
    """The plug-in's start_command for the private environment's engine."""
    if (platform or sys.platform) == "win32" and python.with_name("pythonw.exe").exists():
        python = python.with_name("pythonw.exe")  # no console window
    command = [str(python), "-m", "ffclip.app", "serve", "--port", str(port)]
    return command + ["--profile", "tiny"] if profile == "tiny" else command


def host_commands(plugin_dir: Path, profile: str = "", environ: dict | None = None) -> list[str]:
    """What a Flatpak GIMP's user types in a terminal on the host to do the same set-up by hand
    (the sandbox cannot start host processes). Paths are the host's: the plug-in folder is the same
    there, the environment goes to the host's ~/.local/share/ffclip-edit/engine."""
    plugin_dir = Path(plugin_dir)
    engine, pip = bundled_wheels(plugin_dir)
    env = "~/.local/share/ffclip-edit/engine"
    py = f"{env}/bin/python"
    q = _sh_quote
    lines = [f"python3 -m venv --without-pip {env}"]
    if pip is not None:
        lines.append(f"{py} {q(str(pip))}/pip install --no-index {q(str(pip))}")
    else:
        lines.append(f"python3 -m venv {env}")
    index, _ = torch_index(environ)
    torch_line = f"{py} -m pip install {q(torch_requirement(engine))}"
    lines.append(torch_line + (f" --index-url {index}" if index else ""))
    wheel = q(str(engine)) if engine is not None else "ffclip-edit"
    lines.append(f"{py} -m pip install {wheel}")
    lines.append(f"{env}/bin/ffclip-engine service install" + (" --profile tiny" if profile == "tiny" else ""))
    return lines


def _sh_quote(text: str) -> str:
    return text if re.fullmatch(r"[\w@%+=:,./~-]+", text) else "'" + text.replace("'", "'\"'\"'") + "'"


def record_path(environ: dict | None = None) -> Path:
    return data_dir(environ) / RECORD_NAME


def log_path(environ: dict | None = None) -> Path:
    return paths.state_dir(environ) / LOG_NAME


def last_setup(environ: dict | None = None) -> dict | None:
    """The set-up record: {"steps": {name: {"done": time, ...what it made}}, "env", "python", "profile",
    "started", "finished", "failure": {"step", "message", "when"} | None, "log", "running": pid | None}."""
    try:
        data = json.loads(record_path(environ).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    data.setdefault("steps", {})
    holder = _lock_holder(data_dir(environ) / LOCK_NAME)
    data["running"] = holder if holder is not None and _pid_alive(holder) else None
    return data


# --------------------------------------------------------------------------- pip's output


_SIZE = re.compile(r"([\d.]+)\s*(bytes|kB|KB|MB|GB|KiB|MiB|GiB)")
_UNITS = {"bytes": 1, "kB": 1000, "KB": 1000, "MB": 1000**2, "GB": 1000**3, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3}
_DOWNLOADING = re.compile(r"^\s*Downloading (\S+?) \((.+)\)\s*$")
_PROGRESS = re.compile(r"^\s*Progress (\d+) of (\d+)\s*$")
_COLLECTING = re.compile(r"^\s*Collecting (\S+)")
_INSTALLING = re.compile(r"^\s*Installing collected packages: (.+)$")
_PROCESSING = re.compile(r"^\s*Processing (\S+)")
_BUILDING = re.compile(r"^\s*Building wheel for (\S+)")


def parse_size(text: str) -> int | None:
    m = _SIZE.search(text)
    return int(float(m.group(1)) * _UNITS[m.group(2)]) if m else None


def short_size(n: int) -> str:
    for unit, size in (("GB", 1000**3), ("MB", 1000**2), ("kB", 1000)):
        if n >= size:
            return f"{n / size:.1f} {unit}" if n < 10 * size else f"{n / size:.0f} {unit}"
    return f"{n} bytes"


def _distribution(file: str) -> str:
    """`torch-2.5.1` of `torch-2.5.1-cp313-...whl` or of a URL to it."""
    name = file.rsplit("/", 1)[-1]
    for ext in (".whl", ".tar.gz", ".zip", ".tar.bz2"):
        if name.endswith(ext):
            name = name[: -len(ext)]
            break
    return "-".join(name.split("-")[:2])


class PipProgress:
    """Turns pip's lines into (text, fraction, done_bytes, total_bytes); None for a line that says nothing new."""

    def __init__(self) -> None:
        self.file: str | None = None
        self.total: int | None = None
        self.count = 0  # files downloaded

    def feed(self, line: str) -> tuple[str, float | None, int | None, int | None] | None:
        m = _PROGRESS.match(line)
        if m:
            done, total = int(m.group(1)), int(m.group(2)) or self.total
            if done == 0 and self.file is not None:
                return None  # the line after "Downloading X (size)" says nothing new
            if total:
                self.total = total
            label = self.file or "package"
            if total:
                text = f"Downloading {label} ({short_size(done)} of {short_size(total)})"
                return text, min(1.0, done / total), done, total
            return f"Downloading {label} ({short_size(done)})", None, done, None
        m = _DOWNLOADING.match(line)
        if m:
            self.file, self.total = _distribution(m.group(1)), parse_size(m.group(2))
            self.count += 1
            size = f" ({short_size(self.total)})" if self.total else ""
            return f"Downloading {self.file}{size}", (0.0 if self.total else None), 0, self.total
        m = _COLLECTING.match(line)
        if m:
            return f"Collecting {m.group(1)}", None, None, None
        m = _PROCESSING.match(line)
        if m:
            return f"Using {_distribution(m.group(1))}", None, None, None
        m = _BUILDING.match(line)
        if m:
            return f"Building {m.group(1)}", None, None, None
        m = _INSTALLING.match(line)
        if m:
            names = [n.strip() for n in m.group(1).split(",") if n.strip()]
            shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
            return f"Installing {len(names)} package{'s' if len(names) != 1 else ''}: {shown}", None, None, None
        if line.startswith("Successfully installed"):
            return "Installed", 1.0, None, None
        return None


# --------------------------------------------------------------------------- failures


_DISK_FULL = ("No space left on device", "[Errno 28]", "ENOSPC", "Disk quota exceeded", "[Errno 122]")
_NO_NETWORK = (
    "Failed to establish a new connection",
    "NewConnectionError",
    "Temporary failure in name resolution",
    "Name or service not known",
    "Network is unreachable",
    "Connection refused",
    "Connection reset",
    "Max retries exceeded",
    "Read timed out",
    "ConnectTimeoutError",
    "ProxyError",
    "Could not fetch URL",
    "getaddrinfo failed",
    "CERTIFICATE_VERIFY_FAILED",
    "incomplete-download",
    "Connection interrupted while downloading",
)
_RESOLUTION = (
    "ResolutionImpossible",
    "No matching distribution found",
    "Could not find a version that satisfies",
    "conflicting dependencies",
    "is not a supported wheel on this platform",
)


def classify(step: str, lines: list[str], returncode: int | None, python: tuple[int, int] | None = None) -> tuple:
    """(message, retry) for a step that failed with these output lines."""
    text = "\n".join(lines)
    where = "the engine's packages" if step in ("torch", "engine") else f"the {step} step"
    if any(s in text for s in _DISK_FULL):
        return (
            f"The disk is full: {where} did not fit (torch alone needs about 1 GB, its CUDA build about 5 GB).",
            "Free some disk space, then run the set-up again; it resumes where it stopped.",
        )
    if "CERTIFICATE_VERIFY_FAILED" in text:
        return (
            "The package index's certificate was not trusted (a proxy that intercepts HTTPS?).",
            "Set pip's `cert` option to your proxy's CA file (pip config set global.cert FILE), then retry.",
        )
    if any(s in text for s in _NO_NETWORK):
        return (
            f"No network: pip could not reach the package index for {where}.",
            "Check the internet connection (and a proxy: pip honours HTTPS_PROXY), then run the set-up again.",
        )
    if "(from versions: none)" in text:
        missing = next(
            (
                ln.split("requirement", 1)[-1].split("(from", 1)[0].strip()
                for ln in lines
                if "(from versions: none)" in ln
            ),
            "",
        )
        return (
            f"pip found no release of {missing or where} at all: the package index was not reachable, or it has none.",
            "Check the internet connection and pip's index settings (pip config list), then run the set-up again.",
        )
    if any(s in text for s in _RESOLUTION):
        py = f" for Python {python[0]}.{python[1]}" if python else ""
        missing = next((ln.strip() for ln in lines if "No matching distribution" in ln or "satisfies" in ln), "")
        return (
            f"pip found no version of {where}{py} that fits this computer" + (f" ({missing})." if missing else "."),
            "Point FFCLIP_PYTHON at another Python 3.10-3.13 (torch may not support the newest yet), then retry.",
        )
    status = f" (exit status {returncode})" if returncode is not None else ""
    return f"The {step} step failed{status}.", "Read the log's last lines; then run the set-up again."


def no_python_message(platform: str | None = None) -> str:
    platform = platform or sys.platform
    key = "linux" if platform.startswith("linux") else platform
    names = ", ".join(PYTHON_NAMES)
    how = _NO_PYTHON_HELP.get(key, _NO_PYTHON_HELP["linux"])
    return (
        f"No Python 3.10 or newer was found on this computer (looked for FFCLIP_PYTHON, {names} on PATH"
        + (", and py -3" if platform == "win32" else "")
        + f"). To install one: {how}. Or set FFCLIP_PYTHON to a Python 3.10+ interpreter."
    )


# --------------------------------------------------------------------------- the set-up


class Setup:
    """One set-up run (`run()`, blocking; `cancel()` from any thread)."""

    def __init__(
        self,
        plugin_dir: Path,
        profile: str = "",
        environ: dict | None = None,
        on_event: Callable[[SetupEvent], None] = lambda e: None,
        data_dir: Path | None = None,
    ):
        if profile not in PROFILES:
            raise ValueError(f"profile must be one of {PROFILES}, not {profile!r}")
        self.plugin_dir = Path(plugin_dir)
        self.profile = profile
        self.environ = dict(os.environ if environ is None else environ)
        if data_dir is not None:
            self.environ["FFCLIP_DATA_DIR"] = str(data_dir)
        self.on_event = on_event
        self.data = paths.data_dir(self.environ)
        self.env = self.data / ENV_FOLDER
        self.python = env_python(self.env)
        self.log_path = log_path(self.environ)
        self.child_env = child_environment(self.environ)
        self._lock = threading.Lock()
        self._proc: subprocess.Popen | None = None
        self._cancelled = threading.Event()
        self._step = 0
        self._log = None
        self._record: dict = {}
        self._host_python: tuple[int, int] | None = None
        self._largest_download = 0  # bytes: the largest file the running pip step downloads

    # ------------------------------------------------------------------ public

    def cancel(self) -> None:
        """Stop the set-up: the running step's process tree is killed; run() raises SetupCancelled."""
        self._cancelled.set()
        with self._lock:
            proc = self._proc
        if proc is not None:
            _kill_tree(proc)

    def run(self) -> SetupResult:
        if in_flatpak(self.environ):
            raise SetupError(
                STEPS[0],
                "GIMP runs as a Flatpak here: from inside its sandbox the set-up cannot start programs on "
                "this computer. Run these commands in a terminal, then FFCLIP Edit connects to the engine:\n"
                + "\n".join(host_commands(self.plugin_dir, self.profile, self.environ)),
                retry="Copy the commands into a terminal on this computer (not inside GIMP).",
                log_path=self.log_path,
            )
        engine_wheel, pip_wheel = bundled_wheels(self.plugin_dir)
        if engine_wheel is None:
            raise SetupError(
                "engine",
                f"The plug-in folder {self.plugin_dir} has no engine wheel ({WHEELS}/ffclip_edit-<version>-"
                "py3-none-any.whl): this copy was not installed from FFCLIP Edit's GIMP bundle.",
                retry="Install the plug-in from the release's ffclip-edit zip (or `ffclip-engine gimp-bundle`), "
                "then run the set-up again.",
                log_path=self.log_path,
            )
        self.engine_wheel, self.pip_wheel = engine_wheel, pip_wheel
        try:
            paths.private_folder(self.data)
            paths.private_folder(self.log_path.parent)
        except OSError as exc:
            raise self._os_error(STEPS[0], exc) from exc
        self._acquire_lock()
        try:
            paths.rotate_if_larger(self.log_path, LOG_LIMIT)
            with paths.open_private(self.log_path, "a", encoding="utf-8") as log:
                self._log = log
                return self._run_steps()
        except OSError as exc:
            raise self._os_error(STEPS[self._step - 1] if self._step else STEPS[0], exc) from exc
        finally:
            self._log = None
            self._release_lock()

    # ------------------------------------------------------------------ the steps

    def _run_steps(self) -> SetupResult:
        self._record = last_setup(self.environ) or {}
        self._record.pop("running", None)
        steps = self._record.get("steps") if isinstance(self._record.get("steps"), dict) else {}
        if self._record.get("env") not in (None, str(self.env)):
            steps = {}  # made for another folder
        self._record.update(
            {
                "steps": steps,
                "env": str(self.env),
                "python": str(self.python),
                "profile": self.profile,
                "plugin_dir": str(self.plugin_dir),
                "started": time.time(),
                "finished": None,
                "failure": None,
                "log": str(self.log_path),
            }
        )
        self._write(f"=== set-up started {time.strftime('%Y-%m-%d %H:%M:%S')} (profile {self.profile or 'real'})")
        self._save()
        result: dict = {}
        try:
            for i, name in enumerate(STEPS, 1):
                self._step = i
                self._check_cancel()
                done = steps.get(name)
                verify = getattr(self, f"_verify_{name}", None)
                if isinstance(done, dict) and verify is not None and verify(done):
                    self._event(done.get("summary", "done before") + " (done before)", 1.0)
                    result.update(done)
                    continue
                steps.pop(name, None)
                self._save()
                made = getattr(self, f"_do_{name}")()
                made["done"] = time.time()
                steps[name] = made
                result.update(made)
                self._save()
        except SetupError as exc:
            if not isinstance(exc, SetupCancelled):
                self._record["failure"] = {"step": exc.step, "message": exc.message, "when": time.time()}
            else:
                self._record["failure"] = {"step": exc.step, "message": "cancelled", "when": time.time()}
            self._write(f"=== {exc.step}: {exc.message}")
            with contextlib.suppress(OSError):
                self._save()
            raise
        self._record["finished"] = time.time()
        self._save()
        self._write("=== set-up finished")
        return SetupResult(
            python=self.python,
            url=result["url"],
            start_command=list(result["start_command"]),
            profile=self.profile,
            service=result.get("service", ""),
        )

    def _do_python(self) -> dict:
        self._event("Looking for Python 3.10 or newer on this computer")
        found = find_python(self.environ)
        if found is None:
            raise SetupError(
                "python",
                no_python_message(),
                retry="Install Python 3.10 or newer (or set FFCLIP_PYTHON), then run the set-up again.",
                log_path=self.log_path,
            )
        exe, version = found
        self._host_python = version
        summary = f"Python {version[0]}.{version[1]} at {exe}"
        self._write(summary)
        self._event(summary, 1.0)
        return {"host_python": str(exe), "host_version": list(version), "summary": summary}

    def _verify_python(self, done: dict) -> bool:
        found = _probe_python([done.get("host_python", "")], self.environ) if done.get("host_python") else None
        if found is not None:
            self._host_python = found[1]
        return found is not None

    def _do_environment(self) -> dict:
        host = self._record["steps"]["python"]["host_python"]
        if self.env.exists():
            self._event(f"Removing the unfinished environment in {self.env}")
            self._write(f"removing {self.env}: it does not work")
            shutil.rmtree(self.env, ignore_errors=True)
        self._event(f"Making a private Python environment in {self.env}")
        self._call("environment", [host, "-m", "venv", "--without-pip", str(self.env)])
        if not self._env_works():
            raise self._failed("environment", None, ["the new environment's python does not run"])
        summary = f"Private environment {self.env}"
        self._event(summary, 1.0)
        return {"env": str(self.env), "summary": summary}

    def _verify_environment(self, done: dict) -> bool:
        return self._env_works()

    def _env_works(self) -> bool:
        if not (self.env / "pyvenv.cfg").is_file() or not self.python.exists():
            return False
        return self._quiet([str(self.python), "-c", "import sys"]) == 0

    def _do_pip(self) -> dict:
        if self.pip_wheel is not None:
            self._event(f"Installing pip {wheel_version(self.pip_wheel)} from the plug-in's folder")
            wheel = str(self.pip_wheel)
            self._call(
                "pip",
                [str(self.python), wheel + "/pip", "install", "--no-index", "--disable-pip-version-check", wheel],
            )
        else:
            self._event("Installing pip (ensurepip)")
            self._call("pip", [str(self.python), "-m", "ensurepip", "--default-pip"])
        version = self._pip_version()
        if version is None:
            raise self._failed("pip", None, ["pip does not run in the new environment"])
        summary = f"pip {'.'.join(map(str, version))}"
        self._event(summary, 1.0)
        return {"pip": list(version), "summary": summary}

    def _verify_pip(self, done: dict) -> bool:
        return self._pip_version() is not None

    def _pip_version(self) -> tuple[int, ...] | None:
        code = "import pip; print(pip.__version__)"
        out = self._output([str(self.python), "-c", code])
        if out is None:
            return None
        return tuple(int(p) for p in re.findall(r"\d+", out)[:3]) or None

    def _pip_install(self, step: str, args: list[str]) -> None:
        argv = [str(self.python), "-m", "pip", "install", "--disable-pip-version-check"]
        version = self._pip_version() or (0,)
        if tuple(version[:2]) >= RAW_PROGRESS_PIP:
            argv += ["--progress-bar", "raw"]
        else:
            argv += ["--progress-bar", "off"]
        progress = PipProgress()
        self._largest_download = 0

        def parse(line: str) -> None:
            said = progress.feed(line)
            if said is not None:
                self._event(*said)
                self._largest_download = max(self._largest_download, said[3] or 0)

        self._call(step, argv + args, parse)

    def _do_torch(self) -> dict:
        index, build = torch_index(self.environ)
        requirement = torch_requirement(self.engine_wheel)
        where = index or "the package index"
        overridden = "FFCLIP_TORCH_INDEX" in self.environ
        self._event(
            f"Installing torch from {where}" + (" (FFCLIP_TORCH_INDEX)" if overridden else f", its {build} build")
        )
        try:
            self._pip_install("torch", [requirement] + (["--index-url", index] if index else []))
        except SetupError as exc:
            if index is None or overridden or not exc.message.startswith("No network"):
                raise
            # PyTorch's own index is out of reach (a firewall that lets only PyPI through): PyPI's torch
            # works too, only larger on Linux (its CUDA build)
            self._write(f"{index} is not reachable: torch from the default package index instead")
            self._event(f"{index} is not reachable: installing torch from the package index instead")
            index = None
            self._pip_install("torch", [requirement])
        version = self._output([str(self.python), "-c", "import torch; print(torch.__version__)"])
        if version is None:
            raise self._failed("torch", None, ["torch was installed but does not import; see the log"])
        summary = f"torch {version.strip()}"
        self._event(summary, 1.0)
        return {"torch": version.strip(), "torch_index": index, "summary": summary}

    def _verify_torch(self, done: dict) -> bool:
        return self._quiet([str(self.python), "-c", "import torch"]) == 0

    def _do_engine(self) -> dict:
        version = wheel_version(self.engine_wheel)
        self._event(f"Installing the FFCLIP engine {version} and its packages")
        self._pip_install("engine", [str(self.engine_wheel)])
        if not self._verify_engine({"engine": version}):
            raise self._failed("engine", None, ["the engine was installed but does not import; see the log"])
        summary = f"FFCLIP engine {version}"
        self._event(summary, 1.0)
        return {"engine": version, "summary": summary}

    def _verify_engine(self, done: dict) -> bool:
        code = (
            "import importlib.metadata as m, ffclip.app, ffclip.engine, ffclip.bridge; print(m.version('ffclip-edit'))"
        )
        out = self._output([str(self.python), "-c", code])
        return out is not None and out.strip() == wheel_version(self.engine_wheel) == done.get("engine")

    def _port_and_url(self) -> tuple[dict, str, int]:
        settings = gimp_settings.load_settings(self.plugin_dir)
        url = str(settings.get("url") or gimp_settings.DEFAULTS["url"])
        try:
            url = gimp_settings.normalize_url(url)
        except ValueError:
            url = gimp_settings.DEFAULTS["url"]
        if not gimp_settings.is_local_url(url) or url.startswith("wss://"):
            url = gimp_settings.DEFAULTS["url"]  # this set-up makes a local engine; a remote one is replaced
        return settings, url, gimp_settings.url_port(url)

    def _do_service(self) -> dict:
        _, _, port = self._port_and_url()
        why_not = self._service_manager()
        if why_not is not None:
            summary = f"not registered: {why_not}; the plug-in starts the engine when it is needed"
            self._write(summary)
            self._event(summary, 1.0)
            return {"service": summary, "service_registered": False, "summary": summary}
        self._event("Registering the engine as a desktop service")
        argv = [str(self.python), "-m", "ffclip.app", "service", "install", "--port", str(port)]
        if self.profile == "tiny":
            argv += ["--profile", "tiny"]
        rc, lines = self._call("service", argv, check=False)
        if rc == 0 and not any("systemctl not found" in ln for ln in lines):
            summary = "registered: the systemd user service ffclip-engine.service"
            registered = True
        else:
            said = next((ln for ln in reversed(lines) if ln.strip()), f"exit status {rc}")
            summary = f"not registered ({said.strip()}); the plug-in starts the engine when it is needed"
            registered = False
        self._event(summary, 1.0)
        return {"service": summary, "service_registered": registered, "summary": summary}

    def _service_manager(self) -> str | None:
        """Why no user service manager can take the engine (None: systemd's user instance answers)."""
        if not sys.platform.startswith("linux"):
            return "on this system the service is set up by hand (ffclip-engine service install prints how)"
        if self.environ.get("FFCLIP_NO_SERVICE"):
            return "FFCLIP_NO_SERVICE is set"
        systemctl = shutil.which("systemctl", path=self.environ.get("PATH", os.defpath))
        if systemctl is None:
            return "no systemctl here (a container or chroot?)"
        if self._quiet([systemctl, "--user", "show-environment"]) != 0:
            return "systemd's user instance does not answer (no login session?)"
        return None

    def _do_start(self) -> dict:
        settings, url, port = self._port_and_url()
        command = start_command(self.python, port, self.profile)
        settings.update({"url": url, "autostart": True, "start_command": command})
        self._event("Writing the plug-in's settings")
        written = gimp_settings.save_settings(self.plugin_dir, settings)
        self._write(f"wrote {written}: url {url}, autostart, start_command {command}")
        registered = bool(self._record["steps"].get("service", {}).get("service_registered"))
        status = self._answer(url, settings)
        outdated = self._outdated(status) if status is not None else None
        if outdated is not None:  # an update, or another profile: the engine running is not this set-up's
            self._event(f"The engine running at {url} is {outdated}: restarting it")
            self._stop_engine(url, port, registered, outdated)
            status = None
        if status is None and not registered:
            self._event(f"Starting the engine on port {port}")
            self._start_engine(command)
        elif status is None:
            self._event("Waiting for the engine's service to answer")
        deadline = time.monotonic() + max(START_WAIT, float(settings.get("start_timeout") or 0))
        while status is None:
            self._check_cancel()
            if time.monotonic() > deadline:
                raise self._failed(
                    "start",
                    None,
                    _tail_of(self._engine_log()),
                    f"The engine did not answer at {url} within {START_WAIT:.0f} s.",
                    f"See {self._engine_log()}; then run the set-up again.",
                )
            time.sleep(0.5)
            status = self._answer(url, settings)
            if status is not None and self._outdated(status) is not None:
                status = None  # still the old one (a service that restarts)
        state = status.get("state") or "ready"
        summary = f"The engine answers at {url} ({state})"
        self._event(summary, 1.0)
        return {"url": url, "start_command": command, "state": state, "summary": summary}

    def _outdated(self, status: dict) -> str | None:
        """Why the engine that answers is not the one this set-up made (None: it is)."""
        version, want = status.get("version"), wheel_version(self.engine_wheel)
        if isinstance(version, str) and version and version != want:
            return f"version {version}, not {want}"
        profile = status.get("profile")
        if self.profile == "tiny" and profile not in (None, "", "tiny"):
            return f"on the {profile} profile, not the tiny trial"
        if self.profile == "" and profile == "tiny":
            return "the tiny trial, not the real models"
        return None

    def _stop_engine(self, url: str, port: int, registered: bool, why: str) -> None:
        """Stop this user's engine on `port`: the service restarts itself with its new command; an engine
        of this environment started by the plug-in is ended (it drains first); another program's engine
        is left alone and the set-up says so."""
        if registered:
            systemctl = shutil.which("systemctl", path=self.environ.get("PATH", os.defpath)) or "systemctl"
            self._quiet([systemctl, "--user", "daemon-reload"])
            if self._quiet([systemctl, "--user", "restart", "ffclip-engine.service"]) == 0:
                return  # _do_start waits for an engine that is not outdated
        pids = [pid for pid in _engine_pids(paths.state_dir(self.environ), port) if _pid_alive(pid)]
        ours = [pid for pid in pids if _runs(pid, self.python)]
        if not ours:
            shown = ", ".join(map(str, pids)) or "unknown"
            raise SetupError(
                "start",
                f"Another FFCLIP engine runs at {url} ({why}; process {shown}), not one this set-up started.",
                retry="Stop that engine, then run the set-up again (or give FFCLIP Edit another port).",
                log_path=self.log_path,
            )
        for pid in ours:
            self._write(f"ending the engine {pid} ({why})")
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGTERM)
        if not self._wait_gone(ours):
            for pid in ours:
                with contextlib.suppress(OSError):
                    os.kill(pid, getattr(signal, "SIGKILL", signal.SIGTERM))
            self._wait_gone(ours, 10.0)

    def _wait_gone(self, pids: list[int], seconds: float = STOP_WAIT) -> bool:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self._check_cancel()
            if not any(_pid_alive(p) and not _reaped(p) for p in pids):
                return True
            time.sleep(0.2)
        return False

    def _engine_log(self) -> Path:
        return paths.state_dir(self.environ) / paths.ENGINE_START_LOG

    def _start_engine(self, command: list[str]) -> None:
        """Start the engine detached (it outlives GIMP), its console in engine-start.log, as the
        plug-in's autostart does (gimp/edit.py start_engine) but with this set-up's environment."""
        log = self._engine_log()
        self._write("$ " + " ".join(command) + f"  (detached, output in {log})")
        paths.rotate_if_larger(log, paths.ENGINE_START_LOG_LIMIT)
        with paths.open_private(log, "ab") as out:
            subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                close_fds=True,
                env={**self.child_env, "FFCLIP_DETACHED": "1"},
                **_new_group(),
            )

    def _answer(self, url: str, settings: dict) -> dict | None:
        from ffclip.gimp import edit as gimp_edit
        from ffclip.plugin.client import EngineClient
        from ffclip.plugin.protocol import EngineError

        try:
            client = EngineClient(
                url,
                token=settings.get("token"),
                timeout=10.0,
                connect_timeout=5.0,
                tls=gimp_settings.tls_verify(settings),
                verify_local=gimp_edit.must_be_ours(settings, url),
            )
            status = client.connect()
            client.close()
            return status
        except (EngineError, OSError, ValueError):
            return None

    # ------------------------------------------------------------------ processes

    def _call(
        self, step: str, argv: list[str], parse: Callable[[str], None] | None = None, check: bool = True
    ) -> tuple[int, list[str]]:
        """Run `argv`, its output into the log (and `parse`); a failure raises SetupError (with `check`)."""
        self._check_cancel()
        self._write("$ " + " ".join(argv))
        tail: deque[str] = deque(maxlen=400)
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env=self.child_env,
                **_new_group(),
            )
        except OSError as exc:
            raise self._os_error(step, exc) from exc
        with self._lock:
            self._proc = proc
        if self._cancelled.is_set():
            _kill_tree(proc)
        try:
            for raw in iter(proc.stdout.readline, b""):
                line = raw.decode("utf-8", "replace").rstrip("\r\n")
                self._write(line)
                tail.append(line)
                if parse is not None and not self._cancelled.is_set():
                    parse(line)
            rc = proc.wait()
        finally:
            proc.stdout.close()
            with self._lock:
                self._proc = None
        self._check_cancel()
        self._write(f"(exit status {rc})")
        if check and rc != 0:
            raise self._failed(step, rc, list(tail))
        return rc, list(tail)

    def _quiet(self, argv: list[str], timeout: float = 120.0) -> int:
        try:
            out = subprocess.run(
                argv, capture_output=True, env=self.child_env, timeout=timeout, stdin=subprocess.DEVNULL, **_no_window()
            )
        except (OSError, subprocess.SubprocessError):
            return -1
        if out.returncode != 0:
            self._write(f"$ {' '.join(argv)}: exit status {out.returncode}")
            self._write(out.stderr.decode("utf-8", "replace")[-2000:].rstrip())
        return out.returncode

    def _output(self, argv: list[str]) -> str | None:
        try:
            out = subprocess.run(
                argv, capture_output=True, env=self.child_env, timeout=300, stdin=subprocess.DEVNULL, **_no_window()
            )
        except (OSError, subprocess.SubprocessError):
            return None
        if out.returncode != 0:
            self._write(f"$ {' '.join(argv)}: exit status {out.returncode}")
            self._write(out.stderr.decode("utf-8", "replace")[-2000:].rstrip())
            return None
        return out.stdout.decode("utf-8", "replace").strip()

    def _check_cancel(self) -> None:
        if self._cancelled.is_set():
            name = STEPS[self._step - 1] if self._step else STEPS[0]
            raise SetupCancelled(
                name,
                f"The set-up was cancelled during its {name} step.",
                retry="Run the set-up again to resume where it stopped.",
                log_path=self.log_path,
            )

    def _failed(self, step: str, rc: int | None, lines: list[str], message: str = "", retry: str = "") -> SetupError:
        said, how = classify(step, lines, rc, self._host_python)
        short = self._short_of_space() if not message and not said.startswith("The disk is full") else None
        if short is not None:  # pip blames the network for a download cut short by a full disk
            said, how = short
        return SetupError(
            step,
            message or said,
            log_tail=[ln for ln in lines if ln.strip()][-TAIL_LINES:],
            retry=retry or how,
            log_path=self.log_path,
        )

    def _short_of_space(self) -> tuple[str, str] | None:
        """(message, retry) when the data or the temporary folder has less room than the largest download
        of the failed step needed (pip deletes its partial file, so the disk looks free again afterwards)."""
        need = max(self._largest_download + LOW_DISK, LOW_DISK)
        temp = self.child_env.get("TMPDIR") or self.child_env.get("TEMP") or tempfile.gettempdir()
        for folder in (self.data, Path(temp)):
            try:
                free = shutil.disk_usage(folder).free
            except OSError:
                continue
            if free < need:
                what = f"a {short_size(self._largest_download)} download" if self._largest_download else "the set-up"
                return (
                    f"The disk is full: {folder} has {short_size(free)} free, too little for {what} "
                    "(torch alone needs about 1 GB, its CUDA build about 6 GB).",
                    f"Free some space where {folder} is, then run the set-up again; it resumes where it stopped.",
                )
        return None

    def _os_error(self, step: str, exc: OSError) -> SetupError:
        return self._failed(step, None, [f"{type(exc).__name__}: {exc}"], retry="")

    # ------------------------------------------------------------------ record, log, lock, events

    def _event(self, text: str, fraction: float | None = None, done: int | None = None, total: int | None = None):
        name = STEPS[self._step - 1] if self._step else STEPS[0]
        event = SetupEvent(max(1, self._step), len(STEPS), name, text, fraction, done, total)
        with contextlib.suppress(Exception):  # a broken listener must not break the set-up
            self.on_event(event)

    def _write(self, line: str) -> None:
        if self._log is not None:
            self._log.write(line + "\n")
            self._log.flush()

    def _save(self) -> None:
        gimp_settings.write_json_atomic(record_path(self.environ), self._record)

    def _acquire_lock(self) -> None:
        path = self.data / LOCK_NAME
        for _ in range(3):
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                holder = _lock_holder(path)
                if holder is not None and _pid_alive(holder) and (holder != os.getpid() or path in _HELD):
                    raise SetupBusy(
                        STEPS[0],
                        f"Another set-up is running (process {holder}); wait for it to finish or cancel it.",
                        pid=holder,
                        retry=f"Wait for the other set-up, or end process {holder}, then run the set-up again.",
                        log_path=self.log_path,
                    ) from None
                with contextlib.suppress(FileNotFoundError):  # a stale lock: its process is gone
                    os.unlink(path)
                continue
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(f"{os.getpid()}\n")
            _HELD.add(path)
            return
        raise SetupBusy(STEPS[0], "Another set-up keeps taking the lock.", log_path=self.log_path)

    def _release_lock(self) -> None:
        path = self.data / LOCK_NAME
        if path in _HELD:
            _HELD.discard(path)
            with contextlib.suppress(OSError):
                if _lock_holder(path) == os.getpid():
                    os.unlink(path)


_HELD: set[Path] = set()  # lock files this process holds


def _engine_pids(state: Path, port: int) -> list[int]:
    """The pids of this user's engines that announced `port` (<state>/engines/<pid>.json)."""
    out = []
    for path in (state / paths.ENGINES_DIR).glob("*.json"):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
            pid = int(record["pid"])
            if gimp_settings.url_port(record["url"], -1) == port:
                out.append(pid)
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return out


def _runs(pid: int, python: Path) -> bool:
    """Whether process `pid` runs `python` (its command line names it); True where that cannot be read
    (no /proc: macOS, Windows), since the record that named the pid is this user's own."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return not Path("/proc/self").exists()
    return os.fsencode(str(python)) in argv[:2]


def _reaped(pid: int) -> bool:
    """Whether `pid` has ended as a child of this process (GIMP's plug-in process started it): reaped now."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except (ChildProcessError, OSError, AttributeError):
        return False
    return done == pid


def _lock_holder(path: Path) -> int | None:
    try:
        text = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() else None


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    if sys.platform == "win32":  # os.kill(pid, 0) would end the process there
        import ctypes

        kernel = ctypes.windll.kernel32
        handle = kernel.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
        if not handle:
            return False
        code = ctypes.c_ulong()
        try:
            ok = kernel.GetExitCodeProcess(handle, ctypes.byref(code))
        finally:
            kernel.CloseHandle(handle)
        return bool(ok) and code.value == 259  # STILL_ACTIVE
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # someone else's: alive
    return True


def _new_group() -> dict:
    if sys.platform == "win32":
        return {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP | getattr(subprocess, "CREATE_NO_WINDOW", 0)}
    return {"start_new_session": True}


def _no_window() -> dict:
    return {"creationflags": getattr(subprocess, "CREATE_NO_WINDOW", 0)} if sys.platform == "win32" else {}


def _kill_tree(proc: subprocess.Popen) -> None:
    """End `proc` and everything it started (pip's build processes)."""
    if proc.poll() is not None:
        return
    if sys.platform == "win32":
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            argv = ["taskkill", "/F", "/T", "/PID", str(proc.pid)]
            subprocess.run(argv, capture_output=True, timeout=30, **_no_window())
        return
    with contextlib.suppress(OSError):
        os.killpg(proc.pid, signal.SIGKILL)


def _tail_of(path: Path, lines: int = TAIL_LINES) -> list[str]:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.path.getsize(path) - 16384))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return []
    return [ln for ln in text.splitlines() if ln.strip()][-lines:]
