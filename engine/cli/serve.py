"""`ffclip-engine serve`: run the engine daemon (bridge/daemon.py) until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import functools
import sys

from ffclip.bridge.daemon import (
    already_running_message,
    bind,
    is_loopback,
    read_token,
    serve_until_signal,
    setup_logging,
)
from ffclip.bridge.server import ServerConfig
from ffclip.plugin.protocol import DEFAULT_HOST, DEFAULT_MAX_PIXELS, DEFAULT_PORT

EXIT_USAGE = 2
EXIT_RUNNING = 3  # another engine (or program) already listens on the port


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default=DEFAULT_HOST, help="address to listen on (default: loopback only)")
    parser.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help="TCP port (default %(default)s; 0 picks a free one)"
    )
    models = parser.add_mutually_exclusive_group()
    models.add_argument("--models", metavar="DIR", help="model store folder (default: the user model store)")
    models.add_argument(
        "--profile",
        choices=("real", "tiny"),
        default="real",
        help="tiny = small seeded untrained networks for tests and smoke runs",
    )
    models.add_argument("--fake-engine", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--no-fetch",
        action="store_true",
        help="do not download missing model files (default: the daemon fetches them in the background)",
    )
    parser.add_argument("--token", help="require 'Authorization: Bearer TOKEN' (needed off loopback)")
    parser.add_argument("--token-file", metavar="F", help="read the token from a file instead")
    parser.add_argument(
        "--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, metavar="N", help="largest image accepted"
    )
    parser.add_argument("--max-queue", type=int, default=32, metavar="N", help="jobs allowed to wait")
    parser.add_argument("--device", default="auto", help="torch device: auto, cpu, cuda, cuda:1, ...")
    parser.add_argument(
        "--domain-memory",
        type=float,
        default=None,
        metavar="GB",
        help="memory for the domains' networks (face, car, church) loaded at once; the least recently used "
        "domain is evicted to make room (default 2.5: two real domains)",
    )
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
    if args.max_pixels < 256 or args.max_queue < 1 or (args.domain_memory is not None and args.domain_memory <= 0):
        print("ffclip-engine serve: --max-pixels, --max-queue or --domain-memory is too small", file=sys.stderr)
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


def make_loader(args: argparse.Namespace):
    if args.fake_engine:
        from ffclip.bridge.fake import FakeBackend

        return functools.partial(FakeBackend, args.fake_stage_seconds, max_pixels=args.max_pixels)
    from ffclip.bridge.backend import load_engine_backend

    budget = None if args.domain_memory is None else int(args.domain_memory * 1e9)
    load = functools.partial(
        load_engine_backend, args.profile, args.models, args.device, args.editor, args.max_pixels, budget
    )
    if args.profile != "real" or args.editor != "model" or args.no_fetch:
        return load
    from ffclip.bridge.provision import Provisioner

    return Provisioner(load, args.models)  # fetches what the store lacks, then loads
