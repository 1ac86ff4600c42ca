"""Seeded construction of random networks (the tiny profile, the benchmarks' synthetic weights).

torch initialises parameters from one generator per process. Two threads building seeded networks
at once (two engine workers loading the tiny car domain) interleaved their draws and built different
weights from the same seed, so every seeded construction holds one process-wide lock; the global
generator's state is restored afterwards (`fork_rng`), as if nothing had been drawn.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import torch

_LOCK = threading.RLock()  # re-entrant: a seeded build may build a seeded part (the tiny CLIP)


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Draw from torch's global generator seeded with `seed`, alone, and restore it on exit."""
    with _LOCK, torch.random.fork_rng():
        torch.manual_seed(seed)
        yield
