"""`ffclip-engine faces IN [--json]`: every face of a photo with box, score, landmarks and quad."""

from __future__ import annotations

import argparse
import json
import sys

from ffclip.engine.imageio import as_rgb8, load_image
from ffclip.plugin.protocol import DEFAULT_MAX_PIXELS, EngineError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", help="photo (any format Pillow reads; 16 bit, alpha, grey kept)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument(
        "--max-pixels",
        type=int,
        default=DEFAULT_MAX_PIXELS,
        help="refuse larger images (default %(default)s)",
    )


def run(args: argparse.Namespace) -> int:
    from ffclip.engine.face.detect import detect_faces

    try:
        image = load_image(args.input, max_pixels=args.max_pixels)
    except EngineError as exc:
        if args.json:
            print(json.dumps({"error": {"code": exc.code, "message": exc.message}}))
        print(f"error [{exc.code}]: {exc.message}", file=sys.stderr)
        return 2
    height, width = image.shape[:2]
    faces = detect_faces(as_rgb8(image))
    if args.json:
        doc = {"width": width, "height": height, "faces": [f.to_json() for f in faces]}
        print(json.dumps(doc))
        return 0
    print(f"{args.input}: {width}x{height}, {len(faces)} face(s)")
    for f in faces:
        x, y, w, h = f.box
        print(f"  face {f.index}: box {x},{y} {w}x{h}  score {f.score:.3f}  quad side {f.qsize:.1f} px")
    return 0
