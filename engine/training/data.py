"""Latent datasets: W+ codes (N, n_latent, D) float32 in a .npy file, memory-mapped.

Batches are planned here rather than by a DataLoader: an epoch is a seeded permutation, padded
(wrapping around) to a multiple of the number of ranks and dealt out rank by rank, exactly like
DistributedSampler — every rank then runs the same number of steps, which DDP needs, and a run
resumed in the middle of an epoch replays the same order.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor


class LatentError(ValueError):
    pass


@dataclass
class Latents:
    array: np.ndarray  # (N, n_latent, D), memory-mapped
    path: str

    def __len__(self) -> int:
        return int(self.array.shape[0])

    @property
    def n_latent(self) -> int:
        return int(self.array.shape[1])

    @property
    def dim(self) -> int:
        return int(self.array.shape[2])

    def batch(self, indices: np.ndarray | list[int], device: torch.device | str = "cpu") -> Tensor:
        idx = np.asarray(indices, dtype=np.int64)
        order = np.argsort(idx, kind="stable")  # sorted reads are kinder to a memory map
        rows = np.empty((len(idx), self.n_latent, self.dim), dtype=np.float32)
        rows[order] = self.array[idx[order]]
        return torch.from_numpy(rows).to(device)


def load_latents(path: str | os.PathLike[str], n_latent: int | None = None, dim: int | None = None) -> Latents:
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise LatentError(f"{path}: not a readable .npy array ({exc})") from None
    if arr.ndim == 2 and n_latent is not None and arr.shape[1] == dim:  # W codes: broadcast to W+
        arr = np.repeat(np.asarray(arr, dtype=np.float32)[:, None], n_latent, axis=1)
    if arr.ndim != 3 or arr.shape[0] == 0:
        raise LatentError(f"{path}: expected W+ codes (N, n_latent, D), got shape {arr.shape}")
    if n_latent is not None and arr.shape[1] != n_latent:
        raise LatentError(f"{path}: {arr.shape[1]} W+ layers, the generator has {n_latent}")
    if dim is not None and arr.shape[2] != dim:
        raise LatentError(f"{path}: codes of width {arr.shape[2]}, the generator's style_dim is {dim}")
    if arr.dtype != np.float32:
        arr = np.asarray(arr, dtype=np.float32)
    return Latents(arr, os.fspath(path))


def epoch_indices(
    n: int, epoch: int, seed: int, rank: int = 0, world_size: int = 1, shuffle: bool = True
) -> np.ndarray:
    """This rank's sample indices for an epoch (DistributedSampler's order and padding)."""
    if shuffle:
        g = torch.Generator().manual_seed(seed + epoch)
        order = torch.randperm(n, generator=g).numpy()
    else:
        order = np.arange(n)
    total = math.ceil(n / world_size) * world_size
    if total > n:
        order = np.concatenate([order, np.resize(order, total - n)])
    return order[rank:total:world_size]


def batches(indices: np.ndarray, batch_size: int) -> list[np.ndarray]:
    return [indices[i : i + batch_size] for i in range(0, len(indices), batch_size)]


def steps_per_epoch(n: int, batch_size: int, world_size: int = 1) -> int:
    return math.ceil(math.ceil(n / world_size) / batch_size)
