"""A live connection to the engine: requests go out without waiting, answers come back as events.

What a live dialog needs of the daemon: a preview for every pause in typing, each superseding the
one before, the photo sent once per connection (later requests say `reuse_image`), and the
engine's state as it changes. One thread writes (so a 48 MB photo never blocks the caller) and one
reads; every message becomes a typed event handed to `on_event`. `on_event` runs on those threads:
a GUI re-posts it to its own main loop. Standard library only.
"""

from __future__ import annotations

import contextlib
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace

from . import identity
from .client import closed_error, open_engine_socket
from .protocol import (
    PROTOCOL_VERSION,
    BadRequest,
    CancelledMessage,
    ConnectionFailed,
    ConnectionLost,
    Draining,
    EditParams,
    EditResult,
    EngineError,
    ErrorMessage,
    ImageSpec,
    ProgressMessage,
    ProtocolViolation,
    QueuedMessage,
    ResultMessage,
    StatusMessage,
    cancel_message,
    decode,
    encode,
    new_job_id,
    read_event,
    reply_limit,
    status_request,
)
from .tls import TLSVerify
from .websocket import ConnectionClosed, WebSocket, WebSocketError

# --------------------------------------------------------------------------- events


@dataclass(frozen=True)
class StatusChanged:
    status: dict  # the engine's `status` message


@dataclass(frozen=True)
class Queued:
    job_id: str
    position: int


@dataclass(frozen=True)
class Progress:
    job_id: str
    stage: str
    value: float


@dataclass(frozen=True)
class ResultReady:
    job_id: str
    result: EditResult


@dataclass(frozen=True)
class JobFailed:
    job_id: str | None  # None: an error about no job (a refused message)
    error: EngineError


@dataclass(frozen=True)
class JobCancelled:
    job_id: str


@dataclass(frozen=True)
class Disconnected:
    error: EngineError  # why; the next request connects again


@dataclass(frozen=True)
class Unreachable:
    error: EngineError  # a connection attempt failed (not running, refused, no answer); the next request tries again


@dataclass(frozen=True)
class Resending:
    job_id: str
    new_id: str  # the job from here on (the old id may still name the abandoned job on a live engine)
    error: EngineError  # why: the connection broke before the job ended, or the engine is draining


Event = (
    StatusChanged | Queued | Progress | ResultReady | JobFailed | JobCancelled | Disconnected | Unreachable | Resending
)


@dataclass(eq=False)  # one request: compared by identity, never by its pixels
class _Edit:
    job_id: str
    params: EditParams
    image: bytes
    spec: ImageSpec
    selection: bytes | None


class EngineSession:
    """One connection for a live dialog. `submit`, `cancel` and `request_status` return at once."""

    def __init__(
        self,
        url: str,
        on_event: Callable[[Event], None],
        token: str | None = None,
        connect_timeout: float = 10.0,
        tls: TLSVerify | None = None,
        plain_token: bool = False,
        verify_local: bool = False,
        client_id: str | None = None,
    ) -> None:
        self.url = url
        self.client_id = client_id or identity.client_id()  # a load balancer's sticky key
        self.verify_local = verify_local  # the engine proves it is this user's first (identity.py)
        self.token = token
        self.tls = tls
        self.plain_token = plain_token
        self.connect_timeout = connect_timeout
        self._on_event = on_event
        self._outbox: deque[_Edit | dict] = deque()
        self._wake = threading.Condition()
        self._ws: WebSocket | None = None
        self._image_sent: bytes | None = None  # the image this connection already holds
        self._sent: dict[str, _Edit] = {}  # jobs sent on this connection that have not ended, in order
        self._reused: dict[str, _Edit] = {}  # jobs sent as `reuse_image`, until they end
        self._moved: set[str] = set()  # jobs sent again after their connection went: not a second time
        self._lock = threading.Lock()
        self._closed = False
        self._writer = threading.Thread(target=self._write_loop, name="ffclip-session-writer", daemon=True)
        self._writer.start()

    # ------------------------------------------------------------------ requests

    def submit(self, params: EditParams, image: bytes, spec: ImageSpec, selection: bytes | None = None) -> str:
        """Queue an edit of `image` (RGBA8 or PNG as `spec` says; `selection` an A8 mask); returns its
        job id. The photo travels once per connection: later edits of the same `image` object reuse
        it. A superseding edit also replaces older ones that have not been sent yet."""
        job = _Edit(new_job_id(), params, image, spec, selection)
        with self._wake:
            if params.supersede:
                self._drop_unsent_edits()
            self._outbox.append(job)
            self._wake.notify()
        return job.job_id

    def cancel(self, job_id: str) -> None:
        with self._wake:
            self._outbox.append(cancel_message(job_id))
            self._wake.notify()

    def request_status(self) -> None:
        with self._wake:
            if status_request() not in self._outbox:
                self._outbox.append(status_request())
                self._wake.notify()

    def close(self) -> None:
        with self._wake:
            self._closed = True
            self._outbox.clear()
            self._wake.notify()
        ws, self._ws = self._ws, None
        if ws is not None:
            ws.close()

    def _drop_unsent_edits(self) -> None:
        for item in [i for i in self._outbox if isinstance(i, _Edit)]:
            self._outbox.remove(item)
            self._emit(JobCancelled(item.job_id))

    # ------------------------------------------------------------------ writer

    def _write_loop(self) -> None:
        while True:
            with self._wake:
                while not self._outbox and not self._closed:
                    self._wake.wait()
                if self._closed:
                    return
                item = self._outbox.popleft()
            ws = None
            try:
                ws = self._connect_or_say_why()
                if isinstance(item, _Edit) and not self._send_edit(ws, item):
                    self._again(item)  # its connection went before it left: the next one takes it
                elif not isinstance(item, _Edit):
                    ws.send_text(encode(item))
            except (EngineError, WebSocketError, OSError) as exc:
                error = _failure(exc, "lost the engine")
                if ws is None:  # no connection: the edit was never sent
                    if isinstance(item, _Edit):
                        self._emit(JobFailed(item.job_id, error))
                else:
                    self._lost(ws, error)  # its jobs (this one too) go again once, or end

    def _again(self, job: _Edit) -> None:
        with self._wake:
            self._outbox.appendleft(job)
            self._wake.notify()

    def _send_edit(self, ws: WebSocket, job: _Edit) -> bool:
        """Send an edit on `ws`; False (nothing sent) when `ws` is no longer the connection."""
        reuse = self._image_sent is job.image
        params = replace(job.params, selection=not reuse and job.selection is not None)
        with self._lock:
            if self._ws is not ws:
                return False
            self._sent[job.job_id] = job
            if reuse:
                self._reused[job.job_id] = job
        ws.max_message = max(ws.max_message, reply_limit(job.spec.pixels))  # what it can bring back, no more
        ws.send_text(encode(params.to_message(job.job_id, None if reuse else job.spec)))
        if not reuse:
            ws.send_binary(job.image)
            if job.selection is not None:
                ws.send_binary(job.selection)
            self._image_sent = job.image
        return True

    def _connect_or_say_why(self) -> WebSocket:
        """The connection; a failed attempt is told as `Unreachable` before it is raised, so that a
        dialog learns at once that the engine is not there (not only when an edit fails)."""
        try:
            return self._connection()
        except (EngineError, WebSocketError, OSError) as exc:
            error = exc if isinstance(exc, EngineError) else ConnectionFailed(f"cannot reach the engine: {exc}")
            if not self._closed:
                self._emit(Unreachable(error))
            raise

    def _connection(self) -> WebSocket:
        if self._ws is not None and not self._ws.closed:
            return self._ws
        challenge = identity.new_challenge() if self.verify_local else None
        ws = open_engine_socket(
            self.url, self.token, self.connect_timeout, self.tls, self.plain_token, challenge, self.client_id
        )
        if challenge is not None:  # the greeting, read here: nothing is sent before it proves the engine ours
            try:
                greeting = ws.recv(timeout=self.connect_timeout)
                identity.check(decode(greeting) if isinstance(greeting, str) else {}, challenge, self.url)
            except BaseException:
                ws.close()
                raise
            self._dispatch(ws, greeting)
        self._ws, self._image_sent = ws, None
        threading.Thread(target=self._read_loop, args=(ws,), name="ffclip-session-reader", daemon=True).start()
        return ws

    def _drop_connection(self, error: EngineError) -> None:
        """The connection is gone (or its engine drains): its jobs go once more, with their image, on a
        new connection — behind a load balancer, to another engine; an edit changes nothing there, so
        sending it again is safe. A job sent again already ends with `error`."""
        with self._lock:
            ws, self._ws = self._ws, None
            lost, self._sent = list(self._sent.values()), {}
            self._reused.clear()
        self._image_sent = None
        if ws is not None:
            with contextlib.suppress(Exception):
                ws.close()
        if self._closed:
            return
        gone = isinstance(error, ConnectionLost | Draining)  # not a refusal: another engine may take them
        again = [job for job in lost if gone and job.job_id not in self._moved]
        for job in lost:
            if job not in again:
                self._emit(JobFailed(job.job_id, error))
        if again:
            self._resend(again, error)
        elif ws is not None:
            self._emit(Disconnected(error))

    def _resend(self, jobs: list[_Edit], error: EngineError) -> None:
        """Queue lost jobs ahead of the rest, in their order; a superseding one that a newer edit
        replaces anyway is cancelled instead."""
        with self._wake:
            queued = [item for item in self._outbox if isinstance(item, _Edit)]
        newer = [*jobs, *queued]
        kept = [job for i, job in enumerate(jobs) if not any(later.params.supersede for later in newer[i + 1 :])]
        for job in jobs:
            if job not in kept:
                self._emit(JobCancelled(job.job_id))
                continue
            old, job.job_id = job.job_id, new_job_id()
            with self._lock:
                self._moved.add(job.job_id)
            self._emit(Resending(old, job.job_id, error))
        with self._wake:
            self._outbox.extendleft(reversed(kept))
            self._wake.notify()

    # ------------------------------------------------------------------ reader

    def _read_loop(self, ws: WebSocket) -> None:
        try:
            while not self._closed:
                self._dispatch(ws, ws.recv(timeout=None))
        except (WebSocketError, OSError, EngineError) as exc:
            self._lost(ws, _failure(exc))

    def _lost(self, ws: WebSocket, error: EngineError) -> None:
        if self._ws is ws:
            self._drop_connection(error)

    def _dispatch(self, ws: WebSocket, raw: str | bytes) -> None:
        if isinstance(raw, bytes):
            return  # the frame of a result this session no longer reads: nothing to do
        try:
            message = decode(raw)
        except BadRequest as exc:
            raise ProtocolViolation(f"the engine sent {exc.message}") from None
        event = read_event(message)
        if isinstance(event, StatusMessage):
            if event.protocol != PROTOCOL_VERSION:
                raise ProtocolViolation(f"the engine speaks protocol {event.protocol!r}")
            self._emit(StatusChanged(event.fields))
        elif isinstance(event, QueuedMessage):
            self._emit(Queued(event.id, event.position))
        elif isinstance(event, ProgressMessage):
            self._emit(Progress(event.id, event.stage, event.value))
        elif isinstance(event, ResultMessage):
            frame = ws.recv(timeout=None)
            if not isinstance(frame, bytes):
                raise ProtocolViolation("result without its binary frame")
            self._emit(ResultReady(event.id, event.result(frame)))
        elif isinstance(event, CancelledMessage):
            self._emit(JobCancelled(event.id))
        elif isinstance(event, ErrorMessage):
            with self._lock:
                moving = event.draining and event.id in self._sent and event.id not in self._moved
                reused = self._reused.pop(event.id, None) if event.id is not None and not moving else None
            if moving:  # the engine is stopping: this connection's jobs go to another one
                self._lost(ws, event.exception())
            elif reused is not None and event.code == "bad_request":
                self._send_again(ws, reused)
            else:
                self._emit(JobFailed(event.id, event.exception()))

    def _send_again(self, ws: WebSocket, job: _Edit) -> None:
        """An engine short of memory forgets a connection's last image, and refuses the next edit
        that reuses it: that edit goes again with its image (unless a newer one replaces it)."""
        with self._lock:
            self._sent.pop(job.job_id, None)
        with self._wake:
            if self._ws is ws:
                self._image_sent = None
            if job.params.supersede and any(isinstance(item, _Edit) for item in self._outbox):
                replaced = True
            else:
                replaced = False
                self._outbox.appendleft(job)
                self._wake.notify()
        if replaced:
            self._emit(JobCancelled(job.job_id))

    def _emit(self, event: Event) -> None:
        if isinstance(event, ResultReady | JobFailed | JobCancelled) and event.job_id is not None:
            with self._lock:
                self._sent.pop(event.job_id, None)
                self._reused.pop(event.job_id, None)
                self._moved.discard(event.job_id)
        with contextlib.suppress(Exception):  # a failing handler must not stop the threads
            self._on_event(event)


def _failure(exc: BaseException, doing: str = "") -> EngineError:
    """A broken connection as an error: ConnectionLost when the engine went away (a reset, no close
    frame, going away), so that its jobs go again; the engine's own errors and refusals as they are."""
    if isinstance(exc, EngineError):
        return exc
    if isinstance(exc, ConnectionClosed):
        return closed_error(exc)
    if isinstance(exc, OSError):
        return ConnectionLost(f"{doing}: {exc}" if doing else str(exc))
    return ConnectionFailed(f"{doing}: {exc}" if doing else str(exc))
