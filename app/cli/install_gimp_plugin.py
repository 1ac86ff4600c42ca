"""`ffclip-engine install-gimp-plugin`: put the FFCLIP Edit plug-in where GIMP 3 finds it (app/install.py)."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections.abc import Mapping
from pathlib import Path

from ffclip.app.install import ENTRY, find_plugin_dirs, install, sandboxed, uninstall
from ffclip.gimp import settings as gimp_settings
from ffclip.plugin.protocol import DEFAULT_URL
from ffclip.plugin.tls import format_fingerprint, normalize_fingerprint


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dest", metavar="DIR", help="GIMP 3 plug-ins folder (default: found automatically)")
    parser.add_argument("--uninstall", action="store_true", help="remove the plug-in instead")
    parser.add_argument("--url", help=f"engine URL the plug-in uses (default {DEFAULT_URL})")
    tokens = parser.add_mutually_exclusive_group()
    tokens.add_argument(
        "--token",
        help="access token, when the daemon needs one ('' clears the saved one); visible to every user in the "
        "process list: prefer --token-file or $FFCLIP_TOKEN",
    )
    tokens.add_argument("--token-file", metavar="F", help="read the access token from this file")
    parser.add_argument(
        "--tls-ca", metavar="FILE", help="wss:// engine: the CA file that signed its certificate ('' to clear)"
    )
    parser.add_argument(
        "--tls-fingerprint",
        metavar="SHA256",
        help="wss:// engine: pin its certificate's SHA-256 fingerprint, as `serve` prints it ('' to clear)",
    )
    auto = parser.add_mutually_exclusive_group()
    auto.add_argument(
        "--autostart",
        dest="autostart",
        action="store_true",
        default=None,
        help="let the plug-in start the engine when it is not running (local URL only; the default, "
        "except for a Flatpak or Snap GIMP, whose sandbox cannot run it)",
    )
    auto.add_argument("--no-autostart", dest="autostart", action="store_false", help="never start it")
    parser.add_argument(
        "--start-command",
        help="command that starts the engine (default: this Python's `ffclip-engine serve --port PORT`)",
    )
    parser.add_argument("--start-timeout", type=float, help="seconds to wait for a started engine (default 120)")
    parser.add_argument("--dry-run", action="store_true", help="print what would be done")


def run(args: argparse.Namespace) -> int:
    try:
        token = given_token(args)
    except (OSError, ValueError) as exc:
        print(f"install-gimp-plugin: {exc}", file=sys.stderr)
        return 2
    if args.token:
        print(
            "install-gimp-plugin: a token given with --token is visible to every user of this computer in the "
            "process list; use --token-file F or the FFCLIP_TOKEN environment variable instead",
            file=sys.stderr,
        )
    try:
        dests = [Path(args.dest).expanduser()] if args.dest else find_plugin_dirs()
    except RuntimeError as exc:
        print(f"install-gimp-plugin: {exc}", file=sys.stderr)
        return 1
    status = 0
    for dest in dests:
        try:
            if args.uninstall:
                removed = uninstall(dest, dry_run=args.dry_run)
                print(f"removed {removed}" if removed else f"nothing to remove in {dest}")
            else:
                autostart = not sandboxed(dest)  # a Flatpak or Snap GIMP cannot start the engine
                given = _settings_from_args(args, token)
                target = install(dest, given, dry_run=args.dry_run, default_autostart=autostart)
                print(f"installed {target / ENTRY}")
        except (OSError, ValueError) as exc:
            print(f"install-gimp-plugin: {dest}: {exc}", file=sys.stderr)
            status = 1
    if status == 0 and not args.uninstall and not args.dry_run:
        print(
            "Restart GIMP: the entries are Filters > FFCLIP Edit... and Filters > FFCLIP Cancel.\n"
            f"Start the engine {serve_command(gimp_settings.normalize_url(args.url or DEFAULT_URL))}"
        )
    return status


def serve_command(url: str) -> str:
    """Where and how to start the engine that the plug-in reaches at `url`: 'with: ffclip-engine serve
    --port 9120', or 'on HOST with: ...' for another machine (listening beyond loopback, with a token)."""
    from ffclip.plugin.protocol import DEFAULT_PORT
    from ffclip.plugin.websocket import parse_url

    host, port, _, secure = parse_url(url)
    local = host in ("127.0.0.1", "localhost", "::1")
    words = ["ffclip-engine", "serve"] + ([] if local else ["--host", "0.0.0.0", "--tokens-file", "TOKENS"])
    if port != DEFAULT_PORT:
        words += ["--port", str(port)]
    if secure:
        words += ["--tls-cert", "CERT.pem", "--tls-key", "KEY.pem"]
    return ("with: " if local else f"on {host} with: ") + shlex.join(words)


def given_token(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> str | None:
    """The token to save: --token, else the stripped contents of --token-file, else $FFCLIP_TOKEN (the
    sources `serve` reads); None when none is given (the saved one is kept), '' to clear it (--token '')."""
    environ = os.environ if environ is None else environ
    if args.token is not None:
        return args.token
    if args.token_file:
        path = Path(args.token_file).expanduser()
        try:
            token = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise OSError(f"cannot read the token file {path}: {exc.strerror}") from None
        if not token:  # an empty file is a mistake, not a request to clear the saved token
            raise ValueError(f"the token file {path} is empty")
        return token
    return environ.get("FFCLIP_TOKEN") or None


def _settings_from_args(args: argparse.Namespace, token: str | None) -> dict:
    given: dict = {}
    if args.url:
        given["url"] = gimp_settings.normalize_url(args.url)
    if token is not None:
        given["token"] = token or None
    if args.tls_ca is not None:
        given["tls_ca_file"] = str(Path(args.tls_ca).expanduser().resolve()) if args.tls_ca else None
    if args.tls_fingerprint is not None:
        pin = args.tls_fingerprint.strip()
        given["tls_fingerprint"] = format_fingerprint(normalize_fingerprint(pin)) if pin else None
    if args.autostart is not None:
        given["autostart"] = bool(args.autostart)
    if args.start_command:
        given["start_command"] = shlex.split(args.start_command)
    if args.start_timeout is not None:
        given["start_timeout"] = float(args.start_timeout)
    return given
