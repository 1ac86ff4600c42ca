"""Deterministic synthetic weights from a parity manifest (the recipe of shared/parity/synth.py).

One pass over the manifest's tensors in order with numpy's PCG64 `default_rng(seed)`:
`exact` takes the listed values, `int_zero` zeros (int64), `positive` uniform [0.5, 1.5),
`normal` mean + std · N(0, 1). The draws depend on the order, so the order is the manifest's.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch


def load_manifest(path: str | Path) -> dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def synth_arrays(manifest: dict[str, Any], seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for t in manifest["tensors"]:
        shape = tuple(t["shape"])
        rule = t["rule"]
        if rule == "exact":
            arr = np.asarray(t["values"], dtype=np.float32).reshape(shape)
        elif rule == "int_zero":
            arr = np.zeros(shape, dtype=np.int64)
        elif rule == "positive":
            arr = rng.uniform(0.5, 1.5, size=shape).astype(np.float32)
        elif rule == "normal":
            arr = (t["mean"] + t["std"] * rng.standard_normal(size=shape)).astype(np.float32)
        else:
            raise ValueError(f"unknown fill rule {rule!r} for {t['key']}")
        out[t["key"]] = arr
    return out


def synth_state_dict(manifest: dict[str, Any], seed: int) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(v) for k, v in synth_arrays(manifest, seed).items()}
