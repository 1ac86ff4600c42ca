"""bfloat16 where the processor has it (engine/precision.py, the generator's dtype-following inference
path, Engine's plan; issue 27): what runs in which precision, the capability masked and present, float32
untouched bit for bit, bfloat16 close to it."""

from __future__ import annotations

import math

import numpy as np
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


def _layer_errors(upsample: bool, modulate_activations: bool, monkeypatch, high: bool = False) -> tuple[float, float]:
    """One StyledConv on an 8² bfloat16 input against float32 on the same input: the worst relative
    error, and the worst per-channel mean error relative to the channel's mean magnitude (a rounding
    of a per-channel factor shows there: it shifts a whole channel instead of averaging out)."""
    from ffclip.engine.models import stylegan2

    torch.manual_seed(0)
    layer = stylegan2.StyledConv(64, 64, 3, 32, upsample=upsample).eval()
    with torch.no_grad():
        layer.activate.bias.normal_()
        layer.noise.weight.fill_(0.1)
        layer.conv.modulation.bias.normal_(1, 0.2)
    x = torch.randn(1, 64, 8, 8).to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    style, size = torch.randn(1, 32), 16 if upsample else 8
    noise = torch.randn(1, 1, size, size)
    delta = 0.2 * torch.randn(1, *layer.conv.weight.shape[1:]) if high else None  # HyperStyle's offsets
    if not modulate_activations:
        monkeypatch.setattr(stylegan2.ModulatedConv2d, "activations_cheaper", lambda self, x: False)
    with torch.inference_mode():
        assert modulate_activations is layer.conv.activations_cheaper(x)
        reference = layer.forward_inference(x.float(), style, stylegan2.SQRT2, noise, delta)
        got = layer.forward_inference(x, style, stylegan2.SQRT2, noise, delta)
    monkeypatch.undo()
    assert got.dtype == torch.bfloat16 and got.is_contiguous(memory_format=torch.channels_last)
    error = got.float() - reference
    channel = (error.mean((0, 2, 3)).abs() / reference.abs().mean((0, 2, 3))).max()
    return _rel(got.float(), reference), float(channel)


@pytest.mark.parametrize("high", [False, True])
@pytest.mark.parametrize("upsample", [False, True])
def test_small_bf16_layers_modulate_the_activations_as_exactly_as_the_weights(upsample, high, monkeypatch) -> None:
    """Where a per-sample weight costs more than the activation (the preview's small levels), bf16
    modulates the activations and demodulates in float32: no less exact than the folded weight; with
    HyperStyle's offsets (`high`) too, from the photo's W·(1 + Δ) and its own demodulation."""
    folded = _layer_errors(upsample, False, monkeypatch, high)
    activations = _layer_errors(upsample, True, monkeypatch, high)
    assert activations[0] <= 1.25 * folded[0]
    assert activations[1] <= folded[1]  # d in bf16 would shift whole channels: about twice the error


def test_only_bf16_and_only_small_layers_modulate_the_activations() -> None:
    from ffclip.engine.models.stylegan2 import ModulatedConv2d

    conv, up = ModulatedConv2d(512, 512, 3, 512), ModulatedConv2d(512, 512, 3, 512, upsample=True)
    small, large = torch.empty(1, 512, 32, 32), torch.empty(1, 512, 64, 64)
    assert conv.activations_cheaper(small) and not conv.activations_cheaper(large)
    assert up.activations_cheaper(torch.empty(1, 512, 16, 16)) and not up.activations_cheaper(small)
    g = lively_generator(64)
    w = torch.randn(1, g.n_latent, 32, generator=torch.Generator().manual_seed(4))
    calls = []
    for module in g.modules():
        if isinstance(module, ModulatedConv2d):
            original = module.conv_modulating_activations
            module.conv_modulating_activations = lambda *a, original=original: calls.append(1) or original(*a)
    with torch.inference_mode():
        g.synthesis(w, g.fixed_noise(), path=SynthesisPath.BANDED)
        assert not calls  # float32: bit for bit the folded weights
        g.synthesis(w, g.fixed_noise(), path=SynthesisPath.BANDED, dtype=torch.bfloat16)
        assert calls


class _WeightCasts(torch.utils._python_dispatch.TorchDispatchMode):
    """Counts the casts (aten._to_copy) whose source is one of `params`."""

    def __init__(self, params: list[torch.Tensor]) -> None:
        super().__init__()
        self.ptrs = {p.data_ptr() for p in params}
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        casts = (torch.ops.aten._to_copy.default, torch.ops.aten.to.dtype)  # (the second inside inference_mode)
        if func in casts and args[0].data_ptr() in self.ptrs:
            self.count += 1
        return func(*args, **(kwargs or {}))


def test_bf16_e4e_casts_its_weights_once_with_autocasts_arithmetic(native) -> None:
    nets = build_tiny(TINY)
    engine = Engine(nets, TINY, "cpu", precision="bf16")
    x = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(4)) * 2 - 1
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = engine.encoder(x).float() + engine.latent_avg
    layers = (torch.nn.Conv2d, torch.nn.Linear)  # (PReLU casts its own few weights to the input's dtype)
    params = [p for m in engine.encoder.modules() if isinstance(m, layers) for p in m.parameters(recurse=False)]
    calls = [_WeightCasts(params), _WeightCasts(params)]
    with calls[0]:
        first = engine.invert(x)
    with calls[1]:
        second = engine.invert(x)
    assert torch.equal(first, autocast) and torch.equal(second, autocast)
    cast = engine._encoder_cast[torch.bfloat16]
    assert calls[0].count == len(cast) > 0 and calls[1].count == 0  # each weight once, on the first call
    assert all(t.dtype == torch.bfloat16 for t in cast.values())
    assert Engine(nets, TINY, "cpu", precision="fp32").invert(x).dtype == torch.float32


def test_a_photos_tuned_weight_is_made_once_and_never_taken_for_another_photos() -> None:
    from ffclip.engine.models.stylegan2 import SQRT2, StyledConv

    torch.manual_seed(1)
    layer = StyledConv(64, 64, 3, 32).eval()
    x = torch.randn(1, 64, 8, 8).to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    style, noise = torch.randn(1, 32), torch.randn(1, 1, 8, 8)
    made = []
    original = layer.conv._tuned_weight

    def spy(delta, dtype):
        before = layer.conv._tuned
        result = original(delta, dtype)
        made.append(layer.conv._tuned is not before)
        return result

    layer.conv._tuned_weight = spy

    def run(delta, module=layer):
        with torch.inference_mode():
            return module.forward_inference(x, style, SQRT2, noise, delta)

    a, b = 0.2 * torch.randn(1, 64, 64, 3, 3), 0.2 * torch.randn(1, 64, 64, 3, 3)
    first = run(a)
    assert torch.equal(run(a), first) and made == [True, False]  # the same photo: reused
    other = run(b)
    assert made[-1] and not torch.equal(other, first)  # another photo: its own weight
    with torch.inference_mode():
        b.copy_(a)  # changed in place (its version moves): made again, equal to a's result
    assert torch.equal(run(b), first) and made[-1]
    # a photo whose offsets were freed, then another's at the very same address (and version)
    fresh = StyledConv(64, 64, 3, 32).eval()
    fresh.load_state_dict(layer.state_dict())
    memory = (0.2 * np.random.default_rng(2).standard_normal((1, 64, 64, 3, 3))).astype(np.float32)
    d = torch.from_numpy(memory)
    run(d)
    del d
    memory[:] = (0.2 * np.random.default_rng(3).standard_normal(memory.shape)).astype(np.float32)
    e = torch.from_numpy(memory)  # another tensor, version 0, at the freed one's address
    assert torch.equal(run(e), run(e, fresh)) and made[-1]


def test_offsets_changed_in_place_under_inference_mode_are_seen() -> None:
    """The inversion accumulates its offsets in place between renders, inside inference_mode, where
    tensors keep no version: each render must use the offsets as they are then."""
    from ffclip.engine.models.stylegan2 import SQRT2, StyledConv

    torch.manual_seed(1)
    layer = StyledConv(64, 64, 3, 32).eval()
    x = torch.randn(1, 64, 8, 8).to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    style, noise = torch.randn(1, 32), torch.randn(1, 1, 8, 8)
    with torch.inference_mode():
        delta = 0.2 * torch.randn(1, 64, 64, 3, 3)
        first = layer.forward_inference(x, style, SQRT2, noise, delta)
        delta.add_(0.2 * torch.randn(1, 64, 64, 3, 3))
        second = layer.forward_inference(x, style, SQRT2, noise, delta)
        alone = layer.forward_inference(x, style, SQRT2, noise, delta.clone())
    assert torch.equal(second, alone) and not torch.equal(first, second)
