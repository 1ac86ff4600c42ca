"""`ffclip-engine service install | uninstall | status`: the daemon as a per-user desktop service."""

from __future__ import annotations

import argparse
import sys

from ffclip.bridge.daemon import is_loopback
from ffclip.bridge.service import (
    UNIT_NAME,
    ServiceFileError,
    install,
    other_system_instructions,
    serve_command,
    status,
    uninstall,
    unit_dir,
    unit_text,
)
from ffclip.plugin.protocol import DEFAULT_HOST, DEFAULT_PORT


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=("install", "uninstall", "status"))
    parser.add_argument("--host", default=DEFAULT_HOST)
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    models = parser.add_mutually_exclusive_group()
    models.add_argument("--models", metavar="DIR", help="model store folder for the service")
    models.add_argument("--profile", choices=("real", "tiny"), default="real")
    parser.add_argument("--token-file", metavar="F", help="token file for the service to read")
    parser.add_argument("--tokens-file", metavar="F", help="named tokens file (serve --tokens-file)")
    parser.add_argument("--tls-cert", metavar="PEM", help="serve wss:// with this certificate ...")
    parser.add_argument("--tls-key", metavar="PEM", help="... and its key")
    parser.add_argument("--insecure-plain-token", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--devices", metavar="LIST", help="one worker per device, e.g. cuda:0,cuda:1")
    parser.add_argument("--unit-dir", metavar="DIR", help="unit folder (default: systemd user dir)")
    parser.add_argument("--no-systemctl", action="store_true", help="write/remove the unit file only")
    parser.add_argument("--print", dest="print_only", action="store_true", help="print, change nothing")


def run(args: argparse.Namespace) -> int:
    if args.action == "status":
        return status(args)
    refusal = exposure_refusal(args)
    if refusal:
        print(f"ffclip-engine service: {refusal}", file=sys.stderr)
        return 2
    try:
        command = serve_command(args)
        if not sys.platform.startswith("linux"):
            print(other_system_instructions(command, args.action))
            return 0
        unit_path = unit_dir(args) / UNIT_NAME
        if args.action == "install":
            return install(unit_path, unit_text(command), args)
    except ServiceFileError as exc:  # an argument the service file cannot hold as itself: nothing written
        print(f"ffclip-engine service: {exc}", file=sys.stderr)
        return 2
    return uninstall(unit_path, args)


def exposure_refusal(args: argparse.Namespace) -> str | None:
    """What `serve` would refuse at every start, said once at install (see cli/serve.py)."""
    if args.action != "install" or is_loopback(args.host):
        return None
    if not (args.token_file or args.tokens_file):
        return "a non-loopback --host needs --token-file or --tokens-file"
    if not args.tls_cert and not args.insecure_plain_token:
        return "a non-loopback --host sends tokens: give --tls-cert and --tls-key (wss://)"
    if bool(args.tls_cert) != bool(args.tls_key):
        return "--tls-cert and --tls-key go together"
    return None
