"""The inference API that the photo pipeline, the daemon, training and the bench share.

`Engine` holds the four networks, loaded once: e4e (photo -> W+), CLIP text (prompt -> e),
the FFCLIP mapper (W+, e -> Δw) and StyleGAN2 (W+ -> image). Every call is batched and runs
under `torch.inference_mode()` on the engine's device.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .models.clip import TextEncoder, build_clip, build_tiny_clip, load_clip_weights
from .models.e4e import Encoder4Editing
from .models.mapper import DynamicMapper
from .models.stylegan2 import Generator, SynthesisPath
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


def release_freed_memory() -> None:
    """Return the C heap's freed pages to the OS (glibc only; elsewhere nothing). Building or loading
    the networks leaves ~0.3 GB of freed small blocks in the heap, which would stay resident for
    the daemon's lifetime and add to every later peak."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


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
        self.mapper = nets.mapper.eval().to(self.device)
        self.latent_avg = nets.latent_avg.to(self.device)
        self.text = text if text is not None else TextEncoder(nets.clip, self.device)
        self.sources = nets.sources
        for module in (self.generator, self.encoder, self.mapper, self.text.model):
            module.requires_grad_(False)
        release_freed_memory()

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
        return cls(nets, prof, device, **options, text=text)

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
        tensors = [self.latent_avg]
        for module in (self.generator, self.encoder, self.mapper):
            tensors += [*module.parameters(), *module.buffers()]
        return sum(t.numel() * t.element_size() for t in tensors)

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
        }

    def text_cache_stats(self) -> dict[str, int]:
        return self.text.stats()

    # -- the four steps --------------------------------------------------------------------
    def invert(self, x: Tensor) -> Tensor:
        """Aligned faces (B, 3, 256, 256) in [-1, 1] -> W+ (B, n_latent, D)."""
        with torch.inference_mode(), self._amp(self.plan.full):
            codes = self.encoder(x.to(self.device, torch.float32))
        with torch.inference_mode():
            return codes.float() + self.latent_avg

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

    def synthesize(self, w: Tensor, preview: bool = False, size: int | None = None) -> Tensor:
        """W+ -> images (B, 3, S, S), about [-1, 1]; fixed noise so that edits are repeatable.

        `size` (a power of two <= engine.size) stops synthesis at that resolution, as `preview` does
        at preview_size: e.g. a reconstruction for the change mask at 256² costs ~40 % of 1024²."""
        size = size or (self.preview_size if preview else self.size)
        return self.synthesize_levels(w, (size,), preview=preview)[size]

    def synthesize_levels(
        self,
        w: Tensor,
        sizes: tuple[int, ...],
        between_levels: Callable[[], None] | None = None,
        preview: bool = False,
    ) -> dict[int, Tensor]:
        """W+ -> {size: images (B, 3, size, size)} from one pass that stops at the largest size; the
        image at a smaller size is what `synthesize(w, size=...)` returns (the generator's RGB skip
        there), so an edit can be compared with a reconstruction made only up to that size.
        `between_levels` runs after each resolution (a cancel check; not with CUDA graphs, whose
        replay is a single launch). `preview`: computed in the plan's preview precision (the images
        are float32 either way)."""
        sizes = tuple(sorted(set(sizes)))
        if not sizes or any(s < 8 or s > self.size or s & (s - 1) for s in sizes):
            raise ValueError(f"sizes must be powers of two in [8, {self.size}], not {list(sizes)}")
        w = w.to(self.device, torch.float32)
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
        dtype = self.plan.preview if preview else self.plan.full
        # a GPU runs the generator under autocast; a CPU computes in the activations' dtype (stylegan2.py)
        cpu = self.device.type == "cpu"
        amp, arithmetic = (contextlib.nullcontext(), dtype) if cpu else (self._amp(dtype), torch.float32)
        with torch.inference_mode(), amp:
            g = self.generator
            latent, noise = g.broadcast_latent([w]), g.fixed_noise()
            images = g.synthesis_levels(latent, noise, sizes, between_levels, self.path, arithmetic)
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
