"""The websocket server: connections, the protocol state machine, the job queue and its workers.

Threads: everything here runs on the asyncio event loop except `Backend.run`, which runs on a
worker's device thread (one worker per device, `serve --devices`, each with its own backend: its
own model copy and caches). Workers never wait on a client: results and progress are queued on the
client's own outbox and a per-connection sender task writes them, so a slow or vanished client only
ever delays itself. Which worker runs which job is scheduler.py's (fair between users, affine to
the worker holding a photo's inversion); who may connect is tokens.py's; how many connections and how
much memory one client may take is limits.py's.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import logging
import os
import ssl
import time
import weakref
from collections import Counter, deque
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field, replace
from http import HTTPStatus
from urllib.parse import urlsplit

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from ffclip.plugin import identity
from ffclip.plugin.png import PNGError, png_size
from ffclip.plugin.protocol import (
    DEFAULT_HOST,
    DEFAULT_MAX_PIXELS,
    DEFAULT_PORT,
    STAGES,
    BadRequest,
    Draining,
    EngineError,
    EngineState,
    ErrorMessage,
    ImageSpec,
    decode,
    job_id_of,
)

from . import messages as msg
from .backend import Backend, UnavailableBackend
from .framing import FrameFilter
from .jobs import DeviceThread, Job, QueueFull, release_memory
from .limits import (
    ACCEPT_BATCH,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_HANDSHAKES,
    DEFAULT_MAX_PER_USER,
    DEFAULT_MEMORY_BUDGET,
    Admission,
    MemoryBudget,
    Throttled,
    connection_cap,
    raise_file_limit,
)
from .messages import EditAnnouncement
from .scheduler import Scheduler
from .tokens import Identity, TokenBook

log = logging.getLogger("ffclip.bridge")

_PROGRESS_BACKLOG = 64  # queued messages beyond which a client's in-stage progress is skipped


@dataclass
class ServerConfig:
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    token: str | None = None  # one token (owner "token"); `tokens` names several
    tokens: TokenBook | None = None  # named tokens (serve --tokens-file), re-read when the file changes
    tls: ssl.SSLContext | None = None  # wss:// (serve --tls-cert/--tls-key)
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_queue: int = 32  # jobs waiting per user (the running ones not counted)
    max_queue_bytes: int = 2 << 30  # pixels held by one user's waiting jobs
    steal_after: int = 2  # jobs ahead for a busy worker before another worker takes its photo's job
    max_text: int = 1 << 20  # a JSON message
    max_backlog: int = 512 << 20  # bytes (results included) waiting to be sent to one client before it is dropped
    max_unsent_text: int = 8 << 20  # text bytes waiting to be sent to one client before it is dropped
    max_connections: int = DEFAULT_MAX_CONNECTIONS  # kept below the file limit (limits.connection_cap)
    max_handshakes: int = DEFAULT_MAX_HANDSHAKES  # in progress at once; the oldest gives way
    max_connections_per_user: int = DEFAULT_MAX_PER_USER  # per token owner (per address without tokens)
    handshake_timeout: float = 5.0  # seconds from the accept to an open websocket
    request_timeout: float = 60.0  # seconds without a byte before a half-sent edit is dropped
    memory_budget: int = DEFAULT_MEMORY_BUDGET  # bytes held for clients (frames, last images, replies)
    log_interval: float = 10.0  # seconds between two log lines about refused clients of one kind
    progress_interval: float = 0.05  # seconds between two progress messages within a stage
    ping_interval: float | None = 20.0
    ping_timeout: float | None = 20.0
    shutdown_grace: float = 10.0  # how long a running job may take to reach its next stage
    drain_grace: float = 60.0  # at a stop, how long queued and running jobs may take to finish (serve --drain-grace)
    trusted_proxies: frozenset[str] = frozenset()  # whose X-Forwarded-For names the client (serve --trusted-proxy)
    download_status_interval: float = 0.5  # seconds between status messages pushed while downloading
    tokens_interval: float = 1.0  # seconds between two looks at the tokens file (revocations)
    identity_key: str | None = None  # proves to a challenging client that it is this user's engine (in its record)

    @property
    def max_frame(self) -> int:
        """The largest binary frame: an RGBA8 image of max_pixels, plus room for PNG overhead."""
        return self.max_pixels * 4 + (1 << 16)


class GuardedConnection(ServerConnection):
    """A connection whose incoming bytes pass through a FrameFilter (see framing.py), and that tells
    the server's Admission (limits.py) when it opens and when it is gone."""

    def __init__(self, *args, frame_filter: FrameFilter, admission: Admission | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.frame_filter = frame_filter
        self.admission = admission
        self.refused: str | None = None  # why Admission refused it at the accept
        self.identity: Identity | None = None  # set by the handshake check when the token is valid
        self.token_sent = False  # whether the handshake carried a token at all (for the refusal's words)
        self.challenge: str | None = None  # the client's nonce, for the greeting's proof (plugin/identity.py)
        self.quota_key: Hashable = None  # whose quotas it counts against (set at the handshake)
        self.forwarded_for: str | None = None  # the client's address, as a trusted proxy names it
        self.memory_refusal: str | None = None  # why the memory budget refused its last frame
        self.session: Session | None = None

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        if self.admission is not None:
            self.refused = self.admission.opened(self)
            if self.refused == "connections":  # after websockets has started its handler, which ends cleanly
                asyncio.get_running_loop().call_soon(transport.abort)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if self.admission is not None:
            self.admission.closed(self)

    def data_received(self, data: bytes) -> None:
        data = self.frame_filter.feed(data)
        if data:
            super().data_received(data)


@dataclass
class Pending:
    """An accepted or refused `edit` announcement whose binary frames are still arriving."""

    request: EditAnnouncement | None  # None: refused, its frames are read and discarded
    remaining: int
    frames: list[bytes] = field(default_factory=list)
    refused: bool = False
    since: float = field(default_factory=time.monotonic)


class Session:
    """One client connection: parses its messages, owns its jobs, writes its replies in order."""

    def __init__(self, server: EngineServer, ws: GuardedConnection):
        self.server = server
        self.ws = ws
        self.identity = ws.identity
        self.user = ws.identity.owner if ws.identity is not None else ""
        self.peer = _address(ws)  # now: the transport forgets the address once it closes
        self.filter = ws.frame_filter
        self.jobs: weakref.WeakSet[Job] = weakref.WeakSet()
        self.pending: Pending | None = None
        # The frames of this connection's last accepted edit, for `reuse_image` (a live preview
        # sends its photo once); one image per connection, released with it.
        self.last_frames: tuple[ImageSpec, list[bytes], dict] | None = None
        self.closed = False
        self.revoked = False  # its token was revoked: nothing it sends counts any more
        self.used = time.monotonic()  # its last edit (the least recently used last image goes first)
        self.peak_held = 0  # the most bytes it held (memory is given back after a big client leaves)
        self.messages = 0  # how many it sent
        self._outbox: deque[_Outgoing] = deque()
        self._status: _Outgoing | None = None  # a status reply not sent yet (a newer one replaces it)
        self._wake = asyncio.Event()
        self._backlog = 0
        self._unsent_text = 0
        ws.session = self

    # ------------------------------------------------------------------ output

    def deliver(self, message: dict, binary: bytes | None = None, droppable: bool = False) -> None:
        """Queue a message (and its binary frame); never blocks. Droppable = in-stage progress. A
        status not sent yet is replaced by a newer one (a client asking for status a million times
        and reading nothing holds one reply)."""
        if self.closed:
            return
        if droppable and len(self._outbox) >= _PROGRESS_BACKLOG:
            return
        text = msg.encode(message)
        if message.get("type") == "status" and self._status is not None:
            self._count(-len(self._status.text), 0)
            self._status.text = text
            self._count(len(text), 0)
            return
        config = self.server.config
        size = len(text) + len(binary or b"")
        if self._backlog + size > config.max_backlog or self._unsent_text + len(text) > config.max_unsent_text:
            waiting = f"{self.peer}, {self._backlog} bytes waiting"
            self.server.throttle.note("slow", "dropped {n} client(s) that read too slowly", waiting)
            self.closed = True
            asyncio.get_running_loop().create_task(self.ws.close(1008, "client too slow"))
            return
        item = _Outgoing(text, binary)
        if message.get("type") == "status":
            self._status = item
        self._outbox.append(item)
        self._count(len(text), len(binary or b""))
        self._wake.set()

    def request_status(self) -> None:
        """A client's `status`: while one is still waiting to be sent, it is only marked to be made
        anew when it goes (a client asking a million times costs one status, not a million)."""
        if self._status is not None:
            self._status.stale = True
        else:
            self.deliver(self.server.status_message())

    def _count(self, text: int, binary: int) -> None:
        self._backlog += text + binary
        self._unsent_text += text

    @property
    def idle(self) -> bool:
        return not self._outbox

    def held_bytes(self) -> int:
        """The bytes this connection holds: frames arrived for an edit, its last image (for
        `reuse_image`), its unfinished jobs' frames, its replies not sent yet."""
        seen: set[int] = set()
        total = self._backlog

        def add(data: bytes | None) -> None:
            nonlocal total
            if data is not None and id(data) not in seen:
                seen.add(id(data))
                total += len(data)

        if self.pending is not None:
            for frame in self.pending.frames:
                add(frame)
        if self.last_frames is not None:
            for frame in self.last_frames[1]:
                add(frame)
        for job in list(self.jobs):
            if not job.done:
                add(job.image)
                add(job.selection)
        self.peak_held = max(self.peak_held, total)
        return total

    def forget_image(self) -> bool:
        """Drop the last image (memory is short); False when a job still uses it."""
        if self.last_frames is None or any(not job.done for job in list(self.jobs)):
            return False
        self.last_frames = None
        return True

    async def _send_loop(self) -> None:
        with contextlib.suppress(ConnectionClosed):  # the receive loop notices the close too
            await self._send_forever()

    async def _send_forever(self) -> None:
        while True:
            while not self._outbox:
                self._wake.clear()
                await self._wake.wait()
            item = self._outbox[0]
            if item is self._status:
                self._status = None  # from here on a newer status is queued behind it
                if item.stale:
                    fresh = msg.encode(self.server.status_message())
                    self._count(len(fresh) - len(item.text), 0)
                    item.text = fresh
            text, binary = item.text, item.binary
            await self.ws.send(text)
            if binary is not None:
                await self.ws.send(binary)
            self._outbox.popleft()
            self._count(-len(text), -len(binary or b""))

    def reply(self, exc: EngineError) -> None:
        if isinstance(exc, Draining):  # flagged, so that clients send the edit to another engine
            self.deliver(ErrorMessage(exc.code, exc.message, exc.job_id, draining=True).to_message())
        else:
            self.deliver(msg.error(exc.code, exc.message, exc.job_id))

    # ------------------------------------------------------------------ input

    async def run(self) -> None:
        sender = asyncio.create_task(self._send_loop())
        self.deliver(self.server.greeting(self.ws.challenge))
        try:
            async for data in self.ws:
                try:
                    self.on_message(data)
                except Exception:  # noqa: BLE001 - a bug here must not take the connection down
                    log.exception("error while handling a message from %s", self.peer)
                    self.deliver(msg.error("internal", "the engine failed to handle that message"))
        except ConnectionClosed:
            pass
        finally:
            self.closed = True
            sender.cancel()

    def on_message(self, data: str | bytes) -> None:
        self.messages += 1
        if self.revoked:
            return
        oversize = self.filter.oversize_of(data)
        if isinstance(data, bytes | bytearray):
            self.filter.taken(data)
        if oversize is not None and oversize[0] == "memory":
            self.on_refused_frame()
        elif oversize is not None and oversize[0] == "text":
            self._abandon_pending("a text message arrived instead")
            self.reply(
                BadRequest(
                    f"a text message of {oversize[1]} bytes exceeds the limit of "
                    f"{self.server.config.max_text} bytes; it was discarded",
                    "too_large",
                )
            )
        elif isinstance(data, str):
            self.on_text(data)
        else:
            self.on_binary(data, oversize[1] if oversize else None)

    def on_text(self, text: str) -> None:
        self._abandon_pending("a text message arrived instead")
        try:
            message = decode(text)
            kind = message["type"]
            if kind == "edit":
                self.on_edit(message)
            elif kind == "cancel":
                self.server.cancel(job_id_of(message))
            elif kind == "status":
                self.request_status()
            else:
                raise BadRequest(f"unknown message type {kind[:40]!r}")
        except EngineError as exc:
            self.reply(exc)

    def on_edit(self, message: dict) -> None:
        frames = msg.announced_frames(message)
        try:
            request = msg.parse_edit(message, self.server.config.max_pixels)
            self.server.check_open(request.id)
            if self.server.id_in_use(request.id):  # no id in the reply: that id belongs to the other job
                raise BadRequest(f"id {request.id!r} is already used by a job in progress")
        except EngineError as exc:
            self.reply(exc)
            if frames:
                self.pending = Pending(None, frames, refused=True)
            return
        if request.image is None:
            self._reuse(request)
            return
        self.pending = Pending(request, request.frames)
        self.server.pending_ids[request.id] = self

    def _reuse(self, request: EditAnnouncement) -> None:
        """Submit an edit on the previous edit's image and selection (no frames follow)."""
        if self.last_frames is None:
            text = "there is no earlier image on this connection to reuse: send the image"
            self.reply(BadRequest(text, job_id=request.id))
            return
        spec, frames, memo = self.last_frames
        params = replace(request.params, selection=len(frames) == 2)
        self.server.submit(self, EditAnnouncement(request.id, params, spec), frames, memo)

    def on_binary(self, data: bytes, oversize: int | None) -> None:
        pending = self.pending
        limit = self.server.config.max_frame
        if pending is None:
            if oversize is not None:
                text = f"a binary frame of {oversize} bytes exceeds the limit of {limit} bytes; it was discarded"
                self.reply(BadRequest(text, "too_large"))
            else:
                self.reply(BadRequest("a binary frame without an edit announcement was discarded"))
            return
        pending.remaining -= 1
        if pending.request is not None and not pending.refused:
            if oversize is not None:
                text = f"a binary frame of {oversize} bytes exceeds the limit of {limit} bytes; it was discarded"
                self._refuse(pending, BadRequest(text, "too_large", pending.request.id))
            else:
                pending.frames.append(data)
        if pending.remaining == 0:
            self.pending = None
            if pending.request is not None:
                self.server.pending_ids.pop(pending.request.id, None)
                if not pending.refused:
                    self.server.submit(self, pending.request, pending.frames)

    def on_refused_frame(self) -> None:
        """A binary frame the memory budget had no room for (framing.py skipped it)."""
        reason = self.ws.memory_refusal or "the engine's memory for clients is taken; try again shortly"
        pending = self.pending
        if pending is None:
            self.reply(EngineError("busy", reason))
            return
        pending.remaining -= 1
        if pending.request is not None and not pending.refused:
            self._refuse(pending, EngineError("busy", reason, pending.request.id))
        if pending.remaining == 0:
            self.pending = None
            if pending.request is not None:
                self.server.pending_ids.pop(pending.request.id, None)

    def expire(self, now: float, timeout: float) -> None:
        """Drop a half-sent edit when no byte arrived for `timeout` seconds: its frames are freed,
        and frames that still come are read and discarded."""
        pending = self.pending
        if pending is None or pending.request is None or pending.refused:
            return
        if now - max(pending.since, self.filter.touched) < timeout:
            return
        got = len(pending.frames)
        text = (
            f"the edit announced {pending.request.frames} binary frame(s) but only {got} arrived "
            f"within {timeout:g} s: dropped"
        )
        self.server.pending_ids.pop(pending.request.id, None)
        self._refuse(pending, BadRequest(text, job_id=pending.request.id))
        self.server.throttle.note("expired", "dropped {n} half-sent edit(s)", self.peer)

    def cancel_pending(self, job_id: str) -> None:
        pending = self.pending
        if pending is not None and pending.request is not None and pending.request.id == job_id:
            self.server.pending_ids.pop(job_id, None)
            if not pending.refused:
                pending.refused = True
                pending.frames.clear()
                self.deliver(msg.cancelled(job_id))

    def _refuse(self, pending: Pending, exc: EngineError) -> None:
        pending.refused = True
        pending.frames.clear()
        self.reply(exc)

    def _abandon_pending(self, why: str) -> None:
        pending, self.pending = self.pending, None
        if pending is None or pending.request is None:
            return
        self.server.pending_ids.pop(pending.request.id, None)
        if not pending.refused:
            got = len(pending.frames)
            text = f"the edit announced {pending.request.frames} binary frame(s) but {why} after {got}: dropped"
            self.reply(BadRequest(text, job_id=pending.request.id))


@dataclass(eq=False)
class _Outgoing:
    text: str
    binary: bytes | None
    stale: bool = False  # a status asked again since this one was made: made anew when it is sent


@dataclass(eq=False)
class Worker:
    """One device: its thread, its backend (own model copy and caches) and what it is doing."""

    index: int
    loader: Callable[[], Backend]
    thread: DeviceThread
    backend: Backend | None = None
    job: Job | None = None
    stage: str | None = None
    done: int = 0  # jobs it ended
    task: asyncio.Task | None = None

    def describe(self) -> dict:
        """For `status.workers`: the device, the state, the running job's user and stage (never its id:
        ids let anyone cancel)."""
        info = (
            self.backend.describe() if self.backend is not None else {"state": EngineState.LOADING, "device": "loading"}
        )
        entry: dict = {
            "index": self.index,
            "device": info.get("device", "cpu"),
            "state": info.get("state", EngineState.READY),
        }
        job = self.job
        entry["job"] = None if job is None else {"user": job.user or None, "stage": self.stage}
        entry["jobs_done"] = self.done
        if self.backend is not None:
            entry["cache"] = self.backend.cache_stats()
        return entry


class EngineServer:
    def __init__(
        self,
        config: ServerConfig,
        loader: Callable[[], Backend] | Sequence[Callable[[], Backend]],
        version: str = "0",
    ):
        self.config = config
        self.version = version
        self.sessions: set[Session] = set()
        self.pending_ids: dict[str, Session] = {}
        self.stats: Counter[str] = Counter()
        self.draining = False  # stopping: no new connections or jobs; the queued ones finish (stop)
        self.closing = False  # past the drain: what is left is cancelled
        self._drain_deadline = 0.0
        self.tokens = config.tokens or (TokenBook.single(config.token) if config.token else None)
        # one loader per worker; the first may fetch model files (provision.py) before the others load
        self._loaders = list(loader) if isinstance(loader, Sequence) else [loader]
        self._loader = self._loaders[0]
        self.queue = Scheduler(
            config.max_queue, config.max_queue_bytes, self._positions, len(self._loaders), config.steal_after
        )
        self.workers: list[Worker] = []
        self._server = None
        self._tasks: list[asyncio.Task] = []
        self._trim: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._downloaded = False  # a status said `downloading`: the end of loading is announced
        self.loaded = asyncio.Event()
        self.throttle = Throttled(log, config.log_interval)
        self.admission = Admission(
            config.max_connections,
            config.max_handshakes,
            config.max_connections_per_user,
            drop=self._drop_handshake,
            full=lambda: self.throttle.note("full", "refused {n} connection(s): the engine holds all it may"),
        )
        self.memory = MemoryBudget(config.memory_budget, self._held)
        self._trimmed = 0.0  # when memory was last given back after a client left

    @property
    def backend(self) -> Backend | None:
        """The first worker's backend (what status reports the models of)."""
        return self.workers[0].backend if self.workers else None

    # ------------------------------------------------------------------ lifecycle

    async def start(self, sock=None) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop.set_exception_handler(self._loop_exception)
        self.admission.max_connections = connection_cap(self.config.max_connections, raise_file_limit())
        self.workers = [Worker(i, load, DeviceThread(f"ffclip-worker-{i}")) for i, load in enumerate(self._loaders)]
        self._tasks = [asyncio.create_task(self._load_all()), asyncio.create_task(self._expire_requests())]
        if self.tokens is not None and self.tokens.path is not None:
            self._tasks.append(asyncio.create_task(self._watch_tokens()))
        where = {"sock": sock} if sock is not None else {"host": self.config.host, "port": self.config.port}
        self._server = await serve(
            self._handle,
            process_request=self._check_request,
            create_connection=self._connection,
            compression=None,  # no permessage-deflate: pixels do not compress well, bombs would
            max_size=max(self.config.max_frame, self.config.max_text) + 256,
            max_queue=4,
            backlog=ACCEPT_BATCH,  # accepted at once, before the connection cap can close any
            open_timeout=self.config.handshake_timeout,
            ping_interval=self.config.ping_interval,
            ping_timeout=self.config.ping_timeout,
            server_header="ffclip-engine",
            ssl=self.config.tls,
            **where,
        )

    @property
    def port(self) -> int:
        assert self._server is not None
        return self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Drain (refuse new connections and jobs, let the queued and running ones finish within
        `drain_grace`), then end what is left with one terminal message each, flush, close connections."""
        if self.closing or self.draining:
            return
        await self._drain()
        self.closing = True
        log.info("shutting down")
        halt = getattr(self._loader, "stop", None)  # a loader that downloads model files stops there
        if callable(halt):
            halt()
        if self._server is not None:
            self._server.close(close_connections=False)
        for job in list(self.queue.waiting):
            self.queue.remove(job)
            self._finish(job, msg.error("cancelled", "the engine is shutting down", job.id), "cancelled")
        running = list(self.queue.running.values())
        for job in running:
            job.cancel_event.set()
        deadline = time.monotonic() + self.config.shutdown_grace
        while not all(job.done for job in running) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        for job in running:
            self._finish(job, msg.error("cancelled", "the engine is shutting down", job.id), "cancelled")
        for task in (*self._tasks, *(w.task for w in self.workers), self._trim):
            if task is not None:
                task.cancel()
        deadline = time.monotonic() + 2.0
        while not all(s.idle for s in self.sessions) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        await asyncio.gather(
            *(s.ws.close(1001, "the engine is shutting down") for s in list(self.sessions)),
            return_exceptions=True,
        )
        if self._server is not None:
            try:
                await asyncio.wait_for(self._server.wait_closed(), 5.0)
            except TimeoutError:
                log.warning("some connections did not close in time")
        for worker in self.workers:
            worker.thread.stop()

    async def _drain(self) -> None:
        """Stop taking work but finish the jobs taken: /readyz and status say `draining` (a load
        balancer sends new clients elsewhere, clients resend refused edits there)."""
        self.draining = True
        grace = self.config.drain_grace
        self._drain_deadline = time.monotonic() + grace
        jobs = len(self.queue.waiting) + len(self.queue.running)
        log.info("draining: %d job(s) to finish within %g s; new connections and edits are refused", jobs, grace)
        self._broadcast_status(droppable=False)
        while (self.queue.waiting or self.queue.running) and time.monotonic() < self._drain_deadline:
            await asyncio.sleep(0.05)
        left = len(self.queue.waiting) + len(self.queue.running)
        if left:
            log.info("drain grace over: %d job(s) left are cancelled", left)
        else:
            log.info("drained: every job finished")

    def hurry(self) -> None:
        """End the drain now (a second SIGTERM/SIGINT): what is left is cancelled."""
        self._drain_deadline = 0.0

    def check_open(self, job_id: str) -> None:
        """Refuse a new edit while draining or stopping (`busy`; draining ones flagged for clients)."""
        if self.closing:
            raise EngineError("busy", "the engine is shutting down", job_id)
        if self.draining:
            raise Draining("the engine is draining (it stops after its queued jobs): send the edit again", job_id)

    def readiness(self) -> tuple[bool, str]:
        """(whether it accepts edits now, a one-line reason) for `GET /readyz`."""
        if self.closing or self.draining:
            return False, _NOT_READY[EngineState.DRAINING if not self.closing else "stopping"]
        states = [w.backend.describe().get("state") for w in self.workers if w.backend is not None]
        if EngineState.READY in states:
            return True, "ready"
        state = states[0] if states else self._loading_details().get("state", EngineState.LOADING)
        return False, _NOT_READY.get(state, f"{state}: not ready")

    # ------------------------------------------------------------------ connections

    def _connection(self, protocol, server, **kwargs) -> GuardedConnection:
        frame_filter = FrameFilter(self.config.max_frame, self.config.max_text)
        connection = GuardedConnection(protocol, server, frame_filter=frame_filter, admission=self.admission, **kwargs)
        frame_filter.admit = lambda n: self._admit_bytes(connection, n)
        return connection

    def _drop_handshake(self, connection: GuardedConnection) -> None:
        """The oldest handshake in progress gives way to a new connection (limits.Admission)."""
        self.throttle.note("handshakes", "dropped {n} unfinished handshake(s) to make room for new connections")
        asyncio.get_running_loop().call_soon(connection.transport.abort)  # outside the new one's accept

    def _loop_exception(self, loop: asyncio.AbstractEventLoop, context: dict) -> None:
        """asyncio logs a refused accept (out of file descriptors) with a traceback each time it
        retries: once per interval with a count instead."""
        if str(context.get("message", "")).startswith("socket.accept() out of system resource"):
            self.throttle.note("accept", "could not accept {n} connection(s): the process is out of file descriptors")
        else:
            loop.default_exception_handler(context)

    def _check_request(self, connection: GuardedConnection, request):
        origins = request.headers.get_all("Origin")  # get() would raise on a repeated header
        if origins:
            # Browsers always send Origin; native clients (the plug-in, scripts) do not. Refusing it
            # keeps any web page the user visits from driving the engine (or probing it).
            self.throttle.note("origin", "refused {n} connection(s) from web pages", f"Origin: {origins[0][:100]!r}")
            return connection.respond(HTTPStatus.FORBIDDEN, "web pages may not connect to the FFCLIP engine\n")
        probe = urlsplit(request.path).path
        if probe in ("/healthz", "/readyz") and not request.headers.get_all("Upgrade"):
            self.admission.handshaken(connection)  # answered at once; closed after the response
            ready, reason = self.readiness() if probe == "/readyz" else (True, "ok")
            return connection.respond(HTTPStatus.OK if ready else HTTPStatus.SERVICE_UNAVAILABLE, reason + "\n")
        if self.draining or self.closing:  # a balancer retries it on another engine (deploy/haproxy)
            self.admission.handshaken(connection)
            return connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, _NOT_READY[EngineState.DRAINING] + "\n")
        connection.forwarded_for = self._forwarded_for(connection, request.headers.get_all("X-Forwarded-For"))
        authorization = request.headers.get_all("Authorization")  # two of them: neither counts
        connection.token_sent = bool(authorization)
        challenges = request.headers.get_all(identity.CHALLENGE_HEADER)
        if len(challenges) == 1 and identity.is_challenge(challenges[0]):
            connection.challenge = challenges[0]
        connection.identity = self._identify(authorization[0] if len(authorization) == 1 else None)
        connection.quota_key = self._quota_key(connection)
        self.admission.handshaken(connection)
        return None

    def _quota_key(self, connection: GuardedConnection) -> Hashable:
        """Whom a connection's quotas count against: its token's owner; without tokens, its address
        (behind a trusted proxy, the client's address that the proxy names)."""
        if self.tokens is not None and connection.identity is not None:
            return ("user", connection.identity.owner)
        if connection.forwarded_for is not None:
            return ("address", connection.forwarded_for)
        address = connection.remote_address
        return ("address", address[0] if address else "?")

    def _forwarded_for(self, connection: GuardedConnection, headers: list[str]) -> str | None:
        """The client's address from X-Forwarded-For, only from a trusted proxy (anyone else could
        name any address): the last entry, the one the proxy added itself."""
        address = connection.remote_address
        if not headers or not address or address[0] not in self.config.trusted_proxies:
            return None
        last = headers[-1].split(",")[-1].strip()
        try:
            return str(ipaddress.ip_address(last))
        except ValueError:
            return None

    def _identify(self, header: str | None) -> Identity | None:
        """Who the handshake's token belongs to (constant-time, tokens.py); everyone is the same
        anonymous user on an engine without tokens."""
        if self.tokens is None:
            return Identity("", b"")
        self.tokens.refresh()  # an edited tokens file counts from the next connection on
        return self.tokens.identify(header)

    async def _handle(self, ws: GuardedConnection) -> None:
        if ws.identity is None:
            if ws.token_sent:
                self.throttle.note("token", "refused {n} client(s) whose token is not accepted", _address(ws))
                hint = (
                    "this engine does not accept the token sent in 'Authorization: Bearer <token>' "
                    "(a wrong one, or revoked)"
                )
            else:
                self.throttle.note("no-token", "refused {n} client(s) without a token", _address(ws))
                hint = "this engine needs a token: send the header 'Authorization: Bearer <token>'"
            with contextlib.suppress(ConnectionClosed):
                await ws.send(msg.encode(msg.error("unauthorized", hint)))
                await ws.close(1008, "unauthorized")
            return
        if self.closing:
            await ws.close(1001, "the engine is shutting down")
            return
        if not self.admission.joins(ws, ws.quota_key):
            await self._refuse_over_quota(ws)
            return
        session = Session(self, ws)
        self.sessions.add(session)
        log.info("client %s connected%s (%d connected)", session.peer, _as(session.user), len(self.sessions))
        try:
            await session.run()
        finally:
            self.sessions.discard(session)
            self._abandon(session)
            log.info("client %s%s disconnected", session.peer, _as(session.user))
            session.held_bytes()
            self._give_back_memory(session)

    async def _refuse_over_quota(self, ws: GuardedConnection) -> None:
        limit = self.config.max_connections_per_user
        whose = "this token" if self.tokens is not None else "this address"
        self.throttle.note("per-user", f"refused {{n}} connection(s) over the limit of {limit} per user", _address(ws))
        text = f"{whose} already holds {limit} connections to the engine (its limit): close one and try again"
        with contextlib.suppress(ConnectionClosed):
            await ws.send(msg.encode(msg.error("busy", text)))
            await ws.close(1013, "too many connections")

    def _give_back_memory(self, session: Session) -> None:
        """A client that held much leaves: give the memory back to the OS (at most every few seconds:
        it costs a collection and a malloc_trim)."""
        if session.peak_held < (16 << 20) and session.messages < 10_000:
            return
        now = time.monotonic()
        if now - self._trimmed < 5.0 or not (self._trim is None or self._trim.done()):
            return
        self._trimmed = now
        self._trim = asyncio.create_task(asyncio.to_thread(release_memory))

    # ------------------------------------------------------------------ memory

    def _held(self) -> Counter:
        """Bytes held for clients now, per quota key (limits.MemoryBudget)."""
        held: Counter = Counter()
        for connection in list(self.admission.open):
            size = connection.frame_filter.inflight
            if connection.session is not None:
                size += connection.session.held_bytes()
            if size:
                held[connection.quota_key] += size
        return held

    def _admit_bytes(self, connection: GuardedConnection, size: int) -> bool:
        """Whether `size` more bytes of a binary frame from `connection` fit the memory budget; when
        they do not, idle connections' last images go first (the user's own, then the least recently
        used of anyone's)."""
        key = connection.quota_key
        refusal = self.memory.refusal(key, size)
        if refusal is not None and self._forget_images(key, size):
            refusal = self.memory.refusal(key, size)
        connection.memory_refusal = refusal
        if refusal is not None:
            self.throttle.note("memory", "refused {n} frame(s) over the memory budget", _address(connection))
        return refusal is None

    def _forget_images(self, key: Hashable, size: int) -> bool:
        """Forget idle last images until `size` bytes fit; whether any was forgotten."""
        idle = sorted(
            (s for s in self.sessions if s.last_frames is not None and s.ws.quota_key is not None),
            key=lambda s: (s.ws.quota_key != key, s.used),
        )
        forgot = False
        for session in idle:
            if self.memory.refusal(key, size) is None:
                break
            forgot = session.forget_image() or forgot
        return forgot

    async def _expire_requests(self) -> None:
        """Half-sent edits (an announcement whose frames stopped coming) expire (Session.expire)."""
        timeout = self.config.request_timeout
        while True:
            await asyncio.sleep(min(1.0, timeout / 4))
            now = time.monotonic()
            for session in list(self.sessions):
                session.expire(now, timeout)

    async def _watch_tokens(self) -> None:
        """Look at the tokens file now and then: a revoked token's connections are closed."""
        assert self.tokens is not None
        while True:
            await asyncio.sleep(self.config.tokens_interval)
            if self.tokens.refresh():
                self._revoke()

    def _revoke(self) -> None:
        assert self.tokens is not None
        for session in list(self.sessions):
            if session.identity is not None and not session.revoked and not self.tokens.holds(session.identity):
                log.warning("closing client %s (%s): its token was revoked", session.peer, session.user)
                session.revoked = True
                session.deliver(msg.error("unauthorized", "this engine no longer accepts your token"))
                self._abandon(session)
                asyncio.get_running_loop().create_task(self._close_revoked(session))

    async def _close_revoked(self, session: Session) -> None:
        deadline = time.monotonic() + 2.0  # let the error reach the client first
        while not session.idle and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        session.closed = True
        await session.ws.close(1008, "unauthorized: token revoked")

    def _abandon(self, session: Session) -> None:
        """A client left: its queued jobs go, its running job stops at the next stage."""
        if session.pending is not None and session.pending.request is not None:
            self.pending_ids.pop(session.pending.request.id, None)
        for job in list(session.jobs):
            if job.done:
                continue
            job.cancel_requested = True
            if job.state == "queued" and self.queue.remove(job):
                job.finish(msg.cancelled(job.id))  # delivered nowhere: the session is closed
                self.stats["abandoned"] += 1
            else:
                job.cancel_event.set()

    # ------------------------------------------------------------------ jobs

    def id_in_use(self, job_id: str) -> bool:
        return job_id in self.pending_ids or job_id in self.queue.by_id

    def submit(
        self, session: Session, request: EditAnnouncement, frames: list[bytes], memo: dict | None = None
    ) -> None:
        try:
            _check_frames(request, frames)
            self.check_open(request.id)
            selection = frames[1] if request.params.selection else None
            memo = memo if memo is not None else {}
            job = Job(request, frames[0], selection, session, memo=memo, user=session.user, connection=id(session))
            if request.params.supersede:
                self._supersede(session)
            try:
                self.queue.submit(job)
            except QueueFull as exc:
                raise EngineError("busy", str(exc), request.id) from None
        except EngineError as exc:
            session.reply(exc)
            self.stats["refused"] += 1
            return
        session.jobs.add(job)
        session.last_frames = (request.image, frames, job.memo)
        session.used = time.monotonic()
        self.stats["accepted"] += 1
        log.info("job %s queued%s (%d waiting)", job.id, _as(job.user), len(self.queue))
        if len(self.workers) > 1 and "photo" not in memo:
            memo["photo"] = None  # being computed: the job waits for its key (scheduler.py)
            asyncio.get_running_loop().create_task(self._key_photo(memo, frames[0]))

    async def _key_photo(self, memo: dict, frame: bytes) -> None:
        """The frame's SHA-256, off the event loop (50 ms for a 12 MP photo), for routing."""
        try:
            memo["photo"] = await asyncio.to_thread(lambda: hashlib.sha256(frame).hexdigest())
        finally:
            if memo.get("photo") is None:
                memo["photo"] = ""  # never leave a job unroutable: "" is a photo no worker holds yet
            self.queue.changed()

    def _supersede(self, session: Session) -> None:
        """A newer request of the same connection takes over: its earlier jobs that have not ended
        are cancelled (waiting ones at once, the running one at its next stage or level)."""
        for job in list(session.jobs):
            if not job.done:
                self.cancel(job.id)

    def cancel(self, job_id: str) -> None:
        """Cancel a job of any connection (ids are unguessable); unknown or ended ids are ignored."""
        holder = self.pending_ids.get(job_id)
        if holder is not None:
            holder.cancel_pending(job_id)
            return
        job = self.queue.by_id.get(job_id)
        if job is None or job.done:
            return
        job.cancel_requested = True
        if job.state == "queued":
            self.queue.remove(job)
            self._finish(job, msg.cancelled(job.id), "cancelled")
        else:
            job.cancel_event.set()

    def _positions(self, jobs: list[Job]) -> None:
        if self.closing:  # every waiting job is about to end anyway
            return
        for job in jobs:
            job.owner.deliver(msg.queued(job.id, job.position or 0))

    def _finish(self, job: Job, message: dict, outcome: str, binary: bytes | None = None) -> None:
        if job.finish(message, binary):
            self.stats[outcome] += 1

    async def _load_all(self) -> None:
        """Load every worker's backend: the first one first (its loader may fetch the model files
        every worker then reads), the others together; each worker starts taking jobs once loaded."""
        announcer = asyncio.create_task(self._announce_downloads())
        try:
            await self._load(self.workers[0])
        finally:
            announcer.cancel()
        self.loaded.set()
        if self._downloaded:  # clients saw `downloading`: tell them how it ended
            self._broadcast_status(droppable=False)
        await asyncio.gather(*(self._load(w) for w in self.workers[1:]))

    async def _load(self, worker: Worker) -> None:
        try:
            worker.backend = await worker.thread.submit(worker.loader)
        except Exception as exc:  # noqa: BLE001 - the daemon keeps running and says why
            log.exception("loading the models of worker %d failed", worker.index)
            detail = msg.scrub_paths(f"{type(exc).__name__}: {exc}")[:300]
            worker.backend = UnavailableBackend(
                "internal", f"the engine failed to load its models ({detail}); see its log", {"error": detail}
            )
        log.info("worker %d: engine state: %s", worker.index, worker.backend.describe())
        worker.task = asyncio.create_task(self._work(worker))

    async def _work(self, worker: Worker) -> None:
        while True:
            job = await self.queue.next(worker.index)
            job.worker, worker.job, worker.stage = worker.index, job, None
            moved = "" if job.moved is None else f" (moved: its photo's worker had {job.moved} jobs ahead)"
            log.info("job %s started on worker %d%s%s", job.id, worker.index, _as(job.user), moved)
            try:
                await self._run(worker, job)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - the worker must survive anything
                log.exception("worker failure on job %s", job.id)
                self._finish(job, msg.error("internal", "the engine failed while editing", job.id), "failed")
            finally:
                worker.job, worker.done = None, worker.done + 1
                self.queue.release(worker.index, job)

    async def _run(self, worker: Worker, job: Job) -> None:
        assert worker.backend is not None
        started = time.monotonic()
        relay = self._relay(worker, job)
        backend = worker.backend
        try:
            result = await worker.thread.submit(
                backend.run, job.request, job.image, job.selection, relay, job.cancel_event.is_set, job.memo
            )
        except EngineError as exc:
            if job.cancel_requested:
                self._finish(job, msg.cancelled(job.id), "cancelled")
            elif exc.code == "cancelled":
                self._finish(job, msg.error("cancelled", "the engine is shutting down", job.id), "cancelled")
            else:
                self._finish(job, msg.error(exc.code, exc.message, job.id), "failed")
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001
            log.exception("job %s failed", job.id)
            self._finish(job, msg.error("internal", "the engine failed while editing; see its log", job.id), "failed")
        else:
            if job.cancel_requested:  # asked after the last stage: the client no longer wants it
                self._finish(job, msg.cancelled(job.id), "cancelled")
            else:
                result.id, result.seconds = job.id, time.monotonic() - started
                self._finish(job, result.to_message(), "done", result.rgba)
                log.info(
                    "job %s done on worker %d in %.2f s (ran %s)",
                    job.id,
                    worker.index,
                    result.seconds,
                    ",".join(result.stages),
                )
            del result
        if not self.queue.waiting and (self._trim is None or self._trim.done()):
            self._trim = asyncio.create_task(self._release_when_idle())

    async def _release_when_idle(self) -> None:
        """Give freed memory back to the OS once the engine has been idle a moment (it costs about a
        second with torch loaded, so never between two queued jobs)."""
        await asyncio.sleep(1.0)
        if not self.queue.waiting and not self.queue.running and self.workers:
            await self.workers[0].thread.submit(release_memory)  # malloc_trim is process-wide

    def _relay(self, worker: Worker, job: Job) -> Callable[[str, float], None]:
        """The pipeline's progress callback (device thread) → progress messages (event loop)."""
        loop = self._loop
        interval = self.config.progress_interval
        last = {"stage": None, "time": 0.0}

        def relay(stage: str, value: float) -> None:
            now = time.monotonic()
            inside = 0.0 < value < 1.0
            if inside and stage == last["stage"] and now - last["time"] < interval:
                return
            last["stage"], last["time"] = stage, now
            with contextlib.suppress(RuntimeError):  # the loop is closed: shutting down
                loop.call_soon_threadsafe(self._progress, worker, job, stage, float(value))

        return relay

    def _progress(self, worker: Worker, job: Job, stage: str, value: float) -> None:
        if worker.job is job:
            worker.stage = stage
        if job.done or job.cancel_requested or stage not in STAGES:
            return
        job.owner.deliver(msg.progress(job.id, stage, value), droppable=0.0 < value < 1.0)

    # ------------------------------------------------------------------ status

    def _loading_details(self) -> dict:
        """What a loader that fetches model files says about itself (see bridge/provision.py)."""
        describe = getattr(self._loader, "describe", None)
        if not callable(describe):
            return {}
        try:
            return describe() or {}
        except Exception:  # noqa: BLE001 - a status message must never fail
            log.debug("the loader's description failed", exc_info=True)
            return {}

    async def _announce_downloads(self) -> None:
        """While the loader downloads, push a status message to every client now and then (edits
        wait in the queue meanwhile, and their clients show the progress)."""
        last = None
        while True:
            await asyncio.sleep(self.config.download_status_interval)
            details = self._loading_details()
            if (self._downloaded or details.get("state") == EngineState.DOWNLOADING) and details != last:
                self._broadcast_status()
            last = details

    def _broadcast_status(self, droppable: bool = True) -> None:
        message = self.status_message()
        for session in list(self.sessions):
            session.deliver(message, droppable=droppable)

    def greeting(self, challenge: str | None) -> dict:
        """The status a connection opens with; with its proof of identity when the client challenged."""
        status = self.status_message()
        if challenge is not None and self.config.identity_key:
            status["proof"] = identity.proof(self.config.identity_key, challenge)
        return status

    def status_message(self) -> dict:
        backend = self.backend
        if backend is None:
            info: dict = {"state": EngineState.LOADING, "models": {"state": EngineState.LOADING}, "device": "loading"}
            info.update(self._loading_details())
            # a client told `downloading` is told how it ended, too (see _load_all)
            self._downloaded = self._downloaded or info["state"] == EngineState.DOWNLOADING
            cache: dict = {}
        else:
            info, cache = backend.describe(), self._cache_stats()
        models = info.get("models", {})
        workers = [w.describe() for w in self.workers]
        devices = [str(w["device"]) for w in workers if w["state"] != EngineState.LOADING] or [
            info.get("device", "cpu")
        ]
        fields = {
            "version": self.version,
            "state": EngineState.DRAINING if self.draining else info.get("state", EngineState.READY),
            "device": ",".join(devices) if len(workers) > 1 else info.get("device", "cpu"),
            "profile": models.get("profile"),
            "untrained": bool(models.get("untrained", False)),
            "precision": models.get("precision"),  # e.g. "bf16 previews, fp32 Apply" (engine/precision.py)
            "models": models,
            "queue": len(self.queue),
            "running": bool(self.queue.running),
            "cache": cache,
            "jobs": dict(self.stats),
            "clients": len(self.sessions),
            "auth": self.tokens is not None,
            "limits": {
                "max_pixels": self.config.max_pixels,
                "max_frame_bytes": self.config.max_frame,
                "max_text_bytes": self.config.max_text,
                "max_queue": self.config.max_queue,
                "max_connections": self.admission.max_connections,
                "max_connections_per_user": self.config.max_connections_per_user,
                "request_timeout_s": self.config.request_timeout,
                "memory_budget_bytes": self.memory.budget,
            },
            "memory": {"rss_bytes": rss_bytes(), "clients_bytes": sum(self._held().values()), **info.get("memory", {})},
            "workers": workers,
            "routing": dict(self.queue.stats),
        }
        if self.tokens is not None:
            fields["users"] = len(self.tokens.owners)
        if "download" in info:
            fields["download"] = info["download"]
        if "domains" in info:  # per domain: ready, loading, available, missing (and what to fetch), failed
            fields["domains"] = info["domains"]
        return msg.status(msg.scrub_paths(fields))

    def _cache_stats(self) -> dict:
        """The workers' caches together (each worker also reports its own in `workers`)."""
        total: dict = {}
        for worker in self.workers:
            if worker.backend is None:
                continue
            for name, stats in worker.backend.cache_stats().items():
                into = total.setdefault(name, {})
                for key, value in stats.items():
                    if isinstance(value, int | float) and not isinstance(value, bool):
                        into[key] = into.get(key, 0) + value
        return total


_NOT_READY = {  # /readyz's one-line reasons
    EngineState.LOADING: "loading: the models are loading",
    EngineState.DOWNLOADING: "downloading: the engine fetches its model files",
    EngineState.MISSING: "missing: model files are absent (ffclip-engine models fetch)",
    EngineState.FAILED: "failed: the models could not be loaded; see the engine's log",
    EngineState.DRAINING: "draining: the engine finishes its jobs, then stops; connect again for another engine",
    "stopping": "stopping: the engine is shutting down",
}


def _as(user: str) -> str:
    return f" as {user}" if user else ""


def _address(ws: GuardedConnection) -> str:
    address = ws.remote_address
    where = f"{address[0]}:{address[1]}" if address else "?"
    return f"{ws.forwarded_for} via {where}" if ws.forwarded_for else where


def _check_frames(request: EditAnnouncement, frames: list[bytes]) -> None:
    """Byte counts and PNG header against the announcement (the decoder checks the rest)."""
    spec, data = request.image, frames[0]
    if spec.format == "rgba8":
        if len(data) != spec.pixels * 4:
            raise BadRequest(
                f"the image frame has {len(data)} bytes; {spec.width}x{spec.height} RGBA8 needs {spec.pixels * 4}",
                "bad_image",
                request.id,
            )
    else:
        try:
            width, height = png_size(data)
        except PNGError:
            raise BadRequest("the image frame is not a PNG file", "bad_image", request.id) from None
        if (width, height) != (spec.width, spec.height):
            raise BadRequest(
                f"the PNG is {width}x{height} but the edit announced {spec.width}x{spec.height}",
                "bad_image",
                request.id,
            )
    if request.params.selection and len(frames[1]) != spec.pixels:
        raise BadRequest(
            f"the selection frame has {len(frames[1])} bytes; a {spec.width}x{spec.height} A8 mask needs {spec.pixels}",
            "bad_image",
            request.id,
        )


def rss_bytes() -> int | None:
    """Resident memory of this process (Linux); None elsewhere."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError, AttributeError):
        return None
