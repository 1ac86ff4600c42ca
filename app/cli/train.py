"""`ffclip-engine train`: the command line of engine/training/train.py."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch

from ffclip.engine.training import ddp
from ffclip.engine.training.report import write_json
from ffclip.engine.training.train import OFFICIAL_LR_STEPS, Trainer, export_mapper, log, log_setup, setup_logging


def add_arguments(parser: argparse.ArgumentParser) -> None:
    data = parser.add_argument_group("data")
    data.add_argument("--latents", help="training W+ codes, .npy (N, n_latent, 512) float32")
    data.add_argument("--val-latents", help="validation W+ codes (validation each epoch)")
    data.add_argument("--prompts", help="prompt file, one a line, '[category]' sections (default: official list)")
    data.add_argument("--out", help="output folder: checkpoints/, log.jsonl, loss.svg, summary.json")

    models = parser.add_argument_group("models")
    models.add_argument(
        "--profile",
        default="real",
        choices=("real", "tiny"),
        help="real: the model store; tiny: small untrained networks for smoke runs",
    )
    models.add_argument("--models", help="model store folder (default: the engine's store)")
    models.add_argument("--generator", help="StyleGAN2 file (rosinality g_ema or an FFCLIP checkpoint)")
    models.add_argument("--arcface", help="ArcFace IR-SE-50 file (model_ir_se50.pth)")
    models.add_argument("--clip", help="CLIP ViT-B/32 weights (open_clip state_dict, .safetensors/.pt)")
    models.add_argument("--parsenet", help="face-parsing U-Net (parsenet.pth): turns the background loss on")
    models.add_argument("--init", help="start the mapper from this FFCLIP checkpoint (official or ours)")
    models.add_argument(
        "--domain",
        default="face",
        choices=("face", "car", "church"),
        help="the domain's generator (its FFCLIP or e4e file) and identity term (default face)",
    )
    models.add_argument(
        "--similarity",
        choices=("arcface", "moco", "clip"),
        help="the identity term's network: arcface (faces' default), moco (MoCo v2, e4e's loss: cars' and "
        "churches' default), clip (the named replacement when MoCo v2 weights cannot be had)",
    )
    models.add_argument("--moco", help="MoCo v2 checkpoint (moco_v2_800ep_pretrain.pt) for --similarity moco")

    loss = parser.add_argument_group("objective (defaults: the official train_configs.yaml)")
    loss.add_argument("--id-lambda", type=float, default=0.9)
    loss.add_argument("--clip-lambda", type=float, default=1.0)
    loss.add_argument("--latent-lambda", type=float, default=1.6)
    loss.add_argument("--embd-lambda", type=float, default=1.0)
    loss.add_argument("--bg-lambda", type=float, default=2.0, help="background loss (needs --parsenet)")
    loss.add_argument("--age-lambda", type=float, help="CLIP weight of [age] prompts (default: --clip-lambda)")
    loss.add_argument("--emotion-lambda", type=float, help="CLIP weight of [emotion] prompts (default: --clip-lambda)")
    loss.add_argument(
        "--clip-reduction",
        default="sum",
        choices=("sum", "mean"),
        help="CLIP loss over a batch: summed as the official code (default) or averaged",
    )
    loss.add_argument(
        "--clip-input",
        default="official",
        choices=("official", "normalized"),
        help="CLIP image input: the generator's [-1,1] output as the official code, or CLIP-normalised",
    )

    opt = parser.add_argument_group("optimisation")
    opt.add_argument("--epochs", type=int, default=20)
    opt.add_argument("--batch-size", type=int, default=8, help="per process")
    opt.add_argument("--lr", type=float, default=5e-4)
    opt.add_argument(
        "--lr-steps",
        default=",".join(map(str, OFFICIAL_LR_STEPS)),
        help="fractions of the epochs where the learning rate decays",
    )
    opt.add_argument("--lr-gamma", type=float, default=0.5)
    opt.add_argument("--grad-clip", type=float, default=5.0, help="gradient-norm clipping (0: off)")
    opt.add_argument("--max-steps", type=int, help="stop after this many optimizer steps in all")
    opt.add_argument("--seed", type=int, default=42)

    run_ = parser.add_argument_group("run")
    run_.add_argument("--device", default="auto", help="auto, cpu, cuda (torchrun: one GPU per local rank)")
    run_.add_argument(
        "--amp",
        default="auto",
        choices=("auto", "off", "bf16", "fp16"),
        help="mixed precision on GPUs (auto: bf16 where supported); never on CPU",
    )
    run_.add_argument(
        "--render-size",
        type=int,
        help="stop synthesis at this resolution for the losses (default: full size; smaller is "
        "a fast approximation for smoke runs)",
    )
    run_.add_argument("--val-interval", type=int, default=1, help="validate every N epochs")
    run_.add_argument("--val-limit", type=int, help="validate on at most N samples")
    run_.add_argument("--save-interval", type=int, default=2, help="epoch_N.pt every N epochs")
    run_.add_argument("--image-interval", type=int, default=1, help="sample images every N epochs (0: off)")
    run_.add_argument("--log-every", type=int, default=50, help="console line every N steps (log.jsonl: all)")
    run_.add_argument("--resume", action="store_true", help="continue from OUT/checkpoints/last.pt")
    run_.add_argument(
        "--no-cache-targets",
        action="store_true",
        help="recompute G(w)'s ArcFace/CLIP features every step instead of once per sample",
    )
    run_.add_argument("--export-mapper", help="also write a mapper-only checkpoint here (best, else last)")
    run_.add_argument("--ddp-backend", default="auto", help="torch.distributed backend (auto: nccl/gloo)")
    run_.add_argument("--no-progress", action="store_true", help="no progress bar")
    run_.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")


def run(args: argparse.Namespace) -> int:
    if not args.latents:
        if args.export_mapper and args.init:  # export only
            print(f"wrote {export_mapper(args.init, args.export_mapper)}")
            return 0
        print("error: --latents is required (or --init C --export-mapper P to export a mapper only)", file=sys.stderr)
        return 2
    if not args.out:
        print("error: --out is required", file=sys.stderr)
        return 2
    out = Path(args.out)
    info = ddp.setup(args.device, args.ddp_backend)
    handlers: list[logging.Handler] = []
    threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        if info.is_main:
            out.mkdir(parents=True, exist_ok=True)
            if not args.resume and (out / "log.jsonl").exists():
                (out / "log.jsonl").unlink()  # a fresh run: a fresh log
        ddp.barrier(info)
        handlers = setup_logging(out, info.is_main)
        trainer = Trainer(args, info, out)
        log_setup(trainer)
        last = out / "checkpoints" / "last.pt"
        if args.resume:
            if last.exists():
                trainer.resume(last)
            else:
                log.info("--resume: no %s yet, starting afresh", last)
        trainer.global_step_start = trainer.global_step
        summary = trainer.run()
        if args.export_mapper and info.is_main:
            best = out / "checkpoints" / "best_model.pt"
            src = best if best.exists() else last
            export_mapper(src, args.export_mapper, trainer.opts)
            log.info("mapper-only export (%s weights): %s", src.name, args.export_mapper)
            summary["export_mapper"] = str(args.export_mapper)
        if info.is_main:
            write_json(out / "summary.json", summary)
            log.info(
                "done: %d steps, loss %s -> %s (mean of first/last 10 steps), %.2f steps/s; summary: %s",
                summary["steps"],
                _f(summary["loss_first"]),
                _f(summary["loss_last"]),
                summary["steps_per_s"] or 0.0,
                out / "summary.json",
            )
            if info.world_size > 1:
                log.info("ranks agree on the mapper weights: max |Δθ| %s", summary["ddp_weight_max_abs_diff"])
        return 0
    except (FileNotFoundError, ValueError) as exc:
        if handlers:
            log.error("error: %s", exc)
        else:
            print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        for h in handlers:
            log.removeHandler(h)
            h.close()
        torch.set_num_threads(threads)
        ddp.cleanup(info)


def _f(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4f}"
