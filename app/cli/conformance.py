"""`ffclip-engine conformance DIR`: run every parity fixture pair in DIR; non-zero exit on any mismatch."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from ffclip.engine.conformance import TOLERANCE, fixtures_in, report_line, run_fixture


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", type=Path, help="folder of NAME.manifest.json + NAME.expected.npz pairs")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument(
        "--tolerance", type=float, default=None, help=f"max relative error (default {TOLERANCE:g}; bf16: per network)"
    )
    parser.add_argument(
        "--precision",
        choices=("fp32", "bf16"),
        default="fp32",
        help="run the networks as the engine does in this precision (bf16: against the float32 references, "
        "with the looser rule stated per network)",
    )


def run(args: argparse.Namespace) -> int:
    paths = fixtures_in(args.dir)
    if not paths:
        print(f"no fixtures (NAME.manifest.json + NAME.expected.npz) in {args.dir}", file=sys.stderr)
        return 1
    device = torch.device(args.device)
    if device.type == "cuda":  # parity is defined in true float32: no TF32 tensor-core rounding
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    failed = 0
    for path in paths:
        try:
            result = run_fixture(path, device, args.precision)
        except Exception as exc:  # a broken fixture or model is a failure, reported, not a traceback
            print(f"FAIL {path.name}: {type(exc).__name__}: {exc}")
            failed += 1
            continue
        print(report_line(result, args.tolerance))
        failed += not result.passed(args.tolerance)
    print(f"{len(paths) - failed} passed, {failed} failed")
    return 1 if failed else 0
