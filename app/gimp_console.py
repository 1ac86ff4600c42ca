"""Finding and running a GIMP 3 console from the host: a native `gimp-console-3.0`, or one inside a
Debian trixie chroot (.ci/setup-gimp.sh), with the paths mapped between the two. Used by the batch
edit, the doctor and the tests that drive a real GIMP. Standard library only."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_CHROOT = "/opt/gimp3-root"
CHROOT_HOME = "/tmp/ffclip-home"
GIMP_NOISE = (
    "cannot open display",
    "gimp_wire_read(): unexpected EOF",
    "gimp_flush(): error: Broken pipe",
)


@dataclass
class GimpConsole:
    """How to run gimp-console-3.0: natively, or inside a chroot (paths then need mapping)."""

    command: list[str]
    root: Path | None = None
    home: str | None = None  # HOME for GIMP (inside the chroot for a chroot)
    extra_env: dict = field(default_factory=dict)

    @classmethod
    def find(cls, gimp: str | None = None, root: str | None = None, home: str | None = None) -> GimpConsole:
        gimp = gimp or os.environ.get("FFCLIP_GIMP_CONSOLE")
        root = root or os.environ.get("FFCLIP_GIMP_ROOT")
        home = home or os.environ.get("FFCLIP_GIMP_HOME")
        if gimp:
            return cls(shlex.split(gimp), None, home)
        if root:
            return cls.chroot(Path(root), home)
        native = shutil.which("gimp-console-3.0")
        if native:
            return cls([native], None, home)
        if (Path(DEFAULT_CHROOT) / "usr/bin/gimp-console-3.0").exists():
            return cls.chroot(Path(DEFAULT_CHROOT), home)
        raise FileNotFoundError(
            "GIMP 3 was not found: install it (Debian 13: apt install gimp), give --gimp CMD, or build "
            "the trixie chroot with `bash .ci/setup-gimp.sh` (then --gimp-root /opt/gimp3-root)"
        )

    @classmethod
    def chroot(cls, root: Path, home: str | None = None) -> GimpConsole:
        if not (root / "usr/bin/gimp-console-3.0").exists():
            raise FileNotFoundError(f"no gimp-console-3.0 in the chroot {root} (run .ci/setup-gimp.sh)")
        return cls(["/usr/bin/gimp-console-3.0"], root, home or CHROOT_HOME)

    def environment(self) -> dict[str, str]:
        """The variables by which `find()` finds this same GIMP again (in a child process, such as a
        batch run started by a test)."""
        env = {"FFCLIP_GIMP_HOME": self.home or ""}
        if self.root is not None:
            env["FFCLIP_GIMP_ROOT"] = str(self.root)
        else:
            env["FFCLIP_GIMP_CONSOLE"] = shlex.join(self.command)
        return env

    # Paths: `host(p)` is where GIMP's path p lies on this machine; `inside(p)` the reverse.
    def host(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        if self.root is None:
            return path
        return self.root / path.relative_to("/")

    def inside(self, path: str | os.PathLike) -> str:
        path = Path(path).resolve()
        if self.root is None:
            return str(path)
        return "/" + str(path.relative_to(self.root.resolve()))

    def home_dir(self) -> Path:
        """HOME of GIMP, on this machine."""
        if self.home:
            return self.host(self.home)
        return Path(os.environ.get("HOME") or Path.home())

    def plugin_dir(self) -> Path:
        """GIMP 3's plug-ins folder of that HOME, on this machine."""
        return self.home_dir() / ".config" / "GIMP" / "3.0" / "plug-ins"

    def scratch(self) -> Path:
        """A fresh folder GIMP can read and write (inside the chroot's /tmp for a chroot)."""
        base = self.host("/tmp") if self.root is not None else None
        if base is not None:
            base.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix="ffclip-batch-", dir=str(base) if base else None))

    def wrap(self, argv: list[str], display: str | None = None) -> tuple[list[str], dict]:
        """(argv, env) to run a program of GIMP's system (gimp-console, xvfb-run, its python3)."""
        inner = {"HOME": self.home or (CHROOT_HOME if self.root is not None else str(self.home_dir()))}
        if display is not None:
            inner["DISPLAY"] = display
        inner.update(self.extra_env)
        if self.root is None:
            # The host's Python settings (virtualenvs, PYTHONPATH) must not reach GIMP's Python.
            env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON") and k != "DISPLAY"}
            env.pop("VIRTUAL_ENV", None)
            env.update(inner)
            return list(argv), env
        inner = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", **inner}
        env_args = [f"{k}={v}" for k, v in inner.items()]
        host_env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")}
        return ["chroot", str(self.root), "env", "-i", *env_args, *argv], host_env

    def argv(self, *gimp_args: str, display: str | None = None) -> tuple[list[str], dict]:
        """(argv, env) to run gimp-console with `gimp_args`."""
        return self.wrap([*self.command, *gimp_args], display)

    def run_python(self, code: str, timeout: float = 600.0) -> subprocess.CompletedProcess:
        """Run Python `code` inside GIMP (python-fu-eval), without a display."""
        self.home_dir().mkdir(parents=True, exist_ok=True)
        argv, env = self.argv("-i", "-n", "-d", "--batch-interpreter", "python-fu-eval", "-b", "-", "--quit")
        return subprocess.run(argv, input=code, env=env, capture_output=True, text=True, timeout=timeout, check=False)


def clean_log(text: str) -> str:
    """GIMP's output without the known harmless noise."""
    lines = [ln for ln in text.splitlines() if ln.strip() and not any(n in ln for n in GIMP_NOISE)]
    return "\n".join(lines)
