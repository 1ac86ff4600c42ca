"""`ffclip-engine serve`: run the engine daemon (bridge/daemon.py) until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import functools
import ipaddress
import logging
import sys

from ffclip.bridge.daemon import (
    Listener,
    already_running_message,
    bind,
    is_loopback,
    read_token,
    serve_until_signal,
    server_tls,
    setup_logging,
)
from ffclip.bridge.limits import DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_PER_USER, DEFAULT_MEMORY_BUDGET
from ffclip.bridge.server import ServerConfig
from ffclip.bridge.tokens import TokenBook, TokensFileError
from ffclip.engine.precision import CHOICES as PRECISIONS
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
        "--tokens-file",
        metavar="F",
        help="named tokens, one 'NAME TOKEN' a line (one per artist); re-read when it changes: delete a line "
        "to revoke that token at once. The log names the owner, never the token",
    )
    parser.add_argument("--tls-cert", metavar="PEM", help="serve wss:// with this certificate (chain) ...")
    parser.add_argument("--tls-key", metavar="PEM", help="... and its private key")
    parser.add_argument(
        "--insecure-plain-token",
        action="store_true",
        help="allow tokens over plain ws:// on a non-loopback address (anyone on the network can read them)",
    )
    parser.add_argument(
        "--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, metavar="N", help="largest image accepted"
    )
    parser.add_argument("--max-queue", type=int, default=32, metavar="N", help="jobs allowed to wait (per token)")
    limits = parser.add_argument_group("limits (docs/deployment.md: sizing them for a team)")
    limits.add_argument(
        "--max-connections",
        type=int,
        default=DEFAULT_MAX_CONNECTIONS,
        metavar="N",
        help=f"connections at once, all clients (default {DEFAULT_MAX_CONNECTIONS}; always kept "
        "below the process's open-file limit)",
    )
    limits.add_argument(
        "--max-connections-per-user",
        type=int,
        default=DEFAULT_MAX_PER_USER,
        metavar="N",
        help=f"connections of one token (without tokens: one address) at once (default {DEFAULT_MAX_PER_USER})",
    )
    limits.add_argument(
        "--memory-budget",
        type=parse_size,
        default=DEFAULT_MEMORY_BUDGET,
        metavar="SIZE",
        help="memory held for clients (frames arriving, kept images, unsent replies), e.g. 2G or 512M; one "
        "user may hold half of it (default 2G)",
    )
    limits.add_argument(
        "--request-timeout",
        type=float,
        default=60.0,
        metavar="S",
        help="seconds an announced edit may take to send all its frames (default 60)",
    )
    parser.add_argument(
        "--drain-grace",
        type=float,
        default=60.0,
        metavar="S",
        help="at SIGTERM, seconds the queued and running jobs may take to finish while new connections and "
        "edits are refused (draining); what is left then is cancelled (default 60; a second signal ends it)",
    )
    parser.add_argument(
        "--trusted-proxy",
        action="append",
        default=[],
        metavar="ADDR",
        help="a load balancer's address whose X-Forwarded-For header names the client (for the per-address "
        "connection limit and the log); repeat for several (docs/deployment.md, deploy/haproxy)",
    )
    parser.add_argument("--device", default="auto", help="torch device: auto, cpu, cuda, cuda:1, ...")
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="auto",
        help="the networks' arithmetic: auto (bf16 previews where the processor has native bf16, fp32 for "
        "Apply), fp32, bf16 (refused where it would be emulated), fp16 (GPU)",
    )
    parser.add_argument(
        "--devices",
        metavar="LIST",
        help="several devices, e.g. cuda:0,cuda:1: one worker per device on one queue, each with its own "
        "copy of the models and caches (overrides --device)",
    )
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


class UsageError(Exception):
    """A refusal to start, with the message for the user (exit 2)."""


def run(args: argparse.Namespace) -> int:
    try:
        devices = parse_devices(args.devices or args.device)
        token, tokens = access(args)
        check_exposure(args, token or tokens)
        check_limits(args)
        check_precision(args.precision, devices)
        tls = server_tls(args.tls_cert, args.tls_key) if args.tls_cert else None
    except (UsageError, ValueError) as exc:
        print(f"ffclip-engine serve: {exc}", file=sys.stderr)
        return EXIT_USAGE
    log_path = setup_logging(args.log_file, args.log_level)
    if args.token:
        print(
            "ffclip-engine serve: a token given with --token is visible to every user of this computer in "
            "the process list; use --token-file F or the FFCLIP_TOKEN environment variable instead",
            file=sys.stderr,
        )
    if plain_tokens_exposed(args):
        logging.getLogger("ffclip.bridge").warning(
            "tokens travel unencrypted on %s (--insecure-plain-token): anyone on the network can read and reuse "
            "them; serve wss:// with --tls-cert and --tls-key instead (docs/deployment.md)",
            args.host,
        )
    try:
        sock = bind(args.host, args.port)
    except OSError as exc:
        print(already_running_message(args.host, args.port, token, exc, tls), file=sys.stderr)
        return EXIT_RUNNING
    config = ServerConfig(
        host=args.host,
        port=args.port,
        token=token,
        tokens=tokens,
        tls=tls.context if tls is not None else None,
        max_pixels=args.max_pixels,
        max_queue=args.max_queue,
        max_connections=args.max_connections,
        max_connections_per_user=args.max_connections_per_user,
        memory_budget=args.memory_budget,
        request_timeout=args.request_timeout,
        drain_grace=args.drain_grace,
        trusted_proxies=frozenset(args.trusted_proxy),
    )
    loaders = [make_loader(args, device, first=i == 0) for i, device in enumerate(devices)]
    try:
        asyncio.run(serve_until_signal(config, loaders, Listener(sock, tls), log_path))
    finally:
        sock.close()
    return 0


_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str) -> int:
    """Bytes from "2G", "512M", "1.5g", "4096" (binary units)."""
    number, unit = text.strip().upper().rstrip("IB"), ""
    if number and number[-1] in _UNITS:
        number, unit = number[:-1], number[-1]
    try:
        return int(float(number) * _UNITS[unit])
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size such as 2G or 512M") from None


def parse_devices(text: str) -> list[str]:
    devices = [part.strip() for part in text.split(",")]
    if not all(devices):
        raise UsageError(f"--devices takes a comma-separated list such as cuda:0,cuda:1, not {text!r}")
    return devices


def access(args: argparse.Namespace) -> tuple[str | None, TokenBook | None]:
    """The one token (--token, --token-file, $FFCLIP_TOKEN) or the named tokens (--tokens-file)."""
    if args.tokens_file:
        if args.token or args.token_file:
            raise UsageError("give --tokens-file or --token/--token-file, not both")
        try:
            return None, TokenBook.from_file(args.tokens_file)
        except TokensFileError as exc:
            raise UsageError(str(exc)) from None
    try:
        return read_token(args.token, args.token_file), None
    except OSError as exc:
        raise UsageError(f"cannot read the token file: {exc.strerror}") from None


def check_exposure(args: argparse.Namespace, secured: object) -> None:
    """Off loopback: a token is required, and it may only travel encrypted (or when told it may not)."""
    if is_loopback(args.host):
        return
    if not secured:
        raise UsageError(
            f"refusing to listen on {args.host} without --token: anyone on the network could use the engine. "
            "Pass --token or --tokens-file (clients send 'Authorization: Bearer TOKEN') or keep the default "
            "--host 127.0.0.1."
        )
    if not (args.tls_cert or args.tls_key) and not args.insecure_plain_token:
        raise UsageError(
            f"refusing to send tokens over plain ws:// on {args.host}: anyone on the network could read them. "
            "Serve wss:// with --tls-cert CERT.pem --tls-key KEY.pem (docs/deployment.md), or accept the risk "
            "with --insecure-plain-token."
        )


def plain_tokens_exposed(args: argparse.Namespace) -> bool:
    """Whether tokens cross the network in the clear: off loopback, without TLS (--insecure-plain-token)."""
    return not is_loopback(args.host) and not args.tls_cert and bool(args.insecure_plain_token)


def check_limits(args: argparse.Namespace) -> None:
    if args.max_pixels < 256 or args.max_queue < 1 or (args.domain_memory is not None and args.domain_memory <= 0):
        raise UsageError("--max-pixels, --max-queue or --domain-memory is too small")
    if args.max_connections < 8 or not 1 <= args.max_connections_per_user <= args.max_connections:
        raise UsageError("--max-connections takes 8 or more, --max-connections-per-user 1 up to --max-connections")
    if args.memory_budget < (64 << 20) or args.request_timeout <= 0:
        raise UsageError("--memory-budget takes 64M or more, --request-timeout a positive number of seconds")
    if bool(args.tls_cert) != bool(args.tls_key):
        raise UsageError("--tls-cert and --tls-key go together")
    if args.drain_grace < 0:
        raise UsageError("--drain-grace takes 0 or more seconds")
    for address in args.trusted_proxy:
        try:
            ipaddress.ip_address(address)
        except ValueError:
            raise UsageError(f"--trusted-proxy takes an IP address, not {address!r}") from None


def check_precision(setting: str, devices: list[str]) -> None:
    """A precision a device cannot run natively is refused at the start, not by a slow engine."""
    from ffclip.engine.inference import resolve_device
    from ffclip.engine.precision import PrecisionUnavailable, plan

    for device in devices:
        try:
            plan(setting, resolve_device(device))
        except PrecisionUnavailable as exc:
            raise UsageError(str(exc)) from None


def make_loader(args: argparse.Namespace, device: str | None = None, first: bool = True):
    """The loader of one worker; only the first fetches missing model files (the others load after it)."""
    device = device or args.device
    if args.fake_engine:
        from ffclip.bridge.fake import FakeBackend

        photos = 64  # cached per worker, as the real 512 MB inversion cache holds dozens
        return functools.partial(
            FakeBackend, args.fake_stage_seconds, photos, max_pixels=args.max_pixels, device=device
        )
    from ffclip.bridge.domains import load_engine_backend

    budget = None if args.domain_memory is None else int(args.domain_memory * 1e9)
    load = functools.partial(
        load_engine_backend, args.profile, args.models, device, args.editor, args.max_pixels, budget, args.precision
    )
    if not first or args.profile != "real" or args.editor != "model" or args.no_fetch:
        return load
    from ffclip.bridge.provision import Provisioner

    return Provisioner(load, args.models)  # fetches what the store lacks, then loads
