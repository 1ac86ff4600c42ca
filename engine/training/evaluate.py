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

Resumable (`partial/`, a line per finished batch). Under torchrun each rank evaluates its share of
the samples and rank 0 merges every rank's lines in sample order: the single-process report.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ffclip.engine.models.stylegan2 import SynthesisPath

from . import ddp
from .data import Latents, load_latents
from .ddp import DistInfo
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


@dataclass
class EvalContext:
    """What every rank loads once: the networks, the latents, the prompts and their embeddings."""

    args: argparse.Namespace
    out: Path
    nets: Any
    mapper: Any
    data: Latents
    n: int
    prompts: list[str]
    text_raw: torch.Tensor  # the mapper's conditioning
    text_unit: torch.Tensor
    stop: int | None
    device: torch.device

    @property
    def resolution(self) -> int:
        return self.stop or self.nets.generator.size

    @property
    def grid_rows(self) -> int:
        return min(self.args.grid_rows, self.n)

    def synth(self, w: torch.Tensor) -> torch.Tensor:
        fast = SynthesisPath.for_inference(self.device)  # evaluation runs without autograd
        return self.nets.generator([w], input_is_latent=True, randomize_noise=False, stop_at=self.stop, path=fast)[
            0
        ].float()


@torch.no_grad()
def load_context(args: argparse.Namespace, device: torch.device) -> EvalContext:
    import open_clip

    from ffclip.engine.models.clip import MODEL_NAME

    nets, mapper, _ = _load(args, device)
    g = nets.generator
    data = load_latents(args.latents, g.n_latent, g.style_dim)
    n = len(data) if args.limit is None else min(args.limit, len(data))
    prompts = eval_prompts(args.prompts, args.max_prompts)
    stop = args.render_size if args.render_size and args.render_size < g.size else None
    tokens = open_clip.get_tokenizer(MODEL_NAME)(prompts).to(device)
    text_raw = nets.clip.encode_text(tokens).float()
    return EvalContext(
        args, Path(args.out), nets, mapper, data, n, prompts, text_raw, F.normalize(text_raw, dim=-1), stop, device
    )


def grid_image(row: int, column: int | None) -> str:
    """The grid image of sample `row`: the original (column None) or prompt `column`'s edit."""
    return f"images/s{row:03d}_original.png" if column is None else f"images/s{row:03d}_p{column:02d}.png"


@torch.no_grad()
def evaluate_batch(ctx: EvalContext, idx: np.ndarray) -> dict[str, Any]:
    """Every metric of samples `idx` for every prompt (a record: {"samples", "prompts": [{metric:
    [value per sample]}]}); the grid images of the samples among the first rows are saved."""
    from ffclip.engine.face.blend import change_mask

    nets, args = ctx.nets, ctx.args
    w = ctx.data.batch(idx, ctx.device)
    x = ctx.synth(w)
    x01 = (x.clamp(-1, 1) + 1) / 2
    x_id = nets.identity(x).float()
    x_clip = clip_image_features(nets.clip, x)
    x255 = (x01 * 255).permute(0, 2, 3, 1).cpu().numpy()
    in_grid = [(i, int(row)) for i, row in enumerate(idx) if row < ctx.grid_rows]
    for i, row in in_grid:
        save_png(ctx.out / grid_image(row, None), _thumb(x[i], args.thumb))
    record: dict[str, Any] = {"samples": [int(v) for v in idx], "prompts": []}
    for j in range(len(ctx.prompts)):
        e = ctx.text_raw[j].view(1, 1, -1).expand(len(idx), 1, -1)
        w_hat = ctx.mapper.edit(w, e, args.strength)
        y = ctx.synth(w_hat)
        y01 = (y.clamp(-1, 1) + 1) / 2
        clip_hat = clip_image_features(nets.clip, y)
        identity = (nets.identity(y).float() * x_id).sum(-1)
        y255 = (y01 * 255).permute(0, 2, 3, 1).cpu().numpy()
        masks = np.stack([change_mask(y255[i], x255[i]) for i in range(len(idx))])
        keep = torch.from_numpy(1.0 - masks).to(ctx.device)[:, None]
        psnr, ssim = masked_psnr_ssim(x01, y01, keep)
        score, score0 = clip_hat @ ctx.text_unit[j], x_clip @ ctx.text_unit[j]
        record["prompts"].append(
            {
                "clip_score": score.tolist(),
                "clip_score_original": score0.tolist(),
                "clip_score_gain": (score - score0).tolist(),
                "identity": identity.tolist(),
                "psnr_outside": psnr,
                "ssim_outside": ssim,
                "changed_fraction": masks.mean((1, 2)).tolist(),
                "mean_abs_delta_w": (w_hat - w).abs().mean((1, 2)).tolist(),
            }
        )
        for i, row in in_grid:
            save_png(ctx.out / grid_image(row, j), _thumb(y[i], args.thumb))
    return record


# --- resumable progress --------------------------------------------------------------------------------
#
# `OUT/partial/`: config.json (what is evaluated: a later run must evaluate the same to reuse the
# progress) and one append-only rankNNNNN.jsonl per writer, a line per finished batch, written after
# the batch's grid images. A kill loses at most the batch in flight (a torn last line is ignored).


def _file_id(path: str | os.PathLike[str] | None) -> dict[str, Any] | None:
    if path is None:
        return None
    p = Path(path)
    st = p.stat()
    return {"path": str(p.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def run_config(ctx: EvalContext) -> dict[str, Any]:
    args = ctx.args
    return {
        "version": 1,
        "checkpoint": _file_id(args.checkpoint),
        "latents": _file_id(args.latents),
        "prompts": ctx.prompts,
        "strength": args.strength,
        "resolution": ctx.resolution,
        "profile": args.profile,
        "domain": ctx.nets.domain,
        "similarity": ctx.nets.similarity,
        "models": args.models,
        "generator": _file_id(args.generator),
        "arcface": _file_id(args.arcface),
        "clip": _file_id(args.clip),
        "grid_rows": args.grid_rows,
        "thumb": args.thumb,
    }


class EvalProgress:
    def __init__(self, out: Path) -> None:
        self.dir = out / "partial"

    def part(self, rank: int) -> Path:
        return self.dir / f"rank{rank:05d}.jsonl"

    def plan(self, config: dict[str, Any], n: int, restart: bool) -> tuple[list[int], int]:
        """Rank 0, before any rank writes: the samples left to evaluate, and how many are reused."""
        if restart:
            shutil.rmtree(self.dir, ignore_errors=True)
        path = self.dir / "config.json"
        if path.exists():
            try:
                before = json.loads(path.read_text(encoding="utf-8"))
            except ValueError:
                before = {}
            changed = [k for k in config if before.get(k) != config[k]]
            if changed:
                raise ValueError(
                    f"{self.dir} holds an interrupted evaluation of something else (differs in: "
                    f"{', '.join(changed)}); use --restart to discard it"
                )
        else:
            self.dir.mkdir(parents=True, exist_ok=True)
            write_json(path, config)
        done = {s for rec in self.records() for s in rec["samples"] if s < n}
        return [i for i in range(n) if i not in done], len(done)

    def append(self, rank: int, record: dict[str, Any]) -> None:
        with open(self.part(rank), "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def records(self) -> list[dict[str, Any]]:
        out = []
        for path in sorted(self.dir.glob("rank*.jsonl")):
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    out.append(json.loads(line))
                except ValueError:  # a line torn by a kill
                    continue
        return out


def merge_records(records: list[dict[str, Any]], n: int, n_prompts: int) -> list[dict[str, list[float | None]]]:
    """Per prompt, every metric's values in sample order (0..n-1), whichever rank made them."""
    by_sample: dict[int, list[dict[str, float | None]]] = {}
    for rec in records:
        for k, sample in enumerate(rec["samples"]):
            if sample < n and sample not in by_sample:
                by_sample[sample] = [{m: p[m][k] for m in METRICS} for p in rec["prompts"]]
    missing = [i for i in range(n) if i not in by_sample]
    if missing:  # every rank has finished: its records are not where rank 0 looks
        raise ValueError(
            f"no results for samples {missing[:10]}: under torchrun on several nodes the report folder "
            "must be shared by all of them"
        )
    return [{m: [by_sample[i][j][m] for i in range(n)] for m in METRICS} for j in range(n_prompts)]


# --- the command -------------------------------------------------------------------------------------


def evaluate(args: argparse.Namespace, info: DistInfo | None = None) -> dict[str, Any]:
    """Evaluate; under torchrun (`info` from ddp.setup) each rank takes its share of the samples
    and rank 0 merges every rank's metrics, in sample order, into the report."""
    from ffclip.engine.inference import resolve_device

    info = info or DistInfo(device=resolve_device(args.device))
    t0 = time.perf_counter()
    ctx = load_context(args, info.device)
    progress = EvalProgress(ctx.out)
    config = run_config(ctx)

    def plan() -> tuple[list[int], int]:
        (ctx.out / "images").mkdir(parents=True, exist_ok=True)
        return progress.plan(config, ctx.n, args.restart)

    todo, reused = ddp.on_main(info, plan)
    mine = todo[info.rank :: info.world_size]
    who = "" if info.world_size == 1 else f"rank {info.rank}: "
    t_rank = time.perf_counter()
    for k in range(0, len(mine), args.batch_size):
        progress.append(info.rank, evaluate_batch(ctx, np.asarray(mine[k : k + args.batch_size])))
        log.info("%sevaluated %d/%d samples", who, min(k + args.batch_size, len(mine)), len(mine))
    stats = {"rank": info.rank, "samples": len(mine), "seconds": round(time.perf_counter() - t_rank, 2)}
    ranks = ddp.all_gather_object(info, stats)  # also waits for every rank's last record
    return ddp.on_main(info, lambda: _finish(ctx, info, progress, ranks, len(todo), reused, t0))


def _finish(
    ctx: EvalContext,
    info: DistInfo,
    progress: EvalProgress,
    ranks: list[dict[str, Any]],
    evaluated: int,
    reused: int,
    t0: float,
) -> dict[str, Any]:
    """Rank 0: the report from every rank's records; drop the progress."""
    args = ctx.args
    per = merge_records(progress.records(), ctx.n, len(ctx.prompts))
    results = [{"prompt": p, **{k: _mean(v) for k, v in per[j].items()}} for j, p in enumerate(ctx.prompts)]
    overall = {k: _mean([r[k] for r in results]) for k in METRICS}
    report = {
        "checkpoint": str(args.checkpoint),
        "latents": str(args.latents),
        "samples": ctx.n,
        "strength": args.strength,
        "profile": args.profile,
        "domain": ctx.nets.domain,
        "similarity": ctx.nets.similarity,
        "untrained": args.profile == "tiny",
        "resolution": ctx.resolution,
        "networks": ctx.nets.notes,
        "device": str(ctx.device),
        "world_size": info.world_size,
        "ranks": ranks,
        "evaluated_this_run": evaluated,
        "reused": reused,
        "seconds": round(time.perf_counter() - t0, 2),
        "metrics": {
            "clip_score": "cos(CLIP image of G(w_hat), CLIP text of the prompt), both l2-normalised, CLIP "
            "pre-processing (antialiased bicubic 224, CLIP mean/std)",
            "identity": "ArcFace cosine of G(w) and G(w_hat)"
            if ctx.nets.similarity == "arcface"
            else f"{ctx.nets.similarity} feature cosine of G(w) and G(w_hat)",
            "psnr_outside/ssim_outside": "G(w_hat) vs G(w) weighted by 1 - change mask (engine blend mask)",
            "changed_fraction": "mean of the change mask",
            "mean_abs_delta_w": "mean |w_hat - w|",
        },
        "prompts": results,
        "mean": overall,
    }
    grid = [
        [grid_image(row, None)] + [grid_image(row, j) for j in range(len(ctx.prompts))] for row in range(ctx.grid_rows)
    ]
    write_json(ctx.out / "report.json", report)
    _write_html(ctx.out, report, ctx.prompts, grid)
    shutil.rmtree(progress.dir, ignore_errors=True)
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
