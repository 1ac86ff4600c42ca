"""bfloat16 where the processor has it (engine/precision.py, the generator's dtype-following inference
path, Engine's plan; issue 27): what runs in which precision, the capability masked and present, float32
untouched bit for bit, bfloat16 close to it."""

from __future__ import annotations

import math

import pytest
import torch

from ffclip.app.cli.serve import UsageError, check_precision
from ffclip.engine import precision
from ffclip.engine.inference import Engine, build_tiny
from ffclip.engine.models.stylegan2 import SynthesisPath
from ffclip.engine.profiles import TINY
from tests.support.generators import lively_generator

NATIVE, EMULATED = {"fpu", "avx512f", "avx512_bf16"}, {"fpu", "avx512f", "avx2"}


@pytest.fixture
def native(monkeypatch):
    monkeypatch.setattr(precision, "cpu_flags", lambda: set(NATIVE))


@pytest.fixture
def emulated(monkeypatch):
    monkeypatch.setattr(precision, "cpu_flags", lambda: set(EMULATED))


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return 10 * math.log10(4.0 / float(((a.double() - b.double()) ** 2).mean()))


@pytest.mark.parametrize(
    ("flags", "native"),
    [(NATIVE, True), ({"amx_bf16"}, True), ({"fp", "asimd", "bf16"}, True), (EMULATED, False), (set(), False)],
)
def test_native_bf16_is_read_from_the_flags(flags, native) -> None:
    assert precision.native_bf16(flags) is native


def test_the_plans() -> None:
    f32, bf16 = torch.float32, torch.bfloat16
    assert precision.plan("auto", "cpu", NATIVE) == precision.Plan("auto", bf16, f32)
    assert precision.plan("auto", "cpu", NATIVE).describe() == "bf16 previews, fp32 Apply"
    assert precision.plan("auto", "cpu", EMULATED) == precision.Plan("auto", f32, f32)  # never emulated
    assert precision.plan("bf16", "cpu", NATIVE) == precision.Plan("bf16", bf16, bf16)
    assert precision.plan("fp32", "cpu", NATIVE).describe() == "fp32"
    assert precision.plan("auto", "cuda").full == f32 and precision.plan("bf16", "cuda").preview == bf16
    assert precision.plan("fp16", "cuda").full == torch.float16
    with pytest.raises(precision.PrecisionUnavailable, match="emulated and several times slower"):
        precision.plan("bf16", "cpu", EMULATED)
    with pytest.raises(precision.PrecisionUnavailable, match="for GPUs"):
        precision.plan("fp16", "cpu", NATIVE)
    with pytest.raises(ValueError, match="precision is one of"):
        precision.plan("half", "cpu", NATIVE)


def test_serve_refuses_an_emulated_bf16_at_its_start(emulated) -> None:
    with pytest.raises(UsageError, match="would be emulated"):
        check_precision("bf16", ["cpu"])
    check_precision("auto", ["cpu"])  # auto just keeps float32 there


def test_the_generator_in_bf16_is_close_and_float32_is_untouched() -> None:
    g = lively_generator(64)
    w = torch.randn(2, g.n_latent, 32, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        for path in (SynthesisPath.FOLDED, SynthesisPath.BANDED):
            run = lambda dtype, path=path: g.synthesis(w, g.fixed_noise(), path=path, dtype=dtype)  # noqa: E731
            f32, default, bf16 = run(torch.float32), g.synthesis(w, g.fixed_noise(), path=path), run(torch.bfloat16)
            assert torch.equal(f32, default)  # the float32 path is what it was: no casts on the way
            assert bf16.dtype == torch.float32 and _rel(bf16, f32) < 2e-2  # the conformance rule for bf16
            assert not torch.equal(bf16, f32)  # it did compute in bfloat16
    with pytest.raises(ValueError, match="reference synthesis path computes in float32"):
        g.synthesis(w, g.fixed_noise(), dtype=torch.bfloat16)


def test_auto_previews_in_bf16_and_keeps_everything_a_user_keeps_in_fp32(native) -> None:
    nets = build_tiny(TINY)
    fp32, auto = Engine(nets, TINY, "cpu", precision="fp32"), Engine(nets, TINY, "cpu", precision="auto")
    assert auto.describe()["precision"] == "bf16 previews, fp32 Apply"
    x = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(2)) * 2 - 1
    w = fp32.invert(x)
    assert torch.equal(auto.invert(x), w)  # the inversion is cached and shared with Apply
    assert torch.equal(auto.synthesize(w), fp32.synthesize(w))  # Apply
    assert torch.equal(auto.synthesize(w, size=64), fp32.synthesize(w, size=64))  # the reconstruction
    preview, reference = auto.synthesize(w, preview=True), fp32.synthesize(w, preview=True)
    assert not torch.equal(preview, reference) and _psnr(preview, reference) > 40
    size = auto.preview_size
    levels = auto.synthesize_levels(w, (size // 2, size), preview=True)
    assert torch.equal(levels[size], preview) and levels[size // 2].dtype == torch.float32


def test_bf16_everywhere_and_refused_where_emulated(monkeypatch) -> None:
    nets = build_tiny(TINY)
    monkeypatch.setattr(precision, "cpu_flags", lambda: set(EMULATED))
    with pytest.raises(precision.PrecisionUnavailable):
        Engine(nets, TINY, "cpu", precision="bf16")
    assert Engine(nets, TINY, "cpu", precision="auto").describe()["precision"] == "fp32"
    monkeypatch.setattr(precision, "cpu_flags", lambda: set(NATIVE))
    fp32, bf16 = Engine(nets, TINY, "cpu"), Engine(nets, TINY, "cpu", precision="bf16")
    x = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(3)) * 2 - 1
    w32, w16 = fp32.invert(x), bf16.invert(x)
    assert not torch.equal(w16, w32)
    assert float((w16 - w32).norm() / (w32 - fp32.latent_avg).norm()) < 0.02  # e4e under bf16 autocast
    assert _psnr(bf16.synthesize(w32), fp32.synthesize(w32)) > 40


def test_the_cpu_flags_of_this_machine_are_read() -> None:
    import platform

    if platform.system() == "Linux":
        assert precision.cpu_flags()  # /proc/cpuinfo has a flags (x86) or Features (Arm) line
