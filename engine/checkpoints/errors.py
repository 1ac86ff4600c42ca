"""Errors raised while reading checkpoint files."""

from __future__ import annotations

import os

# What to do about a damaged file: it cannot be repaired, only replaced.
REPAIR = (
    "Delete it and download it again: `ffclip-engine models fetch NAME` for a model of the store "
    "(`ffclip-engine models verify` checks them all), or download it in a browser and run "
    "`ffclip-engine models import FILE`"
)


class CheckpointError(ValueError):
    """A checkpoint file cannot be used; the message says why, in words meant for the user."""


class UnsafeCheckpointError(CheckpointError):
    """The file's pickle references a callable outside the allow-list; nothing was executed."""


class DamagedCheckpointError(CheckpointError):
    """The file is in a checkpoint format but contradicts itself: truncated, bit-rotted, its sizes
    or references inconsistent. Raised without a path deep in the readers; `at(path)` names the file."""

    def __init__(self, detail: str, path: str | os.PathLike[str] | None = None, repair: str = REPAIR) -> None:
        self.detail, self.path, self.repair = detail, path, repair
        if path is None:
            super().__init__(f"damaged: {detail}")
        else:
            super().__init__(f"{path} is damaged (truncated or corrupt): {detail}. {repair}.")

    def at(self, path: str | os.PathLike[str]) -> DamagedCheckpointError:
        return DamagedCheckpointError(self.detail, path, self.repair)

    def with_repair(self, repair: str) -> DamagedCheckpointError:
        return DamagedCheckpointError(self.detail, self.path, repair)
