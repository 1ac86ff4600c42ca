"""Run an engine server in-process on its own event-loop thread (tests, embedding, client development).

Example: `with running_server(lambda: FakeBackend(0.05), token="t") as server:` then
`EngineClient(server.url, token="t").connect()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Iterator

from .backend import Backend
from .server import EngineServer, ServerConfig


class ServerThread:
    def __init__(self, loader: Callable[[], Backend], version: str = "test", **config):
        config.setdefault("port", 0)
        self.server = EngineServer(ServerConfig(**config), loader, version=version)
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="engine-loop", daemon=True)

    def start(self, wait: bool = True) -> ServerThread:
        """Start serving; `wait`: until the models are loaded (else clients meet `loading`)."""
        self._thread.start()
        self.call(self.server.start())
        if wait:
            self.call(self.server.loaded.wait(), timeout=120)
        return self

    def call(self, coroutine, timeout: float = 30.0):
        """Run a coroutine on the server's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    @property
    def url(self) -> str:
        scheme = "wss" if self.server.config.tls is not None else "ws"
        return f"{scheme}://127.0.0.1:{self.server.port}/"

    def stop(self) -> None:
        if self.loop.is_closed():  # stopped already
            return
        config = self.server.config
        with contextlib.suppress(Exception):
            self.call(self.server.stop(), timeout=config.drain_grace + config.shutdown_grace + 30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        if not self.loop.is_running():
            self.loop.close()
        for worker in self.server.workers:  # the calls before the stop end first (a last trim, a job)
            worker.thread.stop()  # server.stop's own may not have been reached
            worker.thread.join(10)


@contextlib.contextmanager
def running_server(loader: Callable[[], Backend], **config) -> Iterator[ServerThread]:
    thread = ServerThread(loader, **config).start()
    try:
        yield thread
    finally:
        thread.stop()
