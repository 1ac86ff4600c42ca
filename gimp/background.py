"""The engine's set-up (gimp/setup.py) run in a thread, for the live dialog (live.Installer).

GTK draws only from its main loop, and the set-up blocks for minutes (pip downloading PyTorch), so
the dialog starts it here and reads what happened at each tick: the set-up's events, then its
result or the exception it ended with. Standard library only.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any


class BackgroundRun:
    """One set-up in a daemon thread (live.SetupRun). `make(on_event)` builds it: an object with
    run() and cancel()."""

    def __init__(self, make: Callable[[Callable[[Any], None]], Any]) -> None:
        self.items: queue.SimpleQueue = queue.SimpleQueue()
        self.setup = make(self.items.put)
        self.thread = threading.Thread(target=self._run, name="ffclip-setup", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.items.put(self.setup.run())
        except BaseException as exc:  # noqa: BLE001 - each ending, a failure included, goes to the dialog
            self.items.put(exc)

    def poll(self) -> list:
        out = []
        while True:
            try:
                out.append(self.items.get_nowait())
            except queue.Empty:
                return out

    def cancel(self) -> None:
        self.setup.cancel()


class PluginInstaller:
    """live.Installer for the plug-in in `plugin_dir`: its bundled wheels, its settings file."""

    def __init__(self, plugin_dir: str | Path) -> None:
        self.plugin_dir = Path(plugin_dir)

    def start(self, profile: str) -> BackgroundRun:
        from . import setup

        return BackgroundRun(lambda on_event: setup.Setup(self.plugin_dir, profile=profile, on_event=on_event))
