"""Jobs and the device threads that run them (the queue is scheduler.py).

A device is the bottleneck, so each worker (one per device) runs one job at a time on its own
thread; the event loop only queues, reports positions and forwards progress. Every job ends in
exactly one terminal message: `Job.finish` is the only way out and ignores a second call.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from typing import Any, Protocol

from ffclip.engine import heap

from .messages import EditAnnouncement

log = logging.getLogger("ffclip.bridge")


class Owner(Protocol):
    """The connection a job reports to."""

    def deliver(self, message: dict, binary: bytes | None = None, droppable: bool = False) -> None: ...


@dataclass(eq=False)
class Job:
    request: EditAnnouncement
    image: bytes
    selection: bytes | None
    owner: Owner
    submitted: float = field(default_factory=time.monotonic)
    cancel_event: threading.Event = field(default_factory=threading.Event)
    state: str = "queued"  # queued → running → done
    position: int | None = None  # last position reported to the owner
    cancel_requested: bool = False  # by a client (→ `cancelled`), as opposed to a shutdown
    memo: dict = field(default_factory=dict)  # the backend's notes on the image frame, shared by reuses
    user: str = ""  # the token's owner: the scheduler's fairness is between users
    connection: int = 0  # the connection that submitted it (a lane inside the user's)
    sequence: int = 0  # submission order (the scheduler's)
    moved: int | None = None  # taken from busy holders of its photo with this many jobs ahead (scheduler.py)
    worker: int | None = None  # the worker running it

    @property
    def id(self) -> str:
        return self.request.id

    @property
    def photo(self) -> str | None:
        """The image frame's key for routing (None: not computed yet, or a single worker)."""
        return self.memo.get("photo")

    @property
    def nbytes(self) -> int:
        return len(self.image) + len(self.selection or b"")

    @property
    def done(self) -> bool:
        return self.state == "done"

    def finish(self, message: dict, binary: bytes | None = None) -> bool:
        """Send the terminal message; False (and nothing sent) when the job already ended."""
        if self.done:
            return False
        self.state = "done"
        self.image = b""  # the pixels can go as soon as the job ends
        self.selection = None
        self.memo = {}
        self.owner.deliver(message, binary)
        return True


class QueueFull(Exception):
    pass


class DeviceThread:
    """One daemon thread that runs callables in order (models, torch state stay on one thread).

    A daemon thread (unlike ThreadPoolExecutor's) cannot hold the process up at exit when a long
    stage is still running during shutdown.
    """

    def __init__(self, name: str = "ffclip-worker"):
        self._calls: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future:
        future: Future = Future()
        self._calls.put((fn, args, future))
        return asyncio.wrap_future(future)

    def stop(self) -> None:
        self._calls.put(None)

    def join(self, timeout: float | None = None) -> bool:
        """Wait until the thread has ended (after `stop`, once the calls before it are done)."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _loop(self) -> None:
        while True:
            item = self._calls.get()
            if item is None:
                return
            fn, args, future = item
            del item
            if future.set_running_or_notify_cancel():
                self._call(fn, args, future)
            del fn, args, future  # drop references to pixels before waiting again

    @staticmethod
    def _call(fn: Callable[..., Any], args: tuple, future: Future) -> None:
        try:
            result = fn(*args)
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting coroutine
            with contextlib.suppress(InvalidStateError):  # the waiter gave up (shutdown)
                future.set_exception(exc)
        else:
            with contextlib.suppress(InvalidStateError):
                future.set_result(result)


def release_memory() -> None:
    """Return freed memory to the OS after a job, so an idle daemon shrinks back to its idle size."""
    gc.collect()
    heap.release_freed_memory()
