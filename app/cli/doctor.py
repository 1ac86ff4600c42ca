"""`ffclip-engine doctor`: why is the menu entry missing, or why does an edit fail, in one command
(the checks are in app/doctor/engine.py and app/doctor/gimp.py; docs/troubleshooting.md explains each)."""

from __future__ import annotations

import argparse
import json
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the checks as JSON")
    parser.add_argument("--no-gimp", action="store_true", help="do not run GIMP to ask what it registered")
    parser.add_argument("--url", help="check this engine URL instead of the plug-in's saved ones")
    parser.add_argument(
        "--models", metavar="DIR", help="model store to check (default: the start command's --models, else the user's)"
    )
    parser.add_argument("--hash", action="store_true", help="recompute each model file's sha256 (slower)")
    parser.add_argument("--timeout", type=float, default=5.0, metavar="S", help="seconds per engine connection")
    parser.add_argument("--gimp-timeout", type=float, default=180.0, metavar="S", help="seconds for the GIMP run")


def run(args: argparse.Namespace) -> int:
    from ffclip.app.doctor.engine import diagnose
    from ffclip.app.doctor.gimp import Context, render_text, to_json
    from ffclip.engine import __version__
    from ffclip.gimp.settings import normalize_url

    if args.url:
        try:
            normalize_url(args.url)
        except ValueError as exc:
            print(f"ffclip-engine doctor: {exc}", file=sys.stderr)
            return 2
    ctx = Context.from_environ(
        run_gimp=not args.no_gimp,
        gimp_timeout=args.gimp_timeout,
        url=args.url,
        models_dir=args.models,
        hash_models=args.hash,
        timeout=args.timeout,
        version=__version__,
    )
    checks = diagnose(ctx)
    if args.json:
        print(json.dumps(to_json(checks, __version__), indent=2, ensure_ascii=False))
    else:
        print(render_text(checks, __version__))
    return 1 if any(c.status == "fail" for c in checks) else 0
