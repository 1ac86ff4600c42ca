"""Client of the engine daemon (protocol in docs/protocol.md), standard library only.

`EngineClient` is what the GIMP plug-in uses; `edit_pixels` is what `ffclip-engine edit --url` uses to
send a photo (decoded by the engine's own reader) to a running (warm) daemon instead of loading the
models itself; `edit_file` decodes a file with Pillow (or, without it, PNG only) first.
"""

from __future__ import annotations

import contextlib
import os
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import identity, imageops, png
from .protocol import (
    DEFAULT_URL,
    PROTOCOL_VERSION,
    BadRequest,
    Cancelled,
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
from .tls import CertificateRefused, PlainTokenRefused, TLSVerify, check_plain_token, refusal
from .websocket import ConnectionClosed, HandshakeError, WebSocket, WebSocketError

__all__ = [
    "Cancelled",
    "CertificateRefused",
    "PlainTokenRefused",
    "ConnectionFailed",
    "EditResult",
    "EngineClient",
    "EngineError",
    "edit_file",
    "edit_pixels",
]

ProgressCallback = Callable[[str, float], None]


class EngineClient:
    """One connection to the daemon. Not for concurrent edits; `cancel` may come from any thread.

    `timeout` is an inactivity limit: how long to wait for any sign of life (a message or the
    engine's keep-alive ping) before giving up with TimeoutError. `tls`: how a wss:// engine's
    certificate is verified (a CA file, a pinned fingerprint; default the system's trust store).
    `plain_token`: allow the token over plain ws:// to another computer (refused otherwise).
    `verify_local`: the engine must prove that it is one of this user's (identity.py) before anything
    is sent — for a plug-in that starts its engine on a local port itself. `client_id`: what a load
    balancer keeps this client's connections together by (default: this user's, identity.client_id).
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        token: str | None = None,
        timeout: float = 600.0,
        connect_timeout: float = 10.0,
        tls: TLSVerify | None = None,
        plain_token: bool = False,
        verify_local: bool = False,
        client_id: str | None = None,
    ):
        self.url = url
        self.verify_local = verify_local
        self.client_id = client_id or identity.client_id()
        self.token = token
        self.tls = tls
        self.plain_token = plain_token
        self._pixels = 0  # the largest image this connection sent (a reused one comes back that size)
        self.timeout = timeout
        self.connect_timeout = min(connect_timeout, timeout)
        self.last_status: dict = {}
        self._ws: WebSocket | None = None
        self._send_lock = threading.RLock()

    # ------------------------------------------------------------------ connection

    def connect(self) -> dict:
        """Open the connection; returns the engine's greeting status message."""
        self.close()
        challenge = identity.new_challenge() if self.verify_local else None
        ws = open_engine_socket(
            self.url, self.token, self.connect_timeout, self.tls, self.plain_token, challenge, self.client_id
        )
        self._ws, self._pixels = ws, 0
        try:
            greeting = self._receive_json(ws)
            if challenge is not None:
                identity.check(greeting, challenge, self.url)
        except BaseException:
            self.close()
            raise
        event = read_event(greeting)
        if isinstance(event, ErrorMessage):
            self.close()
            raise event.exception()
        if not isinstance(event, StatusMessage):
            self.close()
            raise ProtocolViolation(f"expected a status greeting, got {greeting['type']!r}")
        if event.protocol != PROTOCOL_VERSION:
            self.close()
            raise ProtocolViolation(f"engine speaks protocol {event.protocol!r}, this client {PROTOCOL_VERSION}")
        self.last_status = event.fields
        return event.fields

    def close(self) -> None:
        ws, self._ws = self._ws, None
        if ws is not None:
            ws.close()

    def __enter__(self) -> EngineClient:
        if self._ws is None:
            self.connect()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def connected(self) -> bool:
        return self._ws is not None and not self._ws.closed

    def _live(self) -> WebSocket:
        """The open connection; reconnects when the engine dropped an idle one."""
        ws = self._ws
        if ws is not None:
            try:
                ws.poll()
                return ws
            except (ConnectionClosed, OSError):
                self._ws = None
        self.connect()
        assert self._ws is not None
        return self._ws

    # ------------------------------------------------------------------ requests

    def status(self) -> dict:
        ws = self._send_fresh(status_request())
        deadline = time.monotonic() + self.timeout
        while True:
            event = read_event(self._receive_json(ws, deadline))
            if isinstance(event, StatusMessage):
                self.last_status = event.fields
                return event.fields
            if isinstance(event, ErrorMessage) and event.id is None:
                raise event.exception()

    def cancel(self, job_id: str) -> None:
        """Ask the engine to cancel a job (of any connection); the job's own connection gets the answer."""
        self._send_fresh(cancel_message(job_id))

    def edit(
        self,
        params: EditParams,
        image: bytes | None,
        spec: ImageSpec | None,
        selection: bytes | None = None,
        on_progress: ProgressCallback | None = None,
        job_id: str | None = None,
        on_queued: Callable[[int], None] | None = None,
        on_status: Callable[[dict], None] | None = None,
        on_moved: Callable[[str, EngineError], None] | None = None,
    ) -> EditResult:
        """Run one edit of `image` (a frame as `spec` describes it; with `selection`, its A8 mask
        frame: `params.selection` must say so; `image` and `spec` None: the image and selection of
        this connection's previous edit); blocks until its result. Raises EngineError
        (Cancelled for cancel). `on_status` sees the status messages the engine pushes meanwhile
        (download progress). When the connection breaks before the job ends, or the engine refuses it
        because it is draining, the edit is sent once more on a new connection (behind a load balancer:
        to another engine; an edit changes nothing on the engine, so this is safe) under a new job id: the
        old one may still name the abandoned job on a live engine. `on_moved(new_id, why)` is told first."""
        job_id = job_id or new_job_id()
        message, frames = edit_frames(params, image, spec, selection, job_id)
        callbacks = (on_progress, on_queued, on_status)
        ws = self._send_edit(message, frames, spec)
        try:
            return self._await_edit(ws, job_id, *callbacks)
        except (ConnectionLost, Draining) as exc:
            if image is None:  # a reused image lived only on the lost connection
                raise
            moved = exc
        job_id = new_job_id()
        message, frames = edit_frames(params, image, spec, selection, job_id)
        if on_moved is not None:
            on_moved(job_id, moved)
        self.close()
        return self._await_edit(self._send_edit(message, frames, spec), job_id, *callbacks)

    def _send_edit(self, message: dict, frames: list[bytes], spec: ImageSpec | None) -> WebSocket:
        ws = self._send_fresh(message, frames)
        self._pixels = max(self._pixels, spec.pixels if spec is not None else 0)
        ws.max_message = reply_limit(self._pixels)  # what this request can bring back, no more
        return ws

    def _await_edit(
        self,
        ws: WebSocket,
        job_id: str,
        on_progress: ProgressCallback | None,
        on_queued: Callable[[int], None] | None,
        on_status: Callable[[dict], None] | None,
    ) -> EditResult:
        try:
            return self._await_result(ws, job_id, on_progress, on_queued, on_status)
        except KeyboardInterrupt:
            with contextlib.suppress(EngineError):
                self._send(ws, cancel_message(job_id))
            raise

    # ------------------------------------------------------------------ internals

    def _send_fresh(self, message: dict, frames: list[bytes] | None = None) -> WebSocket:
        """Send on the live connection; when it broke under us, once more on a new one (the engine
        drops a half-received announcement with its connection, so nothing runs twice)."""
        try:
            ws = self._live()
            self._send(ws, message, frames)
        except ConnectionFailed:
            self.close()
            ws = self._live()
            self._send(ws, message, frames)
        return ws

    def _send(self, ws: WebSocket, message: dict, frames: list[bytes] | None = None) -> None:
        # The lock keeps an announcement and its binary frames together (a cancel sent from another
        # thread must not land between them).
        with self._send_lock:
            try:
                ws.send_text(encode(message))
                for frame in frames or ():
                    ws.send_binary(frame)
            except WebSocketError as exc:
                raise ConnectionFailed(f"lost the connection to the engine: {exc}") from None

    def _await_result(
        self,
        ws: WebSocket,
        job_id: str,
        on_progress: ProgressCallback | None,
        on_queued: Callable[[int], None] | None,
        on_status: Callable[[dict], None] | None = None,
    ) -> EditResult:
        skip_binary = False  # the binary frame of a result that is not ours (an abandoned job)
        while True:
            raw = self._receive(ws)
            if isinstance(raw, bytes):
                if not skip_binary:
                    raise ProtocolViolation("engine sent an unannounced binary frame")
                skip_binary = False
                continue
            event = read_event(_decode(raw))
            if isinstance(event, StatusMessage):
                self.last_status = event.fields
                if on_status is not None:
                    on_status(event.fields)
            elif isinstance(event, ErrorMessage):
                if event.id in (job_id, None):  # this job's, or a refusal of what was sent
                    raise event.exception()
            elif event is None or event.id != job_id:
                skip_binary = isinstance(event, ResultMessage)
            elif isinstance(event, QueuedMessage):
                if on_queued is not None:
                    on_queued(event.position)
            elif isinstance(event, ProgressMessage):
                if on_progress is not None:
                    on_progress(event.stage, event.value)
            elif isinstance(event, CancelledMessage):
                raise Cancelled(job_id=job_id)
            else:
                return self._read_result(ws, event)

    def _read_result(self, ws: WebSocket, event: ResultMessage) -> EditResult:
        data = self._receive(ws)
        if not isinstance(data, bytes):
            raise ProtocolViolation("result without its binary frame")
        return event.result(data)

    def _receive(self, ws: WebSocket, deadline: float | None = None) -> str | bytes:
        timeout = self.timeout if deadline is None else max(0.001, deadline - time.monotonic())
        try:
            return ws.recv(timeout=timeout)
        except TimeoutError:
            raise TimeoutError(f"no answer from the FFCLIP engine for {timeout:g} s") from None
        except ConnectionClosed as exc:
            self._ws = None
            raise closed_error(exc) from None

    def _receive_json(self, ws: WebSocket, deadline: float | None = None) -> dict:
        while True:
            raw = self._receive(ws, deadline)
            if isinstance(raw, str):
                return _decode(raw)


def edit_frames(
    params: EditParams, image: bytes | None, spec: ImageSpec | None, selection: bytes | None, job_id: str
) -> tuple[dict, list[bytes]]:
    """The `edit` message and the binary frames that follow it, checked against each other."""
    if (image is None) != (spec is None):
        raise ValueError("give the image with its ImageSpec, or neither to reuse the previous image")
    if spec is None:
        if selection is not None or params.selection:
            raise ValueError("a reused image comes with its own selection: send none")
        return params.to_message(job_id, None), []
    if spec.format == "rgba8" and len(image) != spec.pixels * 4:
        raise ValueError(f"expected {spec.pixels * 4} RGBA bytes, got {len(image)}")
    if params.selection != (selection is not None):
        raise ValueError("params.selection must say whether a selection frame is sent")
    if selection is not None and len(selection) != spec.pixels:
        raise ValueError(f"expected {spec.pixels} selection bytes, got {len(selection)}")
    return params.to_message(job_id, spec), [image] if selection is None else [image, selection]


def open_engine_socket(
    url: str,
    token: str | None,
    timeout: float,
    tls: TLSVerify | None = None,
    plain_token: bool = False,
    challenge: str | None = None,
    client_id: str | None = None,
) -> WebSocket:
    """A websocket to the engine at `url`, the token in the handshake; EngineError when refused
    (CertificateRefused when a wss:// engine's certificate fails `tls`, PlainTokenRefused when the
    token would cross the network unencrypted: then nothing was sent). Replies are read up to a text
    message's size until a request says it can bring back more. `challenge`: for the greeting's
    proof of identity (identity.py). `client_id`: for a load balancer's sticky routing (Draining when
    a draining engine refuses the connection)."""
    check_plain_token(url, token, plain_token)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if challenge is not None:
        headers[identity.CHALLENGE_HEADER] = challenge
    if identity.is_client_id(client_id):
        headers[identity.CLIENT_HEADER] = client_id
    try:
        return WebSocket.connect(url, headers=headers, timeout=timeout, tls=tls, max_message=reply_limit())
    except ssl.SSLCertVerificationError as exc:
        raise refusal(exc, url, tls) from None
    except HandshakeError as exc:
        if exc.status in (401, 403):
            raise EngineError("unauthorized", exc.body.decode("utf-8", "replace").strip()) from None
        if exc.status == 503:  # a draining engine (its one-line reason), or a balancer with no engine ready (HTML)
            reason = exc.body.decode("utf-8", "replace").strip()
            plain = reason and not reason.startswith("<") and "\n" not in reason
            raise Draining(reason[:300] if plain else f"no FFCLIP engine is ready at {url} (HTTP 503)") from None
        if exc.status == 0 and url.startswith("ws://"):  # no HTTP answer at all: a TLS server hangs up
            secure = "wss://" + url[len("ws://") :]
            raise ConnectionFailed(
                f"{url} did not answer as an FFCLIP engine; if the engine serves TLS, use {secure} ({exc})"
            ) from None
        raise ConnectionFailed(f"{url} is not an FFCLIP engine ({exc})") from None
    except (OSError, ValueError) as exc:
        raise ConnectionFailed(f"cannot reach the FFCLIP engine at {url}: {exc}") from None


GONE_CODES = frozenset({1001, 1006, 1012, 1014})  # going away, no close frame, restart, bad gateway


def closed_error(exc: ConnectionClosed) -> EngineError:
    """Why the engine closed a connection, as the error a job ends with: ConnectionLost when the engine
    went away (its jobs may go to another engine), not when a side refused something."""
    if exc.code == 1008 and "unauthorized" in exc.reason:
        return EngineError("unauthorized", exc.reason)
    if exc.code in GONE_CODES:
        return ConnectionLost(f"the FFCLIP engine went away ({exc})")
    return ConnectionFailed(f"the FFCLIP engine closed the connection ({exc})")


def _decode(text: str) -> dict:
    try:
        return decode(text)
    except BadRequest as exc:
        raise ProtocolViolation(f"the engine sent {exc.message}") from None


def edit_file(
    url: str,
    in_path: str | Path,
    params: EditParams,
    out_path: str | Path,
    mask_out: str | Path | None = None,
    token: str | None = None,
    timeout: float = 600.0,
    on_progress: ProgressCallback | None = None,
    tls: TLSVerify | None = None,
) -> dict:
    """Edit a photo file with a running daemon; writes `out_path` (and the blend mask to `mask_out`).

    The file is decoded here (Pillow, else PNG only); see `edit_pixels` for the rest.
    """
    data = Path(in_path).read_bytes()
    width, height, base = imageops.decode_file(data)
    photo = Photo(width, height, base, data if data[:8] == png.SIGNATURE else None)
    return edit_pixels(url, photo, params, out_path, mask_out, token, timeout, on_progress, tls)


@dataclass(frozen=True)
class Photo:
    """A decoded photo for `edit_pixels`: RGBA8 rows, the PNG file it came from (sent as it is: smaller,
    and 16 bit kept) and an optional A8 selection (0 = keep, 255 = free to change)."""

    width: int
    height: int
    rgba: bytes
    png: bytes | None = None
    selection: bytes | None = None


def edit_pixels(
    url: str,
    photo: Photo,
    params: EditParams,
    out_path: str | Path,
    mask_out: str | Path | None = None,
    token: str | None = None,
    timeout: float = 600.0,
    on_progress: ProgressCallback | None = None,
    tls: TLSVerify | None = None,
    plain_token: bool = False,
    on_moved: Callable[[str, EngineError], None] | None = None,
) -> dict:
    """Edit a decoded photo with a running daemon and write the edited photo to `out_path`.

    The token defaults to $FFCLIP_TOKEN. Returns a summary: job id, region, faces, stages run and
    skipped, seconds, and whether the edit was sent again (`moved`: its engine went away, see
    EngineClient.edit; `on_moved` is told at once).
    """
    moves: list[EngineError] = []

    def moved(job_id: str, error: EngineError) -> None:
        moves.append(error)
        if on_moved is not None:
            on_moved(job_id, error)

    out_path = Path(out_path)
    token = token or os.environ.get("FFCLIP_TOKEN") or None
    width, height, base = photo.width, photo.height, photo.rgba
    spec = ImageSpec(width, height, "png" if photo.png is not None else "rgba8")
    started = time.monotonic()
    with EngineClient(url, token=token, timeout=timeout, tls=tls, plain_token=plain_token) as client:
        frame = photo.png if photo.png is not None else base
        result = client.edit(params, frame, spec, photo.selection, on_progress=on_progress, on_moved=moved)
    edited = imageops.composite(base, width, height, result.region, result.rgba)
    imageops.encode_file(out_path, width, height, edited, keep_alpha=not imageops.is_opaque(base))
    if mask_out is not None:
        mask = imageops.region_mask(width, height, result.region, result.rgba)
        imageops.write_gray_png(Path(mask_out), width, height, mask)
    return {
        "id": result.id,
        "url": url,
        "output": str(out_path),
        "mask": str(mask_out) if mask_out is not None else None,
        "width": width,
        "height": height,
        "region": list(result.region),
        "faces": result.faces,
        "edits": [e.to_message() for e in result.edits],
        "stages": result.stages,
        "skipped": result.skipped,
        "preview": result.preview,
        "size": result.size,
        "untrained": result.untrained,
        "engine_seconds": result.seconds,
        "seconds": round(time.monotonic() - started, 3),
        "moved": bool(moves),
    }
