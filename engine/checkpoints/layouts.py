"""The official checkpoint layouts, parsed into their parts and checked strictly.

| kind      | file                          | layout                                                       |
|-----------|-------------------------------|--------------------------------------------------------------|
| stylegan2 | stylegan2-ffhq-config-f.pt    | {'g_ema': state_dict, 'latent_avg': [512]}  (rosinality)     |
| e4e       | e4e_ffhq_encode.pt            | {'state_dict': {encoder.*, decoder.*}, 'latent_avg': [L, 512], |
|           |                               |  'opts': dict}                                               |
| ffclip    | (Drive file; name unknown)    | {'state_dict': {module.att_mapper.*, module.generator.*},    |
|           |                               |  'opts': pickled OmegaConf}                                  |
| arcface   | model_ir_se50.pth             | plain IR-SE-50 state_dict (TreB1eN)                          |
| clip      | open_clip ViT-B-32 (OpenAI)   | plain open_clip state_dict (safetensors), or OpenAI's        |
|           |                               | TorchScript ViT-B-32.pt (tensors read without its code)      |
| moco      | moco_v2_800ep_pretrain.pt     | {'state_dict': {module.encoder_q.* (ResNet-50 + MLP head),   |
|           |                               |  module.encoder_k.*, module.queue*}, 'arch', 'epoch', ...}   |
| hyperstyle| hyperstyle_ffhq.pt,           | {'state_dict': {hypernet.*, decoder.*}, 'latent_avg':        |
|           | hyperstyle_cars.pt            |  [L, 512], 'opts': dict, 'global_step', 'best_val_loss'}     |
| w_encoder | faces_w_encoder.pt,           | {'state_dict': {encoder.* (WEncoder: IR-SE-50, linear),      |
|           | cars_w_encoder.pt             |  decoder.*}, 'latent_avg', 'opts': dict}  (pSp's coach)      |

The expected {key: shape} comes from our own model classes, built on the meta device (no memory,
no time), so a file is accepted only when it fits the model that will load it. Architecture
hyper-parameters (generator size, W+ layers) are read from the file's shapes, so the same code
takes FFHQ (1024, 18 layers), cars (512, 16) and church (256, 14) files.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import torch

from .errors import CheckpointError
from .report import Shape, check_state_dict, shape_of
from .safe_load import load_any, load_checkpoint, safetensors_shapes, sniff, to_plain
from .torchscript import is_torchscript_archive, openai_to_open_clip, read_torchscript_state_dict

KINDS = ("stylegan2", "e4e", "ffclip", "arcface", "clip", "moco", "hyperstyle", "w_encoder")
MOCO_PREFIX = "module.encoder_q."  # the query encoder; its `fc` is MoCo v2's projection head
# body units per IR-SE depth (stage units 3+4+14+3, 3+13+30+3, 3+8+36+3)
IRSE_DEPTH_BY_UNITS = {24: 50, 49: 100, 50: 152}

# --- expected shapes, from the model classes ----------------------------------------------------


def module_shapes(factory: Callable[[], torch.nn.Module]) -> dict[str, Shape]:
    with torch.device("meta"):
        model = factory()
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


@lru_cache(maxsize=16)
def generator_shapes(
    size: int, style_dim: int = 512, n_mlp: int = 8, channel_multiplier: int = 2, channel_base: int = 512
) -> dict[str, Shape]:
    from ffclip.engine.models.stylegan2 import Generator

    kwargs: dict[str, Any] = {"style_dim": style_dim, "n_mlp": n_mlp}
    kwargs["channel_multiplier"] = channel_multiplier
    if channel_base != 512:
        kwargs["channel_base"] = channel_base
    return module_shapes(lambda: Generator(size, **kwargs))


@lru_cache(maxsize=8)
def e4e_shapes(stylegan_size: int, num_layers: int = 50, mode: str = "ir_se") -> dict[str, Shape]:
    from ffclip.engine.models.e4e import Encoder4Editing

    return module_shapes(lambda: Encoder4Editing(num_layers, mode, stylegan_size))


@lru_cache(maxsize=8)
def mapper_shapes(n_latent: int, dim: int = 512, n_blocks: int = 4) -> dict[str, Shape]:
    from ffclip.engine.models.mapper import DynamicMapper

    return module_shapes(lambda: DynamicMapper(n_latent=n_latent, dim=dim, n_blocks=n_blocks))


@lru_cache(maxsize=4)
def arcface_shapes(input_size: int = 112, num_layers: int = 50, mode: str = "ir_se") -> dict[str, Shape]:
    from ffclip.engine.models.arcface import Backbone

    return module_shapes(lambda: Backbone(input_size=input_size, num_layers=num_layers, mode=mode))


@lru_cache(maxsize=1)
def clip_shapes() -> dict[str, Shape]:
    import open_clip

    root = logging.getLogger()
    was_disabled = root.disabled
    root.disabled = True  # open_clip warns that no pretrained weights were loaded: that is the point
    try:
        model = open_clip.create_model("ViT-B-32", pretrained=None, quick_gelu=True, device="meta")
    finally:
        root.disabled = was_disabled
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


@lru_cache(maxsize=8)
def hypernet_shapes(size: int, layers_to_tune: tuple[int, ...]) -> dict[str, Shape]:
    """HyperStyle's SharedWeightsHyperNetResNet for a generator of `size` tuning those layers."""
    from ffclip.engine.models.hyperstyle import SharedWeightsHyperNetResNet

    n_outputs = hypernet_outputs(size)
    return module_shapes(lambda: SharedWeightsHyperNetResNet(6, n_outputs, layers_to_tune))


@lru_cache(maxsize=4)
def w_encoder_shapes(num_layers: int = 50, mode: str = "ir_se") -> dict[str, Shape]:
    from ffclip.engine.models.hyperstyle import WEncoder

    return module_shapes(lambda: WEncoder(num_layers, mode))


def hypernet_outputs(size: int) -> int:
    """The generator's convolutions (HyperStyle's n_hypernet_outputs): 26 at 1024, 23 at 512, 20 at 256."""
    return 3 * int(math.log2(size)) - 4


# --- helpers ------------------------------------------------------------------------------------


def _indices(state_dict: Mapping[str, Any], pattern: str) -> set[int]:
    """The distinct integers N of keys matching `pattern` (a regex with one group)."""
    rx = re.compile(pattern)
    return {int(m.group(1)) for k in state_dict if (m := rx.match(k))}


def _shape(state_dict: Mapping[str, Any], key: str, what: str) -> Shape:
    shape = shape_of(state_dict.get(key))
    if shape is None:
        raise CheckpointError(f"{what}: no tensor {key!r}, so this is not the expected model")
    return shape


def _dict_entry(ckpt: Mapping[str, Any], key: str, what: str) -> dict[str, Any]:
    value = ckpt.get(key)
    if not isinstance(value, dict):
        found = ", ".join(map(repr, list(ckpt)[:8]))
        raise CheckpointError(f"{what}: expected a {key!r} dict at the top level; found keys {found}")
    return value


def _split_prefixes(
    state_dict: Mapping[str, Any], prefixes: tuple[str, ...]
) -> tuple[dict[str, dict[str, Any]], list[str]]:
    parts: dict[str, dict[str, Any]] = {p: {} for p in prefixes}
    other = []
    for key, value in state_dict.items():
        for prefix in prefixes:
            if key.startswith(prefix):
                parts[prefix][key[len(prefix) :]] = value
                break
        else:
            other.append(key)
    return parts, other


def _no_other_keys(other: list[str], what: str, allowed: str) -> None:
    if other:
        listed = ", ".join(other[:8]) + (f" ... ({len(other)} in all)" if len(other) > 8 else "")
        raise CheckpointError(f"{what}: unexpected keys outside {allowed}: {listed}")


def n_latent_for(size: int) -> int:
    return 2 * int(math.log2(size)) - 2


def size_for_n_latent(n_latent: int, what: str) -> int:
    if n_latent < 4 or n_latent % 2:
        raise CheckpointError(f"{what}: {n_latent} W+ layers does not correspond to a StyleGAN2 size")
    return 2 ** ((n_latent + 2) // 2)


# --- StyleGAN2 generator (rosinality) -----------------------------------------------------------


def generator_config(state_dict: Mapping[str, Any], what: str = "StyleGAN2 generator") -> dict[str, int]:
    """Generator(**config) arguments read from a rosinality g_ema state_dict's keys and shapes."""
    mlp = _indices(state_dict, r"style\.(\d+)\.weight$")
    convs = _indices(state_dict, r"convs\.(\d+)\.conv\.weight$")
    if not mlp or not convs or len(convs) % 2:
        raise CheckpointError(f"{what}: no rosinality StyleGAN2 generator keys (style.N.weight, convs.N.conv.weight)")
    style_dim = _shape(state_dict, "style.1.weight", what)[-1]
    base = _shape(state_dict, "input.input", what)[1]
    log_size = len(convs) // 2 + 2
    config = {"size": 2**log_size, "style_dim": style_dim, "n_mlp": len(mlp), "channel_multiplier": 2}
    if log_size >= 6:  # channels from 64 px on scale with the multiplier; convs.6 is the first at 64
        ch64 = _shape(state_dict, "convs.6.conv.weight", what)[1]
        if ch64 % max(base // 2, 1):
            raise CheckpointError(f"{what}: {ch64} channels at 64 px is not a multiple of {base // 2}")
        config["channel_multiplier"] = ch64 // (base // 2)
    if base != 512:
        config["channel_base"] = base
    return config


def check_generator(state_dict: Mapping[str, Any], what: str) -> dict[str, int]:
    config = generator_config(state_dict, what)
    check_state_dict(state_dict, generator_shapes(**config), what)
    return config


@dataclass
class GeneratorParts:
    state_dict: dict[str, Any]
    latent_avg: torch.Tensor | None
    config: dict[str, int]


def parse_generator(ckpt: Mapping[str, Any], what: str = "StyleGAN2 checkpoint") -> GeneratorParts:
    g_ema = _dict_entry(ckpt, "g_ema", what)
    config = check_generator(g_ema, f"{what} (g_ema)")
    latent_avg = ckpt.get("latent_avg")
    if latent_avg is not None:
        if not isinstance(latent_avg, torch.Tensor) or latent_avg.numel() != config["style_dim"]:
            raise CheckpointError(
                f"{what}: latent_avg has shape {shape_of(latent_avg)}, expected [{config['style_dim']}]"
            )
        latent_avg = latent_avg.reshape(config["style_dim"])
    return GeneratorParts(g_ema, latent_avg, config)


# --- e4e encoder --------------------------------------------------------------------------------


def irse_config(state_dict: Mapping[str, Any], what: str) -> tuple[int, str]:
    """(num_layers, mode) of an IR / IR-SE body from its unit count and squeeze-excitation keys."""
    units = len(_indices(state_dict, r"body\.(\d+)\."))
    if units not in IRSE_DEPTH_BY_UNITS:
        raise CheckpointError(f"{what}: {units} residual units is not an IR-50/100/152 body")
    mode = "ir_se" if any(".res_layer.5.fc1." in k for k in state_dict) else "ir"
    return IRSE_DEPTH_BY_UNITS[units], mode


@dataclass
class E4EParts:
    encoder: dict[str, Any]
    latent_avg: torch.Tensor
    stylegan_size: int
    num_layers: int = 50
    mode: str = "ir_se"
    decoder: dict[str, Any] | None = None
    decoder_config: dict[str, int] | None = None
    opts: dict[str, Any] = field(default_factory=dict)


def _plain_opts(ckpt: Mapping[str, Any]) -> dict[str, Any]:
    opts = to_plain(ckpt.get("opts"))
    return opts if isinstance(opts, dict) else {}


def parse_e4e(ckpt: Mapping[str, Any], what: str = "e4e checkpoint") -> E4EParts:
    state_dict = _dict_entry(ckpt, "state_dict", what)
    opts = _plain_opts(ckpt)
    encoder_type = opts.get("encoder_type")
    if encoder_type not in (None, "Encoder4Editing"):
        raise CheckpointError(f"{what}: its encoder is {encoder_type!r}, not e4e's Encoder4Editing")
    parts, other = _split_prefixes(state_dict, ("encoder.", "decoder."))
    _no_other_keys(other, what, "'encoder.' and 'decoder.'")
    encoder, decoder = parts["encoder."], parts["decoder."] or None
    if not encoder:
        raise CheckpointError(f"{what}: no 'encoder.' keys in its state_dict")
    n_styles = len(_indices(encoder, r"styles\.(\d+)\."))
    size = size_for_n_latent(n_styles, what)
    if opts.get("stylegan_size") not in (None, size):
        raise CheckpointError(
            f"{what}: opts say stylegan_size {opts['stylegan_size']}, the encoder has {n_styles} styles"
        )
    num_layers, mode = irse_config(encoder, f"{what} encoder")
    check_state_dict(encoder, e4e_shapes(size, num_layers, mode), f"{what} (encoder)")
    latent_avg = ckpt.get("latent_avg")
    if not isinstance(latent_avg, torch.Tensor) or tuple(latent_avg.shape)[-2:] != (n_styles, 512):
        raise CheckpointError(
            f"{what}: latent_avg has shape {shape_of(latent_avg)}, expected [{n_styles}, 512] "
            "(e4e adds it to the encoder's codes)"
        )
    decoder_config = None
    if decoder is not None:
        decoder_config = check_generator(decoder, f"{what} (decoder)")
        if decoder_config["size"] != size:
            raise CheckpointError(f"{what}: decoder size {decoder_config['size']} != encoder size {size}")
    return E4EParts(encoder, latent_avg.reshape(n_styles, 512), size, num_layers, mode, decoder, decoder_config, opts)


# --- FFCLIP mapper ------------------------------------------------------------------------------


@dataclass
class FFCLIPParts:
    mapper: dict[str, Any]
    generator: dict[str, Any]
    n_latent: int
    generator_config: dict[str, int] | None  # None for a mapper-only file
    opts: dict[str, Any] = field(default_factory=dict)

    @property
    def mapper_config(self) -> dict[str, int]:
        return mapper_config(self.mapper, "FFCLIP mapper")


def mapper_config(state_dict: Mapping[str, Any], what: str) -> dict[str, int]:
    """DynamicMapper(**config) arguments: W+ layers from attention_layer.k_matrix [n_latent, 1]."""
    blocks = _indices(state_dict, r"att_mapper\.(\d+)\.")
    if not blocks:
        raise CheckpointError(f"{what}: no 'att_mapper.N.' keys")
    n_latent = _shape(state_dict, "att_mapper.0.attention_layer.k_matrix.weight", what)[0]
    dim = _shape(state_dict, "att_mapper.0.q_matrix.weight", what)[0]
    return {"n_latent": n_latent, "dim": dim, "n_blocks": len(blocks)}


def parse_ffclip(ckpt: Mapping[str, Any], what: str = "FFCLIP checkpoint") -> FFCLIPParts:
    state_dict = _dict_entry(ckpt, "state_dict", what)
    # saved from DistributedDataParallel: 'module.' + EditModel keys
    if state_dict and all(k.startswith("module.") for k in state_dict):
        state_dict = {k[len("module.") :]: v for k, v in state_dict.items()}
    parts, other = _split_prefixes(state_dict, ("att_mapper.", "generator."))
    _no_other_keys(other, what, "'module.att_mapper.' and 'module.generator.'")
    mapper, generator = parts["att_mapper."], parts["generator."]
    if not mapper:
        raise CheckpointError(f"{what}: no 'module.att_mapper.' keys in its state_dict")
    config = mapper_config(mapper, f"{what} (mapper)")
    check_state_dict(mapper, mapper_shapes(**config), f"{what} (mapper)")
    if not generator:  # a mapper-only export: the generator then comes from the rosinality file
        return FFCLIPParts(mapper, {}, config["n_latent"], None, _plain_opts(ckpt))
    gen_config = check_generator(generator, f"{what} (generator)")
    if n_latent_for(gen_config["size"]) != config["n_latent"]:
        raise CheckpointError(
            f"{what}: the mapper has {config['n_latent']} W+ layers but its generator (size "
            f"{gen_config['size']}) has {n_latent_for(gen_config['size'])}"
        )
    return FFCLIPParts(mapper, generator, config["n_latent"], gen_config, _plain_opts(ckpt))


# --- HyperStyle: the hypernetwork file and the W encoders -------------------------------------------


@dataclass
class HyperStyleParts:
    hypernet: dict[str, Any]
    decoder: dict[str, Any]
    latent_avg: torch.Tensor  # (n_latent, 512)
    size: int
    layers_to_tune: tuple[int, ...]
    opts: dict[str, Any] = field(default_factory=dict)

    @property
    def n_iters(self) -> int:
        """The refinements the model was trained with (opts.n_iters_per_batch; the paper's 5)."""
        n = self.opts.get("n_iters_per_batch")
        return n if isinstance(n, int) and not isinstance(n, bool) and 1 <= n <= 20 else 5


def parse_hyperstyle(ckpt: Mapping[str, Any], what: str = "HyperStyle checkpoint") -> HyperStyleParts:
    """hyperstyle_ffhq.pt / hyperstyle_cars.pt: the hypernetwork (the layers it tunes read from its
    refinement blocks' keys), its generator and latent_avg, checked strictly."""
    state_dict = _dict_entry(ckpt, "state_dict", what)
    opts = _plain_opts(ckpt)
    encoder_type = opts.get("encoder_type")
    if encoder_type not in (None, "SharedWeightsHyperNetResNet"):
        raise CheckpointError(f"{what}: its hypernetwork is {encoder_type!r}, not SharedWeightsHyperNetResNet")
    parts, other = _split_prefixes(state_dict, ("hypernet.", "decoder."))
    _no_other_keys(other, what, "'hypernet.' and 'decoder.'")
    hypernet, decoder = parts["hypernet."], parts["decoder."]
    if not hypernet or not decoder:
        raise CheckpointError(f"{what}: expected 'hypernet.' and 'decoder.' keys in its state_dict")
    config = check_generator(decoder, f"{what} (decoder)")
    size = config["size"]
    if opts.get("output_size") not in (None, size):
        raise CheckpointError(f"{what}: opts say output_size {opts['output_size']}, its generator is {size}")
    layers = tuple(sorted(_indices(hypernet, r"refinement_blocks\.(\d+)\.")))
    if not layers or layers[-1] >= hypernet_outputs(size):
        raise CheckpointError(f"{what}: refinement blocks {list(layers)} do not fit a generator of {size}")
    check_state_dict(hypernet, hypernet_shapes(size, layers), f"{what} (hypernet)")
    n_latent = n_latent_for(size)
    latent_avg = ckpt.get("latent_avg")
    if not isinstance(latent_avg, torch.Tensor) or tuple(latent_avg.shape)[-2:] != (n_latent, 512):
        raise CheckpointError(
            f"{what}: latent_avg has shape {shape_of(latent_avg)}, expected [{n_latent}, 512] "
            "(HyperStyle adds it to the W encoder's codes)"
        )
    return HyperStyleParts(hypernet, decoder, latent_avg.reshape(n_latent, 512), size, layers, opts)


@dataclass
class WEncoderParts:
    encoder: dict[str, Any]
    stylegan_size: int
    num_layers: int = 50
    mode: str = "ir_se"
    opts: dict[str, Any] = field(default_factory=dict)


def parse_w_encoder(ckpt: Mapping[str, Any], what: str = "W encoder checkpoint") -> WEncoderParts:
    """faces_w_encoder.pt / cars_w_encoder.pt (HyperStyle's e4e into W, saved by pSp's coach): the
    encoder, checked strictly; its generator size from the decoder, else latent_avg or opts (the
    encoder's own weights do not depend on it). HyperStyle uses its own latent_avg, not this file's."""
    state_dict = _dict_entry(ckpt, "state_dict", what)
    opts = _plain_opts(ckpt)
    if opts.get("encoder_type") not in (None, "WEncoder"):
        raise CheckpointError(f"{what}: its encoder is {opts['encoder_type']!r}, not HyperStyle's WEncoder")
    parts, other = _split_prefixes(state_dict, ("encoder.", "decoder."))
    _no_other_keys(other, what, "'encoder.' and 'decoder.'")
    encoder, decoder = parts["encoder."], parts["decoder."]
    if "linear.weight" not in encoder:
        raise CheckpointError(f"{what}: no 'encoder.linear.weight': not a W encoder")
    num_layers, mode = irse_config(encoder, f"{what} encoder")
    check_state_dict(encoder, w_encoder_shapes(num_layers, mode), f"{what} (encoder)")
    sizes = set()
    if decoder:
        sizes.add(check_generator(decoder, f"{what} (decoder)")["size"])
    latent_avg = ckpt.get("latent_avg")
    if isinstance(latent_avg, torch.Tensor) and latent_avg.dim() == 2:
        sizes.add(size_for_n_latent(int(latent_avg.shape[0]), what))
    if isinstance(opts.get("output_size"), int):
        sizes.add(opts["output_size"])
    if len(sizes) != 1:
        found = "nothing" if not sizes else ", ".join(map(str, sorted(sizes)))
        raise CheckpointError(f"{what}: its generator size is unclear (decoder, latent_avg and opts say {found})")
    return WEncoderParts(encoder, sizes.pop(), num_layers, mode, opts)


def read_hyperstyle(path: str | os.PathLike[str]) -> HyperStyleParts:
    return parse_hyperstyle(load_checkpoint(path), os.path.basename(os.fspath(path)))


def read_w_encoder(path: str | os.PathLike[str]) -> WEncoderParts:
    return parse_w_encoder(load_checkpoint(path), os.path.basename(os.fspath(path)))


# --- ArcFace IR-SE-50 and CLIP ------------------------------------------------------------------


def parse_arcface(ckpt: Mapping[str, Any], what: str = "ArcFace checkpoint") -> tuple[dict[str, Any], dict[str, Any]]:
    """The backbone state_dict and Backbone(**config) arguments."""
    num_layers, mode = irse_config(ckpt, what)
    features = _shape(ckpt, "output_layer.3.weight", what)[1]
    spatial = math.isqrt(features // 512)
    input_size = {7: 112, 14: 224}.get(spatial)
    if input_size is None:
        raise CheckpointError(f"{what}: output_layer.3.weight takes {features} features, not 512×7×7 or 512×14×14")
    check_state_dict(ckpt, arcface_shapes(input_size, num_layers, mode), what)
    return dict(ckpt), {"input_size": input_size, "num_layers": num_layers, "mode": mode}


def check_clip_shapes(shapes: Mapping[str, Shape], what: str = "CLIP ViT-B/32 weights") -> None:
    check_state_dict(shapes, clip_shapes(), what)


# --- MoCo v2 ResNet-50 (e4e's similarity loss for cars and churches) -----------------------------


@lru_cache(maxsize=1)
def moco_backbone_shapes() -> dict[str, Shape]:
    """torchvision's ResNet-50 without its classifier (`fc`): what e4e's MocoLoss keeps."""
    from torchvision.models import resnet50

    return {k: v for k, v in module_shapes(lambda: resnet50(weights=None)).items() if not k.startswith("fc.")}


def parse_moco(ckpt: Mapping[str, Any], what: str = "MoCo v2 checkpoint") -> dict[str, Any]:
    """The ResNet-50 backbone state_dict of a MoCo v2 checkpoint: `module.encoder_q.*` without the
    projection head, renamed as e4e's MocoLoss does, checked strictly."""
    state_dict = _dict_entry(ckpt, "state_dict", what)
    backbone = {
        k[len(MOCO_PREFIX) :]: v
        for k, v in state_dict.items()
        if k.startswith(MOCO_PREFIX) and not k.startswith(MOCO_PREFIX + "fc.")
    }
    if not backbone:
        raise CheckpointError(f"{what}: no '{MOCO_PREFIX}' keys: not a MoCo checkpoint")
    check_state_dict(backbone, moco_backbone_shapes(), f"{what} (encoder_q)")
    return backbone


def read_moco(path: str | os.PathLike[str]) -> dict[str, Any]:
    return parse_moco(load_checkpoint(path), os.path.basename(os.fspath(path)))


# --- detection and the public readers -----------------------------------------------------------


def detect_kind(ckpt: Mapping[str, Any]) -> str:
    """Which official layout a loaded checkpoint has, from its top-level and state_dict keys."""
    if "g_ema" in ckpt:
        return "stylegan2"
    state_dict = ckpt.get("state_dict")
    if isinstance(state_dict, dict):
        keys = list(state_dict)
        if any(k.startswith("hypernet.") for k in keys):
            return "hyperstyle"
        if "encoder.linear.weight" in state_dict:  # HyperStyle's W encoder: its keys sit under 'encoder.' too
            return "w_encoder"
        if any(k.startswith("encoder.") for k in keys):
            return "e4e"
        if any(k.startswith(("module.att_mapper.", "att_mapper.")) for k in keys):
            return "ffclip"
        if any(k.startswith(MOCO_PREFIX) for k in keys):
            return "moco"
    if "input_layer.0.weight" in ckpt and "output_layer.3.weight" in ckpt:
        return "arcface"
    if "token_embedding.weight" in ckpt and "visual.conv1.weight" in ckpt:
        return "clip"
    found = ", ".join(repr(k) for k in list(ckpt)[:8])
    raise CheckpointError(f"not one of the known checkpoint layouts (top-level keys: {found})")


@dataclass
class Inspection:
    """What `inspect_file` found: the kind and a short summary, for the store and the CLI."""

    kind: str
    info: dict[str, Any]
    parts: Any = None


def _summary(kind: str, parts: Any) -> dict[str, Any]:
    if kind == "stylegan2":
        return {
            **parts.config,
            "n_latent": n_latent_for(parts.config["size"]),
            "latent_avg": parts.latent_avg is not None,
        }
    if kind == "e4e":
        return {
            "stylegan_size": parts.stylegan_size,
            "n_latent": n_latent_for(parts.stylegan_size),
            "decoder": parts.decoder is not None,
        }
    if kind == "ffclip":
        gen = parts.generator_config
        return {"n_latent": parts.n_latent, "generator_size": gen["size"] if gen else None}
    if kind == "arcface":
        return dict(parts[1])
    if kind == "moco":
        return {"arch": "resnet50", "tensors": len(parts)}
    if kind == "hyperstyle":
        return {
            "size": parts.size,
            "n_latent": n_latent_for(parts.size),
            "layers_to_tune": list(parts.layers_to_tune),
            "n_iters": parts.n_iters,
        }
    if kind == "w_encoder":
        return {"stylegan_size": parts.stylegan_size, "n_latent": n_latent_for(parts.stylegan_size)}
    return {}


def inspect_file(path: str | os.PathLike[str], kind: str | None = None) -> Inspection:
    """Load a file safely, find (or check) its layout and verify it strictly; CheckpointError if not."""
    what = os.path.basename(os.fspath(path))
    fmt = sniff(path)
    if kind == "clip" or (kind is None and (fmt == "safetensors" or (fmt == "zip" and is_torchscript_archive(path)))):
        return _inspect_clip(path, what)
    obj = load_any(path)
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a dict of weights")
    found = detect_kind(obj)
    if kind is not None and kind != found:
        raise CheckpointError(f"{what}: its layout is {found}, not {kind}")
    parser = {
        "stylegan2": parse_generator,
        "e4e": parse_e4e,
        "ffclip": parse_ffclip,
        "arcface": parse_arcface,
        "clip": _parse_clip_dict,
        "moco": parse_moco,
        "hyperstyle": parse_hyperstyle,
        "w_encoder": parse_w_encoder,
    }[found]
    parts = parser(obj, what)
    return Inspection(found, _summary(found, parts), parts)


def _parse_clip_dict(ckpt: Mapping[str, Any], what: str) -> dict[str, Any]:
    """An open_clip or OpenAI CLIP state_dict, in open_clip's layout, checked strictly."""
    state_dict = openai_to_open_clip(ckpt)
    check_clip_shapes({k: shape_of(v) for k, v in state_dict.items()}, what)  # type: ignore[misc]
    return state_dict


def _inspect_clip(path: str | os.PathLike[str], what: str) -> Inspection:
    """CLIP ViT-B/32 as safetensors (shapes from the header), OpenAI's TorchScript archive (its
    tensors, read without running it) or a pickled state_dict; `parts` is the state_dict, except
    for safetensors (the file itself is the store's format)."""
    info = {"model": "ViT-B-32", "pretrained": "openai"}
    fmt = sniff(path)
    if fmt == "safetensors":
        check_clip_shapes(safetensors_shapes(path), what)
        return Inspection("clip", {**info, "format": "safetensors"})
    if fmt == "zip" and is_torchscript_archive(path):
        what = f"{what} (a TorchScript archive, read as OpenAI's CLIP ViT-B/32)"
        state_dict = _parse_clip_dict(read_torchscript_state_dict(path), what)
        return Inspection("clip", {**info, "format": "torchscript"}, state_dict)
    return Inspection("clip", {**info, "format": "pickle"}, _parse_clip_dict(load_checkpoint(path), what))


def read_generator(
    path: str | os.PathLike[str],
) -> tuple[dict[str, Any], torch.Tensor | None, dict[str, int]]:
    """(g_ema state_dict, latent_avg [512] or None, Generator(**cfg) arguments) of a rosinality file."""
    parts = parse_generator(load_checkpoint(path), os.path.basename(os.fspath(path)))
    return parts.state_dict, parts.latent_avg, parts.config


def read_e4e(path: str | os.PathLike[str]) -> tuple[dict[str, Any], torch.Tensor, int]:
    """(encoder state_dict, latent_avg [n_latent, 512], stylegan_size) of an e4e file."""
    parts = parse_e4e(load_checkpoint(path), os.path.basename(os.fspath(path)))
    return parts.encoder, parts.latent_avg, parts.stylegan_size


def read_ffclip(path: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(DynamicMapper state_dict, generator g_ema state_dict; {} for a mapper-only file)."""
    parts = parse_ffclip(load_checkpoint(path), os.path.basename(os.fspath(path)))
    return parts.mapper, parts.generator


def read_arcface(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The IR-SE-50 Backbone state_dict of model_ir_se50.pth."""
    return parse_arcface(load_checkpoint(path), os.path.basename(os.fspath(path)))[0]
