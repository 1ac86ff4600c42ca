"""`ffclip-engine train`: train the FFCLIP mapper Δw = mapper(w, e) on W+ latents.

    ffclip-engine train --latents train.npy [--val-latents val.npy] [--prompts prompts.txt] --out DIR
    torchrun --nproc_per_node N -m ffclip.app train ...       # the same command, N processes

The official objective and defaults (train_configs.yaml): identity 0.9, CLIP 1.0, latent L1 1.6,
CLIP-embedding L1 1.0, background 2.0 when a face-parsing checkpoint is given; Adam 5e-4, the
learning rate halved at 50/75/90/95 % of the epochs, gradient norm clipped at 5, batch 8, 20 epochs.
A prompt is drawn per sample from the prompt file (default: the official list); the CLIP text
embeddings are computed once. Each epoch: validation, `best_model.pt`, every `--save-interval`
epochs `epoch_N.pt`, and `last.pt` (with the optimizer, for `--resume`), all in the official layout.
Per step: one JSON line in `log.jsonl`; `loss.svg` plots it. See docs/training.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ffclip.engine.models.mapper import edited_latent
from ffclip.engine.models.stylegan2 import SynthesisPath

from . import ddp
from .ckpt import load_train_state, save_checkpoint
from .data import batches, epoch_indices, load_latents, steps_per_epoch
from .losses import TERMS, LossWeights, Objective
from .prompts import PromptSet, load_prompts
from .report import (
    Series,
    finite_or_none,
    image_grid,
    line_chart_svg,
    moving_average,
    save_png,
    to_uint8_image,
)

log = logging.getLogger("ffclip.train")
OFFICIAL_LR_STEPS = (0.5, 0.75, 0.9, 0.95)


# --- command line ---------------------------------------------------------------------------------


# --- configuration --------------------------------------------------------------------------------


def weights_from(args: argparse.Namespace) -> LossWeights:
    return LossWeights(
        id=args.id_lambda,
        clip=args.clip_lambda,
        latent=args.latent_lambda,
        embd=args.embd_lambda,
        background=args.bg_lambda,
        age=args.age_lambda,
        emotion=args.emotion_lambda,
        clip_reduction=args.clip_reduction,
        clip_input=args.clip_input,
    )


def lr_milestones(epochs: int, fractions: list[float]) -> list[int]:
    """The official int(f · epochs), but never epoch 0 (a run of one epoch would start decayed)."""
    return [max(1, int(f * epochs)) for f in fractions]


def lr_at(epoch: int, base: float, milestones: list[int], gamma: float) -> float:
    """MultiStepLR stepped once per epoch: decayed once for each milestone ≤ epoch (0-based)."""
    return base * gamma ** sum(1 for m in milestones if m <= epoch)


def make_opts(args: argparse.Namespace, nets_notes: dict[str, str], n_latent: int, size: int) -> dict[str, Any]:
    """`opts` of our checkpoints: primitives, laid out like the official train_configs.yaml."""
    return {
        "train": {
            "max_epoch": args.epochs,
            "learning_rate": args.lr,
            "val_interval": args.val_interval,
            "save_interval": args.save_interval,
            "gradient_clipping": args.grad_clip,
            "lr_steps_rel": [float(x) for x in args.lr_steps.split(",") if x.strip()],
            "lr_gamma": args.lr_gamma,
            "seed": args.seed,
            "render_size": args.render_size,
            "amp": args.amp,
        },
        "data": {
            "batch_size": args.batch_size,
            "train_latents": args.latents,
            "test_latents": args.val_latents,
            "prompts": args.prompts or "official",
        },
        "loss": {
            "id_lambda": args.id_lambda,
            "clip_lambda": args.clip_lambda,
            "latent_lambda": args.latent_lambda,
            "embd_lambda": args.embd_lambda,
            "bgloss_lambda": args.bg_lambda if args.parsenet else 0.0,
            "age_lambda": args.age_lambda,
            "emotion_lambda": args.emotion_lambda,
            "x_l2_lambda": 0.0,
            "discrim_lambda": 0,
            "clip_reduction": args.clip_reduction,
            "clip_input": args.clip_input,
        },
        "generator": {"size": size, "n_latent": n_latent},
        "domain": getattr(args, "domain", "face"),
        "identity": nets_notes.get("identity", "ArcFace IR-SE-50 (the official IDLoss)"),
        "profile": args.profile,
        "networks": dict(nets_notes),
        "trained_with": "ffclip-engine train",
    }


# --- logging --------------------------------------------------------------------------------------


def setup_logging(out: Path | None, main: bool) -> list[logging.Handler]:
    handlers: list[logging.Handler] = []
    fmt = logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S")
    stream = logging.StreamHandler(sys.stdout)
    stream.setFormatter(fmt)
    stream.setLevel(logging.INFO if main else logging.WARNING)
    handlers.append(stream)
    if main and out is not None:
        file = logging.FileHandler(out / "train.log", encoding="utf-8")
        file.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        handlers.append(file)
    for h in handlers:
        log.addHandler(h)
    log.setLevel(logging.INFO)
    log.propagate = False
    return handlers


# --- the trainer ----------------------------------------------------------------------------------


@dataclass
class TargetCache:
    """G(w)'s ArcFace feature and CLIP embedding per sample: constant, so computed once."""

    n: int
    enabled: bool
    store: dict[str, Tensor] = field(default_factory=dict)
    filled: Tensor | None = None

    def lookup(self, idx: np.ndarray) -> dict[str, Tensor] | None:
        """The cached targets of these samples, or None unless all are there."""
        if not self.enabled or self.filled is None or not bool(self.filled[torch.from_numpy(idx)].all()):
            return None
        return {k: v[torch.from_numpy(idx).to(v.device)] for k, v in self.store.items()}

    def put(self, idx: np.ndarray, targets: dict[str, Tensor]) -> None:
        if not self.enabled:
            return
        if self.filled is None:
            self.filled = torch.zeros(self.n, dtype=torch.bool)
            self.store = {k: v.new_zeros((self.n, *v.shape[1:]), dtype=torch.float32) for k, v in targets.items()}
        for k, v in targets.items():
            self.store[k][torch.from_numpy(idx).to(v.device)] = v.float()
        self.filled[torch.from_numpy(idx)] = True


class Trainer:
    def __init__(self, args: argparse.Namespace, info: ddp.DistInfo, out: Path) -> None:
        from .nets import load_training_nets

        self.args = args
        self.info = info
        self.out = out
        self.device = info.device
        self.fast = SynthesisPath.for_inference(self.device)  # synthesis without autograd
        self.nets = load_training_nets(
            args.profile,
            args.models,
            generator=args.generator,
            arcface=args.arcface,
            clip=args.clip,
            parsenet=args.parsenet,
            init=args.init,
            domain=getattr(args, "domain", "face"),
            similarity=getattr(args, "similarity", None),
            moco=getattr(args, "moco", None),
        ).freeze(self.device)
        self.generator = self.nets.generator
        self.weights = weights_from(args)
        self.prompts: PromptSet = load_prompts(args.prompts)
        self.amp_dtype = self._amp_dtype(args.amp)
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None

        n_latent, dim = self.generator.n_latent, self.generator.style_dim
        if self.nets.clip_dim != dim:
            raise ValueError(f"CLIP embeddings have {self.nets.clip_dim} dims, the generator's W has {dim}")
        self.train_data = load_latents(args.latents, n_latent, dim)
        self.val_data = load_latents(args.val_latents, n_latent, dim) if args.val_latents else None
        self.render = self._render_size(args.render_size)

        text = self._encode_prompts()
        self.text_raw = text  # (U, D): the mapper's conditioning e, raw as the official code
        self.entry_text = torch.tensor(self.prompts.unique_index(), dtype=torch.long)
        self.objective = Objective(
            self.nets.clip,
            self.nets.arcface,
            text,
            self.prompts.unique_index(),
            self.prompts.categories,
            self.weights,
            self.nets.parsenet,
            identity=self.nets.identity,
        ).to(self.device)

        from ffclip.engine.models.mapper import DynamicMapper

        torch.manual_seed(args.seed)
        self.mapper = DynamicMapper(n_latent=n_latent, dim=dim)
        if self.nets.init_mapper is not None:
            self.mapper.load_state_dict(self.nets.init_mapper, strict=True)
        for block in self.mapper.att_mapper:  # `fc` is never used by the forward pass
            block.fc.requires_grad_(False)
        self.mapper.to(self.device).train()
        self.model: nn.Module = self.mapper
        if info.enabled:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = DistributedDataParallel(self.mapper, device_ids=ids)
        self.optimizer = torch.optim.Adam(
            [p for p in self.mapper.parameters() if p.requires_grad], lr=args.lr, eps=1e-8
        )
        fractions = [float(x) for x in args.lr_steps.split(",") if x.strip()]
        self.milestones = lr_milestones(args.epochs, fractions)
        cache = not args.no_cache_targets and not self.objective.use_background
        self.train_targets = TargetCache(len(self.train_data), cache)
        self.val_targets = TargetCache(len(self.val_data) if self.val_data else 0, cache)
        self.opts = make_opts(args, self.nets.notes, n_latent, self.generator.size)

        self.epoch = 0
        self.step_in_epoch = 0
        self.global_step = 0
        self.best_val: float | None = None
        self.history: list[dict[str, Any]] = []
        self.val_history: list[dict[str, Any]] = []
        self.checkpoints: list[str] = []
        self.agreement: dict[str, float] = {}
        self.train_time = 0.0
        self.train_samples = 0
        self.global_step_start = 0

    # -- setup helpers --

    def _amp_dtype(self, mode: str) -> torch.dtype | None:
        if self.device.type != "cuda" or mode == "off":
            return None
        if mode == "fp16":
            return torch.float16
        if mode == "bf16" or torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float16

    def _render_size(self, size: int | None) -> int | None:
        full = self.generator.size
        if size is None or size >= full:
            return None
        if size < 8 or size & (size - 1):
            raise ValueError(f"--render-size must be a power of two between 8 and {full}, not {size}")
        return size

    def _encode_prompts(self) -> Tensor:
        import open_clip

        from ffclip.engine.models.clip import MODEL_NAME

        tokenizer = open_clip.get_tokenizer(MODEL_NAME)
        with torch.no_grad():
            tokens = tokenizer(self.prompts.unique).to(self.device)
            return self.nets.clip.encode_text(tokens).float()

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast("cuda", dtype=self.amp_dtype)

    def synthesize(
        self, w: Tensor, stop_at: int | None = None, path: SynthesisPath = SynthesisPath.REFERENCE
    ) -> Tensor:
        """G(w) at the rendering size: REFERENCE where the loss flows back through it; without
        autograd (targets, validation, samples) the inference path."""
        stop_at = stop_at or self.render
        img, _ = self.generator([w], input_is_latent=True, randomize_noise=False, stop_at=stop_at, path=path)
        return img

    # -- steps --

    def _targets(self, cache: TargetCache, idx: np.ndarray, w: Tensor) -> tuple[dict[str, Tensor], Tensor | None]:
        """G(w)'s features (from the cache when possible) and G(w) itself when the losses need it."""
        cached = cache.lookup(idx)
        if cached is not None and not self.objective.use_background:
            return cached, None
        with torch.no_grad(), self.autocast():
            x = self.synthesize(w, path=self.fast)
            targets = self.objective.targets(x)
        cache.put(idx, targets)
        return targets, (x if self.objective.use_background else None)

    def _draw_entries(self, n: int) -> Tensor:
        rng = np.random.default_rng([self.args.seed, self.info.rank, self.global_step])
        return torch.from_numpy(rng.integers(len(self.prompts), size=n)).to(self.device)

    def train_step(self, idx: np.ndarray) -> dict[str, float]:
        w = self.train_data.batch(idx, self.device)
        entries = self._draw_entries(len(idx))
        e = self.text_raw[self.entry_text.to(self.device)[entries]].unsqueeze(1)  # (B, 1, D)
        targets, x = self._targets(self.train_targets, idx, w)
        self.optimizer.zero_grad(set_to_none=True)
        with self.autocast():
            w_hat = edited_latent(w, [(1.0, self.model(w, e))])
            x_hat = self.synthesize(w_hat)
            loss, terms = self.objective(w, w_hat, x_hat, entries, targets, x)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"the loss is {loss.item()} at step {self.global_step}")
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
        else:
            loss.backward()
        grad_norm = None
        if self.args.grad_clip > 0:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(self.mapper.parameters(), self.args.grad_clip))
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        out = self._reduce(terms, len(idx))
        if grad_norm is not None:
            out["grad_norm"] = grad_norm
        return out

    def _reduce(self, terms: dict[str, Tensor], n: int) -> dict[str, float]:
        """Sample-weighted means of the terms over all ranks."""
        vec = torch.tensor([float(terms[k]) * n if k in terms else 0.0 for k in TERMS] + [n], dtype=torch.float64)
        vec = ddp.all_reduce_sum(self.info, vec)
        count = float(vec[-1])
        return {k: float(vec[i]) / count for i, k in enumerate(TERMS) if k in self.objective.active_terms()}

    @torch.no_grad()
    def validate(self) -> dict[str, float] | None:
        if self.val_data is None:
            return None
        self.mapper.eval()
        n = len(self.val_data) if self.args.val_limit is None else min(len(self.val_data), self.args.val_limit)
        mine = np.arange(self.info.rank, n, self.info.world_size)
        sums = torch.zeros(len(TERMS) + 1, dtype=torch.float64)
        present = self.objective.active_terms()
        for idx in batches(mine, self.args.batch_size):
            w = self.val_data.batch(idx, self.device)
            entries = torch.from_numpy(idx % len(self.prompts)).to(self.device)  # every prompt in turn
            e = self.text_raw[self.entry_text.to(self.device)[entries]].unsqueeze(1)
            targets, x = self._targets(self.val_targets, idx, w)
            with self.autocast():
                w_hat = edited_latent(w, [(1.0, self.mapper(w, e))])
                x_hat = self.synthesize(w_hat, path=self.fast)
                _, terms = self.objective(w, w_hat, x_hat, entries, targets, x)
            for i, k in enumerate(TERMS):
                if k in terms:
                    sums[i] += float(terms[k]) * len(idx)
            sums[-1] += len(idx)
        sums = ddp.all_reduce_sum(self.info, sums)
        self.mapper.train()
        count = float(sums[-1])
        return {k: float(sums[i]) / count for i, k in enumerate(TERMS) if k in present} if count else None

    # -- state --

    def train_state(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "global_step": self.global_step,
            "best_val_loss": self.best_val,
            "optimizer": self.optimizer.state_dict(),
            "world_size": self.info.world_size,
            "batch_size": self.args.batch_size,
        }
        if self.scaler is not None:
            state["scaler"] = self.scaler.state_dict()
        return state

    def resume(self, path: Path) -> None:
        mapper_sd, state, _ = load_train_state(path)
        self.mapper.load_state_dict(mapper_sd, strict=True)
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scaler is not None and "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
        self.epoch = int(state["epoch"])
        self.step_in_epoch = int(state["step_in_epoch"])
        self.global_step = int(state["global_step"])
        self.best_val = state.get("best_val_loss")
        if int(state.get("world_size", 1)) != self.info.world_size or state.get("batch_size") != self.args.batch_size:
            log.info("resuming with another world size or batch size: the epoch's remaining order changes")
        self.history = _read_jsonl(self.out / "log.jsonl", "train", self.global_step)
        self.val_history = _read_jsonl(self.out / "log.jsonl", "val", self.global_step)
        with open(self.out / "log.jsonl", "w", encoding="utf-8") as f:  # drop steps after the checkpoint
            for rec in sorted(self.history + self.val_history, key=lambda r: (r["step"], r["kind"] == "val")):
                f.write(json.dumps(rec) + "\n")
        log.info("resumed from %s: epoch %d, step %d", path, self.epoch + 1, self.global_step)

    def save(self, name: str, with_state: bool = False) -> Path | None:
        path = None
        if self.info.is_main:
            path = save_checkpoint(
                self.out / "checkpoints" / name,
                self.mapper,
                self.generator,
                self.opts,
                self.train_state() if with_state else None,
            )
            if not with_state and name not in self.checkpoints:
                self.checkpoints.append(name)
        ddp.barrier(self.info)
        return path

    # -- the loop --

    def run(self) -> dict[str, Any]:
        args, info = self.args, self.info
        per_epoch = steps_per_epoch(len(self.train_data), args.batch_size, info.world_size)
        total = args.epochs * per_epoch if args.max_steps is None else min(args.max_steps, args.epochs * per_epoch)
        log.info(
            "training: %d samples, %d per step on %d process(es), %d steps an epoch, %d epochs, %d steps",
            len(self.train_data),
            args.batch_size * info.world_size,
            info.world_size,
            per_epoch,
            args.epochs,
            total,
        )
        progress = self._progress(total)
        done = self.global_step >= total
        with contextlib.ExitStack() as stack:
            jsonl = stack.enter_context(open(self.out / "log.jsonl", "a", encoding="utf-8")) if info.is_main else None
            if progress is not None:
                stack.callback(progress.close)
            while self.epoch < args.epochs and not done:
                lr = lr_at(self.epoch, args.lr, self.milestones, args.lr_gamma)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                order = epoch_indices(len(self.train_data), self.epoch, args.seed, info.rank, info.world_size)
                for idx in batches(order, args.batch_size)[self.step_in_epoch :]:
                    t0 = time.perf_counter()
                    terms = self.train_step(idx)
                    dt = time.perf_counter() - t0
                    self.global_step += 1
                    self.step_in_epoch += 1
                    self.train_time += dt
                    self.train_samples += len(idx) * info.world_size
                    rec = {
                        "kind": "train",
                        "step": self.global_step,
                        "epoch": self.epoch + 1,
                        "lr": lr,
                        **terms,
                        "seconds": round(dt, 4),
                    }
                    self.history.append(rec)
                    if jsonl:
                        jsonl.write(json.dumps(rec) + "\n")
                        jsonl.flush()
                    if self.global_step == self.global_step_start + 1:  # collective: every rank gets here
                        self.agreement["after_first_step"] = ddp.weight_agreement(info, self.mapper)
                    if progress is not None:
                        progress.update(1)
                        progress.set_postfix(loss=f"{terms['loss']:.4f}", epoch=self.epoch + 1)
                    if self.global_step % args.log_every == 0 or self.global_step == 1:
                        log.info(
                            "step %d epoch %d lr %.2e %s (%.2f s/step)",
                            self.global_step,
                            self.epoch + 1,
                            lr,
                            _fmt_terms(terms),
                            dt,
                        )
                    if self.global_step >= total:
                        done = True
                        break
                finished_epoch = self.step_in_epoch >= per_epoch
                if jsonl:
                    jsonl.flush()
                self._end_of_epoch(last=done or self.epoch + 1 >= args.epochs, complete=finished_epoch)
        return self._summary()

    def _end_of_epoch(self, last: bool, complete: bool) -> None:
        args = self.args
        n = self.epoch + 1
        val = None
        if self.val_data is not None and (n % args.val_interval == 0 or last):
            val = self.validate()
        if val is not None:
            rec = {"kind": "val", "step": self.global_step, "epoch": n, **val}
            self.val_history.append(rec)
            if self.info.is_main:
                with open(self.out / "log.jsonl", "a", encoding="utf-8") as f:
                    f.write(json.dumps(rec) + "\n")
            log.info("validation after epoch %d: %s", n, _fmt_terms(val))
            if self.best_val is None or val["loss"] < self.best_val:
                self.best_val = val["loss"]
                self.save("best_model.pt")
                self._loss_txt(f"**Best**: Step - {n}, Loss - {val['loss']:.3f} \n{val}\n")
        if n % args.save_interval == 0 or last:
            self.save(f"epoch_{n}.pt")
            latest = val if val is not None else (self.history[-1] if self.history else {})
            self._loss_txt(f"Step - {n}, \n{latest}\n")
        if complete:
            self.epoch += 1
            self.step_in_epoch = 0
        self.save("last.pt", with_state=True)
        if self.info.is_main:
            if args.image_interval and (n % args.image_interval == 0 or last):
                self.sample_images(n)
            self.plot()

    def _loss_txt(self, text: str) -> None:
        if self.info.is_main:
            with open(self.out / "loss.txt", "a", encoding="utf-8") as f:
                f.write(text)

    @torch.no_grad()
    def sample_images(self, epoch: int) -> None:
        data = self.val_data or self.train_data
        idx = np.arange(min(4, len(data)))
        w = data.batch(idx, self.device)
        entries = torch.from_numpy((idx * 7) % len(self.prompts)).to(self.device)
        e = self.text_raw[self.entry_text.to(self.device)[entries]].unsqueeze(1)
        self.mapper.eval()
        small = min(self.generator.size, 256)
        with self.autocast():
            before = self.synthesize(w, stop_at=small, path=self.fast)
            after = self.synthesize(edited_latent(w, [(1.0, self.mapper(w, e))]), stop_at=small, path=self.fast)
        self.mapper.train()
        rows = [[to_uint8_image(x) for x in before], [to_uint8_image(x) for x in after]]
        (self.out / "images").mkdir(exist_ok=True)
        save_png(self.out / "images" / f"epoch_{epoch:04d}.png", image_grid(rows))
        names = [self.prompts.prompts[int(i)] for i in entries]
        (self.out / "images" / f"epoch_{epoch:04d}.txt").write_text("\n".join(names) + "\n", encoding="utf-8")

    def plot(self) -> None:
        steps = [r["step"] for r in self.history]
        losses = [r["loss"] for r in self.history]
        window = max(1, min(50, len(losses) // 10 or 1))
        series = [
            Series("train loss (per step)", steps, losses, color="#9ecae1", width=1.0),
            Series(f"train, mean of {window}", steps, moving_average(losses, window), color="#1f77b4", width=2.5),
        ]
        if self.val_history:
            series.append(
                Series(
                    "validation",
                    [r["step"] for r in self.val_history],
                    [r["loss"] for r in self.val_history],
                    color="#d62728",
                    markers=True,
                )
            )
        (self.out / "loss.svg").write_text(
            line_chart_svg(series, "FFCLIP mapper training objective", "step", "loss"), encoding="utf-8"
        )
        terms = [k for k in TERMS[:-1] if any(k in r for r in self.history)]
        term_series = [
            Series(k.removeprefix("loss_"), steps, moving_average([r.get(k, math.nan) for r in self.history], window))
            for k in terms
        ]
        (self.out / "loss_terms.svg").write_text(
            line_chart_svg(term_series, f"loss terms (unweighted, mean of {window})", "step", "value"),
            encoding="utf-8",
        )

    def _progress(self, total: int) -> Any:
        if not self.info.is_main or self.args.no_progress:
            return None
        try:
            from tqdm import tqdm
        except ImportError:  # open_clip brings it; without it, no bar
            return None
        return tqdm(total=total, initial=self.global_step, desc="train", unit="step", dynamic_ncols=True)

    def _summary(self) -> dict[str, Any]:
        self.agreement["at_end"] = ddp.weight_agreement(self.info, self.mapper)
        head = [r["loss"] for r in self.history[:10]]
        tail = [r["loss"] for r in self.history[-10:]]
        summary = {
            "profile": self.args.profile,
            "domain": self.nets.domain,
            "similarity": self.nets.similarity,
            "device": str(self.device),
            "world_size": self.info.world_size,
            "backend": self.info.backend,
            "amp": str(self.amp_dtype).replace("torch.", "") if self.amp_dtype else "off",
            "render_size": self.render or self.generator.size,
            "generator_size": self.generator.size,
            "n_latent": self.generator.n_latent,
            "steps": self.global_step,
            "epochs_completed": self.epoch,
            "samples": len(self.train_data),
            "batch_size_per_process": self.args.batch_size,
            "prompts": len(self.prompts.unique),
            "loss_first": finite_or_none(float(np.mean(head))) if head else None,
            "loss_last": finite_or_none(float(np.mean(tail))) if tail else None,
            "loss_first_step": self.history[0]["loss"] if self.history else None,
            "loss_last_step": self.history[-1]["loss"] if self.history else None,
            "best_val_loss": finite_or_none(self.best_val),
            "steps_per_s": (len(self.history) / self.train_time) if self.train_time else None,
            # steady state: the median step, without the first (warm-up, G(w) features computed)
            "seconds_per_step_median": (
                float(np.median([r["seconds"] for r in self.history[1:]])) if len(self.history) > 1 else None
            ),
            "samples_per_s": (self.train_samples / self.train_time) if self.train_time else None,
            "weights": self.weights.to_dict(),
            "background_loss": self.objective.use_background,
            "networks": self.nets.notes,
            "checkpoints": sorted(self.checkpoints),
            "ddp_weight_max_abs_diff": self.agreement,
        }
        if self.device.type == "cuda":
            summary["max_gpu_memory_gib"] = round(torch.cuda.max_memory_allocated(self.device) / 2**30, 2)
        return summary


def _read_jsonl(path: Path, kind: str, max_step: int) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if rec.get("kind") == kind and rec.get("step", 0) <= max_step:
            out.append(rec)
    return out


def _fmt_terms(terms: dict[str, float]) -> str:
    return " ".join(f"{k.removeprefix('loss_')}={v:.4f}" for k, v in terms.items() if k in TERMS)


# --- entry points ---------------------------------------------------------------------------------


def export_mapper(
    src: str | os.PathLike[str], dest: str | os.PathLike[str], opts: dict[str, Any] | None = None
) -> Path:
    """A mapper-only file ({'state_dict': module.att_mapper.*, 'opts'}) from any FFCLIP checkpoint."""
    from ffclip.engine.checkpoints.layouts import mapper_config, parse_ffclip
    from ffclip.engine.checkpoints.safe_load import load_checkpoint
    from ffclip.engine.models.mapper import DynamicMapper

    parts = parse_ffclip(load_checkpoint(src), Path(src).name)
    mapper = DynamicMapper(**mapper_config(parts.mapper, "mapper"))
    mapper.load_state_dict(parts.mapper, strict=True)
    return save_checkpoint(dest, mapper, None, opts if opts is not None else parts.opts)


def log_setup(t: Trainer) -> None:
    a = t.args
    log.info(
        "FFCLIP mapper training: profile %s, device %s, %d process(es)%s, amp %s",
        a.profile,
        t.device,
        t.info.world_size,
        f" ({t.info.backend})" if t.info.enabled else "",
        str(t.amp_dtype).replace("torch.", "") if t.amp_dtype else "off",
    )
    if a.profile == "tiny":
        log.info("note: the tiny profile trains against random, untrained networks: a smoke run, not a model")
    for name, what in t.nets.notes.items():
        log.info("  %-9s %s", name, what)
    log.info("domain %s; identity term: %s", t.nets.domain, t.nets.notes.get("identity", "ArcFace (IR-SE-50)"))
    log.info(
        "generator %d px, %d W+ layers; losses rendered at %d px%s",
        t.generator.size,
        t.generator.n_latent,
        t.render or t.generator.size,
        " (--render-size: an approximation)" if t.render else "",
    )
    w = t.weights
    log.info(
        "objective: id %.3g, clip %.3g (%s over the batch; age %s, emotion %s; %s input), latent %.3g, embd %.3g",
        w.id,
        w.clip,
        w.clip_reduction,
        w.age if w.age is not None else "=clip",
        w.emotion if w.emotion is not None else "=clip",
        w.clip_input,
        w.latent,
        w.embd,
    )
    if t.objective.use_background:
        log.info("background loss on: %.3g (non-hair pixels, face parser)", w.background)
    else:
        log.info("background loss off: no face-parsing checkpoint (give --parsenet parsenet.pth to turn it on)")
    log.info(
        "prompts: %d draw slots, %d distinct (%s); CLIP text embeddings computed once",
        len(t.prompts),
        len(t.prompts.unique),
        t.prompts.source,
    )
    log.info(
        "optimizer: Adam lr %.3g, decay x%.3g at epochs %s, grad clip %.3g; G(w) features %s",
        a.lr,
        a.lr_gamma,
        t.milestones,
        a.grad_clip,
        "cached per sample" if t.train_targets.enabled else "recomputed every step",
    )
