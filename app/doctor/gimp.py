"""`ffclip-engine doctor`, GIMP side: the GIMP 3 profiles, the plug-in installed in each, whether a
GIMP that runs here registers it, and the plug-in's log files. Standard library only; not shipped
into the plug-in folder (app/install.py).

Every finding is a `Check`: ✔ ok, ✘ fail (with `fix`, the exact command or step that repairs it) or
– info (not checked, not applicable, or worth knowing). A check that fails only because another one
failed names that one in `cause`. Every location comes from a `Context` (HOME, the environment, the
platform, how to run GIMP), so the checks run as well on a fake profile in a test as on a desktop.
The engine-side checks (engine, models, device, engine log) are in ffclip.app.doctor.engine.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ffclip.app import install
from ffclip.gimp import settings as gimp_settings
from ffclip.gimp.edit import CANCEL_PROCEDURE, MENU_LABEL, PROCEDURE
from ffclip.plugin import paths

OK, FAIL, INFO = "ok", "fail", "info"
SYMBOL = {OK: "\u2714", FAIL: "\u2718", INFO: "\u2013"}
INTERPRETER = "#!/usr/bin/env python3"
QUERY_MARK = "FFCLIP-DOCTOR "
_NOT_PASSED = ("HOME", "DISPLAY", "VIRTUAL_ENV")  # never passed on to a GIMP the doctor runs
RESTART_GIMP = "then restart GIMP"


@dataclass
class Check:
    id: str
    group: str
    status: str  # ok | fail | info
    text: str
    fix: str | None = None
    cause: str | None = None  # id of the check whose failure explains this one
    details: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v not in (None, {})}


@dataclass
class Gimp:
    """A GIMP 3 that can run here (app/batch_edit.py GimpConsole) and how it was found."""

    label: str
    console: object  # GimpConsole: run_python(code, timeout), host(path)


@dataclass
class Context:
    """Where the doctor looks: everything it reads about this machine comes from here."""

    environ: dict
    home: Path
    platform: str = sys.platform
    gimps: list[Gimp] | None = None  # None: find them from the environment
    run_gimp: bool = True
    gimp_timeout: float = 180.0
    url: str | None = None  # check this engine URL instead of the plug-in's saved ones
    models_dir: str | None = None
    hash_models: bool = False
    timeout: float = 5.0  # seconds for each connection to an engine
    device_probe: Callable[[], dict] | None = None
    version: str = ""  # this ffclip-edit's version (the engine's)

    @classmethod
    def from_environ(cls, environ: dict | None = None, **kw) -> Context:
        environ = dict(os.environ if environ is None else environ)
        return cls(environ=environ, home=Path(environ.get("HOME") or Path.home()), **kw)


def command(argv: list[str], platform: str = sys.platform) -> str:
    """A command line the user can paste into this system's shell."""
    return subprocess.list2cmdline(argv) if platform == "win32" else shlex.join(argv)


def install_fix(dest: Path, ctx: Context, *extra: str, restart: bool = True) -> str:
    """(Re)install into the plug-ins folder `dest`; GIMP reads new files at start, settings at each run."""
    argv = ["ffclip-engine", "install-gimp-plugin", "--dest", str(dest), *extra]
    return command(argv, ctx.platform) + (f"   ({RESTART_GIMP})" if restart else "")


# --------------------------------------------------------------------------- profiles and the plug-in


@dataclass
class Profile:
    """A GIMP 3 profile as the doctor sees it: where, which kind, the checks of its plug-in."""

    kind: str
    path: Path
    key: str  # id prefix of its checks
    settings: dict | None = None  # the installed plug-in's settings; None: not installed
    checks: list[Check] = field(default_factory=list)

    @property
    def plugin_dir(self) -> Path:
        return self.path / "plug-ins"

    @property
    def target(self) -> Path:
        return self.plugin_dir / install.NAME

    @property
    def title(self) -> str:
        kind = "of the GIMP that ran" if self.kind == "gimp" else self.kind
        return f"GIMP {self.path.name} profile ({kind}): {self.path}"

    def first_failure(self, ids: tuple[str, ...]) -> Check | None:
        """The first failed check among `ids`, in the order of `ids` (the likeliest cause first)."""
        failed = {c.id: c for c in self.checks if c.status == FAIL}
        return next((failed[f"{self.key}.{i}"] for i in ids if f"{self.key}.{i}" in failed), None)


def discover_profiles(ctx: Context, extra: list[tuple[str, Path]] = ()) -> list[Profile]:
    """Every GIMP 3 profile that exists, plus the profiles of the GIMPs that ran (`extra`); with
    $GIMP3_DIRECTORY set, only that one (GIMP then reads no other, nor does the installer write one)."""
    found = [(p.kind, p.path) for p in install.find_profiles(ctx.environ, ctx.home, ctx.platform)]
    if any(kind == "GIMP3_DIRECTORY" for kind, _ in found):
        found = [(kind, path) for kind, path in found if kind == "GIMP3_DIRECTORY"]
    seen = {_same(path) for _, path in found}
    for kind, path in extra:
        if _same(path) not in seen:
            seen.add(_same(path))
            found.append((kind, path))
    out: list[Profile] = []
    keys: set[str] = set()
    for kind, path in found:
        key = f"plugin.{kind}-{path.name}"
        while key in keys:
            key += "'"
        keys.add(key)
        out.append(Profile(kind, path, key))
    return out


def _same(path: Path) -> str:
    try:
        return str(Path(path).resolve())
    except OSError:
        return str(path)


def profile_checks(profile: Profile, ctx: Context, others: list[Profile]) -> list[Check]:
    """Installed? version, executable, interpreter line, settings: one check each."""
    group = profile.title
    target = profile.target
    entry = target / install.ENTRY

    def check(name: str, status: str, text: str, fix: str | None = None, **details) -> Check:
        return Check(f"{profile.key}.{name}", group, status, text, fix, details=details)

    if not entry.is_file():
        where = [p.path for p in others if p is not profile and p.settings is not None]
        text = "the FFCLIP Edit plug-in is not installed here"
        if where:
            text += " (it is installed in " + ", ".join(map(str, where)) + ")"
        if (target / install.OLD_PACKAGE).is_dir() or target.is_dir():
            text = f"{target} holds no {install.ENTRY}: an incomplete or old install"
        fix = install_fix(profile.plugin_dir, ctx, *_settings_args(others, profile))
        profile.checks = [check("installed", FAIL, text, fix)]
        return profile.checks
    reinstall = install_fix(profile.plugin_dir, ctx)
    missing = [p for p in ("ffclip/gimp/edit.py", "ffclip/plugin/client.py") if not (target / p).is_file()]
    if missing:
        installed = check("installed", FAIL, f"the plug-in is incomplete: {', '.join(missing)} missing", reinstall)
    else:
        installed = check("installed", OK, f"plug-in installed: {entry}")
    profile.settings = gimp_settings.load_settings(target)
    out = [installed, _version_check(profile, ctx, check, reinstall)]
    if ctx.platform != "win32":  # GIMP on Windows starts .py files through its interpreter list
        out.append(_exec_check(entry, ctx, check))
    out.append(_interpreter_check(entry, check, reinstall))
    out.append(_settings_check(profile, ctx, check))
    profile.checks = out
    return out


def _settings_args(others: list[Profile], profile: Profile) -> list[str]:
    """`--url` (and a token placeholder) so that a new install talks to the engine the others use."""
    for other in others:
        if other is profile or other.settings is None:
            continue
        args = []
        url = other.settings.get("url")
        if url and url != gimp_settings.DEFAULT_URL:
            args += ["--url", url]
        if other.settings.get("token"):
            args += ["--token", f"<the token in {other.target / gimp_settings.SETTINGS_NAME}>"]
        return args
    return []


def _version_check(profile: Profile, ctx: Context, check, fix: str) -> Check:
    found = install.installed_version(profile.target)
    if found is None:
        return check(
            "version",
            FAIL,
            f"the plug-in records no version (installed before versions were recorded); this engine is {ctx.version}",
            fix,
        )
    if found != ctx.version:
        return check(
            "version", FAIL, f"plug-in {found}, but this engine is {ctx.version}", fix, plugin=found, engine=ctx.version
        )
    differ = install.differing_files(profile.target)
    if differ:
        shown = ", ".join(differ[:3]) + (f" and {len(differ) - 3} more" if len(differ) > 3 else "")
        text = (
            f"plug-in {found}, but its files differ from this engine's copy ({shown}): edited, or from another checkout"
        )
        return check("version", FAIL, text, fix, files=differ)
    return check("version", OK, f"plug-in version {found}, the same as this engine", plugin=found)


def _exec_check(entry: Path, ctx: Context, check) -> Check:
    mode = entry.stat().st_mode
    if mode & (stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH) and os.access(entry, os.X_OK):
        return check("executable", OK, f"{install.ENTRY} is executable")
    return check(
        "executable",
        FAIL,
        f"{install.ENTRY} is not executable: GIMP skips it without a word",
        command(["chmod", "+x", str(entry)]) + f"   ({RESTART_GIMP})",
    )


def _interpreter_check(entry: Path, check, fix: str) -> Check:
    try:
        head = entry.read_bytes()
    except OSError as exc:
        return check("interpreter", FAIL, f"cannot read {entry}: {exc.strerror or exc}", fix)
    first = head.split(b"\n", 1)[0]
    if b"\r" in head:
        return check(
            "interpreter",
            FAIL,
            "Windows (CRLF) line endings: the interpreter line reads 'python3\\r', which does not exist",
            fix,
        )
    if not first.startswith(b"#!") or b"python3" not in first:
        shown = first[:60].decode("utf-8", "replace")
        return check("interpreter", FAIL, f"the first line is {shown!r}, not {INTERPRETER!r}", fix)
    return check("interpreter", OK, f"interpreter line {first.decode('utf-8', 'replace')}, LF line endings")


def _settings_check(profile: Profile, ctx: Context, check) -> Check:
    path = profile.target / gimp_settings.SETTINGS_NAME
    fix = install_fix(profile.plugin_dir, ctx, "--url", "ws://HOST:PORT", restart=False)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(raw, dict):
            raise ValueError("not a JSON object")
    except FileNotFoundError:
        raw = None
    except (OSError, ValueError) as exc:
        text = f"{path} is unreadable ({exc}): the plug-in ignores it and uses {gimp_settings.DEFAULT_URL}"
        return check("settings", FAIL, text, fix)
    try:
        url = gimp_settings.normalize_url(str((raw or {}).get("url") or gimp_settings.DEFAULT_URL))
    except ValueError as exc:
        return check("settings", FAIL, f"the saved engine URL is unusable ({exc}): every edit fails", fix)
    if raw is None:
        return check("settings", OK, f"no {gimp_settings.SETTINGS_NAME}: the plug-in uses {gimp_settings.DEFAULT_URL}")
    settings = profile.settings or {}
    auto = "on" if settings.get("autostart") else "off"
    return check(
        "settings", OK, f"engine URL {url}, autostart {auto}", url=url, autostart=bool(settings.get("autostart"))
    )


def no_profile_check(ctx: Context) -> Check:
    looked = [str(base) for _, base in install.profile_bases(ctx.environ, ctx.home, ctx.platform)]
    return Check(
        "plugin.profiles",
        "GIMP 3 profiles",
        FAIL,
        "no GIMP 3 profile found (looked in " + ", ".join(looked) + ")",
        "start GIMP 3 once (it creates its profile), then run: ffclip-engine install-gimp-plugin",
    )


# --------------------------------------------------------------------------- GIMPs that run here


QUERY = r"""
import json
import gi
gi.require_version("Gimp", "3.0")
from gi.repository import Gimp
pdb = Gimp.get_pdb()
found = {}
for name in __NAMES__:
    p = pdb.lookup_procedure(name)
    found[name] = None if p is None else {"label": p.get_menu_label(), "paths": list(p.get_menu_paths())}
answer = {"version": Gimp.version(), "directory": Gimp.directory(), "procedures": found}
print(__MARK__ + json.dumps(answer), flush=True)
"""


def find_gimps(ctx: Context) -> list[Gimp]:
    """The GIMPs to ask: $FFCLIP_GIMP_CONSOLE or $FFCLIP_GIMP_ROOT when set, else gimp-console-3.0
    on PATH or the chroot /opt/gimp3-root (as app/batch_edit.py finds them), and a Flatpak GIMP 3."""
    from ffclip.app.gimp_console import DEFAULT_CHROOT, GimpConsole

    env = ctx.environ
    home = env.get("FFCLIP_GIMP_HOME")
    # A GIMP on this system sees the doctor's environment (its profile follows XDG_CONFIG_HOME and
    # GIMP3_DIRECTORY); a chroot's GIMP starts from an empty one.
    native_env = {k: v for k, v in env.items() if not k.startswith("PYTHON") and k not in _NOT_PASSED}
    if env.get("FFCLIP_GIMP_CONSOLE"):
        console = GimpConsole(shlex.split(env["FFCLIP_GIMP_CONSOLE"]), None, home or str(ctx.home), native_env)
        return [Gimp(f"FFCLIP_GIMP_CONSOLE={env['FFCLIP_GIMP_CONSOLE']}", console)]
    root = env.get("FFCLIP_GIMP_ROOT")
    if root:
        return _chroot_gimp(Path(root), home, GimpConsole)
    out: list[Gimp] = []
    native = shutil.which("gimp-console-3.0", path=env.get("PATH"))
    if native:
        out.append(Gimp(native, GimpConsole([native], None, home or str(ctx.home), native_env)))
    elif (Path(DEFAULT_CHROOT) / "usr/bin/gimp-console-3.0").exists():
        out += _chroot_gimp(Path(DEFAULT_CHROOT), home, GimpConsole)
    flatpak = shutil.which("flatpak", path=env.get("PATH"))
    flatpak_profile = ctx.home / ".var" / "app" / install.FLATPAK_APP / "config" / "GIMP"
    if flatpak and flatpak_profile.is_dir():
        argv = [flatpak, "run", "--command=gimp-console-3.0", install.FLATPAK_APP]
        out.append(Gimp(f"Flatpak {install.FLATPAK_APP}", GimpConsole(argv, None, str(ctx.home), native_env)))
    return out


def _chroot_gimp(root: Path, home: str | None, console_type) -> list[Gimp]:
    try:
        console = console_type.chroot(root, home)
    except FileNotFoundError:
        return []
    return [Gimp(f"chroot {root}", console)]


@dataclass
class GimpAnswer:
    gimp: Gimp
    answer: dict | None  # what GIMP said (version, directory, procedures); None: it did not answer
    log: str = ""

    @property
    def profile_path(self) -> Path | None:
        directory = (self.answer or {}).get("directory")
        return Path(self.gimp.console.host(directory)) if directory else None


def ask_gimp(gimp: Gimp, timeout: float) -> GimpAnswer:
    """Run GIMP once (no display) and ask its PDB which of our procedures it registered."""
    from ffclip.app.gimp_console import clean_log

    code = QUERY.replace("__NAMES__", repr([PROCEDURE, CANCEL_PROCEDURE])).replace("__MARK__", repr(QUERY_MARK))
    try:
        proc = gimp.console.run_python(code, timeout=timeout)
    except subprocess.TimeoutExpired:
        return GimpAnswer(gimp, None, f"GIMP did not finish within {timeout:g} s")
    except OSError as exc:
        return GimpAnswer(gimp, None, f"GIMP could not start: {exc}")
    for line in proc.stdout.splitlines():
        if line.startswith(QUERY_MARK):
            try:
                return GimpAnswer(gimp, json.loads(line[len(QUERY_MARK) :]), clean_log(proc.stderr))
            except ValueError:
                break
    return GimpAnswer(gimp, None, clean_log(proc.stdout + "\n" + proc.stderr))


def registration_check(answer: GimpAnswer, profile: Profile | None, n: int) -> Check:
    """Does this GIMP list python-fu-ffclip-edit? When not, say why (the profile's ✘) and the fix."""
    cid = "gimp.registers" + (str(n + 1) if n else "")
    group = "GIMP"
    label = answer.gimp.label
    if answer.answer is None:
        tail = _tail(answer.log, 6)
        return Check(
            cid,
            group,
            FAIL,
            f"GIMP ({label}) did not answer the doctor's query: {tail or 'no output'}",
            "run GIMP's console once by hand (gimp-console-3.0 -i --quit) and read its messages; GIMP 3 "
            "needs its Python support (Debian: apt install gimp, 3.0 or newer)",
        )
    version = answer.answer.get("version", "?")
    where = f"GIMP {version} ({label}, profile {answer.profile_path})"
    proc = (answer.answer.get("procedures") or {}).get(PROCEDURE)
    if proc:
        menu = "/".join(proc.get("paths") or ["?"]) + f" > {proc.get('label') or MENU_LABEL}"
        return Check(cid, group, OK, f"{where} registers {PROCEDURE} ({menu})", details={"gimp": version})
    cause = profile.first_failure(("installed", "executable", "interpreter", "version")) if profile else None
    if cause is not None:
        return Check(
            cid,
            group,
            FAIL,
            f"{where} does not register {PROCEDURE}: {cause.text}",
            cause.fix,
            cause.id,
            {"gimp": version},
        )
    lines = [ln for ln in answer.log.splitlines() if "ffclip" in ln.lower() or "python" in ln.lower()]
    return Check(
        cid,
        group,
        FAIL,
        f"{where} does not register {PROCEDURE} although the plug-in looks right"
        + (": " + " | ".join(lines[-4:]) if lines else ""),
        "start GIMP from a terminal (gimp-3.0 --verbose) and read what it says about ffclip-edit.py, then "
        "reinstall: ffclip-engine install-gimp-plugin",
        details={"gimp": version},
    )


def _tail(text: str, lines: int) -> str:
    return " | ".join([ln.strip() for ln in text.splitlines() if ln.strip()][-lines:])


def gimp_checks(ctx: Context) -> tuple[list[GimpAnswer], list[Check]]:
    """Ask every runnable GIMP (unless told not to); the registration checks come after the profiles'."""
    if not ctx.run_gimp:
        return [], [Check("gimp.registers", "GIMP", INFO, "menu registration not checked (--no-gimp)")]
    gimps = find_gimps(ctx) if ctx.gimps is None else ctx.gimps
    if not gimps:
        text = (
            "no GIMP 3 to run here (gimp-console-3.0 is not on PATH, no /opt/gimp3-root, FFCLIP_GIMP_CONSOLE "
            "and FFCLIP_GIMP_ROOT unset): menu registration not checked"
        )
        return [], [Check("gimp.registers", "GIMP", INFO, text)]
    return [ask_gimp(g, ctx.gimp_timeout) for g in gimps], []


# --------------------------------------------------------------------------- logs

_LOG_RECORD = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)[,.]\d+ ([A-Z]+) (.*)$")  # daemon's log format
_EXCEPTION = re.compile(r"^[A-Za-z_][\w.]*(: .*)?$")  # the line that ends a traceback
_ERROR_LEVELS = ("ERROR", "CRITICAL")


def last_error(path: Path, limit: int = 1 << 18) -> tuple[str | None, str] | None:
    """(time or None, message) of the last error in the tail of a log: an ERROR/CRITICAL record (with
    the exception of its traceback) or a bare traceback's exception line; None when there is none.
    A traceback that belongs to a WARNING record (e.g. a failed warm-up) is not an error."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - limit))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return None
    found: tuple[str | None, str] | None = None
    previous = owner = None  # the record on the line before; the record a traceback belongs to
    in_traceback = False
    for line in text.splitlines():
        record = _LOG_RECORD.match(line)
        if record:
            in_traceback = False
            if record.group(2) in _ERROR_LEVELS:
                found = (record.group(1), record.group(3).strip())
        elif line.startswith("Traceback (most recent call last)"):
            owner = previous if not in_traceback else owner
            in_traceback = True
        elif in_traceback and line and not line[0].isspace() and _EXCEPTION.match(line):
            in_traceback = False
            if owner is None:
                found = (None, line.strip())
            elif owner.group(2) in _ERROR_LEVELS:
                found = (owner.group(1), f"{owner.group(3).strip()}: {line.strip()}")
        previous = record
    return found


def log_check(cid: str, what: str, path: Path) -> Check:
    group = "Logs"
    if not path.is_file():
        return Check(cid, group, INFO, f"{what} {path}: not written yet", details={"path": str(path)})
    error = last_error(path)
    if error is None:
        return Check(cid, group, OK, f"{what} {path}: no errors", details={"path": str(path)})
    when, message = error
    text = f"{what} {path}: last error" + (f" at {when}" if when else "") + f": {message[:300]}"
    return Check(cid, group, INFO, text, details={"path": str(path), "time": when, "error": message})


def plugin_log_checks(ctx: Context) -> list[Check]:
    """The plug-in's own files: the output of an engine it started, and its tracebacks."""
    folder = paths.state_dir(ctx.environ)
    return [
        log_check("log.autostart", "engine output (started by the plug-in)", folder / paths.ENGINE_START_LOG),
        log_check("log.plugin", "plug-in log", folder / paths.PLUGIN_LOG),
    ]


# --------------------------------------------------------------------------- all GIMP-side checks


def gimp_side(ctx: Context) -> tuple[list[Profile], list[Check]]:
    """Profiles (with their plug-in checks) and the GIMP registration checks, in display order."""
    answers, notes = gimp_checks(ctx)
    extra = [("gimp", a.profile_path) for a in answers if a.profile_path is not None]
    profiles = discover_profiles(ctx, extra)
    for profile in profiles:  # settings first: a missing install's fix copies the others' URL
        if (profile.target / install.ENTRY).is_file():
            profile.settings = gimp_settings.load_settings(profile.target)
    checks: list[Check] = []
    for profile in profiles:
        checks += profile_checks(profile, ctx, profiles)
    if not profiles:
        checks.append(no_profile_check(ctx))
    by_path = {_same(p.path): p for p in profiles}
    for n, answer in enumerate(answers):
        path = answer.profile_path
        checks.append(registration_check(answer, by_path.get(_same(path)) if path else None, n))
    return profiles, checks + notes


# --------------------------------------------------------------------------- output


def render_text(checks: list[Check], version: str) -> str:
    """One line per check under its group's title; each ✘ followed by its fix."""
    lines = [f"FFCLIP Edit doctor (ffclip-edit {version})"]
    group = None
    for c in checks:
        if c.group != group:
            group = c.group
            lines.append(group)
        lines.append(f"  {SYMBOL[c.status]} {c.text}")
        for i, line in enumerate((c.fix or "").splitlines() if c.status == FAIL else []):
            lines.append(("      fix: " if i == 0 else "           ") + line)
    failed = sum(c.status == FAIL for c in checks)
    if failed:
        lines.append(
            f"{failed} problem{'s' if failed > 1 else ''} found; fix them from the top (an early \u2718 often "
            "explains a later one). More: docs/troubleshooting.md"
        )
    else:
        lines.append("No problems found.")
    return "\n".join(lines)


def to_json(checks: list[Check], version: str) -> dict:
    failed = [c.id for c in checks if c.status == FAIL]
    return {"version": version, "ok": not failed, "failed": failed, "checks": [c.to_json() for c in checks]}
