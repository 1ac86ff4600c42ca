"""A photo preparation that crashes its worker process, for tests/engine/training/test_torchrun.py. Its own
small module: a spawned worker imports it, and the test module would bring torch along."""

from __future__ import annotations

import os
import time
from pathlib import Path

from ffclip.engine.training.photos import Prepared, PrepOptions, prepare_photo


def crashing_prepare(folder: Path, rel: str, options: PrepOptions) -> Prepared:
    """A detector that dies (as a native crash would) on photos named crash*; photos named wait*
    are held until such a death has happened, so that one is still in flight when it happens."""
    marker = folder / ".crashed"
    name = Path(rel).name
    if name.startswith("crash"):
        marker.touch()
        os._exit(3)
    if name.startswith("wait"):
        deadline = time.monotonic() + 120
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
    return prepare_photo(folder, rel, options)
