"""StyleGAN2 generator in the layout of rosinality's `model.py` (the layout of the official
checkpoints `stylegan2-ffhq-config-f.pt` and of the generators inside e4e and FFCLIP files).

Module and parameter names follow that layout exactly, because the state_dict keys are the API.
The arithmetic is the reference's, arranged for speed where it is provably identical:

* modulated convolutions modulate the *activations* and demodulate the *outputs* around one
  plain convolution with the shared weight (rosinality's `fused=False` path), so every layer
  costs one dense `conv2d` whatever the batch size;
* the up-sampling convolution folds its 4×4 blur into the transposed-convolution weight
  (a 6×6 kernel computed once per weight), instead of a separate up-fir-down pass;
* the `ToRGB` skip up-sampling is a depthwise transposed convolution with the 4×4 kernel.

Synthesis takes one of three named paths (`SynthesisPath`, chosen by the caller):

* REFERENCE: the arrangement above, differentiable (training);
* FOLDED, for inference without autograd: the same arithmetic, faster (the `forward_inference`
  methods): channels-last activations, the style folded into the *weight* per sample (rosinality's
  `fused=True` formulation: one small weight product instead of two passes over the activations),
  the reference's 3×3 stride-2 transposed convolution followed by the 4×4 blur as a depthwise
  convolution (fewer FLOPs than the 6×6 fold, and no slow NCHW `conv_transpose2d`), the
  activation's bias fused into the convolution, noise and leaky ReLU applied in place, and the
  leaky ReLU's √2 gain carried into the next layer's weights instead of a pass over the activations;
* BANDED: FOLDED with the 512² and 1024² levels in bands of rows (`banded_level`): less memory,
  and on a CPU the band stays in cache from one operation to the next.
"""

from __future__ import annotations

import enum
import math
import weakref
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

SQRT2 = math.sqrt(2.0)


def make_kernel(k: Sequence[float]) -> Tensor:
    kernel = torch.tensor(k, dtype=torch.float32)
    if kernel.ndim == 1:
        kernel = kernel[None, :] * kernel[:, None]
    return kernel / kernel.sum()


def upfirdn2d(x: Tensor, kernel: Tensor, up: int = 1, down: int = 1, pad: tuple[int, int] = (0, 0)) -> Tensor:
    """Upsample by zero insertion, pad, FIR-filter and downsample (reference semantics)."""
    b, c, h, w = x.shape
    if up > 1:
        z = x.new_zeros(b, c, h, up, w, up)
        z[:, :, :, 0, :, 0] = x
        x = z.reshape(b, c, h * up, w * up)
    p0, p1 = pad
    x = F.pad(x, [max(p0, 0), max(p1, 0), max(p0, 0), max(p1, 0)])
    x = x[:, :, max(-p0, 0) : x.shape[2] - max(-p1, 0), max(-p0, 0) : x.shape[3] - max(-p1, 0)]
    weight = torch.flip(kernel, [0, 1]).to(x.dtype)[None, None].expand(c, 1, *kernel.shape)
    x = F.conv2d(x, weight, groups=c)
    return x[:, :, ::down, ::down]


def fused_leaky_relu(x: Tensor, bias: Tensor, negative_slope: float = 0.2, scale: float = SQRT2) -> Tensor:
    shape = (1, -1) + (1,) * (x.ndim - 2)
    return F.leaky_relu(x + bias.view(shape), negative_slope) * scale


class PixelNorm(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x * torch.rsqrt(torch.mean(x**2, dim=1, keepdim=True) + 1e-8)


class EqualLinear(nn.Module):
    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        bias: bool = True,
        bias_init: float = 0.0,
        lr_mul: float = 1.0,
        activation: str | None = None,
    ) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim).div_(lr_mul))
        self.bias = nn.Parameter(torch.zeros(out_dim).fill_(bias_init)) if bias else None
        self.activation = activation
        self.scale = (1 / math.sqrt(in_dim)) * lr_mul
        self.lr_mul = lr_mul

    def forward(self, x: Tensor) -> Tensor:
        bias = self.bias * self.lr_mul if self.bias is not None else None
        if self.activation:
            out = F.linear(x, self.weight * self.scale)
            return fused_leaky_relu(out, bias) if bias is not None else F.leaky_relu(out, 0.2) * SQRT2
        return F.linear(x, self.weight * self.scale, bias=bias)


class FusedLeakyReLU(nn.Module):
    def __init__(self, channel: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channel))

    def forward(self, x: Tensor) -> Tensor:
        return fused_leaky_relu(x, self.bias)


class Blur(nn.Module):
    def __init__(self, kernel: Sequence[float], pad: tuple[int, int], upsample_factor: int = 1) -> None:
        super().__init__()
        k = make_kernel(kernel)
        if upsample_factor > 1:
            k = k * (upsample_factor**2)
        self.register_buffer("kernel", k)
        self.pad = pad

    def forward(self, x: Tensor) -> Tensor:
        return upfirdn2d(x, self.kernel, pad=self.pad)


class Upsample(nn.Module):
    """×2 up-sampling with the FIR kernel (the ToRGB skip path)."""

    def __init__(self, kernel: Sequence[float], factor: int = 2) -> None:
        super().__init__()
        self.factor = factor
        self.register_buffer("kernel", make_kernel(kernel) * (factor**2))
        p = self.kernel.shape[0] - factor
        self.pad = ((p + 1) // 2 + factor - 1, p // 2)

    def forward(self, x: Tensor) -> Tensor:
        k = self.kernel
        if self.factor == 2 and k.shape[0] == 4 and self.pad == (2, 1):
            # Zero insertion + pad (2, 1) + 4×4 FIR == transposed conv, stride 2, crop 1 per side.
            c = x.shape[1]
            weight = torch.flip(k, [0, 1]).to(x.dtype)[None, None].expand(c, 1, 4, 4)
            return F.conv_transpose2d(x, weight, stride=2, padding=1, groups=c)
        return upfirdn2d(x, k, up=self.factor, pad=self.pad)


class ModulatedConv2d(nn.Module):
    def __init__(
        self,
        in_channel: int,
        out_channel: int,
        kernel_size: int,
        style_dim: int,
        demodulate: bool = True,
        upsample: bool = False,
        blur_kernel: Sequence[float] = (1, 3, 3, 1),
    ) -> None:
        super().__init__()
        self.eps = 1e-8
        self.kernel_size = kernel_size
        self.in_channel = in_channel
        self.out_channel = out_channel
        self.upsample = upsample
        if upsample:
            factor = 2
            p = (len(blur_kernel) - factor) - (kernel_size - 1)
            self.blur = Blur(blur_kernel, pad=((p + 1) // 2 + factor - 1, p // 2 + 1), upsample_factor=factor)
        self.scale = 1 / math.sqrt(in_channel * kernel_size**2)
        self.padding = kernel_size // 2
        self.weight = nn.Parameter(torch.randn(1, out_channel, in_channel, kernel_size, kernel_size))
        self.modulation = EqualLinear(style_dim, in_channel, bias_init=1)
        self.demodulate = demodulate
        self._folded: tuple[int, torch.dtype, torch.device, Tensor] | None = None
        self._inference: tuple[tuple, dict[str, Tensor]] | None = None
        self._tuned: tuple[tuple, Tensor, Tensor] | None = None  # the last photo's W·(1 + Δ) (_tuned_weight)

    def forward(self, x: Tensor, style: Tensor, weights_delta: Tensor | None = None) -> Tensor:
        """`weights_delta` (B or 1, out, in, k, k): HyperStyle's per-sample change of the weight,
        W·(1 + Δ_b) in place of W (its generator's `scale · (W · (1 + Δ) · s)`), one sample at a time."""
        if weights_delta is None:
            return self._modulated_conv(x, style, self.weight[0], cache=True)
        deltas = weights_delta.expand(x.shape[0], *weights_delta.shape[1:])
        return torch.cat(
            [
                self._modulated_conv(x[b : b + 1], style[b : b + 1], self.weight[0] * (1 + d), cache=False)
                for b, d in enumerate(deltas)
            ]
        )

    def _modulated_conv(self, x: Tensor, style: Tensor, weight: Tensor, cache: bool) -> Tensor:
        """The reference arithmetic with `weight` (out, in, k, k) shared by the batch; `cache`: it is
        the parameter's, so its up-sampling fold may be kept."""
        batch = x.shape[0]
        weight = self.scale * weight
        s = self.modulation(style)  # (B, in)
        x = x * s.view(batch, -1, 1, 1)
        if self.upsample:
            folded = self._upsample_weight(weight, cache=cache)
            out = F.conv_transpose2d(x, folded, stride=2, padding=self._upsample_crop())
        else:
            out = F.conv2d(x, weight, padding=self.padding)
        if self.demodulate:
            # rsqrt(sum_(i,k) (W·s)^2 + eps), per sample and output channel
            w2 = weight.square().sum((2, 3))  # (out, in)
            demod = torch.rsqrt(s.square() @ w2.t() + self.eps)  # (B, out)
            out = out * demod.view(batch, -1, 1, 1)
        return out

    def _upsample_crop(self) -> int:
        # transposed conv (k) then blur (kh, pad p0) == transposed conv with the (k+kh-1) kernel,
        # cropped by kh - 1 - p0 on each side
        return self.blur.kernel.shape[0] - 1 - self.blur.pad[0]

    def _upsample_weight(self, weight: Tensor, cache: bool = True) -> Tensor:
        """Transposed-conv weight (in, out, k+3, k+3) = the 3×3 weight convolved with the blur kernel.

        Cached while the parameter is unchanged (inference) when `cache` (the weight is the parameter's,
        not one changed per sample); recomputed under autograd (training).
        """
        key = (self.weight._version, weight.dtype, weight.device)
        cache = cache and not torch.is_grad_enabled()
        if cache and self._folded is not None and self._folded[:3] == key:
            return self._folded[3]
        k = self.blur.kernel.to(weight.dtype)
        kh = k.shape[0]
        w = weight.transpose(0, 1)  # (in, out, k, k): conv_transpose2d layout
        i, o, ks, _ = w.shape
        # full 2-D convolution of every (in, out) slice with the blur kernel
        folded = F.conv2d(F.pad(w.reshape(i * o, 1, ks, ks), [kh - 1] * 4), torch.flip(k, [0, 1])[None, None]).reshape(
            i, o, ks + kh - 1, ks + kh - 1
        )
        if cache:
            self._folded = (*key, folded)
        return folded

    # -- inference (no autograd): the style folded into the weight, one sample at a time ----------

    def _inference_cache(self) -> dict[str, Tensor]:
        """Per-weight constants: Σ_k W² for the demodulation and the per-channel blur kernel.
        Rebuilt when the parameter changes (version, dtype, device)."""
        w = self.weight
        key = (w._version, w.dtype, w.device, w.data_ptr())
        if self._inference is not None and self._inference[0] == key:
            return self._inference[1]
        cache = {"w2": w[0].detach().square().sum((2, 3))}  # (out, in)
        if self.upsample:
            k = torch.flip(self.blur.kernel, [0, 1]).to(w.dtype)
            cache["blur"] = k[None, None].expand(self.out_channel, 1, *k.shape).contiguous()
        self._inference = (key, cache)
        return cache

    def _plain_weight(self, dtype: torch.dtype) -> Tensor:
        """W in `dtype`, in the layout its convolution takes (transposed for the up-sampling one), kept
        beside the other per-weight constants."""
        cache = self._inference_cache()
        name = f"plain_{dtype}"
        if name not in cache:
            cache[name] = self._in_conv_layout(self.weight[0].detach(), dtype)
        return cache[name]

    def _in_conv_layout(self, weight: Tensor, dtype: torch.dtype) -> Tensor:
        """An (out, in, k, k) weight in `dtype` and the layout conv_inference takes (the up-sampling
        layer's transposed convolution takes (in, out, k, k))."""
        return (weight.transpose(0, 1) if self.upsample else weight).contiguous().to(dtype)

    def activations_cheaper(self, x: Tensor) -> bool:
        """Whether modulating this (small) activation costs less than a per-sample weight: a pass over
        the input (in·H·W) and one over the output (out·H'·W') against out·in·k² products."""
        out_pixels = x.shape[2] * x.shape[3] * (4 if self.upsample else 1)
        passes = self.in_channel * x.shape[2] * x.shape[3] + self.out_channel * out_pixels
        return passes < self.out_channel * self.in_channel * self.kernel_size**2

    def _tuned_weight(self, delta: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """HyperStyle's W·(1 + Δ) for one photo (delta (1, out, in, k, k)) in `dtype` and the layout of
        _plain_weight, with its Σ_k (W·(1 + Δ))² (out, in) in float32. Kept for the last Δ seen (a
        photo's previews and Apply reuse its cached offsets), by a weak reference, so that another
        tensor at a freed Δ's address is never taken for it, and by version, so that a change in
        place is seen. An inference tensor has no version (the inversion changes its Δ in place
        between renders): made anew on every call."""
        w = self.weight
        if delta.is_inference():
            return self._tuned_from(delta, dtype)
        key = (w._version, w.data_ptr(), delta._version, delta.shape, dtype)
        if self._tuned is not None and self._tuned[0][1:] == key and self._tuned[0][0]() is delta:
            return self._tuned[1], self._tuned[2]
        weight, w2 = self._tuned_from(delta, dtype)
        self._tuned = ((weakref.ref(delta), *key), weight, w2)
        return weight, w2

    def _tuned_from(self, delta: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        base = self.weight[0].detach() * (1 + delta[0].to(self.weight.dtype))
        return self._in_conv_layout(base, dtype), base.square().sum((2, 3))

    def _coefficients(self, style: Tensor, gain: float, w2: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """s·scale (B, in) and the output scale d·gain (B, out), d from the layer's own weight or from
        `w2`, the Σ_k W² of another (HyperStyle's W·(1 + Δ))."""
        coef = self.modulation(style) * self.scale
        if not self.demodulate:
            return coef, coef.new_full((coef.shape[0], self.out_channel), gain)
        w2 = self._inference_cache()["w2"] if w2 is None else w2
        return coef, torch.rsqrt(coef.square() @ w2.t() + self.eps) * gain

    def conv_modulating_activations(
        self, x: Tensor, style: Tensor, gain: float, bias: Tensor, delta: Tensor | None = None
    ) -> list[Tensor]:
        """Per sample conv(x, W·s·d·gain) + bias, computed as d·gain·conv(x·s, W) + bias with one cached
        W in x's dtype: the reference's arrangement, for the low-precision path's small levels, where
        a per-sample weight (out·in·k² products, then a cast) costs more than the activations. The
        outputs are float32: d applied in the input's precision would be one rounding error per
        channel, repeated over the whole image instead of averaging out. `delta` (1, out, in, k, k):
        HyperStyle's offsets of the photo, W·(1 + Δ) in place of W (_tuned_weight)."""
        if delta is None:
            weight, w2 = self._plain_weight(x.dtype), None
        else:
            weight, w2 = self._tuned_weight(delta, x.dtype)
        coef, out_coef = self._coefficients(style, gain, w2)  # float32
        bias = bias.view(1, -1, 1, 1)
        outs = []
        for b in range(x.shape[0]):
            xs = (x[b : b + 1] * coef[b, :, None, None]).to(x.dtype)
            out = self.conv_inference(xs, weight)  # (the up-sampling blur's taps, n/64, are exact in bf16)
            outs.append(torch.addcmul(bias, out, out_coef[b].view(1, -1, 1, 1)))
        return outs

    def modulated_weights(
        self, style: Tensor, gain: float = 1.0, dtype: torch.dtype | None = None, delta: Tensor | None = None
    ) -> list[Tensor]:
        """One weight per sample: scale·W·s, demodulated, times `gain` (the input's pending scale).

        conv(gain·x, W·s·d) == conv(x, gain·W·s·d); d comes from W·s alone, as in the reference.
        Layout (out, in, k, k), or (in, out, k, k) for the up-sampling (transposed) convolution.
        Computed in the parameters' float32 and returned in `dtype` (the activations', e.g. bfloat16).
        `delta` (B or 1, out, in, k, k): HyperStyle's weight change, W·(1 + Δ_b) in place of W (its
        demodulation from that weight, as the reference path).
        """
        weights = self._modulated_weights(style, gain, delta)
        return weights if dtype in (None, weights[0].dtype) else [w.to(dtype) for w in weights]

    def _modulated_weights(self, style: Tensor, gain: float, delta: Tensor | None = None) -> list[Tensor]:
        coef, out_coef = self._coefficients(style, gain)  # (B, in), (B, out)
        batch = coef.shape[0]
        bases = [self.weight[0]] * batch
        if delta is not None:  # each sample's own weight W·(1 + Δ_b), and its Σ_k (W·(1 + Δ_b))² (out, in)
            deltas = delta.to(self.weight.dtype).expand(batch, *delta.shape[1:])
            bases = [self.weight[0] * (1 + d) for d in deltas]
            if self.demodulate:
                w2 = torch.stack([b.square().sum((2, 3)) for b in bases])  # (B, out, in)
                out_coef = torch.rsqrt(torch.bmm(w2, coef.square()[:, :, None])[:, :, 0] + self.eps) * gain
        outer = out_coef[:, :, None] * coef[:, None, :]  # (B, out, in)
        if not self.upsample:
            return [bases[b] * outer[b][:, :, None, None] for b in range(batch)]
        # the transposed conv's (in, out, k, k) layout, written contiguously from a transposed view
        return [
            torch.mul(
                bases[b].detach().transpose(0, 1),
                outer[b].t()[:, :, None, None],
                out=self.weight.new_empty(self.in_channel, self.out_channel, self.kernel_size, self.kernel_size),
            )
            for b in range(batch)
        ]

    def conv_inference(self, x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
        """One sample (1, in, H, W) with its modulated weight; `bias` is added after the blur."""
        if not self.upsample:
            return F.conv2d(x, weight, bias, padding=self.padding)
        out = F.conv_transpose2d(x, weight, stride=2)
        p0, p1 = self.blur.pad
        if p0 != p1:
            out = F.pad(out, [p0, p1, p0, p1])
            p0 = 0
        blur = self._inference_cache()["blur"].to(out.dtype)
        return F.conv2d(out, blur, bias, padding=p0, groups=self.out_channel)


class NoiseInjection(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))
        self._value: tuple[tuple, float] | None = None

    def strength(self) -> float:
        """The weight as a Python number, read once per parameter version (no device sync per call,
        which also keeps the inference path capturable in a CUDA graph)."""
        w = self.weight
        key = (w._version, w.dtype, w.device, w.data_ptr())
        if self._value is None or self._value[0] != key:
            self._value = (key, float(w.detach()))
        return self._value[1]

    def forward(self, image: Tensor, noise: Tensor | None = None) -> Tensor:
        if noise is None:
            b, _, h, w = image.shape
            noise = image.new_empty(b, 1, h, w).normal_()
        return image + self.weight * noise


class ConstantInput(nn.Module):
    def __init__(self, channel: int, size: int = 4) -> None:
        super().__init__()
        self.input = nn.Parameter(torch.randn(1, channel, size, size))

    def forward(self, batch: int) -> Tensor:
        return self.input.repeat(batch, 1, 1, 1)


class StyledConv(nn.Module):
    def __init__(
        self,
        in_channel: int,
        out_channel: int,
        kernel_size: int,
        style_dim: int,
        upsample: bool = False,
        blur_kernel: Sequence[float] = (1, 3, 3, 1),
        demodulate: bool = True,
    ) -> None:
        super().__init__()
        self.conv = ModulatedConv2d(
            in_channel,
            out_channel,
            kernel_size,
            style_dim,
            upsample=upsample,
            blur_kernel=blur_kernel,
            demodulate=demodulate,
        )
        self.noise = NoiseInjection()
        self.activate = FusedLeakyReLU(out_channel)

    def forward(
        self, x: Tensor, style: Tensor, noise: Tensor | None = None, weights_delta: Tensor | None = None
    ) -> Tensor:
        return self.activate(self.noise(self.conv(x, style, weights_delta), noise=noise))

    def forward_inference(
        self, x: Tensor, style: Tensor, gain: float, noise: Tensor | None, delta: Tensor | None = None
    ) -> Tensor:
        """leaky_relu(conv + noise + bias) *without* the final √2: the caller carries that gain into
        the consumers' weights. x is the true activation divided by `gain`; the arithmetic is in x's
        dtype (float32, or bfloat16). `delta`: HyperStyle's weight change (modulated_weights)."""
        if noise is None:  # the reference draws (B, 1, H, W) per layer at this point
            b = x.shape[0]
            h, w = (x.shape[2] * 2, x.shape[3] * 2) if self.conv.upsample else x.shape[2:]
            noise = x.new_empty(b, 1, h, w).normal_()
        nw = self.noise.strength()
        noise, bias = noise.to(x.dtype), self.activate.bias.to(x.dtype)
        one_weight = delta is None or delta.shape[0] == 1  # (HyperStyle's offsets: one photo's)
        if x.dtype == torch.bfloat16 and one_weight and self.conv.activations_cheaper(x):
            convs = self.conv.conv_modulating_activations(x, style, gain, self.activate.bias, delta)
        else:  # float32 always: bit for bit the folded arithmetic
            weights = self.conv.modulated_weights(style, gain, x.dtype, delta)
            convs = [self.conv.conv_inference(x[b : b + 1], weight, bias) for b, weight in enumerate(weights)]
        outs = []
        for b, out in enumerate(convs):
            if nw != 0.0:
                out.add_(noise[b : b + 1] if noise.shape[0] > 1 else noise, alpha=nw)
            outs.append(F.leaky_relu_(out, 0.2).to(x.dtype))
        return outs[0] if len(outs) == 1 else torch.cat(outs)


class ToRGB(nn.Module):
    def __init__(
        self, in_channel: int, style_dim: int, upsample: bool = True, blur_kernel: Sequence[float] = (1, 3, 3, 1)
    ) -> None:
        super().__init__()
        if upsample:
            self.upsample = Upsample(blur_kernel)
        self.conv = ModulatedConv2d(in_channel, 3, 1, style_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))

    def forward(
        self, x: Tensor, style: Tensor, skip: Tensor | None = None, weights_delta: Tensor | None = None
    ) -> Tensor:
        out = self.conv(x, style, weights_delta) + self.bias
        if skip is not None:
            out = out + self.upsample(skip)
        return out

    def forward_inference(
        self, x: Tensor, style: Tensor, gain: float, skip: Tensor | None, delta: Tensor | None = None
    ) -> Tensor:
        """The RGB image, in float32 whatever x's dtype (the output; the skip accumulates in it)."""
        weights = self.conv.modulated_weights(style, gain, x.dtype, delta)
        bias = self.bias.view(-1).to(x.dtype)
        outs = [self.conv.conv_inference(x[b : b + 1], w, bias) for b, w in enumerate(weights)]
        out = (outs[0] if len(outs) == 1 else torch.cat(outs)).float()
        if skip is not None:
            out = out.add_(self.upsample(skip))
        return out


# -- the large levels on the CPU, in bands of rows -------------------------------------------------


class SynthesisPath(enum.Enum):
    """How `Generator.synthesis` computes: the same images three ways (the module's docstring)."""

    REFERENCE = "reference"  # the activations modulated; differentiable: training
    FOLDED = "folded"  # inference: the style folded into each sample's weight, channels-last
    BANDED = "banded"  # FOLDED, the levels from BANDED_FROM on in bands of rows

    @classmethod
    def for_inference(cls, device: torch.device | str) -> SynthesisPath:
        """The fastest path without autograd on `device`: bands on a CPU, whole levels on a GPU."""
        return cls.BANDED if torch.device(device).type == "cpu" else cls.FOLDED


BANDED_FROM = 512  # levels of at least this output size run in bands (SynthesisPath.BANDED)
BAND_ROWS = 64


def _rows(t: Tensor, start: int, stop: int, height: int) -> Tensor:
    """Rows [start, stop) of `t` along dim 2, zero rows where outside [0, height)."""
    lo, hi = max(start, 0), min(stop, height)
    part = t[:, :, lo:hi]
    return part if (lo, hi) == (start, stop) else F.pad(part, [0, 0, lo - start, stop - hi])


def _noise(noise: Tensor | None, like: Tensor, height: int) -> Tensor:
    """The layer's noise (B or 1, 1, H, W); drawn at full size when random, as the reference does."""
    if noise is None:
        noise = like.new_empty(like.shape[0], 1, height, height).normal_()
    return noise


def banded_level(
    conv_up: StyledConv,
    conv: StyledConv,
    to_rgb: ToRGB,
    x: Tensor,
    styles: tuple[Tensor, Tensor, Tensor],
    noises: tuple[Tensor | None, Tensor | None],
    skip: Tensor,
    keep_features: bool,
    deltas: tuple[Tensor | None, Tensor | None, Tensor | None] = (None, None, None),
) -> tuple[Tensor | None, Tensor]:
    """One level (up-sampling StyledConv, StyledConv, ToRGB) of the inference path, computed in bands
    of output rows with the halo each band needs: the same arithmetic as `forward_inference`, but the
    level's full-size intermediates (the transposed convolution's output, the blurred activation,
    the second convolution's output) exist one band at a time. At 1024² that is ~0.2 GB less peak
    memory, and faster on a CPU because a band stays in cache between the operations.

    Returns the level's features (None unless `keep_features`: the next level's input) and the RGB
    skip image at the new size."""
    up, mid = conv_up.conv, conv.conv
    batch, _, size, _ = x.shape
    height = 2 * size
    k, (p0, p1), kb = up.kernel_size, up.blur.pad, up.blur.kernel.shape[0]
    dtype = x.dtype  # the arithmetic's: float32, or bfloat16 (the RGB skip stays float32)
    w_up = up.modulated_weights(styles[0], SQRT2, dtype, deltas[0])
    w_mid = mid.modulated_weights(styles[1], SQRT2, dtype, deltas[1])
    w_rgb = to_rgb.conv.modulated_weights(styles[2], SQRT2, dtype, deltas[2])
    n_up, n_mid = _noise(noises[0], x, height).to(dtype), _noise(noises[1], x, height).to(dtype)
    s_up, s_mid = conv_up.noise.strength(), conv.noise.strength()
    blur = up._inference_cache()["blur"].to(dtype)
    b_up, b_mid, b_rgb = (t.to(dtype) for t in (conv_up.activate.bias, conv.activate.bias, to_rgb.bias.view(-1)))
    col_pad = p0 if p0 == p1 else 0  # the blur's column padding, in the conv when symmetric
    rgb = to_rgb.upsample(skip).contiguous(memory_format=torch.channels_last)
    features = None
    if keep_features:
        features = torch.empty(
            batch, mid.out_channel, height, height, dtype=x.dtype, device=x.device, memory_format=torch.channels_last
        )

    for b in range(batch):
        nb_up, nb_mid = (n[b : b + 1] if n.shape[0] > 1 else n for n in (n_up, n_mid))
        for r0 in range(0, height, BAND_ROWS):
            r1 = min(r0 + BAND_ROWS, height)
            # rows of the first activation the 3×3 conv reads (its zero padding outside the image)
            a0, a1 = max(r0 - mid.padding, 0), min(r1 + mid.padding, height)
            # rows of the transposed conv's output (height 2·size + k - 2) the blur reads
            t0, t1 = a0 - p0, a1 - p0 + kb - 1
            # input rows that reach them: output row y of the stride-2 transposed conv sums inputs
            # i with 0 <= y - 2i < k
            i0, i1 = max(0, -((k - 1 - t0) // 2)), min(size, (t1 - 1) // 2 + 1)
            t = F.conv_transpose2d(x[b : b + 1, :, i0:i1], w_up[b], stride=2)
            t = _rows(t, t0 - 2 * i0, t1 - 2 * i0, height + k - 2 - 2 * i0)
            if p0 != p1:  # columns padded here, rows by `_rows`
                t = F.pad(t, [p0, p1])
            a = F.conv2d(t, blur, b_up, padding=(0, col_pad), groups=up.out_channel)
            if s_up != 0.0:
                a.add_(nb_up[:, :, a0:a1], alpha=s_up)
            a = _rows(F.leaky_relu_(a, 0.2), r0 - mid.padding - a0, r1 + mid.padding - a0, a1 - a0)
            out = F.conv2d(a, w_mid[b], b_mid, padding=(0, mid.padding))
            if s_mid != 0.0:
                out.add_(nb_mid[:, :, r0:r1], alpha=s_mid)
            out = F.leaky_relu_(out, 0.2)
            rgb[b : b + 1, :, r0:r1] += F.conv2d(out, w_rgb[b], b_rgb)
            if features is not None:
                features[b : b + 1, :, r0:r1] = out
    return features, rgb


def default_channels(channel_multiplier: int = 2, base: int = 512) -> dict[int, int]:
    """rosinality's channel table; `base` < 512 gives the narrow `tiny` profile."""
    return {
        4: base,
        8: base,
        16: base,
        32: base,
        64: base // 2 * channel_multiplier,
        128: base // 4 * channel_multiplier,
        256: base // 8 * channel_multiplier,
        512: base // 16 * channel_multiplier,
        1024: base // 32 * channel_multiplier,
    }


class Generator(nn.Module):
    def __init__(
        self,
        size: int,
        style_dim: int = 512,
        n_mlp: int = 8,
        channel_multiplier: int = 2,
        blur_kernel: Sequence[float] = (1, 3, 3, 1),
        lr_mlp: float = 0.01,
        channel_base: int = 512,
    ) -> None:
        super().__init__()
        self.size = size
        self.style_dim = style_dim
        self.style = nn.Sequential(
            PixelNorm(),
            *[EqualLinear(style_dim, style_dim, lr_mul=lr_mlp, activation="fused_lrelu") for _ in range(n_mlp)],
        )
        self.channels = default_channels(channel_multiplier, channel_base)
        self.input = ConstantInput(self.channels[4])
        self.conv1 = StyledConv(self.channels[4], self.channels[4], 3, style_dim, blur_kernel=blur_kernel)
        self.to_rgb1 = ToRGB(self.channels[4], style_dim, upsample=False)

        self.log_size = int(math.log2(size))
        self.num_layers = (self.log_size - 2) * 2 + 1
        self.convs = nn.ModuleList()
        self.to_rgbs = nn.ModuleList()
        self.noises = nn.Module()
        for layer_idx in range(self.num_layers):
            res = (layer_idx + 5) // 2
            self.noises.register_buffer(f"noise_{layer_idx}", torch.randn(1, 1, 2**res, 2**res))
        in_channel = self.channels[4]
        for i in range(3, self.log_size + 1):
            out_channel = self.channels[2**i]
            self.convs.append(StyledConv(in_channel, out_channel, 3, style_dim, upsample=True, blur_kernel=blur_kernel))
            self.convs.append(StyledConv(out_channel, out_channel, 3, style_dim, blur_kernel=blur_kernel))
            self.to_rgbs.append(ToRGB(out_channel, style_dim, blur_kernel=blur_kernel))
            in_channel = out_channel
        self.n_latent = self.log_size * 2 - 2

    def mapping(self, z: Tensor) -> Tensor:
        """z (B, 512) -> w (B, 512) through the mapping network."""
        return self.style(z)

    def mean_latent(self, n_latent: int) -> Tensor:
        z = torch.randn(n_latent, self.style_dim, device=self.input.input.device)
        return self.style(z).mean(0, keepdim=True)

    def fixed_noise(self) -> list[Tensor]:
        return [getattr(self.noises, f"noise_{i}") for i in range(self.num_layers)]

    def forward(
        self,
        styles: list[Tensor],
        return_latents: bool = False,
        inject_index: int | None = None,
        truncation: float = 1.0,
        truncation_latent: Tensor | None = None,
        input_is_latent: bool = False,
        noise: list[Tensor | None] | None = None,
        randomize_noise: bool = True,
        stop_at: int | None = None,
        path: SynthesisPath = SynthesisPath.REFERENCE,
        dtype: torch.dtype = torch.float32,
        weights_deltas: Sequence[Tensor | None] | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """rosinality's signature; `stop_at` ends synthesis at that resolution (a preview), `path` is
        how it is computed, `dtype` its arithmetic (synthesis_levels); `weights_deltas` HyperStyle's
        per-layer weight changes (synthesis_levels)."""
        if not input_is_latent:
            styles = [self.style(s) for s in styles]
        if noise is None:
            noise = [None] * self.num_layers if randomize_noise else self.fixed_noise()
        if truncation < 1:
            styles = [truncation_latent + truncation * (s - truncation_latent) for s in styles]
        latent = self.broadcast_latent(styles, inject_index)
        image = self.synthesis(latent, noise, stop_at, path, dtype, weights_deltas)
        return image, (latent if return_latents else None)

    def broadcast_latent(self, styles: list[Tensor], inject_index: int | None = None) -> Tensor:
        """W (B, D) or W+ (B, n_latent, D), or two W mixed at `inject_index` -> W+ (B, n_latent, D)."""
        if len(styles) < 2:
            s = styles[0]
            return s.unsqueeze(1).repeat(1, self.n_latent, 1) if s.ndim < 3 else s
        if inject_index is None:
            inject_index = int(torch.randint(1, self.n_latent - 1, ()).item())
        latent = styles[0].unsqueeze(1).repeat(1, inject_index, 1)
        latent2 = styles[1].unsqueeze(1).repeat(1, self.n_latent - inject_index, 1)
        return torch.cat([latent, latent2], 1)

    def synthesis(
        self,
        latent: Tensor,
        noise: list[Tensor | None],
        stop_at: int | None = None,
        path: SynthesisPath = SynthesisPath.REFERENCE,
        dtype: torch.dtype = torch.float32,
        weights_deltas: Sequence[Tensor | None] | None = None,
    ) -> Tensor:
        """W+ -> the RGB image at `stop_at` (default: full size)."""
        size = stop_at or self.size
        levels = self.synthesis_levels(latent, noise, (size,), path=path, dtype=dtype, weights_deltas=weights_deltas)
        return levels[size]

    def synthesis_levels(
        self,
        latent: Tensor,
        noise: list[Tensor | None],
        sizes: Sequence[int],
        between_levels: Callable[[], None] | None = None,
        path: SynthesisPath = SynthesisPath.REFERENCE,
        dtype: torch.dtype = torch.float32,
        weights_deltas: Sequence[Tensor | None] | None = None,
    ) -> dict[int, Tensor]:
        """The RGB skip image at each of `sizes` (powers of two, 4..size) from one pass that stops at
        the largest. The image at a smaller size is exactly what synthesis stopped there returns
        (the later ToRGBs only add to the skip), e.g. a 256² copy of a 1024² edit for comparisons
        with a reconstruction synthesized only up to 256². `between_levels` is called after each
        resolution; whatever it raises ends the pass there (a cancelled job: nothing is shared
        between passes, so stopping half-way is safe). The inference paths compute in place: they
        refuse to run with autograd on. `dtype`: the inference paths' arithmetic (bfloat16: the
        activations and each sample's modulated weight in bfloat16, the styles, the demodulation and
        the RGB skip in float32); the reference path is float32. `weights_deltas` (every path): per
        convolution in HyperStyle's order (conv1, to_rgb1, then each level's up-sampling conv, conv
        and ToRGB) None or Δ (B or 1, out, in, k, k), the layer computing with W·(1 + Δ)."""
        wanted = set(sizes)
        if not wanted or any(s < 4 or s > self.size or s & (s - 1) for s in wanted):
            raise ValueError(f"sizes must be powers of two in [4, {self.size}], not {sorted(wanted)}")
        inference = path is not SynthesisPath.REFERENCE
        if not inference and dtype != torch.float32:
            raise ValueError("the reference synthesis path computes in float32")
        n_convs = 2 + 3 * len(self.to_rgbs)
        if weights_deltas is not None and len(weights_deltas) != n_convs:
            raise ValueError(f"weights_deltas: {n_convs} entries, one per convolution")
        deltas = list(weights_deltas) if weights_deltas is not None else [None] * n_convs
        if inference and torch.is_grad_enabled():
            raise ValueError(f"the {path.value} synthesis path is for inference: run it under torch.inference_mode()")
        out = self.input(latent.shape[0])
        if inference:
            out = out.to(dtype).contiguous(memory_format=torch.channels_last)
            out = self.conv1.forward_inference(out, latent[:, 0], 1.0, noise[0], deltas[0])
            skip = self.to_rgb1.forward_inference(out, latent[:, 1], SQRT2, None, deltas[1])
        else:
            out = self.conv1(out, latent[:, 0], noise=noise[0], weights_delta=deltas[0])
            skip = self.to_rgb1(out, latent[:, 1], weights_delta=deltas[1])
        images = {4: skip} if 4 in wanted else {}
        i, res = 1, 4
        levels = zip(self.convs[::2], self.convs[1::2], self.to_rgbs, strict=True)
        for level, (conv_up, conv, to_rgb) in enumerate(levels):
            if res >= max(wanted):
                break
            n1, n2 = noise[2 * level + 1], noise[2 * level + 2]
            d = deltas[2 + 3 * level : 5 + 3 * level]
            if path is SynthesisPath.BANDED and res * 2 >= BANDED_FROM:
                styles = (latent[:, i], latent[:, i + 1], latent[:, i + 2])
                last = res * 2 >= max(wanted)
                out, skip = banded_level(conv_up, conv, to_rgb, out, styles, (n1, n2), skip, not last, tuple(d))
            elif inference:  # same arithmetic, channels-last, style folded into the weights
                out = conv_up.forward_inference(out, latent[:, i], SQRT2, n1, d[0])
                out = conv.forward_inference(out, latent[:, i + 1], SQRT2, n2, d[1])
                skip = to_rgb.forward_inference(out, latent[:, i + 2], SQRT2, skip, d[2])
            else:
                out = conv_up(out, latent[:, i], noise=n1, weights_delta=d[0])
                out = conv(out, latent[:, i + 1], noise=n2, weights_delta=d[1])
                skip = to_rgb(out, latent[:, i + 2], skip, weights_delta=d[2])
            i, res = i + 2, res * 2
            if res in wanted:
                images[res] = skip.contiguous() if inference else skip
            if between_levels is not None and res < max(wanted):
                between_levels()
        return images
