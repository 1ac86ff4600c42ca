"""HyperStyle (Alaluf et al., CVPR 2022): a hypernetwork that predicts, from the input face and the
current reconstruction, per-layer changes Δ of the StyleGAN2 generator's convolution weights
(W·(1 + Δ)), refined over a few iterations from a W encoder's initial inversion.

Layouts of yuval-alaluf/hyperstyle: `SharedWeightsHyperNetResNet` (the keys under `hypernet.` in
`hyperstyle_ffhq.pt`, beside the generator under `decoder.`) and the faces `WEncoder` (the keys under
`encoder.` in `faces_w_encoder.pt`). The state_dict keys are the API: the module names follow them.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .irse import STAGES, make_body, make_input_layer, stage_specs
from .stylegan2 import EqualLinear, Generator, default_channels

# The generator's 3×3 512→512 convolutions (coarse levels 4²..64²): one hypernetwork shared by all
SHARED_LAYERS = (0, 2, 3, 5, 6, 8, 9, 11, 12)
# The layers tuned by the official faces model (hyperstyle_ffhq.pt): every convolution but the ToRGBs
FFHQ_LAYERS_TO_TUNE = (0, 2, 3, 5, 6, 8, 9, 11, 12, 14, 15, 17, 18, 20, 21, 23, 24)


def conv_shapes(
    n_outputs: int = 26, channel_multiplier: int = 2, channel_base: int = 512
) -> list[tuple[int, int, int]]:
    """(kernel_size, in_channels, out_channels) of the generator's convolutions in HyperStyle's order:
    conv1, to_rgb1, then per level the up-sampling conv, the conv and the ToRGB (its `PARAMETERS`).
    The defaults are the official table (StyleGAN2 config-f); a narrow generator gives its own."""
    channels = default_channels(channel_multiplier, channel_base)
    shapes = [(3, channels[4], channels[4]), (1, channels[4], 3)]
    c_in = channels[4]
    for res in (2**i for i in range(3, 11)):
        c = channels[res]
        shapes += [(3, c_in, c), (3, c, c), (1, c, 3)]
        c_in = c
    return shapes[:n_outputs]


def is_to_rgb(layer_idx: int) -> bool:
    return layer_idx % 3 == 1


class BasicBlock(nn.Module):
    """torchvision's ResNet-34 unit (`resnet34().layer1..4`), keys `conv1`, `bn1`, `conv2`, `bn2`, `downsample`."""

    def __init__(self, in_channel: int, depth: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channel, depth, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(depth)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(depth, depth, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(depth)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channel != depth:
            self.downsample = nn.Sequential(nn.Conv2d(in_channel, depth, 1, stride, bias=False), nn.BatchNorm2d(depth))

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


def resnet34_body(base: int = 64) -> nn.Sequential:
    """layer1..layer4 of ResNet-34 flattened into one Sequential (3, 4, 6, 3 units), 64 -> 512 channels
    (`base` -> 8·base for a narrow copy)."""
    units, c_in = [], base
    for depth, n in ((base, 3), (2 * base, 4), (4 * base, 6), (8 * base, 3)):
        for i in range(n):
            units.append(BasicBlock(c_in, depth, 2 if i == 0 and depth != base else 1))
            c_in = depth
    return nn.Sequential(*units)


class SharedWeightsHypernet(nn.Module):
    """A 512-d code -> a (out, in, f, f) kernel through two linear maps (w2: code -> in × z, w1: z -> out·f·f)."""

    def __init__(self, f_size: int = 3, z_dim: int = 512, out_size: int = 512, in_size: int = 512) -> None:
        super().__init__()
        self.f_size, self.z_dim, self.out_size, self.in_size = f_size, z_dim, out_size, in_size
        init = lambda *shape: nn.Parameter(torch.fmod(torch.randn(shape) / 40, 2))  # noqa: E731  (the official init)
        self.w1 = init(z_dim, out_size * f_size * f_size)
        self.b1 = init(out_size * f_size * f_size)
        self.w2 = init(z_dim, in_size * z_dim)
        self.b2 = init(in_size * z_dim)

    def forward(self, z: Tensor) -> Tensor:
        if self.w2.t().is_contiguous():  # stored by columns (store_w2_by_columns_): w2ᵀ·zᵀ reads it in order
            h_in = torch.addmm(self.b2[:, None], self.w2.t(), z.t()).t()
        else:
            h_in = torch.addmm(self.b2, z, self.w2)
        h_in = h_in.reshape(z.shape[0] * self.in_size, self.z_dim)
        h_final = torch.addmm(self.b1, h_in, self.w1)  # (B·in, out·f·f), read as (out, in, f, f) below
        return h_final.view(z.shape[0], self.out_size, self.in_size, self.f_size, self.f_size)

    @torch.no_grad()
    def store_w2_by_columns_(self) -> None:
        """Keep w2 (z × in·z, 0.5 GB) column by column, same shape and values (the state_dict is
        unchanged): the few codes of a pass then multiply it as w2ᵀ·zᵀ, a product that streams the
        weight in memory order (3× faster on a CPU than z·w2 with its 9 rows)."""
        if not self.w2.t().is_contiguous():
            self.w2.data = self.w2.data.t().contiguous().t()


def _conv_stack(n_channels: int, inner_c: int, out_c: int, first_stride: int, n_inner: int) -> nn.Sequential:
    """Conv(stride first_stride), n_inner stride-2 convs, a stride-2 conv to out_c; LeakyReLU after each."""
    modules: list[nn.Module] = [nn.Conv2d(n_channels, inner_c, 3, first_stride, 1), nn.LeakyReLU()]
    for _ in range(n_inner):
        modules += [nn.Conv2d(inner_c, inner_c, 3, 2, 1), nn.LeakyReLU()]
    modules += [nn.Conv2d(inner_c, out_c, 3, 2, 1), nn.LeakyReLU()]
    return nn.Sequential(*modules)


class RefinementBlock(nn.Module):
    """A layer's own head: 16² features -> a 512-d vector -> a 1×1 conv to in·out values. A 3×3 layer
    gets one value per (out, in) repeated over the kernel; a ToRGB a whole (3, in, 1, 1) kernel."""

    def __init__(
        self,
        layer_idx: int,
        n_channels: int = 512,
        inner_c: int = 256,
        spatial: int = 16,
        shape: tuple[int, int, int] | None = None,
        hidden: int = 512,
    ) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.kernel_size, self.in_channels, self.out_channels = shape or conv_shapes()[layer_idx]
        num_pools = int(np.log2(spatial)) - 1 - (self.kernel_size == 3)
        self.convs = _conv_stack(n_channels, inner_c, hidden, 2, num_pools - 1)
        conv = nn.Conv2d(hidden, self.in_channels * self.out_channels, kernel_size=1)
        self.output = nn.Sequential(conv) if is_to_rgb(layer_idx) else nn.Sequential(nn.AdaptiveAvgPool2d(1), conv)

    def forward(self, x: Tensor) -> Tensor:
        x = self.output(self.convs(x))
        k = self.kernel_size
        if is_to_rgb(self.layer_idx):
            return x.view(-1, self.out_channels, self.in_channels, k, k)
        return x.view(-1, self.out_channels, self.in_channels, 1, 1).repeat(1, 1, 1, k, k)


class HyperRefinementBlock(nn.Module):
    """A shared-hypernetwork head: 16² features -> a 512-d code (EqualLinear) -> the shared hypernetwork."""

    def __init__(
        self,
        hypernet: SharedWeightsHypernet,
        n_channels: int = 512,
        inner_c: int = 128,
        spatial: int = 16,
        hidden: int = 512,
    ):
        super().__init__()
        self.out_c = hidden
        self.convs = _conv_stack(n_channels, inner_c, self.out_c, 1, int(np.log2(spatial)) - 1)
        self.linear = EqualLinear(self.out_c, self.out_c, lr_mul=1)
        self.hypernet = hypernet  # the same module in every such block: its keys repeat under each

    def forward(self, features: Tensor) -> Tensor:
        return self.hypernet(self.code(features))

    def code(self, features: Tensor) -> Tensor:
        """The block's code (B, hidden) for the shared hypernetwork."""
        return self.linear(self.convs(features).view(-1, self.out_c))


class SharedWeightsHyperNetResNet(nn.Module):
    """cat(input, reconstruction) (B, 6, 256, 256) -> one Δ (B, out, in, k, k) per generator convolution,
    None for the layers not tuned. A PReLU ResNet-34 body to 512 × 16², then one head per tuned layer.

    The defaults are the official network. A narrow copy (the tiny profile) takes the generator's
    own `shapes` (conv_shapes of its channels), a `base` width (the body ends at 8·base channels)
    and a `hidden` width (the heads' codes and the shared hypernetwork's square kernels)."""

    def __init__(
        self,
        input_nc: int = 6,
        n_hypernet_outputs: int = 26,
        layers_to_tune: Sequence[int] = FFHQ_LAYERS_TO_TUNE,
        *,
        shapes: Sequence[tuple[int, int, int]] | None = None,
        base: int = 64,
        hidden: int = 512,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(input_nc, base, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(base)
        self.relu = nn.PReLU(base)
        self.body = resnet34_body(base)
        self.layers_to_tune = list(layers_to_tune) or list(range(n_hypernet_outputs))
        self.n_outputs = n_hypernet_outputs
        self.shapes = list(shapes) if shapes is not None else conv_shapes(n_hypernet_outputs)
        features = 8 * base
        # registered before the blocks (the official order): loading a state_dict, the last block's
        # copy of these shared keys is the one that stays
        self.shared_weight_hypernet = SharedWeightsHypernet(z_dim=hidden, in_size=hidden, out_size=hidden)
        blocks: list[nn.Module | None] = []
        for j in range(n_hypernet_outputs):
            if j not in self.layers_to_tune:
                blocks.append(None)
            elif j in SHARED_LAYERS:
                if self.shapes[j] != (3, hidden, hidden):
                    raise ValueError(f"layer {j} is {self.shapes[j]}: the shared hypernetwork makes 3×3 {hidden}²")
                blocks.append(HyperRefinementBlock(self.shared_weight_hypernet, features, 128 * base // 64, 16, hidden))
            else:
                blocks.append(RefinementBlock(j, features, 256 * base // 64, 16, self.shapes[j], hidden))
        self.refinement_blocks = nn.ModuleList(blocks)

    def forward(self, x: Tensor) -> list[Tensor | None]:
        """One Δ per layer, as the official forward (each block in turn). The shared hypernetwork
        runs once on the codes of all its blocks stacked: the same rows of the same products, but
        its 512 × 512² weight (0.5 GB) is read once per pass instead of nine times."""
        x = self.body(self.relu(self.bn1(self.conv1(x))))
        out: list[Tensor | None] = [None] * len(self.refinement_blocks)
        shared = [j for j, block in enumerate(self.refinement_blocks) if isinstance(block, HyperRefinementBlock)]
        if shared:
            codes = torch.cat([self.refinement_blocks[j].code(x) for j in shared])
            kernels = self.shared_weight_hypernet(codes).split(x.shape[0])
            for j, kernel in zip(shared, kernels, strict=True):
                out[j] = kernel
        for j, block in enumerate(self.refinement_blocks):
            if block is not None and out[j] is None:
                out[j] = block(x)
        return out


class WEncoder(nn.Module):
    """IR-SE-50 body, global average pool, EqualLinear: one w repeated over the n_styles layers
    (codes before `latent_avg` is added, as e4e's)."""

    def __init__(
        self,
        num_layers: int = 50,
        mode: str = "ir_se",
        output_size: int = 1024,
        *,
        stages: Sequence[tuple[int, int]] | None = None,
        input_width: int = 64,
        style_dim: int = 512,
    ) -> None:
        """The defaults are the official network; `stages`, `input_width`, `style_dim`: a narrow copy."""
        super().__init__()
        stages = stages or STAGES[num_layers]
        self.features = stages[-1][0]
        self.input_layer = make_input_layer(input_width)
        self.output_pool = nn.AdaptiveAvgPool2d((1, 1))
        self.linear = EqualLinear(self.features, style_dim, lr_mul=1)
        self.body = make_body(stage_specs(stages, input_width), mode)
        self.style_count = 2 * int(math.log2(output_size)) - 2

    def forward(self, x: Tensor) -> Tensor:
        """x (B, 3, 256, 256) in [-1, 1] -> codes (B, style_count, 512)."""
        w = self.linear(self.output_pool(self.body(self.input_layer(x))).view(-1, self.features))
        return w[:, None].repeat(1, self.style_count, 1)


class Step(NamedTuple):
    """One HyperStyle iteration: the accumulated deltas and the generator's image with them."""

    deltas: list[Tensor | None]
    image: Tensor  # full size
    y_hat: Tensor  # pooled to 256² (a car's rows 32:224 of it), the next iteration's reconstruction input


# the official car models work on 192 × 256 frames: rows 32:224 of the 256² pooled image
CAR_ROWS = (32, 224)

Render = Callable[[Tensor, "Sequence[Tensor | None] | None"], Tensor]


def face_pool(image: Tensor, rows: tuple[int, int] | None = None) -> Tensor:
    """The official `face_pool` (AdaptiveAvgPool2d to 256²), then for cars its rows 32:224."""
    pooled = F.adaptive_avg_pool2d(image, (256, 256))
    return pooled if rows is None else pooled[:, :, rows[0] : rows[1], :]


def encode(w_encoder: WEncoder, x: Tensor, latent_avg: Tensor) -> Tensor:
    """W+ codes (B, n_latent, 512): the W encoder's w plus the checkpoint's `latent_avg` (n_latent, 512)."""
    return w_encoder(x) + latent_avg


def synthesize(generator: Generator, codes: Tensor, deltas: Sequence[Tensor | None] | None = None) -> Tensor:
    """The generator on W+ with its fixed noise (randomize_noise=False), on the reference path (the
    one that takes weight deltas)."""
    image, _ = generator([codes], input_is_latent=True, randomize_noise=False, weights_deltas=deltas)
    return image


def iterate(
    hypernet: SharedWeightsHyperNetResNet,
    generator: Generator,
    x: Tensor,
    codes: Tensor,
    y_hat: Tensor,
    n_iters: int,
    render: Render | None = None,
    rows: tuple[int, int] | None = None,
) -> Iterator[Step]:
    """HyperStyle's refinement: n_iters times Δ_i = Δ_{i-1} + H(cat(x, y_hat_{i-1})) (a layer not tuned
    stays None), image_i = G(codes; W·(1 + Δ_i)), y_hat_i = pool(image_i). Yields each step.
    `render(codes, deltas)`: how G runs (default the reference path, as the official code)."""
    render = render or (lambda c, d: synthesize(generator, c, d))
    deltas: list[Tensor | None] | None = None
    for _ in range(n_iters):
        out = hypernet(torch.cat([x, y_hat], dim=1))
        deltas = out if deltas is None else [None if d is None else d + o for d, o in zip(deltas, out, strict=True)]
        image = render(codes, deltas)
        y_hat = face_pool(image, rows)
        yield Step(deltas, image, y_hat)


def invert(
    w_encoder: WEncoder,
    hypernet: SharedWeightsHyperNetResNet,
    generator: Generator,
    x: Tensor,
    latent_avg: Tensor,
    n_iters: int = 5,
    render: Render | None = None,
    rows: tuple[int, int] | None = None,
) -> tuple[Tensor, Step]:
    """The official inference (`run_inversion`): x (B, 3, 256, 256) in [-1, 1] (a car's 192 × 256 with
    `rows` = CAR_ROWS) -> (codes, the last step). n_iters = 0 gives the W encoder's reconstruction
    alone (deltas all None)."""
    render = render or (lambda c, d: synthesize(generator, c, d))
    codes = encode(w_encoder, x, latent_avg)
    image = render(codes, None)
    first = Step([None] * (2 + 3 * len(generator.to_rgbs)), image, face_pool(image, rows))
    last = deque(iterate(hypernet, generator, x, codes, first.y_hat, n_iters, render, rows), maxlen=1)
    return codes, last[0] if last else first


def offsets(
    w_encoder: WEncoder,
    hypernet: SharedWeightsHyperNetResNet,
    x: Tensor,
    latent_avg: Tensor,
    n_iters: int,
    render: Render,
    rows: tuple[int, int] | None = None,
    between: Callable[[int], None] | None = None,
) -> tuple[Tensor, list[Tensor | None]]:
    """`invert`'s codes and last deltas without the last image (nothing reads it when the photo is
    then edited, so the product saves one synthesis): W encoder, G(codes), then n_iters hypernetwork
    refinements, each but the last followed by G(codes; W·(1 + Δ_i)). `between(i)` runs after each
    refinement (progress, a cancel check)."""
    codes = encode(w_encoder, x, latent_avg)
    y_hat = face_pool(render(codes, None), rows)
    deltas: list[Tensor | None] = [None] * hypernet.n_outputs
    for i in range(n_iters):
        out = hypernet(torch.cat([x, y_hat], dim=1))
        # accumulated in place (nothing else holds them): no new weight-sized tensors per refinement
        deltas = out if i == 0 else [None if d is None else d.add_(o) for d, o in zip(deltas, out, strict=True)]
        if i + 1 < n_iters:
            y_hat = face_pool(render(codes, deltas), rows)
        if between is not None:
            between(i)
    return codes, deltas


@dataclass
class HyperStyleNets:
    """What the engine holds for `fidelity: high`: the W encoder, the hypernetwork, HyperStyle's own
    `latent_avg` (n_latent, D) and its generator (None: the engine's, when the weights are the same)."""

    w_encoder: WEncoder
    hypernet: SharedWeightsHyperNetResNet
    latent_avg: Tensor
    generator: Generator | None = None
    n_iters: int = 5
    rows: tuple[int, int] | None = None  # cars: CAR_ROWS
    sources: dict[str, str] = field(default_factory=dict)

    def modules(self) -> list[nn.Module]:
        return [m for m in (self.w_encoder, self.hypernet, self.generator) if m is not None]

    def nbytes(self) -> int:
        tensors = [self.latent_avg] + [t for m in self.modules() for t in (*m.parameters(), *m.buffers())]
        return sum(t.numel() * t.element_size() for t in tensors)


def offsets_nbytes(deltas: Sequence[Tensor | None]) -> int:
    return sum(d.numel() * d.element_size() for d in deltas if d is not None)
