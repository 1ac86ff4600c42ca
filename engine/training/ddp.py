"""Distributed data parallel through `torchrun`: the same command runs on 1 process or N.

`torchrun` sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT (from its rendezvous,
multi-node included); without them we run as a single process and never touch torch.distributed.
The backend is NCCL on GPUs and gloo on CPUs.
"""

from __future__ import annotations

import datetime
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from ffclip.engine.inference import resolve_device
from ffclip.engine.training.orphans import end_with_parent

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    device: torch.device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        return self.backend is not None

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))


def setup(device: str = "auto", backend: str = "auto", timeout_s: float = 1800.0) -> DistInfo:
    """Join the process group when launched by torchrun; pick this process's device."""
    try:
        dev = resolve_device(device)
    except RuntimeError as exc:  # torch's message for a bad device string
        raise ValueError(f"--device {device}: {exc}") from None
    if not launched_by_torchrun():
        return DistInfo(device=dev)
    end_with_parent()  # a rank runs in its own session: a killed torchrun would not take it along
    rank = int(os.environ["RANK"])
    world = int(os.environ["WORLD_SIZE"])
    local = int(os.environ["LOCAL_RANK"])
    if dev.type == "cuda":
        dev = torch.device("cuda", local % max(torch.cuda.device_count(), 1))
        torch.cuda.set_device(dev)
    if backend == "auto":
        backend = "nccl" if dev.type == "cuda" else "gloo"
    if world > 1 or not dist.is_initialized():
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s))
    return DistInfo(rank, world, local, backend, dev)


def cleanup(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def all_reduce_sum(info: DistInfo, values: torch.Tensor) -> torch.Tensor:
    """Sum of a float64 vector over the ranks (a copy on the CPU)."""
    if not info.enabled:
        return values
    t = values.to(info.device, torch.float64 if info.backend != "nccl" else torch.float32).clone()
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.double().cpu()


def flat_parameters(module: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1).float() for p in module.parameters()])


def weight_agreement(info: DistInfo, module: torch.nn.Module) -> float:
    """max |θ_rank − θ_rank0| over all ranks and parameters (0.0 on a single process)."""
    if not info.enabled or info.world_size == 1:
        return 0.0
    mine = flat_parameters(module).to(info.device)
    gathered = [torch.empty_like(mine) for _ in range(info.world_size)]
    dist.all_gather(gathered, mine)
    return float(max((g - gathered[0]).abs().max().item() for g in gathered))


def broadcast_object(info: DistInfo, obj: Any = None) -> Any:
    """Rank 0's `obj` on every rank (pickled; for small control data, not tensors)."""
    if not info.enabled or info.world_size == 1:
        return obj
    box = [obj if info.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_gather_object(info: DistInfo, obj: Any) -> list[Any]:
    """Every rank's `obj`, in rank order, on every rank."""
    if not info.enabled or info.world_size == 1:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


# Errors that a command reports as a clear message (exit code 2) rather than a traceback.
REPORTED_ERRORS: tuple[type[Exception], ...] = (FileNotFoundError, ValueError)


def on_main(info: DistInfo, fn: Callable[[], T]) -> T:
    """Run `fn` on rank 0 only and hand its result to every rank. A reported error raised by `fn`
    is raised again on every rank, so all of them stop with the same message instead of the
    others waiting for rank 0 until the collective times out."""
    result: tuple[str, Any] = ("", None)
    if info.is_main:
        try:
            result = ("ok", fn())
        except REPORTED_ERRORS as exc:
            result = (type(exc).__name__, str(exc))
    kind, value = broadcast_object(info, result)
    if kind == "ok":
        return value
    cls = next((c for c in REPORTED_ERRORS if c.__name__ == kind), ValueError)
    raise cls(value)


def error_line(info: DistInfo | None, exc: Exception) -> str:
    """A reported error as one line; ranks other than 0 say which they are."""
    return f"error: {exc}" if info is None or info.is_main else f"error (rank {info.rank}): {exc}"
