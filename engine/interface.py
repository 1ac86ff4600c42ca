"""What the photo pipeline and the daemon need of an engine (`ffclip.engine.inference.Engine`).

Written as a `typing.Protocol` so that the pipeline, the bridge and the tests' stand-ins depend on
these few calls, not on the class that loads the networks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from torch import Tensor, device


class EditEngine(Protocol):
    device: device

    @property
    def untrained(self) -> bool:
        """True for random networks (the tiny profile): their edits are not a model's."""

    @property
    def size(self) -> int:
        """The generator's resolution."""

    @property
    def preview_size(self) -> int:
        """The resolution of a preview synthesis on this engine's device."""

    def describe(self) -> dict[str, Any]: ...

    def text_cache_stats(self) -> dict[str, int]: ...

    def invert(self, x: Tensor) -> Tensor:
        """Aligned faces (B, 3, 256, 256) in [-1, 1] -> W+ (B, n_latent, D)."""

    def encode_text(self, prompts: list[str]) -> Tensor:
        """Prompts -> raw CLIP text embeddings (B, 1, D). The pipeline may call it on a thread of its
        own while the calling thread detects faces (never beside another call of the engine)."""

    def map(self, w: Tensor, e: Tensor, strength: float = 1.0) -> Tensor:
        """ŵ = w + α·Δw."""

    def delta(self, w: Tensor, e: Tensor) -> Tensor:
        """Δw = mapper(w, e)."""

    def synthesize(self, w: Tensor, preview: bool = False, size: int | None = None) -> Tensor:
        """W+ -> images (B, 3, S, S) in about [-1, 1]."""

    def synthesize_levels(
        self,
        w: Tensor,
        sizes: tuple[int, ...],
        between_levels: Callable[[], None] | None = None,
        preview: bool = False,
    ) -> dict[int, Tensor]:
        """W+ -> {size: images} from one synthesis pass; `between_levels` may raise to stop it;
        `preview` may compute in a cheaper precision (precision.py)."""
