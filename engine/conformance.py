"""Parity fixtures run against our models (the `ffclip-engine conformance DIR` command is cli/conformance.py).

A fixture is `NAME.manifest.json` (the reference state_dict: keys, shapes, fill rules) plus
`NAME.expected.npz` (seed, inputs, reference outputs). The kind comes from the manifest's `name`.
We synthesise the same weights (engine.synth), run our implementation on the stored inputs and
compare every stored output: worst relative error max|ours − ref| / max|ref| must stay ≤ 1e-4.

`--precision bf16` runs the networks as the engine does in bfloat16 (the generator's inference path
in bfloat16, e4e under bfloat16 autocast; the mapper and ArcFace stay float32) against the same
float32 references, with a looser rule per network (BF16_TOLERANCES: the errors measured on these
fixtures, rounded up; docs/performance.md).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .synth import load_manifest, synth_state_dict

TOLERANCE = 1e-4
# A fixture may also store an output computed by the original code in float64 (`NAME_f64`, same
# float32 weights and inputs): for an ill-conditioned network (FFCLIP's mapper on synthetic
# weights) float32 rounding alone moves the output by more than the tolerance, differently on each
# CPU. Such an output is judged in float64 against its float64 reference; its float32 figure is
# printed for information only.
F64_SUFFIX = "_f64"
# bfloat16 keeps 8 bits of mantissa (relative rounding 2^-9 ≈ 0.2 % per operation): measured worst
# errors on the fixtures (see docs/performance.md), with room for other CPUs' summation orders
BF16_TOLERANCES = {
    "stylegan2": 2e-2,
    "e4e_encoder": 1e-2,
    "ffclip_mapper": TOLERANCE,
    "arcface_ir_se50": TOLERANCE,
    "hyperstyle_w_encoder": TOLERANCE,
    "hyperstyle_hypernet": TOLERANCE,
}


@dataclass
class Check:
    key: str  # the stored reference compared
    error: float  # max|ours − ref| / max|ref|
    precision: str  # the precision our network ran in: "float32" or "float64"
    judged: bool = True  # False: for information (a float64 reference of the same output is judged)


@dataclass
class FixtureResult:
    name: str
    kind: str
    checks: list[Check]
    precision: str = "fp32"  # how our networks computed: fp32 or bf16

    @property
    def judged(self) -> list[Check]:
        return [c for c in self.checks if c.judged]

    @property
    def worst(self) -> Check:
        return max(self.judged, key=lambda c: c.error)

    def passed(self, tolerance: float | None = None) -> bool:
        return bool(self.judged) and self.worst.error <= (self.tolerance if tolerance is None else tolerance)

    @property
    def tolerance(self) -> float:
        """The rule this fixture is judged by in the precision it ran in."""
        return BF16_TOLERANCES[self.kind] if self.precision == "bf16" else TOLERANCE


def rel_error(ours: np.ndarray, ref: np.ndarray) -> float:
    ours = np.asarray(ours, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    if ours.shape != ref.shape:
        return float("inf")
    scale = float(np.abs(ref).max()) or 1.0
    return float(np.abs(ours - ref).max()) / scale


def _to_u8_input(x: np.ndarray, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    return torch.from_numpy(x).to(device, dtype) / 127.5 - 1


def _tensor(x: np.ndarray, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    return torch.from_numpy(x).to(device, dtype)


def _image_outputs(tag: str, image: torch.Tensor, expected: np.lib.npyio.NpzFile) -> dict[str, np.ndarray]:
    """The forms in which fixtures store an image: whole, centre 128² crop, 32² pool, mean, std."""
    img = image.double()
    h = img.shape[-1]
    c = h // 2
    forms = {
        tag: img,
        f"{tag}_center": img[:, :, c - 64 : c + 64, c - 64 : c + 64],
        f"{tag}_pool": F.avg_pool2d(img, h // 32),
        f"{tag}_mean": img.mean(),
        f"{tag}_std": img.std(unbiased=False),
    }
    return {k: v.cpu().numpy() for k, v in forms.items() if k in expected.files}


def run_generator(
    sd: dict, data, device: torch.device, dtype: torch.dtype, arithmetic: torch.dtype | None = None
) -> dict[str, np.ndarray]:
    from .checkpoints.layouts import generator_config
    from .models.stylegan2 import Generator, SynthesisPath

    g = Generator(**generator_config(sd)).eval()
    g.load_state_dict(sd, strict=True)
    g.to(device, dtype)
    path = SynthesisPath.for_inference(device)  # the path the engine synthesizes with on this device
    synth = {"path": path, "dtype": arithmetic or dtype}
    out: dict[str, np.ndarray] = {}
    with torch.inference_mode():
        if "w_plus" in data.files:
            w_plus = _tensor(data["w_plus"], device, dtype)
            img, _ = g([w_plus], input_is_latent=True, randomize_noise=False, **synth)
            out.update(_image_outputs("img_wplus", img, data))
        if "z" in data.files:
            z = _tensor(data["z"], device, dtype)
            out["w_from_z"] = g.mapping(z).cpu().numpy()
            trunc = float(data["truncation"]) if "truncation" in data.files else 1.0
            t_lat = None
            if "truncation_latent" in data.files:
                t_lat = _tensor(data["truncation_latent"], device, dtype)
            img, latents = g(
                [z], truncation=trunc, truncation_latent=t_lat, randomize_noise=False, return_latents=True, **synth
            )
            out["latents_z"] = latents.cpu().numpy()
            out.update(_image_outputs("img_z", img, data))
    return out


def run_e4e(
    sd: dict, data, device: torch.device, dtype: torch.dtype, arithmetic: torch.dtype | None = None
) -> dict[str, np.ndarray]:
    from .models.e4e import Encoder4Editing

    n_styles = len({k.split(".")[1] for k in sd if k.startswith("styles.")})
    enc = Encoder4Editing(stylegan_size=2 ** ((n_styles + 2) // 2)).eval()
    enc.load_state_dict(sd, strict=True)
    enc.to(device, dtype)
    amp = torch.autocast(device.type, dtype=arithmetic) if arithmetic not in (None, dtype) else contextlib.nullcontext()
    with torch.inference_mode(), amp:
        return {"codes": enc(_to_u8_input(data["input_u8"], device, dtype)).float().cpu().numpy()}


def run_mapper(sd: dict, data, device: torch.device, dtype: torch.dtype, arithmetic=None) -> dict[str, np.ndarray]:
    """(float32 in every precision: the engine runs the mapper, a few MFLOP, in float32)"""
    from .models.mapper import DynamicMapper

    n_latent, _ = sd["att_mapper.0.attention_layer.k_matrix.weight"].shape
    dim = sd["att_mapper.0.q_matrix.weight"].shape[0]
    mapper = DynamicMapper(n_latent=n_latent, dim=dim).eval()
    mapper.load_state_dict(sd, strict=True)
    mapper.to(device, dtype)
    w = _tensor(data["w"], device, dtype)
    e = _tensor(data["text_embedding"], device, dtype)
    with torch.inference_mode():
        delta = mapper(w, e)
    return {"delta": delta.cpu().numpy(), "w_hat": (w + delta).cpu().numpy()}


def run_arcface(sd: dict, data, device: torch.device, dtype: torch.dtype, arithmetic=None) -> dict[str, np.ndarray]:
    """(float32 in every precision: evaluation, not the product)"""
    from .models.arcface import Backbone

    x = data["input_u8"]
    net = Backbone(input_size=x.shape[-1]).eval()
    net.load_state_dict(sd, strict=True)
    net.to(device, dtype)
    with torch.inference_mode():
        return {"features": net(_to_u8_input(x, device, dtype)).cpu().numpy()}


def _hyperstyle_w_encoder(sd: dict, device: torch.device, dtype: torch.dtype):
    from .models.hyperstyle import WEncoder

    enc = WEncoder(50, "ir_se", output_size=1024).eval()  # the faces model: 18 W+ layers
    enc.load_state_dict(sd, strict=True)
    return enc.to(device, dtype)


def run_hyperstyle_w_encoder(sd: dict, data, device: torch.device, dtype: torch.dtype, arithmetic=None):
    """(float32 in every precision, as the whole HyperStyle chain)"""
    enc = _hyperstyle_w_encoder(sd, device, dtype)
    with torch.inference_mode():
        return {"codes": enc(_to_u8_input(data["input_u8"], device, dtype)).cpu().numpy()}


def run_hyperstyle(
    sd: dict, data, device: torch.device, dtype: torch.dtype, arithmetic=None, *, companions: dict[str, dict]
) -> dict[str, np.ndarray]:
    """The official inference: W encoder, y_hat_0, `iters` refinements; every step's outputs, the deltas
    of each tuned layer in summary (a 4×4 corner, mean, std, shape), the last full image in the
    fixtures' image forms. (float32 in every precision: the generator's reference path.)"""
    from .checkpoints.layouts import generator_config
    from .models import hyperstyle as hs
    from .models.stylegan2 import Generator

    hypernet = hs.SharedWeightsHyperNetResNet(6, 26, [int(j) for j in data["layers_to_tune"]]).eval()
    hypernet.load_state_dict(sd, strict=True)
    hypernet.to(device, dtype)
    hypernet.shared_weight_hypernet.store_w2_by_columns_()  # the engine's layout (Engine.hyperstyle)
    enc = _hyperstyle_w_encoder(companions["hyperstyle_w_encoder"], device, dtype)
    g_sd = companions["stylegan2_1024"]
    g = Generator(**generator_config(g_sd)).eval()
    g.load_state_dict(g_sd, strict=True)
    g.to(device, dtype)
    x = _to_u8_input(data["input_u8"], device, dtype)
    out: dict[str, np.ndarray] = {}
    with torch.inference_mode():
        w = enc(x)
        codes = w + _tensor(data["latent_avg"], device, dtype)
        y_hat = hs.face_pool(hs.synthesize(g, codes))
        out.update(w_encoder_codes=w.cpu().numpy(), codes=codes.cpu().numpy(), y_hat_0=y_hat.cpu().numpy())
        step = None
        for i, step in enumerate(hs.iterate(hypernet, g, x, codes, y_hat, int(data["iters"])), start=1):
            out[f"y_hat_{i}"] = step.y_hat.cpu().numpy()
            for j, d in enumerate(step.deltas):
                if d is not None:
                    d64 = d.double()
                    out[f"delta_{i}_{j}_slice"] = d[:, :4, :4].cpu().numpy()
                    out[f"delta_{i}_{j}_mean"] = d64.mean().cpu().numpy()
                    out[f"delta_{i}_{j}_std"] = d64.std().cpu().numpy()
                    out[f"delta_{i}_{j}_shape"] = np.array(d.shape)
        if step is not None:
            out.update(_image_outputs("img", step.image, data))
    return out


RUNNERS: dict[str, Callable] = {
    "stylegan2_": run_generator,
    "e4e_encoder_": run_e4e,
    "ffclip_mapper": run_mapper,
    "arcface_ir_se50": run_arcface,
    "hyperstyle_w_encoder_": run_hyperstyle_w_encoder,
    "hyperstyle_hypernet_": run_hyperstyle,
}
# A fixture whose network runs with others': their manifests, in the fixture's folder, filled with
# the fixture's seed (the hypernetwork needs the W encoder and the 1024² generator)
COMPANIONS: dict[str, tuple[str, ...]] = {"hyperstyle_hypernet_": ("hyperstyle_w_encoder", "stylegan2_1024")}
INPUTS = {
    "seed", "w_plus", "z", "truncation", "truncation_latent", "input_u8", "w", "text_embedding",
    "latent_avg", "iters", "layers_to_tune",
}  # fmt: skip


def kind_of(name: str) -> str:
    """The longest registered prefix of the manifest's name (`hyperstyle_w_encoder_` before any shorter one)."""
    matches = [prefix for prefix in RUNNERS if name.startswith(prefix)]
    if not matches:
        raise ValueError(f"unknown fixture kind {name!r}")
    return max(matches, key=len)


def run_fixture(manifest_path: Path, device: torch.device, precision: str = "fp32") -> FixtureResult:
    """`precision`: fp32 (the plain rule) or bf16 (the networks as the engine runs them in bfloat16)."""
    manifest = load_manifest(manifest_path)
    data = np.load(manifest_path.with_name(manifest_path.name.replace(".manifest.json", ".expected.npz")))
    kind = kind_of(manifest["name"])
    sd = synth_state_dict(manifest, int(data["seed"]))
    expected = [k for k in data.files if k not in INPUTS]
    in_f64 = {k[: -len(F64_SUFFIX)] for k in expected if k.endswith(F64_SUFFIX)}
    arithmetic = torch.bfloat16 if precision == "bf16" else None
    extra = {}
    if kind in COMPANIONS:
        extra["companions"] = {
            name: synth_state_dict(load_manifest(manifest_path.with_name(f"{name}.manifest.json")), int(data["seed"]))
            for name in COMPANIONS[kind]
        }
    ours = RUNNERS[kind](sd, data, device, torch.float32, arithmetic, **extra)
    label = "bfloat16" if arithmetic is not None and kind in ("stylegan2_", "e4e_encoder_") else "float32"
    checks = [
        Check(k, _error(ours, k, data[k]), label, judged=k not in in_f64)
        for k in expected
        if not k.endswith(F64_SUFFIX)
    ]
    if in_f64:
        ours = RUNNERS[kind](sd, data, device, torch.float64, **extra)
        checks += [Check(k + F64_SUFFIX, _error(ours, k, data[k + F64_SUFFIX]), "float64") for k in sorted(in_f64)]
    return FixtureResult(manifest_path.name.replace(".manifest.json", ""), kind.rstrip("_"), checks, precision)


def _error(ours: dict[str, np.ndarray], key: str, ref: np.ndarray) -> float:
    if key not in ours:
        return float("inf")
    if ref.dtype.kind in "iub":  # shapes, counts: exact
        return 0.0 if np.array_equal(ours[key], ref) else float("inf")
    return rel_error(ours[key], ref)


def fixtures_in(directory: Path) -> list[Path]:
    return sorted(
        p
        for p in directory.glob("*.manifest.json")
        if p.with_name(p.name.replace(".manifest.json", ".expected.npz")).exists()
    )


def report_line(result: FixtureResult, tolerance: float | None = None) -> str:
    worst = result.worst
    verdict = "ok  " if result.passed(tolerance) else "FAIL"
    line = f"{verdict} {result.name:<28} {result.kind:<15} worst {worst.error:.2e} ({worst.key}, {worst.precision})"
    info = [c for c in result.checks if not c.judged]
    if info:
        top = max(info, key=lambda c: c.error)
        line += f"; float32 {top.error:.2e} ({top.key}, for information: judged in float64)"
    return line
