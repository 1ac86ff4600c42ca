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
import errno
import ipaddress
import json
import logging
import logging.handlers
import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from ffclip.plugin.paths import ENGINE_LOG, state_dir

from .server import EngineServer, ServerConfig

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


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.create_server((host.strip("[]"), port), family=family, backlog=64)
    sock.setblocking(False)
    return sock


def already_running_message(host: str, port: int, token: str | None, exc: OSError) -> str:
    if exc.errno != errno.EADDRINUSE:
        return f"ffclip-engine serve: cannot listen on {host}:{port}: {exc.strerror or exc}"
    url = f"ws://{_url_host(_probe_host(host))}:{port}/"
    from ffclip.plugin.client import EngineClient
    from ffclip.plugin.protocol import EngineError

    try:
        with EngineClient(url, token=token, timeout=3.0) as client:
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


async def serve_until_signal(config: ServerConfig, loader, sock: socket.socket, log_path: Path | None) -> None:
    from ffclip.engine import __version__

    server = EngineServer(config, loader, __version__)
    await server.start(sock)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):  # Windows, or not the main thread
            signal.signal(sig, lambda *_: loop.call_soon_threadsafe(stop.set))
    host = _url_host(sock.getsockname()[0])
    url = f"ws://{host}:{server.port}/"
    print(f"ffclip-engine: listening on {url}", flush=True)
    log.info("listening on %s (log: %s)", url, log_path or "stderr only")
    with announce(f"ws://{_url_host(_probe_host(sock.getsockname()[0]))}:{server.port}/", __version__):
        await stop.wait()
        await server.stop()
    print("ffclip-engine: stopped", flush=True)


def running_dir(environ: dict | None = None) -> Path:
    return state_dir(environ) / "engines"


@contextlib.contextmanager
def announce(url: str, version: str) -> Iterator[Path]:
    """Keep `<state>/engines/<pid>.json` while the body runs (the engine listens at `url`)."""
    folder = running_dir()
    path = folder / f"{os.getpid()}.json"
    record = {"url": url, "pid": os.getpid(), "version": version, "started": time.time()}
    try:
        folder.mkdir(parents=True, exist_ok=True)
        _prune_dead(folder)
        path.write_text(json.dumps(record) + "\n", encoding="utf-8")
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
        path.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.handlers.RotatingFileHandler(path, maxBytes=5 << 20, backupCount=3, encoding="utf-8")
    except OSError as exc:
        log.warning("cannot write the log file %s: %s", path, exc)
        return None
    handler.setFormatter(formatter)
    root.addHandler(handler)
    with contextlib.suppress(OSError):
        os.chmod(path, 0o600)
    return path
