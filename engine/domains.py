"""The paper's three domains: what each needs from the model store and how its photos are framed.

FFCLIP publishes one mapper per domain, each with its e4e encoder and StyleGAN2 generator:

| domain | generator | W+ layers | e4e input (w × h) | frame inside the generator's square     |
|--------|-----------|-----------|-------------------|-----------------------------------------|
| face   | 1024      | 18        | 256 × 256         | the FFHQ-aligned face (engine/face)      |
| car    | 512       | 16        | 256 × 192         | 512 × 384, padded to 512² (rows 64–448) |
| church | 256       | 14        | 256 × 256         | the whole 256² square                   |

(The car frame is the e4e/FFCLIP car data's: Stanford Cars at 512 × 384, padded to 512².)

HyperStyle (`fidelity: high`) publishes a hypernetwork and a W encoder for faces and cars
(`high_fidelity_models`), none for churches.

A face is found and aligned by engine/face; a car or a church is the selection's bounding box (or
the whole image) widened to its frame (engine/scene.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from ffclip.plugin.protocol import DEFAULT_DOMAIN, DOMAINS

__all__ = [
    "DEFAULT_DOMAIN",
    "DOMAINS",
    "Domain",
    "DOMAIN_SPECS",
    "domain_spec",
    "high_fidelity_models",
    "needed_models",
]


@dataclass(frozen=True)
class Domain:
    name: str
    e4e: str  # model store names
    ffclip: str
    size: int  # the real generator's resolution
    frame_aspect: float  # width / height of the content frame
    frame_band: float  # the frame's height as a fraction of the square's side (the rest is padding)
    encoder_input: tuple[int, int]  # e4e's input (width, height): the frame, resized
    label: str  # in words, for messages
    # HyperStyle's files for `fidelity: high` (store names; None: no official model for the domain)
    hyperstyle: str | None = None
    w_encoder: str | None = None

    @property
    def n_latent(self) -> int:
        return 2 * (self.size.bit_length() - 1) - 2

    @property
    def band(self) -> tuple[float, float]:
        """(v0, v1): the rows of the generator's square that hold the frame, normalised to [0, 1]."""
        pad = (1.0 - self.frame_band) / 2.0
        return pad, 1.0 - pad


DOMAIN_SPECS: dict[str, Domain] = {
    "face": Domain("face", "e4e", "ffclip", 1024, 1.0, 1.0, (256, 256), "face", "hyperstyle", "hyperstyle-w-encoder"),
    "car": Domain(
        "car",
        "e4e-cars",
        "ffclip-car",
        512,
        4.0 / 3.0,
        0.75,
        (256, 192),
        "car",
        "hyperstyle-cars",
        "hyperstyle-w-encoder-cars",
    ),
    "church": Domain("church", "e4e-church", "ffclip-church", 256, 1.0, 1.0, (256, 256), "church"),
}
assert tuple(DOMAIN_SPECS) == DOMAINS


def domain_spec(name: str) -> Domain:
    try:
        return DOMAIN_SPECS[name]
    except KeyError:
        raise ValueError(f"unknown domain {name!r}; one of {', '.join(DOMAINS)}") from None


def needed_models(domain: str) -> tuple[str, ...]:
    """Store names of the files an edit of `domain` needs (CLIP is shared by every domain)."""
    spec = domain_spec(domain)
    return (spec.e4e, spec.ffclip, "clip")


def high_fidelity_models(domain: str) -> tuple[str, ...]:
    """Store names of what an edit of `domain` with `fidelity: high` needs besides needed_models:
    HyperStyle's hypernetwork file and its W encoder (none for churches: no official model)."""
    spec = domain_spec(domain)
    return tuple(n for n in (spec.hyperstyle, spec.w_encoder) if n)
