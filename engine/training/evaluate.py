"""`ffclip-engine evaluate --latents test.npy --checkpoint C [--prompts P] -o report/`.

Per prompt, over the test latents (ŵ = w + α·mapper(w, e)):
* clip_score: cosine of the l2-normalised CLIP image embedding of G(ŵ) (CLIP's own pre-processing:
  antialiased resize to 224, CLIP mean/std) and the prompt's l2-normalised text embedding; the same
  for G(w) (`clip_score_original`) and the gain;
* identity: ArcFace cosine of G(w) and G(ŵ) (the identity loss's crop); for cars and churches the
  cosine of the identity term's features (MoCo v2, or the CLIP replacement: `--similarity`);
* psnr_outside / ssim_outside: how well G(ŵ) preserves G(w) outside the change mask — the engine's
  blend mask (engine.face.blend.change_mask), pixels weighted by 1 − mask; `changed_fraction` is the
  mask's mean;
* mean_abs_delta_w: mean |ŵ − w|.
Writes `report.json` and `index.html` (metrics table and an image grid: one row per sample, the
original first, then one column per prompt) with the images in `images/`.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .data import load_latents
from .metrics import clip_image_features, masked_psnr_ssim
from .prompts import eval_prompts
from .report import html_image_grid, html_page, html_table, save_png, to_uint8_image, write_json

log = logging.getLogger("ffclip.evaluate")
METRICS = (
    "clip_score",
    "clip_score_original",
    "clip_score_gain",
    "identity",
    "psnr_outside",
    "ssim_outside",
    "changed_fraction",
    "mean_abs_delta_w",
)


def _load(args: argparse.Namespace, device: torch.device) -> tuple[Any, Any, dict[str, Any]]:
    from ffclip.engine.checkpoints.layouts import mapper_config, parse_ffclip
    from ffclip.engine.checkpoints.safe_load import load_checkpoint
    from ffclip.engine.models.mapper import DynamicMapper

    from .nets import load_training_nets

    parts = parse_ffclip(load_checkpoint(args.checkpoint), Path(args.checkpoint).name)
    generator = args.generator or (args.checkpoint if parts.generator else None)
    nets = load_training_nets(
        args.profile,
        args.models,
        generator=generator,
        arcface=args.arcface,
        clip=args.clip,
        domain=getattr(args, "domain", "face"),
        similarity=getattr(args, "similarity", None),
        moco=getattr(args, "moco", None),
    ).freeze(device)
    mapper = DynamicMapper(**mapper_config(parts.mapper, "mapper"))
    mapper.load_state_dict(parts.mapper, strict=True)
    mapper.eval().requires_grad_(False).to(device)
    if mapper.n_latent != nets.n_latent:
        raise ValueError(f"the mapper has {mapper.n_latent} W+ layers, the generator {nets.n_latent}")
    return nets, mapper, parts.opts


def _thumb(img: torch.Tensor, size: int) -> np.ndarray:
    if img.shape[-1] != size:
        img = F.interpolate(img[None].float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)[
            0
        ]
    return to_uint8_image(img)


def _mean(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


@torch.no_grad()
def evaluate(args: argparse.Namespace) -> dict[str, Any]:
    import open_clip

    from ffclip.engine.face.blend import change_mask
    from ffclip.engine.inference import resolve_device
    from ffclip.engine.models.clip import MODEL_NAME

    device = resolve_device(args.device)
    out = Path(args.out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    nets, mapper, _ = _load(args, device)
    g = nets.generator
    data = load_latents(args.latents, g.n_latent, g.style_dim)
    n = len(data) if args.limit is None else min(args.limit, len(data))
    prompts = eval_prompts(args.prompts, args.max_prompts)
    stop = args.render_size if args.render_size and args.render_size < g.size else None

    tokens = open_clip.get_tokenizer(MODEL_NAME)(prompts).to(device)
    text_raw = nets.clip.encode_text(tokens).float()  # the mapper's conditioning
    text_unit = F.normalize(text_raw, dim=-1)

    def synth(w: torch.Tensor) -> torch.Tensor:
        return g([w], input_is_latent=True, randomize_noise=False, stop_at=stop)[0].float()

    per: dict[str, dict[str, list[float | None]]] = {p: {m: [] for m in METRICS} for p in prompts}
    grid_rows = min(args.grid_rows, n)
    grid: list[list[str]] = [[] for _ in range(grid_rows)]
    t0 = time.perf_counter()
    for start in range(0, n, args.batch_size):
        idx = np.arange(start, min(start + args.batch_size, n))
        w = data.batch(idx, device)
        x = synth(w)
        x01 = (x.clamp(-1, 1) + 1) / 2
        x_id = nets.identity(x).float()
        x_clip = clip_image_features(nets.clip, x)
        x255 = (x01 * 255).permute(0, 2, 3, 1).cpu().numpy()
        for i, row in enumerate(idx):
            if row < grid_rows:
                name = f"s{row:03d}_original.png"
                save_png(out / "images" / name, _thumb(x[i], args.thumb))
                grid[row].append(f"images/{name}")
        for j, prompt in enumerate(prompts):
            e = text_raw[j].view(1, 1, -1).expand(len(idx), 1, -1)
            w_hat = mapper.edit(w, e, args.strength)
            y = synth(w_hat)
            y01 = (y.clamp(-1, 1) + 1) / 2
            clip_hat = clip_image_features(nets.clip, y)
            identity = (nets.identity(y).float() * x_id).sum(-1)
            y255 = (y01 * 255).permute(0, 2, 3, 1).cpu().numpy()
            masks = np.stack([change_mask(y255[i], x255[i]) for i in range(len(idx))])
            keep = torch.from_numpy(1.0 - masks).to(device)[:, None]
            psnr, ssim = masked_psnr_ssim(x01, y01, keep)
            m = per[prompt]
            score, score0 = clip_hat @ text_unit[j], x_clip @ text_unit[j]
            m["clip_score"] += score.tolist()
            m["clip_score_original"] += score0.tolist()
            m["clip_score_gain"] += (score - score0).tolist()
            m["identity"] += identity.tolist()
            m["psnr_outside"] += psnr
            m["ssim_outside"] += ssim
            m["changed_fraction"] += masks.mean((1, 2)).tolist()
            m["mean_abs_delta_w"] += (w_hat - w).abs().mean((1, 2)).tolist()
            for i, row in enumerate(idx):
                if row < grid_rows:
                    name = f"s{row:03d}_p{j:02d}.png"
                    save_png(out / "images" / name, _thumb(y[i], args.thumb))
                    grid[row].append(f"images/{name}")
        log.info("evaluated %d/%d samples", idx[-1] + 1, n)

    results = [{"prompt": p, **{k: _mean(v) for k, v in per[p].items()}} for p in prompts]
    overall = {k: _mean([r[k] for r in results]) for k in METRICS}
    report = {
        "checkpoint": str(args.checkpoint),
        "latents": str(args.latents),
        "samples": n,
        "strength": args.strength,
        "profile": args.profile,
        "domain": nets.domain,
        "similarity": nets.similarity,
        "untrained": args.profile == "tiny",
        "resolution": stop or g.size,
        "networks": nets.notes,
        "device": str(device),
        "seconds": round(time.perf_counter() - t0, 2),
        "metrics": {
            "clip_score": "cos(CLIP image of G(w_hat), CLIP text of the prompt), both l2-normalised, CLIP "
            "pre-processing (antialiased bicubic 224, CLIP mean/std)",
            "identity": "ArcFace cosine of G(w) and G(w_hat)"
            if nets.similarity == "arcface"
            else f"{nets.similarity} feature cosine of G(w) and G(w_hat)",
            "psnr_outside/ssim_outside": "G(w_hat) vs G(w) weighted by 1 - change mask (engine blend mask)",
            "changed_fraction": "mean of the change mask",
            "mean_abs_delta_w": "mean |w_hat - w|",
        },
        "prompts": results,
        "mean": overall,
    }
    write_json(out / "report.json", report)
    _write_html(out, report, prompts, grid)
    return report


def _write_html(out: Path, report: dict[str, Any], prompts: list[str], grid: list[list[str]]) -> None:
    sections = []
    if report["untrained"]:
        sections.append(
            "<p class='note'>Tiny profile: random, untrained networks — these numbers and images "
            "test the evaluation itself, not a model.</p>"
        )
    sections.append(
        f"<p>checkpoint <code>{report['checkpoint']}</code>; {report['samples']} samples of "
        f"<code>{report['latents']}</code>; strength {report['strength']}; {report['resolution']} px.</p>"
    )
    header = ["prompt", *METRICS]
    rows = [[r["prompt"], *[r[k] for k in METRICS]] for r in report["prompts"]]
    rows.append(["mean", *[report["mean"][k] for k in METRICS]])
    sections.append("<h2>Metrics per prompt</h2>\n" + html_table(header, rows))
    sections.append(
        "<h2>Images</h2>\n"
        + html_image_grid(["original", *prompts], [(f"sample {i}", paths) for i, paths in enumerate(grid)])
    )
    (out / "index.html").write_text(html_page("FFCLIP evaluation", sections), encoding="utf-8")
