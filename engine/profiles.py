"""Model profiles: the real FFHQ models, or `tiny` — the same architectures at small widths,
seeded and randomly initialised, for tests and smoke runs. `tiny` is never a real model: every
status and output that comes from it says `untrained`."""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Profile:
    name: str
    size: int  # generator resolution
    style_dim: int  # W and CLIP embedding width
    n_mlp: int = 8
    channel_multiplier: int = 2
    channel_base: int = 512
    e4e_stages: tuple[tuple[int, int], ...] | None = None  # None: IR-SE-50
    e4e_input_width: int = 64
    preview_size: int = 128  # synthesis stops here for previews on a CPU (~0.3 s at 128² for the real one)
    preview_size_gpu: int = 256  # ... and on a GPU, where 256² costs a few milliseconds
    untrained: bool = False
    domain: str = "face"  # engine/domains.py: face, car or church

    @property
    def n_latent(self) -> int:
        return 2 * (self.size.bit_length() - 1) - 2


REAL = Profile(name="real", size=1024, style_dim=512)

TINY = Profile(
    name="tiny",
    size=256,
    style_dim=64,
    n_mlp=2,
    channel_multiplier=1,
    channel_base=64,
    e4e_stages=((16, 1), (32, 1), (64, 1), (64, 1)),
    e4e_input_width=16,
    preview_size=64,
    preview_size_gpu=128,
    untrained=True,
)

PROFILES = {p.name: p for p in (REAL, TINY)}
TINY_SEED = 20221014  # FFCLIP's arXiv date; any fixed seed does

# The other domains at a quarter of their real resolution (cars 512 -> 128, churches 256 -> 64), so
# that every domain has its own W+ depth (14 / 12 / 10 layers) in tests, as the real ones (18 / 16 / 14).
DOMAIN_PROFILES: dict[tuple[str, str], Profile] = {
    ("real", "face"): REAL,
    ("real", "car"): replace(REAL, size=512, domain="car"),
    ("real", "church"): replace(REAL, size=256, domain="church"),
    ("tiny", "face"): TINY,
    ("tiny", "car"): replace(TINY, size=128, domain="car"),
    ("tiny", "church"): replace(TINY, size=64, preview_size=32, preview_size_gpu=64, domain="church"),
}
# Each tiny domain gets its own seeded networks.
TINY_DOMAIN_SEED = {"face": TINY_SEED, "car": TINY_SEED + 101, "church": TINY_SEED + 202}


def profile_for(name: str, domain: str = "face") -> Profile:
    """The profile `name` ("real" or "tiny") of `domain`."""
    try:
        return DOMAIN_PROFILES[(name, domain)]
    except KeyError:
        raise ValueError(f"no {name!r} profile for the domain {domain!r}") from None
