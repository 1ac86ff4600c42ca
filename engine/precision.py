"""The arithmetic the networks run in: `--precision auto|fp32|bf16|fp16`, one meaning on every device.

- `fp32`: float32 everywhere (bit for bit what the engine always computed).
- `bf16`: bfloat16 arithmetic for the networks — on a CPU the generator's activations and modulated
  weights in bfloat16 (styles, demodulation and the RGB skip in float32, stylegan2.py), e4e under
  bfloat16 autocast with its weights cast once (autocast_weights); on a GPU bfloat16 autocast.
  Refused on a CPU without native bfloat16 dot products (emulated, it is several times slower).
- `fp16`: float16 autocast (GPU only; the former `--autocast`).
- `auto`: bfloat16 for previews where the processor has it natively, float32 for everything a user
  keeps: Apply, full-resolution batch edits, the inversion (cached and shared by both) and training.

Native bfloat16 on a CPU: AVX512-BF16 or AMX-BF16 (x86: Zen 4, Cooper Lake, Sapphire Rapids and
later) or the BF16 extension (Arm v8.6+: Graviton 3, Apple M2 and later).
"""

from __future__ import annotations

import contextlib
import platform
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported where a plan is made: the CLI reads CHOICES without it
    import torch

CHOICES = ("auto", "fp32", "bf16", "fp16")
_X86_BF16 = {"avx512_bf16", "amx_bf16"}


class PrecisionUnavailable(ValueError):
    """A precision this device cannot run natively (said instead of crawling)."""


def cpu_flags() -> set[str]:
    """The processor's feature flags: /proc/cpuinfo's `flags` (x86) or `Features` (Arm) on Linux,
    `hw.optional.arm.FEAT_*` on macOS; empty where unknown."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("flags", "Features"):
                return set(value.split())
    if platform.system() == "Darwin":
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(["sysctl", "hw.optional.arm.FEAT_BF16"], capture_output=True, text=True, timeout=5)
            if out.stdout.strip().endswith("1"):
                return {"bf16"}
    return set()


def native_bf16(flags: set[str] | None = None) -> bool:
    """Whether this CPU computes bfloat16 dot products in hardware."""
    flags = cpu_flags() if flags is None else flags
    return bool(flags & _X86_BF16) or "bf16" in flags


@dataclass(frozen=True)
class Plan:
    """What runs in which dtype: previews, and everything else (Apply, batch, the inversion)."""

    name: str  # the setting as given (auto, fp32, bf16, fp16)
    preview: torch.dtype
    full: torch.dtype

    def describe(self) -> str:
        """For status and the dialog: e.g. "bf16 previews, fp32 Apply"."""
        if self.preview == self.full:
            return dtype_name(self.full)
        return f"{dtype_name(self.preview)} previews, {dtype_name(self.full)} Apply"


def dtype_name(dtype: torch.dtype) -> str:
    """torch.bfloat16 -> "bf16", torch.float32 -> "fp32"."""
    return str(dtype).removeprefix("torch.").replace("float", "fp").replace("bfp", "bf")


def plan(setting: str, device: torch.device | str, flags: set[str] | None = None) -> Plan:
    """The plan for `setting` on `device`; PrecisionUnavailable for one the device cannot run well."""
    import torch

    if setting not in CHOICES:
        raise ValueError(f"precision is one of {', '.join(CHOICES)}, not {setting!r}")
    cuda = torch.device(device).type == "cuda"
    if setting == "fp32" or (setting == "auto" and cuda):
        return Plan(setting, torch.float32, torch.float32)
    if setting == "fp16":
        if not cuda:
            raise PrecisionUnavailable("--precision fp16 is for GPUs; on a CPU use bf16 (where it is native) or fp32")
        return Plan(setting, torch.float16, torch.float16)
    native = cuda or native_bf16(flags)
    if setting == "auto":
        return Plan(setting, torch.bfloat16 if native else torch.float32, torch.float32)
    if not native:
        raise PrecisionUnavailable(
            "this processor has no native bfloat16 (AVX512-BF16, AMX or Arm BF16): bf16 would be emulated and "
            "several times slower than fp32; use --precision fp32 or auto"
        )
    return Plan(setting, torch.bfloat16, torch.bfloat16)


def autocast_weights(module: torch.nn.Module, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The weights and biases of `module`'s nn.Conv2d and nn.Linear layers cast to `dtype`, by name,
    for `torch.func.functional_call` under autocast to `dtype`: autocast casts exactly these on every
    call (parameters that require no grad are not kept in its cache), which for e4e's 262 M weights
    costs ~65 ms of a ~0.55 s bf16 inversion on a CPU; cast once, the arithmetic is the same."""
    import torch

    cast: dict[str, torch.Tensor] = {}
    for prefix, layer in module.named_modules():
        if isinstance(layer, torch.nn.Conv2d | torch.nn.Linear):
            for name, param in layer.named_parameters(recurse=False):
                cast[f"{prefix}.{name}" if prefix else name] = param.detach().to(dtype)
    return cast
