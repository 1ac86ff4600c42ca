"""`ffclip-engine invert-folder`: the command line of engine/training/invert_folder.py."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ffclip.engine.inference import torch_threads
from ffclip.engine.training import ddp
from ffclip.engine.training.invert_folder import invert_folder
from ffclip.plugin.protocol import DEFAULT_MAX_PIXELS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", type=Path, help="folder of photos (searched recursively)")
    parser.add_argument("-o", "--output", required=True, type=Path, help="W+ codes, .npy (N, n_latent, 512)")
    parser.add_argument("--report", type=Path, help="also write a JSON report here")
    parser.add_argument(
        "--profile",
        default="real",
        choices=("real", "tiny"),
        help="real: e4e from the model store; tiny: the untrained tiny encoder (tests)",
    )
    parser.add_argument("--models", help="model store folder")
    parser.add_argument("--e4e", help="e4e checkpoint (default: the store's e4e_ffhq_encode.pt)")
    parser.add_argument("--faces", default="all", choices=("all", "largest"), help="faces per photo")
    parser.add_argument("--batch-size", type=int, default=8, help="faces per encoder batch")
    parser.add_argument("--flush-every", type=int, default=32, help="save progress every N photos")
    parser.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help="skip larger photos")
    parser.add_argument("--restart", action="store_true", help="ignore earlier progress and results")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, help="CPU threads for torch")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--workers",
        type=int,
        help="processes for reading, detection and alignment per rank (0: in this process; "
        "default: this node's cores per rank, less one, at most 8)",
    )
    parser.add_argument(
        "--ddp-backend", default="auto", help="torch.distributed backend under torchrun (auto: nccl/gloo)"
    )


def run(args: argparse.Namespace) -> int:
    if args.workers is not None and args.workers < 0:
        print("error: --workers must be 0 or more", file=sys.stderr)
        return 2
    info = None
    try:
        info = ddp.setup(args.device, args.ddp_backend)  # a single process unless torchrun started us
        with torch_threads(args.threads):
            report = invert_folder(args, info)
    except (FileNotFoundError, ValueError) as exc:
        print(ddp.error_line(info, exc), file=sys.stderr)
        return 2
    finally:
        if info is not None:
            ddp.cleanup(info)
    if not info.is_main:
        return 0 if report["faces"] else 1
    print(
        f"{report['faces']} face(s) from {report['photos_with_faces']} of {report['photos']} photo(s) -> "
        f"{report['output']} {tuple(report['shape'])}; index {report['index']}"
    )
    for rel in report["no_face"]:
        print(f"  no face:    {rel}")
    for item in report["unreadable"]:
        print(f"  unreadable: {item['file']} ({item['reason']})")
    if report["reused"]:
        print(f"  {report['reused']} photo(s) reused from earlier progress ({report['resumed_from']})")
    if report["world_size"] > 1:
        for r in report["ranks"]:
            print(f"  rank {r['rank']}: {r['photos']} photo(s), {r['faces']} face(s), {r['seconds']} s")
    return 0 if report["faces"] else 1
