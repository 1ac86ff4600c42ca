"""The inference API that the photo pipeline, the daemon, training and the bench share.

`Engine` holds the four networks, loaded once: e4e (photo -> W+), CLIP text (prompt -> e),
the FFCLIP mapper (W+, e -> Δw) and StyleGAN2 (W+ -> image). Every call is batched and runs
under `torch.inference_mode()` on the engine's device.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from . import heap
from .models.clip import TextEncoder, build_clip, build_tiny_clip, load_clip_weights
from .models.e4e import Encoder4Editing
from .models.mapper import DynamicMapper
from .models.stylegan2 import Generator, SynthesisPath
from .precision import autocast_weights
from .precision import plan as precision_plan
from .profiles import TINY_DOMAIN_SEED, TINY_SEED, Profile, profile_for
from .seeding import seeded

log = logging.getLogger(__name__)

FETCH_HINT = "ffclip-engine models fetch"


class ModelsMissing(RuntimeError):
    """Real checkpoints are absent from the model store."""

    def __init__(self, missing: list[str], hint: str = FETCH_HINT) -> None:
        self.missing = missing
        self.hint = hint
        super().__init__(f"model files missing: {', '.join(missing)}; fetch them with `{hint}`")


@dataclass
class Networks:
    generator: Generator
    encoder: Encoder4Editing
    latent_avg: Tensor  # (n_latent, D) or (D,), added to the encoder's codes
    mapper: DynamicMapper
    clip: Any  # open_clip CLIP (text tower at least)
    sources: dict[str, str] = field(default_factory=dict)


def profile_generator(profile: Profile) -> Generator:
    """A StyleGAN2 generator of `profile`'s architecture (weights as initialised)."""
    return Generator(
        profile.size,
        profile.style_dim,
        n_mlp=profile.n_mlp,
        channel_multiplier=profile.channel_multiplier,
        channel_base=profile.channel_base,
    )


def profile_encoder(profile: Profile) -> Encoder4Editing:
    """An e4e encoder of `profile`'s architecture (weights as initialised)."""
    return Encoder4Editing(
        stylegan_size=profile.size,
        style_dim=profile.style_dim,
        stages=profile.e4e_stages,
        input_width=profile.e4e_input_width,
    )


def build_tiny(profile: Profile, seed: int | None = None, clip: Any = None) -> Networks:
    """The tiny profile: real architectures, narrow widths, seeded random weights (each domain its
    own seed; the CLIP text tower is the same for every domain, as the real ViT-B/32)."""
    if seed is None:
        seed = TINY_DOMAIN_SEED.get(profile.domain, TINY_SEED)
    with seeded(seed):
        g = profile_generator(profile)
        enc = profile_encoder(profile)
        # keep the untrained encoder's codes small so that W+ stays near the generator's mean
        with torch.no_grad():
            for block in enc.styles:
                block.linear.weight.mul_(0.1)
            latent_avg = g.mean_latent(4096)[0]
            normalise_untrained_rgb(g, latent_avg)
        mapper = DynamicMapper(n_latent=g.n_latent, dim=profile.style_dim)
    if clip is None:
        clip = build_tiny_clip(TINY_SEED, embed_dim=profile.style_dim)
    return Networks(g, enc, latent_avg, mapper, clip, sources={"all": "tiny (seeded, untrained)"})


# the tiny HyperStyle tunes every 3×3 layer whose shape its heads can make: the shared hypernetwork's
# square kernels fit the 64-channel levels (4² to 32²), the per-layer heads the narrow ones (128², 256²)
TINY_HYPERSTYLE_LAYERS = (0, 2, 3, 5, 6, 8, 9, 14, 15, 17, 18)
TINY_HYPERSTYLE_SEED = TINY_SEED + 29


def tiny_hyperstyle_layers(profile: Profile) -> tuple[int, ...]:
    from .models.hyperstyle import SHARED_LAYERS, conv_shapes, is_to_rgb

    n = 3 * (profile.size.bit_length() - 1) - 4
    shapes = conv_shapes(n, profile.channel_multiplier, profile.channel_base)
    square = (3, profile.channel_base, profile.channel_base)
    return tuple(j for j in range(n) if not is_to_rgb(j) and (j not in SHARED_LAYERS or shapes[j] == square))


def build_tiny_hyperstyle(profile: Profile, latent_avg: Tensor, seed: int | None = None) -> Any:
    """The tiny profile's HyperStyle: the official architecture (ResNet-34 hypernetwork with shared
    and per-layer heads, IR-SE W encoder) at narrow widths for the tiny generator, seeded random
    weights, untrained like the rest of the profile. Its weight deltas are kept small (a few per cent)
    so that the offset generator still draws about the same noise."""
    from .models.hyperstyle import CAR_ROWS, HyperStyleNets, SharedWeightsHyperNetResNet, WEncoder, conv_shapes

    n = 3 * (profile.size.bit_length() - 1) - 4
    shapes = conv_shapes(n, profile.channel_multiplier, profile.channel_base)
    seed = TINY_HYPERSTYLE_SEED + TINY_DOMAIN_SEED.get(profile.domain, 0) - TINY_SEED if seed is None else seed
    with seeded(seed), torch.no_grad():
        hypernet = SharedWeightsHyperNetResNet(
            6, n, tiny_hyperstyle_layers(profile), shapes=shapes, base=8, hidden=profile.channel_base
        )
        for block in hypernet.refinement_blocks:
            if block is not None and hasattr(block, "output"):
                block.output[-1].weight.mul_(0.05)
                block.output[-1].bias.mul_(0.05)
        for p in (hypernet.shared_weight_hypernet.w1, hypernet.shared_weight_hypernet.b1):
            p.mul_(0.3)
        w_encoder = WEncoder(
            output_size=profile.size,
            stages=profile.e4e_stages,
            input_width=profile.e4e_input_width,
            style_dim=profile.style_dim,
        )
        w_encoder.linear.weight.mul_(0.1)
    n_latent = profile.n_latent
    avg = latent_avg.reshape(-1, latent_avg.shape[-1])[-1:].expand(n_latent, -1).clone()
    rows = CAR_ROWS if profile.domain == "car" else None
    return HyperStyleNets(
        w_encoder.eval(), hypernet.eval(), avg, None, 5, rows, {"hyperstyle": "tiny (seeded, untrained)"}
    )


def load_real_hyperstyle(models_dir: str | Path | None, domain: str, generator: Generator) -> Any:
    """HyperStyle's official files of `domain` from the model store, loaded strictly and safely. Its
    generator is the engine's when the file's decoder holds the same weights (the official files'
    is StyleGAN2 FFHQ itself), else its own."""
    from .checkpoints.layouts import hypernet_outputs, read_hyperstyle, read_w_encoder
    from .domains import domain_spec, high_fidelity_models
    from .models.hyperstyle import CAR_ROWS, HyperStyleNets, SharedWeightsHyperNetResNet, WEncoder
    from .store import ModelStore

    store = ModelStore(models_dir)
    names = high_fidelity_models(domain)
    missing = store.missing(names)
    if not names or missing:
        hint = f"{store.fetch_hint} high" + ("" if domain == "face" else f"-{domain}")
        raise ModelsMissing(missing or [f"HyperStyle for the {domain} domain (none published)"], hint)
    spec = domain_spec(domain)
    parts = read_hyperstyle(store.path(spec.hyperstyle))
    n_outputs, layers, size = hypernet_outputs(parts.size), parts.layers_to_tune, parts.size
    hypernet = _assigned(lambda: SharedWeightsHyperNetResNet(6, n_outputs, layers), parts.hypernet)
    own = None
    ours = generator.state_dict()
    same = set(ours) == set(parts.decoder) and all(
        torch.equal(ours[k].cpu(), v.to(ours[k].dtype)) for k, v in parts.decoder.items()
    )
    if not same:
        own = generator_from_state_dict(parts.decoder)
    latent_avg, n_iters = parts.latent_avg.float(), parts.n_iters
    del parts, ours
    w = read_w_encoder(store.path(spec.w_encoder))
    if w.stylegan_size != size:
        raise ValueError(f"the W encoder is for a {w.stylegan_size} generator, HyperStyle's is {size}")
    w_encoder = _assigned(lambda: WEncoder(w.num_layers, w.mode, size), w.encoder)
    sources = {name: store.path(name).name for name in names}
    rows = CAR_ROWS if domain == "car" else None
    return HyperStyleNets(w_encoder.eval(), hypernet.eval(), latent_avg, own, n_iters, rows, sources)


def normalise_untrained_rgb(g: Generator, latent_avg: Tensor) -> None:
    """Scale an untrained generator's RGB outputs to about [-1, 1] around the mean latent (an
    untrained ToRGB sum reaches ±30, which would clip every image to a flat colour)."""
    w = latent_avg + 0.5 * torch.randn(8, g.n_latent, latent_avg.shape[-1])
    # one sample at a time: a batch of 8 at 1024² would hold gigabytes of activations
    fast = SynthesisPath.for_inference(latent_avg.device)
    image = torch.cat([g.synthesis(w[i : i + 1], g.fixed_noise(), path=fast) for i in range(len(w))])
    scale = 0.5 / float(image.std())
    for to_rgb in [g.to_rgb1, *g.to_rgbs]:
        to_rgb.conv.weight.mul_(scale)
        to_rgb.bias.mul_(scale)
    # the skip up-sampling preserves constants, so the first ToRGB's bias shifts the whole image
    g.to_rgb1.bias.sub_(image.mean(dim=(0, 2, 3)).view(1, 3, 1, 1) * scale)


def load_real(
    models_dir: str | Path | None, text_only_clip: bool = True, domain: str = "face", clip: Any = None
) -> Networks:
    """The official checkpoints of `domain` from the model store, loaded strictly and safely.
    `clip`: an already loaded CLIP model to share (every domain uses the same ViT-B/32)."""
    from .checkpoints.layouts import parse_e4e, read_e4e, read_ffclip, read_generator
    from .checkpoints.safe_load import load_checkpoint
    from .domains import domain_spec
    from .store import ModelStore

    spec = domain_spec(domain)
    store = ModelStore(models_dir)
    needed = store.needed(domain)  # faces: stylegan2 only when the FFCLIP file is mapper-only
    missing = store.missing(needed)
    if missing:
        hint = store.fetch_hint if domain == "face" else f"{store.fetch_hint} {domain}"
        raise ModelsMissing(missing, hint)

    # Peak memory: CLIP first (its full state_dict and model are transient), then each network
    # built without initialisation (meta device) and given the checkpoint's own tensors
    # (assign=True), every state_dict released as soon as it is used: no network is held twice.
    if clip is None:
        clip = build_clip(load_clip_weights(store.path("clip")), text_only=text_only_clip)
    mapper_sd, generator_sd = read_ffclip(store.path(spec.ffclip))
    if not generator_sd and domain == "face":  # a mapper-only export: the rosinality file's generator
        if not store.present("stylegan2"):  # the file changed since needed() looked at it
            raise ModelsMissing(["stylegan2"], store.fetch_hint)
        generator_sd, _, _ = read_generator(store.path("stylegan2"))
    generator = generator_from_state_dict(generator_sd) if generator_sd else None
    del generator_sd
    n_latent = int(mapper_sd["att_mapper.0.attention_layer.k_matrix.weight"].shape[0])
    mapper = _assigned(lambda: DynamicMapper(n_latent=n_latent), mapper_sd)
    del mapper_sd
    if generator is None:  # a mapper-only car/church export: the e4e file carries the generator
        parts = parse_e4e(load_checkpoint(store.path(spec.e4e)), store.path(spec.e4e).name)
        if parts.decoder is None:
            raise ModelsMissing([spec.ffclip], f"{store.fetch_hint} {domain}")
        generator = generator_from_state_dict(parts.decoder)
        enc_sd, latent_avg, size = parts.encoder, parts.latent_avg, parts.stylegan_size
        del parts
    else:
        enc_sd, latent_avg, size = read_e4e(store.path(spec.e4e))
    encoder = _assigned(lambda: Encoder4Editing(stylegan_size=size), enc_sd)
    del enc_sd
    if not generator.n_latent == mapper.n_latent == latent_avg.shape[0] == spec.n_latent:
        raise ValueError(
            f"the {domain} files do not fit together: generator {generator.n_latent}, mapper {mapper.n_latent}, "
            f"e4e {latent_avg.shape[0]} W+ layers ({spec.n_latent} expected)"
        )
    sources = {name: store.path(name).name for name in needed}
    return Networks(generator, encoder, latent_avg, mapper, clip, sources)


def network_bytes(profile: Profile) -> int:
    """What `Engine.nbytes()` will be for `profile` (float32 weights and buffers of the generator,
    e4e and the mapper), computed on the meta device before loading anything: the daemon's memory
    budget decides what to evict from it."""
    with torch.device("meta"):
        g = profile_generator(profile)
        enc = profile_encoder(profile)
        mapper = DynamicMapper(n_latent=g.n_latent, dim=profile.style_dim)
    tensors = [t for m in (g, enc, mapper) for t in (*m.parameters(), *m.buffers())]
    # latent_avg: one W per layer in the e4e files, one W in the tiny profile
    avg = profile.style_dim * (1 if profile.untrained else g.n_latent)
    return sum(t.numel() * t.element_size() for t in tensors) + avg * 4


def generator_from_state_dict(state_dict: dict[str, Tensor]) -> Generator:
    """A rosinality g_ema state_dict -> its Generator, configured from the keys, loaded strictly."""
    from .checkpoints.layouts import generator_config

    config = generator_config(state_dict)
    return _assigned(lambda: Generator(**config), state_dict)


def _assigned(factory: Any, state_dict: dict[str, Tensor]) -> Any:
    """factory() built on the meta device (no random initialisation, no memory), then loaded
    strictly with the state_dict's own tensors (as contiguous float32 where floating)."""
    with torch.device("meta"):
        module = factory()
    tensors = {k: (v.to(torch.float32) if v.is_floating_point() else v).contiguous() for k, v in state_dict.items()}
    module.load_state_dict(tensors, strict=True, assign=True)
    return module


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run a command with n torch intra-op threads (None or 0: unchanged), restored afterwards."""
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def resolve_device(name: str | None) -> torch.device:
    """A torch device; "auto" (or None) is CUDA when available, else the CPU."""
    if name not in (None, "auto"):
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_threads() -> int:
    """The CPUs this process may run on (its affinity mask; os.cpu_count() where that is unknown)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


class Engine:
    def __init__(
        self,
        nets: Networks,
        profile: Profile,
        device: str | torch.device = "cpu",
        *,
        precision: str = "fp32",
        autocast: bool = False,
        threads: int | None = None,
        cuda_graphs: bool = False,
        text: TextEncoder | None = None,
    ) -> None:
        """`text`: the CLIP text encoder (and its prompt cache) of another domain's engine, shared
        (nets.clip is then not used). `precision`: auto, fp32, bf16 or fp16 (precision.py; parity
        tolerances in docs/performance.md); `autocast` is the former name of fp16 (CUDA).
        `cuda_graphs`: replay synthesis from a CUDA graph captured once per (batch, sizes, preview)
        shape (CUDA only; the weights must not change afterwards). `threads`: torch
        intra-op threads, process-wide (default: every CPU this process may use; 0 or a negative
        number leaves torch's setting alone)."""
        self.profile = profile
        self.device = torch.device(device)
        if cuda_graphs and self.device.type != "cuda":
            raise ValueError("CUDA graphs are for CUDA devices")
        self.plan = precision_plan("fp16" if autocast else precision, self.device)
        self._graphs: dict[tuple, tuple[Any, Tensor, dict[int, Tensor]]] | None = {} if cuda_graphs else None
        if threads is None:
            threads = default_threads()
        if threads > 0 and torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        self.generator = nets.generator.eval().to(self.device)
        self.path = SynthesisPath.for_inference(self.device)  # how synthesis runs here (stylegan2.py)
        self.encoder = nets.encoder.eval().to(self.device)
        self._encoder_cast: dict[torch.dtype, dict[str, Tensor]] = {}  # e4e's weights as autocast casts them
        self.mapper = nets.mapper.eval().to(self.device)
        self.latent_avg = nets.latent_avg.to(self.device)
        self.text = text if text is not None else TextEncoder(nets.clip, self.device)
        self.sources = nets.sources
        for module in (self.generator, self.encoder, self.mapper, self.text.model):
            module.requires_grad_(False)
        # fidelity high (HyperStyle): built or loaded on its first use (the official files add ~1.5 GB)
        self._hyperstyle: Any = None
        self._hyperstyle_lock = threading.Lock()
        self._hyperstyle_source: Callable[[], Any] | None = None
        self._hyperstyle_missing: Callable[[], list[str]] = lambda: ["HyperStyle (no source for this engine)"]
        self._hyperstyle_hint = FETCH_HINT + " high"
        heap.release_freed_memory()

    def set_hyperstyle(
        self, source: Callable[[], Any], missing: Callable[[], list[str]] | None = None, hint: str | None = None
    ) -> None:
        """Where `fidelity: high` comes from: `source()` builds or loads the HyperStyleNets on first use;
        `missing()` names the store files it lacks (checked before each use, cheaply); `hint` the
        command that fetches them."""
        self._hyperstyle_source = source
        self._hyperstyle_missing = missing or (lambda: [])
        if hint:
            self._hyperstyle_hint = hint

    @classmethod
    def load(
        cls,
        profile: str = "real",
        models_dir: str | Path | None = None,
        device: str | torch.device = "cpu",
        *,
        precision: str = "fp32",
        autocast: bool = False,
        threads: int | None = None,
        cuda_graphs: bool = False,
        domain: str = "face",
        text: TextEncoder | None = None,
    ) -> Engine:
        """The networks of `domain` (face, car, church) in `profile`; `text` shares another engine's
        CLIP text encoder instead of loading CLIP again."""
        prof = profile_for(profile, domain)
        clip = text.model if text is not None else None
        nets = build_tiny(prof, clip=clip) if prof.untrained else load_real(models_dir, domain=domain, clip=clip)
        options = {"precision": precision, "autocast": autocast, "threads": threads, "cuda_graphs": cuda_graphs}
        engine = cls(nets, prof, device, **options, text=text)
        if prof.untrained and domain == "church":  # as the real profile: HyperStyle has no church model
            engine.set_hyperstyle(lambda: None, lambda: ["HyperStyle for the church domain (none published)"])
        elif prof.untrained:
            latent_avg = nets.latent_avg
            engine.set_hyperstyle(lambda: build_tiny_hyperstyle(prof, latent_avg))
        else:
            from .domains import high_fidelity_models
            from .store import ModelStore

            store, names = ModelStore(models_dir), high_fidelity_models(domain)
            hint = f"{store.fetch_hint} high" + ("" if domain == "face" else f"-{domain}")
            engine.set_hyperstyle(
                lambda: load_real_hyperstyle(models_dir, domain, engine.generator),
                lambda: store.missing(names) if names else [f"HyperStyle for the {domain} domain (none published)"],
                hint,
            )
        return engine

    def _amp(self, dtype: torch.dtype) -> contextlib.AbstractContextManager:
        """Autocast to `dtype` where the networks run under it: every network on a GPU, e4e on a CPU (the
        CPU generator computes in its activations' dtype instead, stylegan2.py)."""
        if dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=dtype)

    # -- facts -----------------------------------------------------------------------------
    @property
    def untrained(self) -> bool:
        return self.profile.untrained

    @property
    def domain(self) -> str:
        return self.profile.domain

    @property
    def encoder_input(self) -> tuple[int, int]:
        """(width, height) of e4e's input in this domain (a car's 4:3 frame is 256 × 192)."""
        from .domains import domain_spec

        return domain_spec(self.domain).encoder_input

    def nbytes(self) -> int:
        """Memory of this domain's own networks (generator, e4e, mapper), not of the CLIP text
        encoder, which every domain shares."""
        tensors = [self.latent_avg, *(t for cast in self._encoder_cast.values() for t in cast.values())]
        for module in (self.generator, self.encoder, self.mapper):
            tensors += [*module.parameters(), *module.buffers()]
        high = self._hyperstyle.nbytes() if self._hyperstyle is not None else 0
        return sum(t.numel() * t.element_size() for t in tensors) + high

    @property
    def n_latent(self) -> int:
        return self.generator.n_latent

    @property
    def size(self) -> int:
        return self.generator.size

    @property
    def preview_size(self) -> int:
        """The live preview's resolution on this engine's device (reported in every preview result)."""
        size = self.profile.preview_size_gpu if self.device.type == "cuda" else self.profile.preview_size
        return min(size, self.size)

    def describe(self) -> dict[str, Any]:
        return {
            "profile": self.profile.name,
            "domain": self.domain,
            "untrained": self.untrained,
            "device": str(self.device),
            "precision": self.plan.describe(),
            "cuda_graphs": self._graphs is not None,
            "size": self.size,
            "n_latent": self.n_latent,
            "sources": dict(self.sources),
            **self.describe_fidelity(),
        }

    def describe_fidelity(self) -> dict[str, Any]:
        """`fidelities`: what an edit's `fidelity` may be here ("high" once HyperStyle's files are
        present, or loaded); `high_fidelity`: {loaded, missing (store names), fetch (the command)}."""
        loaded = self._hyperstyle is not None
        try:
            missing = [] if loaded else list(self._hyperstyle_missing())
        except OSError:  # a store folder that cannot be read: nothing to offer
            missing = ["(the model store cannot be read)"]
        high = {"loaded": loaded, "missing": missing}
        if missing:
            high["fetch"] = self._hyperstyle_hint
        return {"fidelities": ["standard"] if missing else ["standard", "high"], "high_fidelity": high}

    def text_cache_stats(self) -> dict[str, int]:
        return self.text.stats()

    # -- fidelity high: HyperStyle ------------------------------------------------------------
    def high_fidelity_missing(self) -> list[str]:
        """Store names of HyperStyle's files that `fidelity: high` lacks here (empty once loaded)."""
        return [] if self._hyperstyle is not None else list(self._hyperstyle_missing())

    def hyperstyle(self) -> Any:
        """HyperStyle's networks (HyperStyleNets), built or loaded once; ModelsMissing without them."""
        with self._hyperstyle_lock:
            if self._hyperstyle is None:
                missing = self._hyperstyle_missing()
                if missing or self._hyperstyle_source is None:
                    raise ModelsMissing(missing or ["HyperStyle"], self._hyperstyle_hint)
                nets = self._hyperstyle_source()
                for module in nets.modules():
                    module.eval().requires_grad_(False).to(self.device)
                nets.latent_avg = nets.latent_avg.to(self.device, torch.float32)
                nets.hypernet.shared_weight_hypernet.store_w2_by_columns_()
                self._hyperstyle = nets
                self.sources = {**self.sources, **nets.sources}
                heap.release_freed_memory()
            return self._hyperstyle

    def invert_high(
        self, x: Tensor, between: Callable[[int], None] | None = None
    ) -> tuple[Tensor, list[Tensor | None]]:
        """HyperStyle's inversion of aligned faces x (1, 3, H, W) in [-1, 1]: (W+ codes (1, n_latent,
        D), the weight offsets Δ per generator convolution, None where not tuned). The official
        inference (W encoder + latent_avg, n_iters refinements) on the fast synthesis path, in the
        full precision; `between(i)` after each refinement (progress, cancel)."""
        from .models.hyperstyle import offsets

        nets = self.hyperstyle()
        g = nets.generator or self.generator

        def render(codes: Tensor, deltas: Any) -> Tensor:
            return self._synthesis_with(g, codes, (g.size,), None, False, deltas)[g.size]

        # ten networks' passes of the same shapes: what one layer frees, the next reuses (no page faults)
        with torch.inference_mode(), heap.keep_freed_pages():
            x = x.to(self.device, torch.float32)
            codes, deltas = offsets(
                nets.w_encoder, nets.hypernet, x, nets.latent_avg, nets.n_iters, render, nets.rows, between
            )
            return codes.float(), [None if d is None else d.float() for d in deltas]

    # -- the four steps --------------------------------------------------------------------
    def invert(self, x: Tensor) -> Tensor:
        """Aligned faces (B, 3, 256, 256) in [-1, 1] -> W+ (B, n_latent, D)."""
        dtype = self.plan.full
        with torch.inference_mode(), self._amp(dtype):
            x = x.to(self.device, torch.float32)
            if dtype == torch.float32:
                codes = self.encoder(x)
            else:  # the same arithmetic as autocast's own casts, without recasting 1 GB of weights per call
                codes = torch.func.functional_call(self.encoder, self._encoder_weights(dtype), (x,))
        with torch.inference_mode():
            return codes.float() + self.latent_avg

    def _encoder_weights(self, dtype: torch.dtype) -> dict[str, Tensor]:
        """e4e's weights cast to `dtype` once (called inside `invert`'s inference_mode)."""
        if dtype not in self._encoder_cast:
            self._encoder_cast[dtype] = autocast_weights(self.encoder, dtype)
        return self._encoder_cast[dtype]

    def encode_text(self, prompts: list[str]) -> Tensor:
        return self.text.encode(prompts)

    def map(self, w: Tensor, e: Tensor, strength: float = 1.0) -> Tensor:
        """ŵ = w + α·Δw; `e` (B or 1, 1, D) broadcasts over the batch of `w`."""
        with torch.inference_mode():
            w = w.to(self.device)
            e = e.to(self.device).expand(w.shape[0], -1, -1)
            return self.mapper.edit(w, e, strength)

    def delta(self, w: Tensor, e: Tensor) -> Tensor:
        """Δw = mapper(w, e) alone (several prompts are summed as ŵ = w + Σ αᵢ·Δwᵢ by the caller)."""
        with torch.inference_mode():
            w = w.to(self.device)
            return self.mapper(w, e.to(self.device).expand(w.shape[0], -1, -1))

    def synthesize(
        self, w: Tensor, preview: bool = False, size: int | None = None, offsets: list[Tensor | None] | None = None
    ) -> Tensor:
        """W+ -> images (B, 3, S, S), about [-1, 1]; fixed noise so that edits are repeatable.

        `size` (a power of two <= engine.size) stops synthesis at that resolution, as `preview` does
        at preview_size: e.g. a reconstruction for the change mask at 256² costs ~40 % of 1024².
        `offsets`: HyperStyle's weight offsets of the photo (invert_high), for fidelity high."""
        size = size or (self.preview_size if preview else self.size)
        high = {} if offsets is None else {"offsets": offsets}  # a standard call reads as before (wrappers)
        return self.synthesize_levels(w, (size,), preview=preview, **high)[size]

    def synthesize_levels(
        self,
        w: Tensor,
        sizes: tuple[int, ...],
        between_levels: Callable[[], None] | None = None,
        preview: bool = False,
        offsets: list[Tensor | None] | None = None,
    ) -> dict[int, Tensor]:
        """W+ -> {size: images (B, 3, size, size)} from one pass that stops at the largest size; the
        image at a smaller size is what `synthesize(w, size=...)` returns (the generator's RGB skip
        there), so an edit can be compared with a reconstruction made only up to that size.
        `between_levels` runs after each resolution (a cancel check; not with CUDA graphs, whose
        replay is a single launch). `preview`: computed in the plan's preview precision (the images
        are float32 either way). `offsets`: HyperStyle's weight offsets (fidelity high): the offset
        generator W·(1 + Δ) draws them (HyperStyle's generator; not from CUDA graphs)."""
        sizes = tuple(sorted(set(sizes)))
        if not sizes or any(s < 8 or s > self.size or s & (s - 1) for s in sizes):
            raise ValueError(f"sizes must be powers of two in [8, {self.size}], not {list(sizes)}")
        w = w.to(self.device, torch.float32)
        if offsets is not None:
            g = self.hyperstyle().generator or self.generator
            deltas = [None if d is None else d.to(self.device, torch.float32) for d in offsets]
            return self._synthesis_with(g, w, sizes, between_levels, preview, deltas)
        if self._graphs is not None:
            return self._synthesize_graphed(w, sizes, preview)
        return self._synthesis(w, sizes, between_levels, preview)

    def _synthesis(
        self,
        w: Tensor,
        sizes: tuple[int, ...],
        between_levels: Callable[[], None] | None = None,
        preview: bool = False,
    ) -> dict[int, Tensor]:
        return self._synthesis_with(self.generator, w, sizes, between_levels, preview)

    def _synthesis_with(
        self,
        g: Generator,
        w: Tensor,
        sizes: tuple[int, ...],
        between_levels: Callable[[], None] | None = None,
        preview: bool = False,
        deltas: Any = None,
    ) -> dict[int, Tensor]:
        dtype = self.plan.preview if preview else self.plan.full
        # a GPU runs the generator under autocast; a CPU computes in the activations' dtype (stylegan2.py)
        cpu = self.device.type == "cpu"
        amp, arithmetic = (contextlib.nullcontext(), dtype) if cpu else (self._amp(dtype), torch.float32)
        with torch.inference_mode(), amp:
            latent, noise = g.broadcast_latent([w]), g.fixed_noise()
            images = g.synthesis_levels(latent, noise, sizes, between_levels, self.path, arithmetic, deltas)
            return {s: image.float() for s, image in images.items()}

    def _synthesize_graphed(self, w: Tensor, sizes: tuple[int, ...], preview: bool) -> dict[int, Tensor]:
        """Synthesis replayed from a CUDA graph: one launch instead of ~200 kernels and their Python."""
        key = (tuple(w.shape), sizes, preview)
        entry = self._graphs.get(key)
        with torch.inference_mode():
            if entry is None:
                static_w = w.clone()
                side = torch.cuda.Stream(self.device)
                side.wait_stream(torch.cuda.current_stream(self.device))
                with torch.cuda.stream(side):  # warm-up: caches, cuDNN algorithms, allocator
                    for _ in range(2):
                        self._synthesis(static_w, sizes, preview=preview)
                torch.cuda.current_stream(self.device).wait_stream(side)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    static_out = self._synthesis(static_w, sizes, preview=preview)
                entry = self._graphs[key] = (graph, static_w, static_out)
            graph, static_w, static_out = entry
            static_w.copy_(w)
            graph.replay()
            return {s: image.clone() for s, image in static_out.items()}
