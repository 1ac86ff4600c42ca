"""`ffclip-engine serve`: the long-lived engine daemon (models loaded once, websocket protocol v1).

The listening socket is bound before the models load, so a second `serve` on the same port learns
at once that an engine is already running, and clients can connect (and queue work) while the models
are still loading: their status says `"state": "loading"`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import functools
import ipaddress
import logging
import logging.handlers
import os
import signal
import socket
import sys
from pathlib import Path

from .server import DEFAULT_MAX_PIXELS, EngineServer, ServerConfig

log = logging.getLogger("ffclip.bridge")

EXIT_USAGE = 2
EXIT_RUNNING = 3  # another engine (or program) already listens on the port


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    parser.add_argument("--port", type=int, default=8765, help="TCP port (default 8765; 0 picks a free one)")
    models = parser.add_mutually_exclusive_group()
    models.add_argument("--models", metavar="DIR", help="model store folder (default: the user model store)")
    models.add_argument(
        "--profile",
        choices=("real", "tiny"),
        default="real",
        help="tiny = small seeded untrained networks for tests and smoke runs",
    )
    models.add_argument("--fake-engine", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--token", help="require 'Authorization: Bearer TOKEN' (needed off loopback)")
    parser.add_argument("--token-file", metavar="F", help="read the token from a file instead")
    parser.add_argument(
        "--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, metavar="N", help="largest image accepted"
    )
    parser.add_argument("--max-queue", type=int, default=32, metavar="N", help="jobs allowed to wait")
    parser.add_argument("--device", default="auto", help="torch device: auto, cpu, cuda, cuda:1, ...")
    parser.add_argument("--editor", choices=("model", "passthrough"), default="model", help=argparse.SUPPRESS)
    parser.add_argument("--log-file", metavar="F", help="log file (default: the XDG state folder's engine.log)")
    parser.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    parser.add_argument("--fake-stage-seconds", type=float, default=0.0, help=argparse.SUPPRESS)


def run(args: argparse.Namespace) -> int:
    try:
        token = read_token(args.token, args.token_file)
    except OSError as exc:
        print(f"ffclip-engine serve: cannot read the token file: {exc.strerror}", file=sys.stderr)
        return EXIT_USAGE
    if not is_loopback(args.host) and not token:
        print(
            f"ffclip-engine serve: refusing to listen on {args.host} without --token: anyone on the network "
            "could use the engine. Pass --token (clients send 'Authorization: Bearer TOKEN') or keep the "
            "default --host 127.0.0.1.",
            file=sys.stderr,
        )
        return EXIT_USAGE
    if args.max_pixels < 256 or args.max_queue < 1:
        print("ffclip-engine serve: --max-pixels and --max-queue are too small", file=sys.stderr)
        return EXIT_USAGE
    log_path = setup_logging(args.log_file, args.log_level)
    try:
        sock = bind(args.host, args.port)
    except OSError as exc:
        print(already_running_message(args.host, args.port, token, exc), file=sys.stderr)
        return EXIT_RUNNING
    config = ServerConfig(
        host=args.host, port=args.port, token=token, max_pixels=args.max_pixels, max_queue=args.max_queue
    )
    loader = make_loader(args)
    try:
        asyncio.run(serve_until_signal(config, loader, sock, log_path))
    finally:
        sock.close()
    return 0


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
    probe_host = "127.0.0.1" if host in ("0.0.0.0", "") else ("::1" if host == "::" else host)
    url = f"ws://{_url_host(probe_host)}:{port}/"
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


def make_loader(args: argparse.Namespace):
    if args.fake_engine:
        from .fake import FakeBackend

        return functools.partial(FakeBackend, args.fake_stage_seconds, max_pixels=args.max_pixels)
    from .backend import load_engine_backend

    return functools.partial(load_engine_backend, args.profile, args.models, args.device, args.editor, args.max_pixels)


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
    await stop.wait()
    await server.stop()
    print("ffclip-engine: stopped", flush=True)


def state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "ffclip-edit"


def setup_logging(log_file: str | None, level: str) -> Path | None:
    """Log to stderr and to a rotating file (default: $XDG_STATE_HOME/ffclip-edit/engine.log)."""
    root = logging.getLogger()
    root.setLevel(getattr(logging, level.upper()))
    formatter = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    console = logging.StreamHandler()
    console.setFormatter(formatter)
    root.addHandler(console)
    logging.getLogger("websockets").setLevel(logging.WARNING)
    path = Path(log_file) if log_file else state_dir() / "engine.log"
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
