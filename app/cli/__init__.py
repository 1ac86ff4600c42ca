"""`ffclip-engine` command line: one sub-command per module of this package, imported lazily.

Each command module exposes `add_arguments(parser)` and `run(args) -> int`, so the heavy
imports (torch, dlib, websockets) happen only for the command that needs them.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from ffclip.engine import heap

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("ffclip.app.cli.serve", "run the engine daemon (websocket server)"),
    "edit": ("ffclip.app.cli.edit", "edit the faces of a photo with a text prompt"),
    "faces": ("ffclip.app.cli.faces", "detect faces: boxes, landmarks, FFHQ quads"),
    "models": ("ffclip.app.cli.models", "list, fetch, import and verify model checkpoints"),
    "conformance": ("ffclip.app.cli.conformance", "check the models against parity fixtures"),
    "service": ("ffclip.app.cli.service", "install the daemon as a desktop service"),
    "invert-folder": ("ffclip.app.cli.invert_folder", "invert every face of a folder into W+"),
    "train": ("ffclip.app.cli.train", "train the FFCLIP mapper"),
    "evaluate": ("ffclip.app.cli.evaluate", "evaluate a mapper checkpoint"),
    "bench": ("ffclip.app.cli.bench", "time each stage at real model sizes"),
    "install-gimp-plugin": ("ffclip.app.cli.install_gimp_plugin", "install the GIMP 3 plug-in"),
    "gimp-bundle": ("ffclip.app.cli.gimp_bundle", "write the zip a GIMP user unzips into a plug-ins folder"),
    "doctor": ("ffclip.app.cli.doctor", "check the GIMP plug-in, the engine and the models; say how to fix"),
    "batch-edit": ("ffclip.app.batch_edit", "edit every photo of a folder through GIMP 3 and the plug-in"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ffclip-engine", description="FFCLIP Edit engine: text-driven face editing.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_module, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def _version() -> str:
    from ffclip.engine import __version__

    return __version__


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        parser = build_parser()
        parser.parse_args(argv or ["--help"])
        return 2
    name, rest = argv[0], argv[1:]
    heap.configure()  # before any thread: one heap that a device thread can reuse its pages from
    module_name, help_text = COMMANDS[name]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"ffclip-engine {name}", description=help_text)
    module.add_arguments(parser)
    args = parser.parse_args(rest)
    try:
        return int(module.run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
