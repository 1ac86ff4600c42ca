"""`ffclip-engine bench`: time every stage of an edit at real model sizes, on synthetic weights.

The networks have the real architectures and sizes (StyleGAN2 1024², e4e IR-SE-50, the FFCLIP
mapper, CLIP ViT-B/32's text tower) but random weights, so the numbers are speeds, never outputs.
In one run it measures:

* the *dense limit* of the generator and of e4e: the sum, over the network's convolutions, of the
  median time of one plain `conv2d` / `conv_transpose2d` with that layer's exact shapes at batch 1
  (the faster of the two memory formats, contiguous and channels-last). For the generator these are
  the reference's layers: a 3×3 stride-2 `conv_transpose2d` for each up-sampling layer, 3×3 convs,
  the 1×1 ToRGB convs; its FIR filters (the blur after each up-sampling layer, the skip up-sampling)
  are not counted, so the limit is a strict one;
* median times of the stages (`stages.*`) and of two photo edits through `Pipeline`: a cold one
  (new photo, new prompt: detect → blend) and a re-edit of the same photo with a new prompt;
* `ratios.*_vs_conv` = limit ÷ measured time, and the peak RSS of the engine's work (the
  process's own peak, with the dense-limit passes' buffers, beside it).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ffclip.engine.heap import release_freed_memory
from ffclip.engine.inference import (
    Engine,
    Networks,
    build_tiny,
    default_threads,
    normalise_untrained_rgb,
    profile_generator,
)
from ffclip.engine.precision import CHOICES as PRECISIONS
from ffclip.engine.precision import Plan, PrecisionUnavailable, dtype_name, native_bf16
from ffclip.engine.precision import plan as precision_plan
from ffclip.engine.profiles import PROFILES, Profile

WEIGHTS_NOTE = "synthetic weights (random init, real architectures and sizes): speeds only, outputs are meaningless"
TINY_NOTE = "synthetic weights (tiny profile: narrow widths, seeded random init): speeds only, outputs are meaningless"
BENCH_STAGES = (
    "g1024",
    "preview",
    "e4e",
    "text_cold",
    "text_cached",
    "mapper",
    "edit_photo",
    "reedit_cached",
    "live_prompt",
    "live_strength",
    "apply_cached",
    "invert_high",
    "reedit_high",
    "reedit_beside_high",
)
LIVE_STAGES = ("live_prompt", "live_strength", "apply_cached")
HIGH_STAGES = ("invert_high", "reedit_high")  # fidelity high (HyperStyle), in units of L too
PHOTO = "obama.jpg"


# -- networks -----------------------------------------------------------------------------------


def build_networks(profile: Profile, seed: int = 0) -> Networks:
    """The profile's architectures with random weights: `tiny` as the engine builds it; `real` at
    full size with the real CLIP ViT-B/32 text tower, randomly initialised."""
    if profile.untrained:
        return build_tiny(profile)
    from ffclip.engine.models.clip import build_clip
    from ffclip.engine.models.e4e import Encoder4Editing
    from ffclip.engine.models.mapper import DynamicMapper
    from ffclip.engine.seeding import seeded

    with seeded(seed), torch.no_grad():
        g = profile_generator(profile)
        for name, p in g.named_parameters():
            if name.endswith("noise.weight"):  # zero at init: a trained generator adds its noise
                p.fill_(0.05)
        enc = Encoder4Editing(stylegan_size=profile.size, style_dim=profile.style_dim)
        for block in enc.styles:  # small codes: W+ stays near the mean latent
            block.linear.weight.mul_(0.1)
        latent_avg = g.mean_latent(1024)[0]
        normalise_untrained_rgb(g, latent_avg)
        mapper = DynamicMapper(n_latent=g.n_latent, dim=profile.style_dim)
        for p in mapper.parameters():  # a small Δw, as a trained mapper's
            p.mul_(0.1)
        clip = build_clip(None, text_only=True)
    return Networks(g, enc, latent_avg, mapper, clip, sources={"all": WEIGHTS_NOTE})


def build_hyperstyle(profile: Profile, latent_avg: Tensor, seed: int = 1) -> Any:
    """HyperStyle for `profile` with random weights: the tiny profile's own; at real sizes the
    official architecture (ResNet-34 hypernetwork tuning the 17 layers of hyperstyle_ffhq.pt, the
    IR-SE-50 W encoder), its heads' outputs scaled down so that W·(1 + Δ) stays near W."""
    from ffclip.engine.inference import build_tiny_hyperstyle
    from ffclip.engine.models.hyperstyle import (
        FFHQ_LAYERS_TO_TUNE,
        HyperStyleNets,
        SharedWeightsHyperNetResNet,
        WEncoder,
    )
    from ffclip.engine.seeding import seeded

    if profile.untrained:
        return build_tiny_hyperstyle(profile, latent_avg)
    n_outputs = 3 * (profile.size.bit_length() - 1) - 4
    layers = tuple(j for j in FFHQ_LAYERS_TO_TUNE if j < n_outputs)
    with seeded(seed), torch.no_grad():
        hypernet = SharedWeightsHyperNetResNet(6, n_outputs, layers)
        for block in hypernet.refinement_blocks:
            if block is not None and hasattr(block, "output"):
                block.output[-1].weight.mul_(0.01)
        w_encoder = WEncoder(output_size=profile.size)
        w_encoder.linear.weight.mul_(0.1)
    avg = latent_avg.reshape(-1, latent_avg.shape[-1])[-1:].expand(profile.n_latent, -1).clone()
    return HyperStyleNets(w_encoder.eval(), hypernet.eval(), avg, None, 5, None, {"hyperstyle": WEIGHTS_NOTE})


# -- dense limits -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConvShape:
    """One convolution as a plain call: input (1, C, H, W), weight, stride, padding, groups."""

    kind: str  # "conv2d" or "conv_transpose2d"
    x: tuple[int, ...]
    w: tuple[int, ...]
    stride: int = 1
    padding: int = 0
    groups: int = 1
    bias: bool = False

    @property
    def flops(self) -> float:
        if self.kind == "conv2d":
            h = (self.x[2] + 2 * self.padding - self.w[2]) // self.stride + 1
            wd = (self.x[3] + 2 * self.padding - self.w[3]) // self.stride + 1
            return 2.0 * self.w[0] * self.w[1] * self.w[2] * self.w[3] * h * wd
        return 2.0 * self.w[0] * self.w[1] * self.w[2] * self.w[3] * self.x[2] * self.x[3]


def generator_convs(g: nn.Module) -> list[ConvShape]:
    """The reference generator's dense convolutions at batch 1 (rosinality's layers): 3×3 convs,
    3×3 stride-2 transposed convs for the up-sampling layers, 1×1 ToRGB convs. FIR filters excluded."""
    convs: list[ConvShape] = []

    def add(mod: nn.Module, res: int) -> None:
        k, cin, cout = mod.kernel_size, mod.in_channel, mod.out_channel
        if mod.upsample:
            convs.append(ConvShape("conv_transpose2d", (1, cin, res, res), (cin, cout, k, k), stride=2))
        else:
            convs.append(ConvShape("conv2d", (1, cin, res, res), (cout, cin, k, k), padding=k // 2))

    add(g.conv1.conv, 4)
    add(g.to_rgb1.conv, 4)
    res = 4
    for conv_up, conv, to_rgb in zip(g.convs[::2], g.convs[1::2], g.to_rgbs, strict=True):
        add(conv_up.conv, res)
        res *= 2
        add(conv.conv, res)
        add(to_rgb.conv, res)
    return convs


def module_convs(module: nn.Module, *inputs: Tensor) -> list[ConvShape]:
    """Every nn.Conv2d that one forward pass of `module` runs, with the shapes it ran at (batch 1).
    The module's parameters must not require grad."""
    found: list[ConvShape] = []

    def hook(mod: nn.Conv2d, args: tuple, _out: Tensor) -> None:
        x = args[0]
        assert mod.padding_mode == "zeros" and isinstance(mod.padding, tuple)
        assert len(set(mod.stride)) == 1 and len(set(mod.padding)) == 1 and mod.dilation == (1, 1)
        found.append(
            ConvShape(
                "conv2d",
                (1, *x.shape[1:]),
                tuple(mod.weight.shape),
                mod.stride[0],
                mod.padding[0],
                mod.groups,
                mod.bias is not None,
            )
        )

    handles = [m.register_forward_hook(hook) for m in module.modules() if isinstance(m, nn.Conv2d)]
    try:
        # the REFERENCE synthesis path (a module's default) calls every Conv2d module (the inference
        # paths call F.conv2d with folded weights); nothing requires grad, so no graph is kept
        with torch.enable_grad():
            module(*inputs)
    finally:
        for h in handles:
            h.remove()
    return found


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_time(fn: Callable[[], Any], repeats: int, device: torch.device, warmup: int = 1) -> list[float]:
    """Wall times of `repeats` calls after `warmup` calls (synchronised on CUDA)."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return times


def _conv_call(shape: ConvShape, fmt: torch.memory_format, device: torch.device, dtype: torch.dtype) -> Callable:
    x = torch.randn(shape.x, device=device, dtype=dtype).contiguous(memory_format=fmt)
    w = torch.randn(shape.w, device=device, dtype=dtype).contiguous(memory_format=fmt)
    cout = shape.w[1] * shape.groups if shape.kind == "conv_transpose2d" else shape.w[0]
    b = torch.randn(cout, device=device, dtype=dtype) if shape.bias else None
    fn = F.conv2d if shape.kind == "conv2d" else F.conv_transpose2d
    return lambda: fn(x, w, b, stride=shape.stride, padding=shape.padding, groups=shape.groups)


def _limit_pass(shapes: list[ConvShape], device: torch.device, dtype: torch.dtype, times: dict) -> None:
    """One timed call of every distinct shape in both memory formats (inputs made outside the timing)."""
    with torch.inference_mode():
        for shape in shapes:
            for fmt in (torch.contiguous_format, torch.channels_last):
                call = _conv_call(shape, fmt, device, dtype)
                times.setdefault((shape, fmt), []).extend(median_time(call, 1, device, warmup=0))
                del call


def _limit_result(shapes: list[ConvShape], times: dict) -> dict[str, Any]:
    """Σ over the layers of the plain convolution's median time, the faster memory format per shape."""
    counts = Counter(shapes)
    fmts = (torch.contiguous_format, torch.channels_last)
    best = {s: min(statistics.median(times[(s, f)]) for f in fmts) for s in counts}
    return {
        "seconds": sum(n * best[s] for s, n in counts.items()),
        "convs": len(shapes),
        "distinct_shapes": len(counts),
        "gflop": sum(s.flops for s in shapes) / 1e9,
    }


def dense_limit(
    shapes: list[ConvShape], device: torch.device, repeats: int, dtype: torch.dtype = torch.float32
) -> dict[str, Any]:
    """The dense limit alone (identical shapes timed once, after one warm-up pass)."""
    distinct = list(Counter(shapes))
    times: dict = {}
    _limit_pass(distinct, device, dtype, {})
    for _ in range(repeats):
        _limit_pass(distinct, device, dtype, times)
    return _limit_result(shapes, times)


def limit_and_stage(
    shapes: list[ConvShape],
    stage: Callable[[], Any],
    device: torch.device,
    repeats: int,
    dtype: torch.dtype = torch.float32,
    peak: PeakRss | None = None,
) -> tuple[dict[str, Any], list[float]]:
    """The dense limit and the network's own time, measured in alternation (one pass of each per
    repeat) so that a change of load on a shared machine affects both sides of the ratio alike.
    The limit passes' memory is kept out of `peak`'s engine figure."""
    distinct = list(Counter(shapes))
    times: dict = {}
    peak = peak or PeakRss()
    peak.exclude(lambda: _limit_pass(distinct, device, dtype, {}))
    stage_times = median_time(stage, 0, device, warmup=1)
    for _ in range(repeats):
        peak.exclude(lambda: _limit_pass(distinct, device, dtype, times))
        stage_times += median_time(stage, 1, device, warmup=0)
    return _limit_result(shapes, times), stage_times


# -- the bench ----------------------------------------------------------------------------------


def default_photo() -> Path | None:
    """The repository's tests/data/photos/obama.jpg (a source checkout or an editable install)."""
    for parent in Path(__file__).resolve().parents:
        candidate = parent / "tests" / "data" / "photos" / PHOTO
        if candidate.is_file():
            return candidate
    return None


def _photo(path: Path | None, min_pixels: int) -> np.ndarray | None:
    if path is None:
        return None
    import cv2

    from ffclip.engine.imageio import load_image

    image = load_image(path)
    h, w = image.shape[:2]
    if h * w < min_pixels:  # upscale to about min_pixels, the size the targets are quoted for
        f = (min_pixels / (h * w)) ** 0.5
        image = cv2.resize(image, (round(w * f), round(h * f)), interpolation=cv2.INTER_CUBIC)
    return image


def _stat(times: list[float]) -> dict[str, Any]:
    return {"seconds": statistics.median(times), "min": min(times), "all": [float(f"{t:.4g}") for t in times]}


class PeakRss:
    """Peak resident memory of the engine's work, and of the whole process.

    The dense-limit passes allocate buffers of their own (a contiguous-format transposed
    convolution at 1024² takes ~0.5 GB of columns): on Linux the kernel's high-water mark is read
    and reset around them (`/proc/self/clear_refs`), so that `engine_mb` counts what the engine
    and the pipeline hold, as in the daemon. Elsewhere both numbers are the process's peak."""

    def __init__(self) -> None:
        self.engine_mb = 0.0
        self.process_mb = 0.0
        self._can_reset = Path("/proc/self/clear_refs").exists() and Path("/proc/self/status").exists()

    def note(self) -> float:
        peak = _high_water_mb()
        self.engine_mb = max(self.engine_mb, peak)
        self.process_mb = max(self.process_mb, peak)
        return peak

    def exclude(self, fn: Callable[[], Any]) -> None:
        """Run `fn` without counting its memory towards `engine_mb`."""
        if not self._can_reset:
            fn()
            return
        self.note()
        fn()
        self.process_mb = max(self.process_mb, _high_water_mb())
        release_freed_memory()  # what fn freed goes back to the OS before the mark is reset
        try:
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            self._can_reset = False
            self.engine_mb = self.process_mb


def _high_water_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1 << 20) if sys.platform == "darwin" else peak / 1024


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{_cpu_name()}, {os.cpu_count()} logical CPUs"


def measure(args: argparse.Namespace, log: Callable[[str], None]) -> dict[str, Any]:
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda: no CUDA device is available")
    profile = PROFILES[args.profile]
    repeats = args.repeats or (3 if profile.untrained else 5)
    if args.threads:
        torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    peak = PeakRss()

    setting = "fp16" if args.autocast else args.precision
    try:
        precision_plan(setting, device)
    except PrecisionUnavailable as exc:
        raise RuntimeError(str(exc)) from None
    options = {"precision": setting, "threads": args.threads or None, "cuda_graphs": args.cuda_graphs}
    t0 = time.perf_counter()
    if args.models:  # the daemon's path: official files from a model store
        weights = f"checkpoints from the model store {args.models}"
        log(f"loading {weights}")
        engine = Engine.load("real", args.models, device, **options)
    else:
        weights = TINY_NOTE if profile.untrained else WEIGHTS_NOTE
        log(f"building {profile.name} networks ({weights})")
        nets = build_networks(profile)
        engine = Engine(nets, profile, device, **options)
        engine.set_hyperstyle(lambda: build_hyperstyle(profile, nets.latent_avg))
    build_s = time.perf_counter() - t0
    result: dict[str, Any] = {
        "device": str(device),
        "device_name": _device_name(device),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "profile": engine.profile.name,
        "size": engine.size,
        "preview_size": engine.preview_size,
        "precision": engine.plan.describe(),
        "cpu_bf16": native_bf16() if device.type == "cpu" else None,
        "cuda_graphs": bool(args.cuda_graphs),
        "weights": weights,
        "repeats": repeats,
        "build_seconds": build_s,
        "stages": {},
        "limits": {},
        "ratios": {},
    }

    # the two big networks, each in alternation with its dense limit
    stages = result["stages"]
    # L is the float32 dense limit whatever the networks run in (fp16 autocast on a GPU: its own)
    dtype = torch.float16 if engine.plan.full == torch.float16 else torch.float32
    x = (torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(0)) * 2 - 1).to(device)
    w = engine.invert(x)
    log("g1024 and its dense limit")
    g_convs = generator_convs(engine.generator)
    limit, times = limit_and_stage(g_convs, lambda: engine.synthesize(w), device, repeats, dtype, peak)
    result["limits"]["g1024"], stages["g1024"] = limit, _stat(times)
    log("e4e and its dense limit")
    limit, times = limit_and_stage(
        module_convs(engine.encoder, x), lambda: engine.invert(x), device, repeats, dtype, peak
    )
    result["limits"]["e4e"], stages["e4e"] = limit, _stat(times)
    log("preview")
    stages["preview"] = _stat(median_time(lambda: engine.synthesize(w, preview=True), repeats, device))
    log("text")
    counter = iter(range(10**9))
    stages["text_cold"] = _stat(
        median_time(lambda: engine.encode_text([f"a face, take {next(counter)}"]), repeats, device)
    )
    e = engine.encode_text(["a smiling face"])
    stages["text_cached"] = _stat(median_time(lambda: engine.encode_text(["a smiling face"]), repeats, device))
    log("mapper")
    stages["mapper"] = _stat(median_time(lambda: engine.map(w, e), repeats, device))
    high_missing = engine.high_fidelity_missing()
    if high_missing:
        log(f"no HyperStyle ({', '.join(high_missing)}): fidelity high is not measured")
        for name in (*HIGH_STAGES, "reedit_beside_high"):
            stages[name] = {"seconds": None, "note": f"missing {', '.join(high_missing)}"}
    else:
        log("invert_high (HyperStyle: W encoder + n_iters refinements, once per photo)")
        engine.hyperstyle()  # built or loaded outside the timing
        # each run several seconds at real sizes: at most 3 after the warm-up; in alternation with L,
        # which is measured again beside it (the target is in units of L, and L moves between stages)
        limit, times = limit_and_stage(g_convs, lambda: engine.invert_high(x), device, min(repeats, 3), dtype, peak)
        result["limits"]["g1024_beside_invert_high"], stages["invert_high"] = limit, _stat(times)

    # photo edits through the pipeline
    photo_path = Path(args.photo) if args.photo else default_photo()
    image = _photo(photo_path, args.min_pixels)
    if image is None:
        log("no photo: the photo stages are not measured (give --photo)")
        for name in ("edit_photo", "reedit_cached", *LIVE_STAGES, "reedit_high", "reedit_beside_high"):
            stages[name] = {"seconds": None, "note": "no photo"}
    else:
        result["photo"] = {"path": str(photo_path), "width": image.shape[1], "height": image.shape[0]}
        faces = _known_faces(Path(args.faces), image) if args.faces else None
        if faces is not None:
            result["photo"]["faces_from"] = str(args.faces)
        result["pipeline"] = _bench_pipeline(engine, image, repeats, stages, rng, log, faces)
        if not high_missing:
            result["pipeline"]["reedit_high"] = _bench_reedit_high(engine, image, repeats, stages, log, faces)

    for name, key in (("g1024", "g1024_vs_conv"), ("e4e", "e4e_vs_conv")):
        result["ratios"][key] = result["limits"][name]["seconds"] / stages[name]["seconds"]
    # the live-editing targets are in units of L, the G1024 dense limit of this same run
    limit = result["limits"]["g1024"]["seconds"]
    for name in ("g1024", "preview", "edit_photo", *LIVE_STAGES, *HIGH_STAGES):
        if stages[name]["seconds"] is not None:
            beside = result["limits"].get(f"g1024_beside_{name}", {}).get("seconds", limit)
            result["ratios"][f"{name}_in_L"] = stages[name]["seconds"] / beside
    if stages["reedit_high"]["seconds"] is not None:
        # the target: everything after the inversion within 10 % of the standard figure,
        # against the standard re-edit timed in alternation with it
        result["ratios"]["reedit_high_vs_standard"] = (
            stages["reedit_high"]["seconds"] / stages["reedit_beside_high"]["seconds"]
        )
    if engine.plan.preview != torch.float32 or engine.plan.full != torch.float32:
        log("quality against float32")
        result["quality"] = quality_against_fp32(engine, x)
        low_precision_limits(result, engine, g_convs, device, repeats, log)
    peak.note()
    result["peak_rss_mb"] = peak.engine_mb
    result["peak_rss_process_mb"] = peak.process_mb
    if device.type == "cuda":
        result["cuda_peak_allocated_mb"] = torch.cuda.max_memory_allocated(device) / (1 << 20)
    return result


def preview_convs(shapes: list[ConvShape], size: int) -> list[ConvShape]:
    """The generator's convolutions that a synthesis stopped at `size` runs (their output ≤ size)."""
    return [s for s in shapes if s.x[2] * (2 if s.kind == "conv_transpose2d" else 1) <= size]


def low_precision_limits(
    result: dict[str, Any],
    engine: Engine,
    shapes: list[ConvShape],
    device: torch.device,
    repeats: int,
    log: Callable[[str], None],
) -> None:
    """The dense limits again in the low precision (bf16 or fp16), for the 1024² synthesis and the
    preview: how far the hardware's own rate lets those stages go (the targets stay in units of the
    float32 L)."""
    dtype = engine.plan.preview if engine.plan.preview != torch.float32 else engine.plan.full
    name = dtype_name(dtype)
    log(f"dense limits in {name}")
    limit = result["limits"]["g1024"]["seconds"]
    for stage, convs in (("g1024", shapes), ("preview", preview_convs(shapes, engine.preview_size))):
        key = f"{stage}_{name}"
        result["limits"][key] = dense_limit(convs, device, repeats, dtype)
        seconds = result["limits"][key]["seconds"]
        result["ratios"][f"{key}_limit_in_L"] = seconds / limit
        if stage == "preview" or engine.plan.full == dtype:  # (auto's g1024 is float32)
            result["ratios"][f"{stage}_vs_conv_{name}"] = seconds / result["stages"][stage]["seconds"]


def psnr_db(image: torch.Tensor, reference: torch.Tensor) -> float | None:
    """PSNR of an image in [-1, 1] against a reference (peak-to-peak 2); None when they are identical
    (auto's Apply is float32: infinite PSNR, which JSON cannot carry)."""
    mse = float(((image.double() - reference.double()) ** 2).mean())
    return None if mse == 0 else 10 * math.log10(4.0 / mse)


def quality_against_fp32(engine: Engine, x: torch.Tensor) -> dict[str, float | None]:
    """The engine's reduced-precision outputs against float32 on the same inputs: PSNR of the 1024²
    and the preview images, and e4e's relative error ‖W⁺ − W⁺₃₂‖ / ‖W⁺₃₂ − w̄‖ (the codes, around
    the average latent they are added to)."""
    plan = engine.plan
    w = engine.invert(x)
    images = {"g1024": engine.synthesize(w), "preview": engine.synthesize(w, preview=True)}
    engine.plan = Plan("fp32", torch.float32, torch.float32)
    try:
        w32 = engine.invert(x)
        reference = {"g1024": engine.synthesize(w32), "preview": engine.synthesize(w32, preview=True)}
    finally:
        engine.plan = plan
    codes = w32 - engine.latent_avg
    return {
        "g1024_psnr_db": psnr_db(images["g1024"], reference["g1024"]),
        "preview_psnr_db": psnr_db(images["preview"], reference["preview"]),
        "e4e_rel_err": float((w - w32).norm() / codes.norm()),
    }


def _known_faces(path: Path, image: np.ndarray) -> list:
    """Faces from `ffclip-engine faces --json` of the bench photo (scaled if the bench enlarged it)."""
    from ffclip.engine.face.detect import FaceInfo

    try:
        doc = json.loads(path.read_text())
        scale = image.shape[1] / float(doc["width"])
        faces = [FaceInfo.from_json(f, scale) for f in doc["faces"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise RuntimeError(f"--faces {path}: not the JSON of `ffclip-engine faces --json` ({exc})") from exc
    if abs(image.shape[0] / float(doc["height"]) - scale) > 0.01 or not faces:
        raise RuntimeError(f"--faces {path}: no faces of a {image.shape[1]}x{image.shape[0]} photo")
    return faces


def _bench_pipeline(
    engine: Engine,
    image: np.ndarray,
    repeats: int,
    stages: dict,
    rng: np.random.Generator,
    log: Callable[[str], None],
    faces: list | None = None,
) -> dict[str, Any]:
    from ffclip.engine.face.detect import KnownFaces
    from ffclip.engine.pipeline import Pipeline
    from ffclip.plugin.protocol import EditParams

    def new_pipeline() -> Pipeline:
        pipe = Pipeline(engine)
        if faces is not None:  # detections given: dlib is not run (its `detect` stage is then ~0)
            pipe.detector = KnownFaces(faces)
        return pipe

    prompts = iter(f"a face with a {c} beard, take {i}" for i, c in enumerate(rng.permutation(10**6)))
    breakdown: dict[str, dict[str, list[float]]] = {"edit_photo": {}, "reedit_cached": {}}
    pipeline: Pipeline | None = None

    def edit(name: str) -> None:
        result = pipeline.edit(EditParams.single(next(prompts), faces="largest"), image)
        for stage, seconds in result.timings.items():
            breakdown[name].setdefault(stage, []).append(seconds)

    log("edit_photo (cold: new pipeline cache, new prompt)")
    new_pipeline().detect(image)  # load the dlib models once, outside the timings
    times = []
    for _ in range(repeats + 1):  # the first is a warm-up
        pipeline = new_pipeline()
        t0 = time.perf_counter()
        edit("edit_photo")
        _sync(engine.device)
        times.append(time.perf_counter() - t0)
    stages["edit_photo"] = _stat(times[1:])
    log("reedit_cached (same photo, new prompt)")
    breakdown["reedit_cached"].clear()
    stages["reedit_cached"] = _stat(median_time(lambda: edit("reedit_cached"), repeats, engine.device))
    breakdown["edit_photo"] = {k: v[1:] for k, v in breakdown["edit_photo"].items()}
    breakdown.update(_bench_live(pipeline, image, repeats, stages, prompts, engine.device, log))
    return {name: {k: statistics.median(v) for k, v in d.items() if v} for name, d in breakdown.items()}


def _bench_reedit_high(
    engine: Engine,
    image: np.ndarray,
    repeats: int,
    stages: dict,
    log: Callable[[str], None],
    faces: list | None = None,
) -> dict[str, float]:
    """A re-edit with a new prompt at fidelity high, the photo's HyperStyle inversion cached (as
    `reedit_cached` for standard): CLIP, the mapper and the offset generator's synthesis. Timed in
    alternation with the same re-edit at fidelity standard (`reedit_beside_high`) on the same
    pipeline, so that the two sides of the "within 10 %" comparison see the same load."""
    from ffclip.engine.face.detect import KnownFaces
    from ffclip.engine.pipeline import Pipeline
    from ffclip.plugin.protocol import EditParams

    pipeline = Pipeline(engine)
    if faces is not None:
        pipeline.detector = KnownFaces(faces)
    prompts = iter(f"a face with high fidelity, take {i}" for i in range(10**6))
    breakdown: dict[str, list[float]] = {}

    def edit(fidelity: str) -> None:
        params = EditParams.single(next(prompts), faces="largest", fidelity=fidelity)
        result = pipeline.edit(params, image)
        if fidelity == "high":
            for stage, seconds in result.timings.items():
                breakdown.setdefault(stage, []).append(seconds)

    log("reedit_high (same photo, fidelity high, new prompt; the first edit inverts), alternated with standard")
    edit("high")
    edit("standard")
    breakdown.clear()
    times: dict[str, list[float]] = {"standard": [], "high": []}
    for _ in range(repeats):
        for fidelity in ("standard", "high"):
            times[fidelity] += median_time(lambda f=fidelity: edit(f), 1, engine.device, warmup=0)
    stages["reedit_high"], stages["reedit_beside_high"] = _stat(times["high"]), _stat(times["standard"])
    return {k: statistics.median(v) for k, v in breakdown.items() if v}


def _bench_live(
    pipeline: Any,
    image: np.ndarray,
    repeats: int,
    stages: dict,
    prompts: Iterator[str],
    device: torch.device,
    log: Callable[[str], None],
) -> dict[str, dict[str, list[float]]]:
    """What the live dialog asks of the daemon, on a photo whose face is cached: a preview with a new
    prompt, a preview with new strengths (Δw cached), and Apply (full resolution, Δw cached). The
    photo's cache key is computed once, as the daemon does for a session that reuses its image."""
    from ffclip.engine.pipeline import image_key
    from ffclip.plugin.protocol import Attribute, EditParams

    key = image_key(image)
    strengths = iter(np.linspace(-1.5, 1.5, 4 * repeats + 8))
    breakdown: dict[str, dict[str, list[float]]] = {name: {} for name in LIVE_STAGES}
    fixed = ("a smiling face", "grey hair")

    def live(name: str, params: EditParams) -> None:
        result = pipeline.edit(params, image, key=key)
        for stage, seconds in result.timings.items():
            breakdown[name].setdefault(stage, []).append(seconds)

    def two(preview: bool) -> EditParams:
        edits = tuple(Attribute(p, float(next(strengths))) for p in fixed)
        return EditParams(edits, "largest", preview)

    live("live_strength", two(True))  # the fixed prompts' Δw into the cache
    breakdown["live_strength"].clear()
    log("live_prompt (cached face, a new prompt, preview)")
    new = lambda: EditParams((Attribute(next(prompts), 0.8),), "largest", True)  # noqa: E731
    stages["live_prompt"] = _stat(median_time(lambda: live("live_prompt", new()), repeats, device))
    log("live_strength (cached face and prompts, new strengths, preview)")
    stages["live_strength"] = _stat(median_time(lambda: live("live_strength", two(True)), repeats, device))
    log("apply_cached (cached face and prompts, full resolution)")
    stages["apply_cached"] = _stat(median_time(lambda: live("apply_cached", two(False)), repeats, device))
    return breakdown


# -- command line -------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--profile", default="real", choices=sorted(PROFILES), help="model sizes (default real)")
    parser.add_argument("--repeats", type=int, default=0, help="timed repeats per stage (default 5; tiny 3)")
    parser.add_argument(
        "--threads", type=int, default=0, help=f"intra-op threads (default: the engine's, {default_threads()} here)"
    )
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="fp32",
        help="the networks' arithmetic (default fp32; bf16 adds its quality against fp32 on the same inputs; "
        "L stays the float32 limit)",
    )
    parser.add_argument("--autocast", action="store_true", help="the former name of --precision fp16 (CUDA)")
    parser.add_argument("--cuda-graphs", action="store_true", help="replay synthesis from CUDA graphs (CUDA)")
    parser.add_argument(
        "--models",
        help="time the engine loaded from this model store (the daemon's path) "
        "instead of synthetic weights; peak RSS is then the daemon's",
    )
    parser.add_argument("--photo", help=f"photo for the edit stages (default: tests/data/photos/{PHOTO})")
    parser.add_argument(
        "--faces",
        help="detections of the photo from `ffclip-engine faces --json` instead of "
        "running dlib (for a machine without dlib's models; `detect` is then ~0)",
    )
    parser.add_argument(
        "--min-pixels",
        type=int,
        default=900_000,
        help="upscale smaller photos to about this many pixels (default 0.9 MP)",
    )


def _table(result: dict[str, Any]) -> str:
    lines = [
        f"device {result['device']} ({result['device_name']}), {result['threads']} threads, "
        f"torch {result['torch']}, profile {result['profile']} ({result['size']}²)",
        f"NOTE: {result['weights']}",
        f"median of {result['repeats']} runs:",
    ]
    for name in BENCH_STAGES:
        s = result["stages"][name].get("seconds")
        lines.append(f"  {name:<14} {'-' if s is None else f'{s:8.3f} s'}")
    for name, lim in result["limits"].items():
        lines.append(f"  limit {name:<8} {lim['seconds']:8.3f} s  ({lim['convs']} convs, {lim['gflop']:.1f} GFLOP)")
    for key, value in result["ratios"].items():
        lines.append(f"  {key:<14} {value:8.2f}")
    for name, stages in result.get("pipeline", {}).items():
        parts = ", ".join(f"{k} {v:.2f}" for k, v in stages.items())
        lines.append(f"  {name} stages: {parts}")
    lines.append(
        f"  peak RSS {result['peak_rss_mb']:.0f} MB (the process, with the dense-limit passes: "
        f"{result['peak_rss_process_mb']:.0f} MB)"
    )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    def log(msg: str) -> None:
        print(f"bench: {msg}", file=sys.stderr, flush=True)

    try:
        result = measure(args, log)
    except RuntimeError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2) if args.json else _table(result))
    return 0
