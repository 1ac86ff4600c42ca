"""`ffclip-engine evaluate`: the command line of engine/training/evaluate.py."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from ffclip.engine.inference import torch_threads
from ffclip.engine.training import ddp
from ffclip.engine.training.evaluate import evaluate, log


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--latents", help="test W+ codes, .npy (N, n_latent, 512) (required unless --fidelity-photos)")
    parser.add_argument(
        "--checkpoint", help="FFCLIP checkpoint (official layout, or mapper-only) (required unless --fidelity-photos)"
    )
    parser.add_argument(
        "--fidelity-photos",
        metavar="DIR",
        help="instead: invert the largest face of each photo in DIR at fidelity standard (e4e) and high "
        "(HyperStyle) and report ArcFace ID similarity (when its weights are present) and reconstruction "
        "error per fidelity (OUT/fidelity.json)",
    )
    parser.add_argument("--prompts", help="prompt file (default: 8 prompts spread over the official list)")
    parser.add_argument("--max-prompts", type=int, help="evaluate at most N prompts of the file")
    parser.add_argument("-o", "--out", required=True, help="report folder (report.json, index.html, images/)")
    parser.add_argument("--profile", default="real", choices=("real", "tiny"))
    parser.add_argument("--models", help="model store folder")
    parser.add_argument("--generator", help="StyleGAN2 file (default: the checkpoint's own generator)")
    parser.add_argument("--arcface", help="ArcFace IR-SE-50 file")
    parser.add_argument("--clip", help="CLIP ViT-B/32 weights")
    parser.add_argument("--domain", default="face", choices=("face", "car", "church"), help="default face")
    parser.add_argument(
        "--similarity", choices=("arcface", "moco", "clip"), help="identity network (default: the domain's)"
    )
    parser.add_argument("--moco", help="MoCo v2 checkpoint for --similarity moco")
    parser.add_argument("--limit", type=int, help="use the first N latents only")
    parser.add_argument("--strength", type=float, default=1.0, help="edit strength α (default 1)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--render-size", type=int, help="stop synthesis at this resolution (default: full)")
    parser.add_argument("--grid-rows", type=int, default=6, help="samples shown in the image grid")
    parser.add_argument("--thumb", type=int, default=160, help="side of the grid images in pixels")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, help="CPU threads for torch")
    parser.add_argument("--restart", action="store_true", help="discard the progress of an interrupted run")
    parser.add_argument(
        "--ddp-backend", default="auto", help="torch.distributed backend under torchrun (auto: nccl/gloo)"
    )


def run(args: argparse.Namespace) -> int:
    if not log.handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False
    if args.fidelity_photos:
        return _run_fidelity(args)
    if not (args.latents and args.checkpoint):
        print("evaluate: --latents and --checkpoint are required (or --fidelity-photos DIR)", file=sys.stderr)
        return 2
    info = None
    try:
        info = ddp.setup(args.device, args.ddp_backend)  # a single process unless torchrun started us
        with torch_threads(args.threads):
            report = evaluate(args, info)
    except (FileNotFoundError, ValueError) as exc:
        print(ddp.error_line(info, exc), file=sys.stderr)
        return 2
    finally:
        if info is not None:
            ddp.cleanup(info)
    if not info.is_main:
        return 0
    mean = report["mean"]
    print(
        f"{len(report['prompts'])} prompts x {report['samples']} samples: clip_score {_f(mean['clip_score'])} "
        f"(original {_f(mean['clip_score_original'])}), identity {_f(mean['identity'])}, PSNR outside "
        f"{_f(mean['psnr_outside'])} dB, SSIM outside {_f(mean['ssim_outside'])}, |Δw| "
        f"{_f(mean['mean_abs_delta_w'])}"
    )
    if report["reused"]:
        print(f"  {report['reused']} sample(s) reused from an interrupted run")
    if report["world_size"] > 1:
        for r in report["ranks"]:
            print(f"  rank {r['rank']}: {r['samples']} sample(s), {r['seconds']} s")
    print(f"report: {Path(args.out) / 'report.json'}, page: {Path(args.out) / 'index.html'}")
    return 0


def _run_fidelity(args: argparse.Namespace) -> int:
    from ffclip.engine.training.fidelity import run_fidelity_evaluation

    try:
        with torch_threads(args.threads):
            report = run_fidelity_evaluation(args, lambda line: print(line, file=sys.stderr))
    except (FileNotFoundError, ValueError) as exc:
        print(f"evaluate: {exc}", file=sys.stderr)
        return 2
    for fidelity, figures in report["fidelities"].items():
        if "skipped" in figures:
            print(f"{fidelity:<8} skipped: {figures['skipped']}")
            continue
        print(
            f"{fidelity:<8} ID similarity {_f(figures['id_similarity'])}, reconstruction MSE {_f(figures['mse'])} "
            f"(PSNR {_f(figures['psnr_db'])} dB), inversion {figures['invert_seconds']:.2f} s a face"
        )
    if report.get("untrained"):
        print("(the tiny profile's untrained networks: the figures are not a model's)")
    print(f"{report['faces']} face(s); report: {Path(args.out) / 'fidelity.json'}")
    return 0


def _f(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4f}"
