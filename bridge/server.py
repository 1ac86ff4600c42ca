"""The websocket server: connections, the protocol state machine, the job queue and its worker.

Threads: everything here runs on the asyncio event loop except `Backend.run`, which runs on the
single device thread. The worker never waits on a client: results and progress are queued on the
client's own outbox and a per-connection sender task writes them, so a slow or vanished client only
ever delays itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
import time
import weakref
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from ffclip.plugin.png import PNGError, png_size
from ffclip.plugin.protocol import STAGES

from . import messages as msg
from .backend import Backend, JobError, Outcome, UnavailableBackend
from .framing import FrameFilter
from .jobs import DeviceThread, Job, JobQueue, QueueFull, release_memory
from .messages import EditSpec, RequestError

log = logging.getLogger("ffclip.bridge")

DEFAULT_MAX_PIXELS = 40_000_000  # 160 MB as RGBA8; raise with --max-pixels
_PROGRESS_BACKLOG = 64  # queued messages beyond which a client's in-stage progress is skipped


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8765
    token: str | None = None
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_queue: int = 32  # jobs waiting (the running one not counted)
    max_queue_bytes: int = 2 << 30  # pixels held by waiting jobs
    max_text: int = 1 << 20  # a JSON message
    max_backlog: int = 1 << 30  # bytes waiting to be sent to one client before it is dropped
    progress_interval: float = 0.05  # seconds between two progress messages within a stage
    ping_interval: float | None = 20.0
    ping_timeout: float | None = 20.0
    shutdown_grace: float = 10.0  # how long a running job may take to reach its next stage

    @property
    def max_frame(self) -> int:
        """The largest binary frame: an RGBA8 image of max_pixels, plus room for PNG overhead."""
        return self.max_pixels * 4 + (1 << 16)


class GuardedConnection(ServerConnection):
    """A connection whose incoming bytes pass through a FrameFilter (see framing.py)."""

    def __init__(self, *args, frame_filter: FrameFilter, **kwargs):
        super().__init__(*args, **kwargs)
        self.frame_filter = frame_filter
        self.authorized = False

    def data_received(self, data: bytes) -> None:
        data = self.frame_filter.feed(data)
        if data:
            super().data_received(data)


@dataclass
class Pending:
    """An accepted or refused `edit` announcement whose binary frames are still arriving."""

    spec: EditSpec | None  # None: refused, its frames are read and discarded
    remaining: int
    frames: list[bytes] = field(default_factory=list)
    refused: bool = False


class Session:
    """One client connection: parses its messages, owns its jobs, writes its replies in order."""

    def __init__(self, server: EngineServer, ws: GuardedConnection):
        self.server = server
        self.ws = ws
        self.filter = ws.frame_filter
        self.jobs: weakref.WeakSet[Job] = weakref.WeakSet()
        self.pending: Pending | None = None
        self.closed = False
        self._outbox: deque[tuple[str, bytes | None]] = deque()
        self._wake = asyncio.Event()
        self._backlog = 0

    # ------------------------------------------------------------------ output

    def deliver(self, message: dict, binary: bytes | None = None, droppable: bool = False) -> None:
        """Queue a message (and its binary frame); never blocks. Droppable = in-stage progress."""
        if self.closed:
            return
        if droppable and len(self._outbox) >= _PROGRESS_BACKLOG:
            return
        text = msg.encode(message)
        size = len(text) + len(binary or b"")
        if self._backlog + size > self.server.config.max_backlog:
            log.warning("client %s reads too slowly (%d bytes waiting): dropping it", self.peer, self._backlog)
            self.closed = True
            asyncio.get_running_loop().create_task(self.ws.close(1008, "client too slow"))
            return
        self._outbox.append((text, binary))
        self._backlog += size
        self._wake.set()

    @property
    def idle(self) -> bool:
        return not self._outbox

    @property
    def peer(self) -> str:
        address = self.ws.remote_address
        return f"{address[0]}:{address[1]}" if address else "?"

    async def _send_loop(self) -> None:
        with contextlib.suppress(ConnectionClosed):  # the receive loop notices the close too
            await self._send_forever()

    async def _send_forever(self) -> None:
        while True:
            while not self._outbox:
                self._wake.clear()
                await self._wake.wait()
            text, binary = self._outbox[0]
            await self.ws.send(text)
            if binary is not None:
                await self.ws.send(binary)
            self._outbox.popleft()
            self._backlog -= len(text) + len(binary or b"")

    def reply(self, exc: RequestError) -> None:
        self.deliver(msg.error(exc.code, exc.message, exc.job_id))

    # ------------------------------------------------------------------ input

    async def run(self) -> None:
        sender = asyncio.create_task(self._send_loop())
        self.deliver(self.server.status_message())
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
        oversize = self.filter.oversize_of(data)
        if oversize is not None and oversize[0] == "text":
            self._abandon_pending("a text message arrived instead")
            self.reply(
                RequestError(
                    "too_large",
                    f"a text message of {oversize[1]} bytes exceeds the limit of "
                    f"{self.server.config.max_text} bytes; it was discarded",
                )
            )
        elif isinstance(data, str):
            self.on_text(data)
        else:
            self.on_binary(data, oversize[1] if oversize else None)

    def on_text(self, text: str) -> None:
        self._abandon_pending("a text message arrived instead")
        try:
            message = msg.parse_json(text)
            kind = message["type"]
            if kind == "edit":
                self.on_edit(message)
            elif kind == "cancel":
                self.server.cancel(msg.job_id_of(message))
            elif kind == "status":
                self.deliver(self.server.status_message())
            else:
                raise RequestError("bad_request", f"unknown message type {kind[:40]!r}")
        except RequestError as exc:
            self.reply(exc)

    def on_edit(self, message: dict) -> None:
        frames = msg.announced_frames(message)
        try:
            spec = msg.parse_edit(message, self.server.config.max_pixels)
            if self.server.closing:
                raise RequestError("busy", "the engine is shutting down", spec.id)
            if self.server.id_in_use(spec.id):  # no id in the reply: that id belongs to the other job
                raise RequestError("bad_request", f"id {spec.id!r} is already used by a job in progress")
        except RequestError as exc:
            self.reply(exc)
            if frames:
                self.pending = Pending(None, frames, refused=True)
            return
        self.pending = Pending(spec, spec.frames)
        self.server.pending_ids[spec.id] = self

    def on_binary(self, data: bytes, oversize: int | None) -> None:
        pending = self.pending
        limit = self.server.config.max_frame
        if pending is None:
            if oversize is not None:
                text = f"a binary frame of {oversize} bytes exceeds the limit of {limit} bytes; it was discarded"
                self.reply(RequestError("too_large", text))
            else:
                self.reply(RequestError("bad_request", "a binary frame without an edit announcement was discarded"))
            return
        pending.remaining -= 1
        if pending.spec is not None and not pending.refused:
            if oversize is not None:
                text = f"a binary frame of {oversize} bytes exceeds the limit of {limit} bytes; it was discarded"
                self._refuse(pending, RequestError("too_large", text, pending.spec.id))
            else:
                pending.frames.append(data)
        if pending.remaining == 0:
            self.pending = None
            if pending.spec is not None:
                self.server.pending_ids.pop(pending.spec.id, None)
                if not pending.refused:
                    self.server.submit(self, pending.spec, pending.frames)

    def cancel_pending(self, job_id: str) -> None:
        pending = self.pending
        if pending is not None and pending.spec is not None and pending.spec.id == job_id:
            self.server.pending_ids.pop(job_id, None)
            if not pending.refused:
                pending.refused = True
                pending.frames.clear()
                self.deliver(msg.cancelled(job_id))

    def _refuse(self, pending: Pending, exc: RequestError) -> None:
        pending.refused = True
        pending.frames.clear()
        self.reply(exc)

    def _abandon_pending(self, why: str) -> None:
        pending, self.pending = self.pending, None
        if pending is None or pending.spec is None:
            return
        self.server.pending_ids.pop(pending.spec.id, None)
        if not pending.refused:
            got = len(pending.frames)
            text = f"the edit announced {pending.spec.frames} binary frame(s) but {why} after {got}: dropped"
            self.reply(RequestError("bad_request", text, pending.spec.id))


class EngineServer:
    def __init__(self, config: ServerConfig, loader: Callable[[], Backend], version: str = "0"):
        self.config = config
        self.version = version
        self.backend: Backend | None = None
        self.sessions: set[Session] = set()
        self.pending_ids: dict[str, Session] = {}
        self.stats: Counter[str] = Counter()
        self.closing = False
        self.queue = JobQueue(config.max_queue, config.max_queue_bytes, self._positions)
        self._loader = loader
        self._server = None
        self._worker: asyncio.Task | None = None
        self._device: DeviceThread | None = None
        self._trim: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.loaded = asyncio.Event()

    # ------------------------------------------------------------------ lifecycle

    async def start(self, sock=None) -> None:
        self._loop = asyncio.get_running_loop()
        self._device = DeviceThread()
        self._worker = asyncio.create_task(self._work())
        where = {"sock": sock} if sock is not None else {"host": self.config.host, "port": self.config.port}
        self._server = await serve(
            self._handle,
            process_request=self._check_request,
            create_connection=self._connection,
            compression=None,  # no permessage-deflate: pixels do not compress well, bombs would
            max_size=max(self.config.max_frame, self.config.max_text) + 256,
            max_queue=4,
            ping_interval=self.config.ping_interval,
            ping_timeout=self.config.ping_timeout,
            server_header="ffclip-engine",
            **where,
        )

    @property
    def port(self) -> int:
        assert self._server is not None
        return self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Refuse new work, end every job with one terminal message, flush, close connections."""
        if self.closing:
            return
        self.closing = True
        log.info("shutting down")
        if self._server is not None:
            self._server.close(close_connections=False)
        for job in list(self.queue.waiting):
            self.queue.remove(job)
            self._finish(job, msg.error("cancelled", "the engine is shutting down", job.id), "cancelled")
        running = self.queue.running
        if running is not None:
            running.cancel_event.set()
            deadline = time.monotonic() + self.config.shutdown_grace
            while not running.done and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            self._finish(running, msg.error("cancelled", "the engine is shutting down", running.id), "cancelled")
        for task in (self._worker, self._trim):
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
        if self._device is not None:
            self._device.stop()

    # ------------------------------------------------------------------ connections

    def _connection(self, protocol, server, **kwargs) -> GuardedConnection:
        frame_filter = FrameFilter(self.config.max_frame, self.config.max_text)
        return GuardedConnection(protocol, server, frame_filter=frame_filter, **kwargs)

    def _check_request(self, connection: GuardedConnection, request):
        origins = request.headers.get_all("Origin")  # get() would raise on a repeated header
        if origins:
            # Browsers always send Origin; native clients (the plug-in, scripts) do not. Refusing it
            # keeps any web page the user visits from driving the engine.
            log.warning("refused a connection from a web page (Origin: %s)", origins[0][:100])
            return connection.respond(HTTPStatus.FORBIDDEN, "web pages may not connect to the FFCLIP engine\n")
        authorization = request.headers.get_all("Authorization")  # two of them: neither counts
        connection.authorized = self._token_ok(authorization[0] if len(authorization) == 1 else None)
        return None

    def _token_ok(self, header: str | None) -> bool:
        token = self.config.token
        if not token:
            return True
        if not header or not header.startswith("Bearer "):
            return False
        return hmac.compare_digest(header[7:].strip().encode(), token.encode())

    async def _handle(self, ws: GuardedConnection) -> None:
        if not ws.authorized:
            log.warning("refused a client without a valid token (%s)", ws.remote_address)
            hint = "this engine needs a token: send the header 'Authorization: Bearer <token>'"
            with contextlib.suppress(ConnectionClosed):
                await ws.send(msg.encode(msg.error("unauthorized", hint)))
                await ws.close(1008, "unauthorized")
            return
        if self.closing:
            await ws.close(1001, "the engine is shutting down")
            return
        session = Session(self, ws)
        self.sessions.add(session)
        log.info("client %s connected (%d connected)", session.peer, len(self.sessions))
        try:
            await session.run()
        finally:
            self.sessions.discard(session)
            self._abandon(session)
            log.info("client %s disconnected", session.peer)

    def _abandon(self, session: Session) -> None:
        """A client left: its queued jobs go, its running job stops at the next stage."""
        if session.pending is not None and session.pending.spec is not None:
            self.pending_ids.pop(session.pending.spec.id, None)
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

    def submit(self, session: Session, spec: EditSpec, frames: list[bytes]) -> None:
        try:
            _check_frames(spec, frames)
            if self.closing:
                raise RequestError("busy", "the engine is shutting down", spec.id)
            job = Job(spec, frames[0], frames[1] if spec.has_selection else None, session)
            try:
                self.queue.submit(job)
            except QueueFull as exc:
                raise RequestError("busy", str(exc), spec.id) from None
        except RequestError as exc:
            session.reply(exc)
            self.stats["refused"] += 1
            return
        session.jobs.add(job)
        self.stats["accepted"] += 1

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

    async def _work(self) -> None:
        assert self._device is not None
        try:
            self.backend = await self._device.submit(self._loader)
        except Exception as exc:  # noqa: BLE001 - the daemon keeps running and says why
            log.exception("loading the models failed")
            detail = msg.scrub_paths(f"{type(exc).__name__}: {exc}")[:300]
            self.backend = UnavailableBackend(
                "internal", f"the engine failed to load its models ({detail}); see its log", {"error": detail}
            )
        self.loaded.set()
        log.info("engine state: %s", self.backend.describe())
        while True:
            job = await self.queue.next()
            try:
                await self._run(job)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - the worker must survive anything
                log.exception("worker failure on job %s", job.id)
                self._finish(job, msg.error("internal", "the engine failed while editing", job.id), "failed")
            finally:
                self.queue.release(job)

    async def _run(self, job: Job) -> None:
        assert self._device is not None and self.backend is not None
        started = time.monotonic()
        relay = self._relay(job)
        try:
            outcome = await self._device.submit(
                self.backend.run, job.spec, job.image, job.selection, relay, job.cancel_event.is_set
            )
        except JobError as exc:
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
                seconds = time.monotonic() - started
                self._finish(job, _result_message(job, outcome, seconds), "done", outcome.rgba)
                log.info("job %s done in %.2f s (ran %s)", job.id, seconds, ",".join(outcome.stages))
            del outcome
        if not self.queue.waiting and (self._trim is None or self._trim.done()):
            self._trim = asyncio.create_task(self._release_when_idle())

    async def _release_when_idle(self) -> None:
        """Give freed memory back to the OS once the engine has been idle a moment (it costs about a
        second with torch loaded, so never between two queued jobs)."""
        await asyncio.sleep(1.0)
        if not self.queue.waiting and self.queue.running is None and self._device is not None:
            await self._device.submit(release_memory)

    def _relay(self, job: Job) -> Callable[[str, float], None]:
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
                loop.call_soon_threadsafe(self._progress, job, stage, float(value))

        return relay

    def _progress(self, job: Job, stage: str, value: float) -> None:
        if job.done or job.cancel_requested or stage not in STAGES:
            return
        job.owner.deliver(msg.progress(job.id, stage, value), droppable=0.0 < value < 1.0)

    # ------------------------------------------------------------------ status

    def status_message(self) -> dict:
        if self.backend is None:
            info: dict = {"state": "loading", "models": {"state": "loading"}, "device": "loading"}
            cache: dict = {}
        else:
            info, cache = self.backend.describe(), self.backend.cache_stats()
        models = info.get("models", {})
        fields = {
            "version": self.version,
            "state": info.get("state", "ready"),
            "device": info.get("device", "cpu"),
            "profile": models.get("profile"),
            "untrained": bool(models.get("untrained", False)),
            "models": models,
            "queue": len(self.queue),
            "running": self.queue.running is not None,
            "cache": cache,
            "jobs": dict(self.stats),
            "clients": len(self.sessions),
            "auth": bool(self.config.token),
            "limits": {
                "max_pixels": self.config.max_pixels,
                "max_frame_bytes": self.config.max_frame,
                "max_text_bytes": self.config.max_text,
                "max_queue": self.config.max_queue,
            },
            "memory": {"rss_bytes": rss_bytes()},
        }
        return msg.status(msg.scrub_paths(fields))


def _check_frames(spec: EditSpec, frames: list[bytes]) -> None:
    """Byte counts and PNG header against the announcement (the decoder checks the rest)."""
    image = frames[0]
    if spec.image_format == "rgba8":
        expected = spec.width * spec.height * 4
        if len(image) != expected:
            raise RequestError(
                "bad_image",
                f"the image frame has {len(image)} bytes; {spec.width}x{spec.height} RGBA8 needs {expected}",
                spec.id,
            )
    else:
        try:
            width, height = png_size(image)
        except PNGError:
            raise RequestError("bad_image", "the image frame is not a PNG file", spec.id) from None
        if (width, height) != (spec.width, spec.height):
            raise RequestError(
                "bad_image",
                f"the PNG is {width}x{height} but the edit announced {spec.width}x{spec.height}",
                spec.id,
            )
    if spec.has_selection and len(frames[1]) != spec.pixels:
        raise RequestError(
            "bad_image",
            f"the selection frame has {len(frames[1])} bytes; a {spec.width}x{spec.height} A8 mask needs {spec.pixels}",
            spec.id,
        )


def _result_message(job: Job, outcome: Outcome, seconds: float) -> dict:
    x, y, w, h = outcome.region
    return {
        "type": "result",
        "id": job.id,
        "region": [x, y, w, h],
        "format": "rgba8",
        "faces": outcome.faces,
        "stages": outcome.stages,
        "skipped": [s for s in STAGES if s not in outcome.stages],
        "preview": job.spec.preview,
        "untrained": outcome.untrained,
        "seconds": round(seconds, 3),
    }


def rss_bytes() -> int | None:
    """Resident memory of this process (Linux); None elsewhere."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError, AttributeError):
        return None
