"""The long-lived engine daemon (models loaded once, websocket protocol v1); the command is cli/serve.py.

The listening socket is bound before the models load, so a second `serve` on the same port learns
at once that an engine is already running, and clients can connect (and queue work) while the models
are still loading: their status says `"state": "loading"`.

While it listens, the daemon keeps a record `<state>/engines/<pid>.json` (its URL and version), so
that `ffclip-engine doctor` can name the engine that a plug-in's saved URL misses.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import ipaddress
import json
import logging
import logging.handlers
import os
import signal
import socket
import ssl
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ffclip.plugin import identity
from ffclip.plugin.paths import ENGINE_LOG, ENGINES_DIR, open_private, private_folder, state_dir

from .server import EngineServer, ServerConfig

if TYPE_CHECKING:
    from .backend import Backend

log = logging.getLogger("ffclip.bridge")


def read_token(token: str | None, token_file: str | None) -> str | None:
    if token_file:
        token = Path(token_file).read_text(encoding="utf-8").strip()
    return token or os.environ.get("FFCLIP_TOKEN") or None


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name could resolve anywhere: treat it as exposed


@dataclass(frozen=True)
class ServerTLS:
    """The daemon's TLS: the context it serves with and its certificate's SHA-256 fingerprint (which
    clients may pin; serve prints it)."""

    context: ssl.SSLContext
    fingerprint: str  # 64 lowercase hex digits


@dataclass(frozen=True)
class Listener:
    sock: socket.socket
    tls: ServerTLS | None = None

    @property
    def scheme(self) -> str:
        return "wss" if self.tls is not None else "ws"


def server_tls(cert: str, key: str) -> ServerTLS:
    """A server TLS context (TLS 1.2 or later) from a PEM certificate chain and its key; ValueError
    with a readable message when they cannot be used."""
    from ffclip.plugin.tls import pem_fingerprint

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
        fingerprint = pem_fingerprint(cert)
    except (OSError, ValueError, ssl.SSLError) as exc:
        raise ValueError(
            f"cannot use the TLS certificate {cert} with the key {key}: {getattr(exc, 'strerror', None) or exc}"
        ) from None
    return ServerTLS(context, fingerprint)


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.create_server((host.strip("[]"), port), family=family, backlog=64)
    sock.setblocking(False)
    return sock


def already_running_message(host: str, port: int, token: str | None, exc: OSError, tls: ServerTLS | None = None) -> str:
    if exc.errno != errno.EADDRINUSE:
        return f"ffclip-engine serve: cannot listen on {host}:{port}: {exc.strerror or exc}"
    url = f"{'wss' if tls else 'ws'}://{_url_host(_probe_host(host))}:{port}/"
    from ffclip.plugin.client import EngineClient
    from ffclip.plugin.protocol import EngineError
    from ffclip.plugin.tls import TLSVerify

    verify = TLSVerify(fingerprint=tls.fingerprint) if tls else None  # an engine with our own certificate
    try:
        with EngineClient(url, token=token, timeout=3.0, tls=verify) as client:
            status = client.last_status
        return (
            f"ffclip-engine serve: the engine is already running at {url} "
            f"(state {status.get('state')}, device {status.get('device')}, profile {status.get('profile')})."
        )
    except EngineError as error:
        if error.code == "unauthorized":
            return f"ffclip-engine serve: the engine is already running at {url} (it requires a token)."
        return f"ffclip-engine serve: port {port} is in use by another program ({error.message})."


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _probe_host(host: str) -> str:
    """The address a local client reaches a server bound to `host` at (not the wildcard)."""
    return "127.0.0.1" if host in ("0.0.0.0", "") else ("::1" if host == "::" else host)


async def serve_until_signal(
    config: ServerConfig,
    loaders: Callable[[], Backend] | Sequence[Callable[[], Backend]],
    listener: Listener | socket.socket,
    log_path: Path | None,
) -> None:
    """Serve until SIGTERM/SIGINT, then drain (EngineServer.stop); `loaders`: one per worker (device)."""
    from ffclip.engine import __version__
    from ffclip.plugin.tls import format_fingerprint

    listener = listener if isinstance(listener, Listener) else Listener(listener)
    sock = listener.sock
    config = dataclasses.replace(config, identity_key=config.identity_key or identity.new_key())
    server = EngineServer(config, loaders, __version__)
    await server.start(sock)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal() -> None:  # the first drains (jobs finish), a second one cuts the drain short
        if stop.is_set():
            server.hurry()
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, on_signal)
        except (NotImplementedError, RuntimeError):  # Windows, or not the main thread
            signal.signal(sig, lambda *_: loop.call_soon_threadsafe(on_signal))
    host = _url_host(sock.getsockname()[0])
    url = f"{listener.scheme}://{host}:{server.port}/"
    print(f"ffclip-engine: listening on {url}", flush=True)
    if listener.tls is not None:  # what clients pin (plug-in settings: tls_fingerprint)
        pin = format_fingerprint(listener.tls.fingerprint)
        print(f"ffclip-engine: TLS certificate SHA-256 fingerprint {pin}", flush=True)
        log.info("TLS certificate SHA-256 fingerprint %s", pin)
    workers = len(loaders) if isinstance(loaders, Sequence) else 1
    log.info("listening on %s, %d worker(s) (log: %s)", url, workers, log_path or "stderr only")
    if log_path is not None:
        quiet_console_when_detached()
    local = f"{listener.scheme}://{_url_host(_probe_host(sock.getsockname()[0]))}:{server.port}/"
    with announce(local, __version__, listener.tls.fingerprint if listener.tls else None, config.identity_key):
        await stop.wait()
        await server.stop()
    print("ffclip-engine: stopped", flush=True)


def running_dir(environ: dict | None = None) -> Path:
    return state_dir(environ) / ENGINES_DIR


@contextlib.contextmanager
def announce(url: str, version: str, fingerprint: str | None = None, key: str | None = None) -> Iterator[Path]:
    """Keep `<state>/engines/<pid>.json` while the body runs (the engine listens at `url`; a wss://
    engine records its certificate's fingerprint, so the doctor can greet it; `key` answers the
    challenges of plug-ins that started it, plugin/identity.py — the file is readable by this user only)."""
    folder = running_dir()
    path = folder / f"{os.getpid()}.json"
    record = {"url": url, "pid": os.getpid(), "version": version, "started": time.time()}
    if fingerprint:
        record["fingerprint"] = fingerprint
    if key:
        record["key"] = key
    try:
        private_folder(folder)
        _prune_dead(folder)
        with open_private(path, "w", encoding="utf-8") as file:
            file.write(json.dumps(record) + "\n")
    except OSError as exc:  # a read-only state folder only costs the doctor a hint
        log.debug("cannot write %s: %s", path, exc)
    try:
        yield path
    finally:
        with contextlib.suppress(OSError):
            path.unlink()


def running_engines(environ: dict | None = None) -> list[dict]:
    """The records of engines that announced themselves, newest first (some may have died since)."""
    records = []
    for path in running_dir(environ).glob("*.json"):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(record, dict) and isinstance(record.get("url"), str):
            records.append(record)
    return sorted(records, key=lambda r: -float(r.get("started") or 0))


def _prune_dead(folder: Path) -> None:
    """Drop the records of engines killed without cleaning up (Linux: their /proc entry is gone)."""
    if not Path("/proc/self").is_dir():
        return
    for path in folder.glob("*.json"):
        if path.stem.isdigit() and not Path("/proc", path.stem).exists():
            with contextlib.suppress(OSError):
                path.unlink()


LOG_BYTES, LOG_BACKUPS = 5 << 20, 3  # engine.log and three rotations: at most 20 MB


DETACHED_ENV = "FFCLIP_DETACHED"  # set by the plug-in when it starts the daemon


def setup_logging(log_file: str | None, level: str) -> Path | None:
    """Log to stderr and to a rotating file (default: the state folder's engine.log, see plugin/paths.py)."""
    root = logging.getLogger()
    root.setLevel(getattr(logging, level.upper()))
    formatter = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    console = logging.StreamHandler()
    console.setFormatter(formatter)
    root.addHandler(console)
    logging.getLogger("websockets").setLevel(logging.WARNING)
    path = Path(log_file) if log_file else state_dir() / ENGINE_LOG
    try:
        if log_file:
            path.parent.mkdir(parents=True, exist_ok=True)  # the user's own choice of folder
        else:
            private_folder(path.parent)
        handler = PrivateRotatingFileHandler(path, maxBytes=LOG_BYTES, backupCount=LOG_BACKUPS, encoding="utf-8")
    except OSError as exc:
        log.warning("cannot write the log file %s: %s", path, exc)
        return None
    handler.setFormatter(formatter)
    root.addHandler(handler)
    return path


class PrivateRotatingFileHandler(logging.handlers.RotatingFileHandler):
    """A rotating log whose every file (the first and each one after a rotation) is 0600 from its
    creation: it carries job ids (which cancel jobs), owner names and addresses."""

    def _open(self):
        return open_private(self.baseFilename, self.mode, self.encoding)


def quiet_console_when_detached() -> None:
    """A daemon started by the plug-in writes its console to engine-start.log, meant for the errors of
    its first seconds; once it listens, its log goes to engine.log only (rotated, bounded)."""
    if os.environ.get(DETACHED_ENV) != "1":
        return
    root = logging.getLogger()
    for handler in list(root.handlers):
        if type(handler) is logging.StreamHandler:
            log.info("listening; from here on the log goes to engine.log only")
            root.removeHandler(handler)
