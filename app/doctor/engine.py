"""`ffclip-engine doctor`: every check, in the order a user fixes things (the command is cli/doctor.py).

GIMP side (ffclip.app.doctor.gimp): profiles, the plug-in in each, whether GIMP registers it, the
plug-in's logs. Here: the engine at each URL the plug-in uses (reachable, version, state, token,
TLS), the models of the profile in use, the device, the engine's log. `diagnose(ctx)` returns the
checks; `render_text` / `to_json` in ffclip.app.doctor.gimp print them.
"""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import sys
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from ffclip.app.doctor import gimp as gd
from ffclip.app.doctor.gimp import FAIL, INFO, OK, Check, Context, Profile, command, install_fix
from ffclip.app.doctor.setup import setup_checks
from ffclip.gimp import settings as gimp_settings
from ffclip.plugin import paths
from ffclip.plugin.protocol import EngineState
from ffclip.plugin.tls import CertificateRefused, TLSVerify, certificate_fingerprint, format_fingerprint

GB = 1 << 30
# What an engine needs to start and run one edit (docs/performance.md: real peak RSS 2.57 GB on the
# CPU, weights 1.4 GB; tiny: 0.9 GB resident, mostly the imports). GPU figures are estimates (weights plus
# 1024² activations), not measured on a GPU yet.
NEEDS = {"real": {"cpu": 3.0 * GB, "cuda": 2.5 * GB}, "tiny": {"cpu": 1.2 * GB, "cuda": 0.5 * GB}}
UNIT_NAME = "ffclip-engine.service"


# --------------------------------------------------------------------------- which engine(s)


@dataclass
class Target:
    """An engine URL to check and the plug-in profiles that use it."""

    url: str
    source: str  # where the URL comes from, for the group title
    profiles: list[Profile] = field(default_factory=list)
    settings: dict = field(default_factory=lambda: dict(gimp_settings.DEFAULTS))


def engine_targets(ctx: Context, profiles: list[Profile]) -> list[Target]:
    """`--url`, else each distinct URL the installed plug-ins would use, else the default URL."""
    if ctx.url:
        installed = [p for p in profiles if p.settings is not None]
        settings = dict(installed[0].settings) if installed else dict(gimp_settings.DEFAULTS)
        return [Target(gimp_settings.normalize_url(ctx.url), "--url", installed, settings)]
    targets: dict[str, Target] = {}
    for profile in profiles:
        if profile.settings is None:
            continue
        try:
            url = gimp_settings.resolve_url(None, profile.settings, ctx.environ)
        except ValueError:
            continue  # the profile's settings check reports it
        source = (
            "from FFCLIP_ENGINE_URL"
            if ctx.environ.get("FFCLIP_ENGINE_URL")
            else f"saved in {profile.target / gimp_settings.SETTINGS_NAME}"
        )
        target = targets.setdefault(url, Target(url, source, [], dict(profile.settings)))
        target.profiles.append(profile)
    if not targets:
        url = gimp_settings.resolve_url(None, gimp_settings.DEFAULTS, ctx.environ)
        installed = any(p.settings is not None for p in profiles)
        return [Target(url, "the default: " + ("no usable URL saved" if installed else "no plug-in installed"))]
    return list(targets.values())


# --------------------------------------------------------------------------- talking to an engine


def greet(url: str, token: str | None, timeout: float, tls: TLSVerify | None = None, plain_token: bool = False) -> dict:
    """The engine's status greeting (raises what EngineClient.connect raises)."""
    from ffclip.plugin.client import EngineClient

    client = EngineClient(url, token=token, timeout=timeout, connect_timeout=timeout, tls=tls, plain_token=plain_token)
    try:
        return client.connect()
    finally:
        client.close()


def port_open(host: str, port: int, timeout: float) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def tls_probe(host: str, port: int, timeout: float, verify: TLSVerify | None = None) -> tuple[bool, str]:
    """(trusted, detail): the TLS handshake and checks the plug-in makes (plugin/tls.py: the system's
    trust store, the settings' CA file and/or pinned fingerprint)."""
    verify = verify or TLSVerify()
    try:
        with (
            socket.create_connection((host, port), timeout=timeout) as raw,
            verify.context().wrap_socket(raw, server_hostname=host) as tls,
        ):
            verify.check_peer(tls, f"{host}:{port}")
            der = tls.getpeercert(binary_form=True) or b""
            cert = tls.getpeercert() or {}
    except ssl.SSLCertVerificationError as exc:
        return False, f"{exc.verify_message or exc}, checked against {verify.describe()}"
    except CertificateRefused as exc:
        return False, exc.message
    except (OSError, ssl.SSLError) as exc:
        return False, str(exc)
    pin = f"fingerprint {format_fingerprint(certificate_fingerprint(der))}"
    if verify.fingerprint:  # not verified against a chain: the handshake shows no parsed fields
        return True, f"{pin}, the pinned one"
    issuer = dict(pair[0] for pair in cert.get("issuer", ()) if pair)
    return True, f"issued by {issuer.get('organizationName') or issuer.get('commonName') or '?'}, " + (
        f"valid until {cert.get('notAfter', '?')}, {pin}"
    )


def other_engines(ctx: Context, url: str) -> list[tuple[str, dict]]:
    """Engines that announced themselves (bridge/daemon.py) at another URL and answer there."""
    from ffclip.bridge.daemon import running_engines

    out = []
    here = _endpoint(url)
    for record in running_engines(ctx.environ):
        other = record["url"]
        if _endpoint(other) == here:
            continue
        pin = record.get("fingerprint")  # a wss:// engine's own certificate (bridge/daemon.py)
        verify = TLSVerify(fingerprint=pin) if isinstance(pin, str) and pin else None
        try:
            out.append((other, greet(other, None, min(ctx.timeout, 3.0), verify)))
        except Exception as exc:  # noqa: BLE001 - a token-protected engine still counts
            if getattr(exc, "code", None) == "unauthorized":
                out.append((other, {"auth": True}))
    return out


def _endpoint(url: str) -> tuple[str, int]:
    host = (urlsplit(url).hostname or "").lower()
    local = host in ("127.0.0.1", "localhost", "::1", "0.0.0.0", "")
    return ("local" if local else host, gimp_settings.url_port(url))


def record_pid(ctx: Context, url: str) -> int | None:
    from ffclip.bridge.daemon import running_engines

    for record in running_engines(ctx.environ):
        if _endpoint(record["url"]) == _endpoint(url) and isinstance(record.get("pid"), int):
            return record["pid"]
    return None


# --------------------------------------------------------------------------- fixes


def serve_argv(target: Target, profile: str | None = None) -> list[str]:
    """How to start the engine the plug-in expects: its start command as `ffclip-engine serve ...`,
    with the port of the URL (and `profile`, when it is known to be another one)."""
    from ffclip.gimp.edit import command_for_url

    start = [str(c) for c in (target.settings.get("start_command") or [])]
    if "serve" in start and ("ffclip.app" in start or "ffclip.engine" in start):  # the latter: older settings
        argv = ["ffclip-engine", *start[start.index("serve") :]]
    else:
        argv = ["ffclip-engine", "serve", "--port", "8765"]
    if "--port" not in argv:
        argv += ["--port", "8765"]
    if profile in ("real", "tiny"):  # the running engine's profile, not the start command's
        drop = ("--profile", "--models") if profile == "tiny" else ("--profile",)
        for option in drop:
            if option in argv:
                i = argv.index(option)
                del argv[i : i + 2]
        if profile == "tiny":
            argv[2:2] = ["--profile", "tiny"]
    return command_for_url(argv, target.url)


def unit_installed(ctx: Context) -> bool:
    if not ctx.platform.startswith("linux"):
        return False
    config = Path(ctx.environ.get("XDG_CONFIG_HOME") or ctx.home / ".config")
    return (config / "systemd" / "user" / UNIT_NAME).is_file()


def start_fix(ctx: Context, target: Target) -> str:
    if not gimp_settings.is_local_url(target.url):
        return f"start the engine on {urlsplit(target.url).hostname} (there: {command(serve_argv(target))})"
    if unit_installed(ctx):
        return f"systemctl --user start {UNIT_NAME}"
    return (
        command(serve_argv(target), ctx.platform)
        + "   (or `ffclip-engine service install` to start it with your session)"
    )


def restart_fix(ctx: Context, target: Target, profile: str | None = None) -> str:
    if unit_installed(ctx):
        return f"systemctl --user restart {UNIT_NAME}"
    pid = record_pid(ctx, target.url)
    serve = command(serve_argv(target, profile), ctx.platform)
    return f"kill {pid} && {serve}" if pid else f"stop the engine at {target.url}, then: {serve}"


def settings_fix(ctx: Context, target: Target, *args: str) -> str:
    """Point every plug-in that uses `target` somewhere else (a reinstall keeps its other settings)."""
    if target.source == "from FFCLIP_ENGINE_URL":
        return "unset FFCLIP_ENGINE_URL (it overrides the plug-in's saved URL)"
    if not target.profiles:
        return command(["ffclip-engine", "install-gimp-plugin", *args], ctx.platform)
    return "\n".join(install_fix(p.plugin_dir, ctx, *args, restart=False) for p in target.profiles)


# --------------------------------------------------------------------------- engine checks


def engine_checks(ctx: Context, target: Target, n: int) -> tuple[list[Check], dict | None]:
    """reachable, version, state, token, TLS for one URL; returns them and the engine's status."""
    prefix = "engine" if n == 0 else f"engine{n + 1}"
    group = f"Engine at {target.url} ({target.source})"

    def check(name: str, status: str, text: str, fix: str | None = None, cause: str | None = None, **details):
        return Check(f"{prefix}.{name}", group, status, text, fix, cause, details)

    parts = urlsplit(target.url)
    host, port = parts.hostname or "127.0.0.1", gimp_settings.url_port(target.url)
    try:
        verify = gimp_settings.tls_verify(target.settings)
    except ValueError as exc:
        fix = settings_fix(ctx, target, "--tls-fingerprint", "'AB:CD:…' (as the engine prints it)")
        tls = check("tls", FAIL, f"the plug-in's tls_fingerprint setting is not usable: {exc}", fix)
        return [check("reachable", FAIL, f"no TLS connection to {target.url}: {tls.text}", fix, tls.id), tls], None
    if parts.scheme == "wss":
        tls = _tls_check(ctx, target, host, port, verify, check)
    else:
        tls = check("tls", INFO, "TLS not checked (ws:// URL: the connection is not encrypted)")
    try:
        plain = bool(target.settings.get("insecure_plain_token"))
        status = greet(target.url, target.settings.get("token"), ctx.timeout, verify, plain)
    except Exception as exc:  # noqa: BLE001 - every failure becomes a check
        return _greet_failed(ctx, target, exc, check, tls, host, port), None
    version = str(status.get("version") or "?")
    reachable = check("reachable", OK, f"an FFCLIP engine {version} answers", version=version)
    checks = [reachable, _version_check(ctx, target, status, check), state_check(ctx, target, status, check)]
    if status.get("auth"):
        checks.append(check("token", OK, "the engine needs a token; the plug-in's token is accepted"))
    else:
        checks.append(check("token", OK, "no token needed"))
    return [*checks, tls], status


def _tls_check(ctx: Context, target: Target, host: str, port: int, verify: TLSVerify, check) -> Check:
    """The certificate, verified as the plug-in verifies it, with the fix for each way it fails."""
    trusted, detail = tls_probe(host, port, ctx.timeout, verify)
    if trusted:
        return check("tls", OK, f"TLS certificate trusted ({detail})")
    if verify.fingerprint and "pinned" in detail:
        fix = (
            "if the engine's certificate was replaced on purpose, pin the fingerprint it prints at start:\n"
            + settings_fix(ctx, target, "--tls-fingerprint", "NEW-FINGERPRINT")
            + "\notherwise something else answers at that address: do not use it"
        )
    elif verify.ca_file:
        fix = "give the CA that signed the engine's certificate:\n" + settings_fix(ctx, target, "--tls-ca", "CA.pem")
    else:
        fix = (
            "add the engine's CA to this system's trust store, or give it to the plug-in:\n"
            + settings_fix(ctx, target, "--tls-ca", "CA.pem")
            + "\nor pin the engine's certificate: "
            + settings_fix(ctx, target, "--tls-fingerprint", "FINGERPRINT")
        )
    return check("tls", FAIL, f"TLS certificate not trusted: {detail}", fix)


def _greet_failed(ctx: Context, target: Target, exc: Exception, check, tls: Check, host: str, port: int) -> list[Check]:
    code = getattr(exc, "code", None)
    message = str(getattr(exc, "message", "") or exc)
    if tls.status == FAIL:
        text = f"no TLS connection to {target.url}: {tls.text}"
        return [check("reachable", FAIL, text, tls.fix, tls.id), tls]
    if code == "unauthorized":
        had = "a token the engine refuses" if target.settings.get("token") else "no token"
        fix = settings_fix(ctx, target, "--token", "TOKEN")
        text = f"the engine needs a token and the plug-in has {had}"
        return [check("reachable", OK, "an FFCLIP engine answers"), check("token", FAIL, text, fix), tls]
    if code == "protocol":
        fix = (
            "use the same version on both sides: upgrade ffclip-edit where the engine runs, restart it, "
            "then: ffclip-engine install-gimp-plugin"
        )
        return [check("reachable", FAIL, f"the engine at {target.url} speaks another protocol: {message}", fix), tls]
    if port_open(host, port, ctx.timeout):
        free = port + 1
        fix = f"ffclip-engine serve --port {free}, then:\n" + settings_fix(ctx, target, "--url", f"ws://{host}:{free}/")
        text = f"port {port} answers, but not as an FFCLIP engine: {message}"
        return [check("reachable", FAIL, text, fix), tls]
    return [_not_running(ctx, target, check), tls]


def _not_running(ctx: Context, target: Target, check) -> Check:
    others = other_engines(ctx, target.url)
    if others:
        url, status = others[0]
        version = status.get("version")
        text = f"nothing answers at {target.url}, but an FFCLIP engine{' ' + version if version else ''} runs at {url}"
        pid = record_pid(ctx, url)
        move = (f"kill {pid} && " if pid else "stop it, then ") + command(serve_argv(target), ctx.platform)
        fix = settings_fix(ctx, target, "--url", url) + f"\n(or move the engine to the plug-in's port: {move})"
        return check("reachable", FAIL, text, fix, running=url)
    settings = target.settings
    start = [str(c) for c in (settings.get("start_command") or [])]
    if settings.get("autostart") and start and gimp_settings.is_local_url(target.url):
        program = start[0]
        if os.path.isfile(program) or (os.sep not in program and _which(program, ctx)):
            text = f"not running; the plug-in starts it when needed: {command(start, ctx.platform)}"
            return check("reachable", OK, text, autostart=True)
        fresh = [sys.executable, "-m", "ffclip.app", "serve", "--port", str(gimp_settings.url_port(target.url))]
        fix = settings_fix(ctx, target, "--start-command", command(fresh, ctx.platform))
        return check("reachable", FAIL, f"not running, and the plug-in's start command {program} does not exist", fix)
    return check("reachable", FAIL, f"the engine is not running at {target.url}", start_fix(ctx, target))


def _which(program: str, ctx: Context) -> bool:
    return shutil.which(program, path=ctx.environ.get("PATH")) is not None


def _version_check(ctx: Context, target: Target, status: dict, check) -> Check:
    version = str(status.get("version") or "?")
    if version == ctx.version:
        return check("version", OK, f"engine version {version}, the same as this ffclip-engine")
    if not gimp_settings.is_local_url(target.url):
        return check("version", INFO, f"the remote engine is {version}, this ffclip-engine {ctx.version}")
    text = f"the running engine is {version}, this ffclip-engine {ctx.version}: it was started before an upgrade"
    return check("version", FAIL, text, restart_fix(ctx, target, status.get("profile")))


def state_check(ctx: Context, target: Target, status: dict, check) -> Check:
    state = status.get("state") or EngineState.READY
    profile = status.get("profile") or "?"
    untrained = " (untrained networks: edits are noise)" if status.get("untrained") else ""
    where = f"profile {profile}{untrained}, device {status.get('device', '?')}"
    if state == EngineState.READY:
        return check("state", OK, f"ready: {where}", state=state, profile=profile)
    if state == EngineState.LOADING:
        return check("state", OK, "loading its models: edits wait in the queue until it is ready", state=state)
    if state == EngineState.DOWNLOADING:
        d = status.get("download") or {}
        done, total = d.get("done"), d.get("total")
        amount = f"{_gb(done)} of {_gb(total)}" if done is not None and total else (f"{_gb(done)}" if done else "")
        text = f"downloading its models ({d.get('file', '?')} {amount}, {d.get('files_left', '?')} files left)"
        return check("state", OK, text + ": edits wait until it is ready", state=state)
    models = status.get("models") or {}
    if state == EngineState.MISSING:
        missing = ", ".join(models.get("missing") or []) or "?"
        restart = restart_fix(ctx, target, profile)
        fix = f"ffclip-engine models fetch   (then restart the engine: {restart})"
        text = f"missing models ({missing}): it refuses every edit"
        return check("state", FAIL, text, fix, "models.real", state=state, restart=restart)
    if state == EngineState.FAILED:
        restart = restart_fix(ctx, target, profile)
        fix = f"read the last error in the engine log (below), then restart the engine: {restart}"
        return check("state", FAIL, "the engine failed to load its models", fix, state=state)
    return check("state", FAIL, f"unknown state {state!r}", restart_fix(ctx, target, profile), state=state)


def _gb(n) -> str:
    return f"{float(n) / GB:.2f} GB" if isinstance(n, int | float) else "?"


# --------------------------------------------------------------------------- models and device


def profile_in_use(status: dict | None, target: Target, ctx: Context) -> tuple[str, str | None, str]:
    """(profile, models folder or None for the default store, where that comes from)."""
    start = [str(c) for c in (target.settings.get("start_command") or [])]
    models = ctx.models_dir or _option(start, "--models")
    if status and status.get("profile") in ("real", "tiny"):
        return status["profile"], models, "the running engine's"
    profile = _option(start, "--profile")
    if profile in ("real", "tiny"):
        return profile, models, "the plug-in's start command's"
    return "real", models, "the default"


def _option(argv: list[str], name: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def models_checks(ctx: Context, profile: str, models_dir: str | None, why: str) -> list[Check]:
    group = "Models and device"
    real = real_models_check(ctx, models_dir)
    if profile == "tiny":
        tiny = Check(
            "models.tiny",
            group,
            OK,
            f"profile tiny ({why}): built-in untrained networks, nothing to fetch (its edits are noise)",
        )
        real.status, real.fix = INFO, None
        real.text = "real models, not in use: " + real.text
        return [tiny, real]
    real.text = f"profile real ({why}): " + real.text
    return [real]


def real_models_check(ctx: Context, models_dir: str | None) -> Check:
    from ffclip.engine.store import ModelStore, default_root, sha256_file

    store = ModelStore(Path(models_dir).expanduser() if models_dir else default_root(ctx.environ))
    where = f" --models {store.root}" if models_dir else ""
    required = store.needed()  # the one rule for what serve/edit need
    group = "Models and device"
    missing = store.missing(required)
    if missing:
        text = f"{len(missing)} of {len(required)} model files missing in {store.root}: {', '.join(missing)}"
        return Check(
            "models.real", group, FAIL, text, f"ffclip-engine models fetch{where}", details={"missing": missing}
        )
    try:
        index = store.index()
    except Exception as exc:  # noqa: BLE001 - CheckpointError: unreadable index
        return Check("models.real", group, FAIL, str(exc), f"ffclip-engine models verify{where}")
    problems = []
    for name in required:
        entry, path = index.get(name) or {}, store.path(name)
        if not entry.get("sha256"):
            problems.append(f"{name} never verified")
        elif entry.get("size") != path.stat().st_size:
            problems.append(f"{name} changed since it was verified (size)")
        elif ctx.hash_models and sha256_file(path) != entry["sha256"]:
            problems.append(f"{name} changed since it was verified (sha256)")
    if problems:
        return Check("models.real", group, FAIL, "; ".join(problems), f"ffclip-engine models verify{where}")
    how = "sha256 recomputed" if ctx.hash_models else "sizes checked; --hash recomputes the sha256"
    text = f"{len(required)} model files in {store.root}, each matching its verified record ({how})"
    return Check("models.real", group, OK, text)


def probe_device() -> dict:
    """CUDA (name, free and total memory) and the memory available to a new process."""
    out: dict = {"cuda": False, "ram_available": ram_available()}
    try:
        import torch

        if torch.cuda.is_available():
            free, total = torch.cuda.mem_get_info()
            out.update(cuda=True, name=torch.cuda.get_device_name(0), free=int(free), total=int(total))
    except Exception as exc:  # noqa: BLE001 - a broken CUDA set-up is a finding, not a crash
        out["error"] = f"{type(exc).__name__}: {exc}"
    return out


def ram_available() -> int | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def device_check(ctx: Context, status: dict | None, profile: str) -> Check:
    group = "Models and device"
    device = str((status or {}).get("device") or "")
    if status and device and device != "loading":
        rss = ((status.get("memory") or {}).get("rss_bytes")) or 0
        return Check(
            "device", group, OK, f"the engine runs on {device} ({_gb(rss)} resident)", details={"device": device}
        )
    probe = (ctx.device_probe or probe_device)()
    need = NEEDS.get(profile, NEEDS["real"])
    if probe.get("cuda"):
        free, total = probe.get("free") or 0, probe.get("total") or 0
        needs = f"profile {profile} needs about {_gb(need['cuda'])}"
        text = f"CUDA: {probe.get('name', '?')}, {_gb(free)} free of {_gb(total)}; {needs}"
        if free >= need["cuda"]:
            return Check("device", group, OK, text, details=probe)
        fix = (
            "close the programs that hold GPU memory (nvidia-smi lists them), or run on the CPU: "
            "ffclip-engine serve --device cpu"
        )
        return Check("device", group, FAIL, text, fix, details=probe)
    available = probe.get("ram_available")
    note = f" ({probe['error']})" if probe.get("error") else ""
    if available is None:
        return Check(
            "device", group, INFO, f"no CUDA{note}: the engine runs on the CPU; free memory unknown", details=probe
        )
    needs = f"profile {profile} needs about {_gb(need['cpu'])}"
    text = f"no CUDA{note}: the engine runs on the CPU; {_gb(available)} available, {needs}"
    if available >= need["cpu"]:
        return Check("device", group, OK, text, details=probe)
    return Check(
        "device", group, FAIL, text, "close other programs to free memory before starting the engine", details=probe
    )


# --------------------------------------------------------------------------- everything


def diagnose(ctx: Context) -> list[Check]:
    profiles, checks = gd.gimp_side(ctx)
    targets = engine_targets(ctx, profiles)
    statuses: list[dict | None] = []
    engine_part: list[Check] = []
    for n, target in enumerate(targets):
        found, status = engine_checks(ctx, target, n)
        engine_part += found
        statuses.append(status)
    status = statuses[0]
    profile, models_dir, why = profile_in_use(status, targets[0], ctx)
    models = models_checks(ctx, profile, models_dir, why)
    failed = {c.id for c in models if c.status == FAIL}
    for c in engine_part:  # models in place, engine still without them: it started before they came
        if c.cause == "models.real" and c.cause not in failed:
            c.cause = None
            c.fix = f"the model files are in place now; restart the engine to load them: {c.details['restart']}"
    device = device_check(ctx, status, profile)
    engine_log = paths.state_dir(ctx.environ) / paths.ENGINE_LOG
    logs = [gd.log_check("log.engine", "engine log", engine_log), *gd.plugin_log_checks(ctx)]
    commands = [list(map(str, t.settings["start_command"])) for t in targets if t.settings.get("start_command")]
    made = setup_checks(ctx, commands)  # before the engine's: a failed set-up explains a missing engine
    return checks + made + engine_part + models + [device] + logs
