"""`ffclip-engine gimp-bundle -o FILE.zip`: the zip a GIMP user unzips into a plug-ins folder (app/bundle.py)."""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from ffclip.app import bundle


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-o", "--output", metavar="FILE.zip", required=True, help="the bundle to write")
    parser.add_argument(
        "--wheel",
        metavar="PATH",
        help="the ffclip-edit wheel to bundle (default: build it from this checkout with `python -m build --wheel`)",
    )
    parser.add_argument(
        "--pip-wheel",
        metavar="PATH",
        help="the pip wheel to bundle (default: this Python's ensurepip copy when it is pip 24.1+, else "
        "`pip download 'pip>=24.1'`, else the older ensurepip copy)",
    )
    parser.add_argument(
        "--gex",
        metavar="FILE.gex",
        help="also write the plug-in as a GIMP 3 extension, installed with GIMP's File > Open (docs/install.md)",
    )


def run(args: argparse.Namespace) -> int:
    try:
        output = bundle.check_output(Path(args.output), ".zip")
        gex = bundle.check_output(Path(args.gex), ".gex") if args.gex else None
        stamp = bundle.source_stamp()
        with tempfile.TemporaryDirectory(prefix="ffclip-bundle-") as tmp:
            if args.wheel:
                wheel = bundle.check_project_wheel(Path(args.wheel).expanduser())
            else:
                print("building the ffclip-edit wheel ...", file=sys.stderr)
                wheel = bundle.build_project_wheel(Path(tmp), stamp)
            if args.pip_wheel:
                pip = bundle.check_pip_wheel(Path(args.pip_wheel).expanduser())
            else:
                pip, note = bundle.pip_wheel_for_bundle(Path(tmp))
                if note:
                    print(f"gimp-bundle: {note}", file=sys.stderr)
            bundle.write_bundle(output, wheel, pip, stamp)
            print(f"wrote {output} ({wheel.name}, {pip.name})")
            if gex is not None:
                bundle.write_gex(gex, wheel, pip, stamp)
                print(f"wrote {gex} (GIMP extension {bundle.EXTENSION_ID})")
    except (bundle.BundleError, OSError) as exc:
        print(f"gimp-bundle: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, bundle.BundleError) else 1
    print(
        "Unzip it into a GIMP 3 plug-ins folder (GIMP: Edit > Preferences > Folders > Plug-ins), so that "
        "the folder holds ffclip-edit/ffclip-edit.py, then restart GIMP (docs/install.md)."
    )
    return 0
