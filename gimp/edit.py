"""What the GIMP plug-in does, without GIMP: request building, progress, pixels, errors, the job.

The GIMP entry (`gimp/ffclip-edit/ffclip-edit.py`) only reads and writes GIMP objects; every decision
lives here so that it can be tested with plain Python. Standard library only (copied into the GIMP plug-in
folder with ffclip.plugin, see app/install.py).

Pixel conventions: layer pixels travel as RGBA8 rows (`R'G'B'A u8`, what GEGL converts any layer
precision and type to), selections and masks as one byte per pixel (`Y u8`). Coordinates in a
request are layer-local; the result region is in those coordinates too.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
import uuid
from dataclasses import dataclass, replace
from pathlib import Path

from ffclip.plugin import paths
from ffclip.plugin.protocol import (
    DEFAULT_URL,
    DOMAINS,
    FIDELITIES,
    STAGES,
    Attribute,
    BadRequest,
    Cancelled,
    ConnectionFailed,
    EditParams,
    EditResult,
    EngineState,
    ImageSpec,
)

from . import settings as gimp_settings
from .setup import child_environment

PROCEDURE = "python-fu-ffclip-edit"
CANCEL_PROCEDURE = "python-fu-ffclip-cancel"
MENU_PATH = "<Image>/Filters"
MENU_LABEL = "FFCLIP Edit\u2026"
CANCEL_MENU_LABEL = "FFCLIP Cancel"
LAYER_PREFIX = "FFCLIP: "

FACE_MODES = (("all", "All faces"), ("largest", "Largest face"), ("index", "Face number"))
DOMAIN_CHOICES = (
    ("face", "Faces"),
    ("car", "A car (the selection, or the whole layer)"),
    ("church", "A church (the selection, or the whole layer)"),
)
assert tuple(d for d, _ in DOMAIN_CHOICES) == DOMAINS
FIDELITY_CHOICES = (
    ("standard", "Standard (e4e)"),
    ("high", "Keep the person (HyperStyle, slower)"),
)
assert tuple(f for f, _ in FIDELITY_CHOICES) == FIDELITIES
OUTPUT_MODES = (("layer-mask", "New layer with mask"), ("layer", "New layer without mask"))
STRENGTH_MIN, STRENGTH_MAX, STRENGTH_DEFAULT = 0.0, 2.0, 1.0

STAGE_TEXT = {
    "connect": "Connecting to the FFCLIP engine",
    "start": "Starting the FFCLIP engine",
    "upload": "Sending the layer to the engine",
    "queued": "Waiting for the engine",
    "moved": "The engine moved; resending the layer",  # its connection broke or it is draining
    "loading": "The engine is loading its models",
    "detect": "Finding faces",
    "align": "Aligning faces",
    "invert": "Encoding faces",
    "encode_text": "Reading the prompt",
    "map": "Applying the edit",
    "synthesize": "Drawing the edited faces",
    "blend": "Blending into the photo",
}
# A car or a church is framed from the selection, not found: the face words would mislead.
SCENE_STAGE_TEXT = {
    "detect": "Framing the {domain}",
    "align": "Framing the {domain}",
    "invert": "Encoding the {domain}",
    "synthesize": "Drawing the edited {domain}",
}

DOCTOR_HINT = "Run `ffclip-engine doctor` in a terminal to see what is wrong and how to fix it."

ERROR_TEXT = {
    "no_face": "No face was found in the layer{where}. FFCLIP Edit needs a clearly visible face, "
    "roughly frontal and at least about 80 pixels wide.",
    "models_missing": "The FFCLIP engine has no model weights yet. {message}\n" + DOCTOR_HINT,
    "too_large": "The layer is too large for the engine. {message}",
    "bad_image": "The engine could not read the layer pixels. {message}",
    "bad_request": "The engine refused the request. {message}",
    "busy": "The FFCLIP engine is busy with other jobs; try again in a moment. {message}",
    "unauthorized": "The FFCLIP engine refused the access token. Check the token in {settings}.\n" + DOCTOR_HINT,
    "certificate": "The plug-in refused the FFCLIP engine's certificate: {message}\nThe certificate settings "
    "(tls_ca_file, tls_fingerprint) are in {settings}.\n" + DOCTOR_HINT,
    "protocol": "The FFCLIP engine and this plug-in do not match ({message}): they come from different "
    "versions.\n" + DOCTOR_HINT,
    "cancelled": "The edit was cancelled.",
    "internal": "The FFCLIP engine failed while editing: {message}",
}


class PluginError(Exception):
    """An error whose message is meant for the GIMP user as is."""


# --------------------------------------------------------------------------- arguments


@dataclass(frozen=True)
class ProcedureArgs:
    """The procedure's arguments as GIMP gives them (dialog or script): the UI values."""

    prompt: str
    strength: float = STRENGTH_DEFAULT
    face_mode: str = "all"
    face_index: int = 0
    output: str = "layer-mask"
    url: str | None = None
    more_edits: str = ""  # further attributes, one "PROMPT=STRENGTH" a line (batch_edit.py --edit)
    domain: str = "face"  # face, car or church (batch_edit.py --domain)
    fidelity: str = "standard"  # standard (e4e) or high (HyperStyle: "Keep the person (slower)")

    def params(self, selection: bool = False) -> EditParams:
        """The edit these arguments ask for; PluginError (a message for the user) when they don't fit."""
        if not " ".join((self.prompt or "").split()):
            raise PluginError("Type a prompt describing the edit, for example \u201csmiling, blond hair\u201d.")
        strength = self.strength
        in_range = isinstance(strength, int | float) and STRENGTH_MIN <= strength <= STRENGTH_MAX
        if isinstance(strength, bool) or not in_range:
            raise PluginError(f"Strength must be a number between {STRENGTH_MIN:g} and {STRENGTH_MAX:g}.")
        if self.face_mode not in dict(FACE_MODES):
            raise PluginError(f"Faces must be one of all, largest, index; not {self.face_mode!r}.")
        if self.output not in dict(OUTPUT_MODES):
            raise PluginError(f"Output must be layer-mask or layer, not {self.output!r}.")
        if self.face_mode == "index" and int(self.face_index) < 0:
            raise PluginError("The face number must be 0 or more (the engine's numbering: `ffclip-engine faces`).")
        if self.domain not in DOMAINS:
            raise PluginError(f"Domain must be one of {', '.join(DOMAINS)}, not {self.domain!r}.")
        if self.fidelity not in FIDELITIES:
            raise PluginError(f"Fidelity must be one of {', '.join(FIDELITIES)}, not {self.fidelity!r}.")
        faces = [int(self.face_index)] if self.face_mode == "index" else self.face_mode
        if self.domain != "face":  # a car or church is the selection (or the layer): no face choice
            faces = "all"
        try:
            more = [Attribute.parse(line) for line in (self.more_edits or "").splitlines() if line.strip()]
            if any(not STRENGTH_MIN <= a.strength <= STRENGTH_MAX for a in more):
                raise PluginError(f"Every strength must be between {STRENGTH_MIN:g} and {STRENGTH_MAX:g}.")
            first = Attribute(self.prompt, strength)
            return EditParams((first, *more), faces, selection=selection, domain=self.domain, fidelity=self.fidelity)
        except BadRequest as exc:
            raise PluginError(f"FFCLIP Edit cannot send this edit: {exc.message}.") from None

    @classmethod
    def of(cls, params: EditParams, output: str = "layer-mask", url: str | None = None) -> ProcedureArgs:
        """The arguments that ask for `params` (what the dialog stores as the procedure's last values):
        the first attribute in prompt/strength, the others in more-edits."""
        first, *more = params.edits
        if isinstance(params.faces, str):
            face_mode, face_index = params.faces, 0
        else:
            face_mode, face_index = "index", params.faces[0]
        more_edits = "\n".join(f"{a.prompt}={a.strength:g}" for a in more)
        return cls(
            first.prompt, first.strength, face_mode, face_index, output, url, more_edits, params.domain, params.fidelity
        )


def layer_name(params: EditParams, limit: int = 120) -> str:
    """`FFCLIP: smiling 0.8 + grey hair 1.2`: each prompt with its strength, shortened to `limit`
    characters; the Layers dock then tells two edits of the same prompts apart."""
    text = " + ".join(f"{e.prompt} {e.strength:g}" for e in params.edits)
    if len(text) > limit:
        text = text[: limit - 1].rstrip() + "\u2026"
    return LAYER_PREFIX + text


# --------------------------------------------------------------------------- progress


def overall_progress(stage: str, value: float) -> float | None:
    """Fraction of the whole job for a stage's own 0..1 value (None: not a pipeline stage)."""
    if stage not in STAGES:
        return None
    value = min(max(float(value), 0.0), 1.0)
    return (STAGES.index(stage) + value) / len(STAGES)


def stage_text(stage: str, value: float | None = None, domain: str = "face") -> str:
    if domain != "face" and stage in SCENE_STAGE_TEXT:
        text = SCENE_STAGE_TEXT[stage].format(domain=domain)
    else:
        text = STAGE_TEXT.get(stage, stage.replace("_", " ").capitalize())
    if stage == "queued" and value:
        text += f" (position {int(value)} in the queue)"
    return "FFCLIP: " + text + "\u2026"


class Progress:
    """Where progress goes; the GIMP entry subclasses it with Gimp.progress_* calls."""

    def text(self, message: str) -> None:  # pragma: no cover - trivial
        pass

    def fraction(self, value: float) -> None:  # pragma: no cover - trivial
        pass

    def pulse(self) -> None:  # pragma: no cover - trivial
        pass


def download_text(status: dict) -> str | None:
    """What to show while the engine downloads its model files (status `downloading`), else None."""
    download = status.get("download") if status.get("state") == EngineState.DOWNLOADING else None
    if not isinstance(download, dict):
        return None
    done, total = download.get("done") or 0, download.get("total")
    sizes = f"{done / 1e6:.0f} of {total / 1e6:.0f} MB" if total else f"{done / 1e6:.0f} MB"
    left = int(download.get("files_left") or 0)
    files = f", {left} files to go" if left > 1 else ""
    return f"Downloading model files ({sizes}{files})\u2026"


class ProgressRelay:
    """Turns the engine's (stage, value) callbacks into monotone text and fraction updates."""

    def __init__(self, sink: Progress, domain: str = "face"):
        self.sink = sink
        self.domain = domain
        self.stage: str | None = None
        self.done = 0.0

    def status(self, message: dict) -> None:
        """A status the engine pushed while the job waits: the download's progress, then loading."""
        text = download_text(message)
        if text is None:
            if message.get("state") == EngineState.LOADING and self.stage == "download":
                self.stage = "loading"
                self.sink.text(stage_text("loading"))
            return
        self.stage = "download"  # the next pipeline stage shows its own text again
        self.sink.text("FFCLIP: " + text)
        download = message["download"]
        if download.get("total"):
            self.sink.fraction(min(1.0, (download.get("done") or 0) / download["total"]))
        else:
            self.sink.pulse()

    def __call__(self, stage: str, value: float = 0.0) -> None:
        if stage != self.stage:
            self.stage = stage
            self.sink.text(stage_text(stage, value, self.domain))
        fraction = overall_progress(stage, value)
        if fraction is None:
            self.sink.pulse()
        elif fraction >= self.done:
            self.done = fraction
            self.sink.fraction(fraction)


# --------------------------------------------------------------------------- pixels


def crop(data: bytes, width: int, height: int, region: tuple[int, int, int, int], bpp: int) -> bytes:
    """Rows of `region` (x, y, w, h) out of a width×height image with `bpp` bytes per pixel."""
    x, y, w, h = region
    if x < 0 or y < 0 or w < 0 or h < 0 or x + w > width or y + h > height:
        raise ValueError(f"region {region} is outside the {width}x{height} image")
    if len(data) != width * height * bpp:
        raise ValueError(f"expected {width * height * bpp} bytes, got {len(data)}")
    stride, row = width * bpp, w * bpp
    return b"".join(data[(y + j) * stride + x * bpp : (y + j) * stride + x * bpp + row] for j in range(h))


def check_region(region, width: int, height: int) -> tuple[int, int, int, int]:
    try:
        x, y, w, h = (int(v) for v in region)
    except (TypeError, ValueError):
        raise PluginError(f"The engine returned an unreadable region: {region!r}") from None
    if w <= 0 or h <= 0 or x < 0 or y < 0 or x + w > width or y + h > height:
        raise PluginError(f"The engine returned a region {[x, y, w, h]} outside the {width}x{height} layer.")
    return x, y, w, h


def compose_result(
    result_rgba: bytes,
    source_region_rgba: bytes,
    selection_region: bytes | None,
    output: str,
) -> tuple[bytes, bytes | None]:
    """(layer pixels RGBA8, layer mask Y8 or None) for the new layer covering the result region.

    The blend mask is the result's alpha, limited by the selection (so nothing outside the selection
    changes, even with a soft selection). With a mask, the layer keeps the source's alpha and the mask
    carries the blend; without one, the blend goes into the layer's alpha.
    """
    n = len(source_region_rgba) // 4
    if len(result_rgba) != 4 * n:
        raise PluginError(
            f"The engine returned {len(result_rgba)} bytes for a region of {n} pixels (expected {4 * n})."
        )
    blend = bytes(result_rgba[3::4])
    if selection_region is not None:
        if len(selection_region) != n:
            raise ValueError("selection size does not match the region")
        blend = bytes(map(min, blend, selection_region))
    layer = bytearray(result_rgba)
    source_alpha = bytes(source_region_rgba[3::4])
    if output == "layer-mask":
        layer[3::4] = source_alpha
        return bytes(layer), blend
    if source_alpha.count(255) == n:
        layer[3::4] = blend
    else:
        layer[3::4] = bytes((a * b + 127) // 255 for a, b in zip(blend, source_alpha, strict=True))
    return bytes(layer), None


def selection_is_full(selection: bytes | None) -> bool:
    return selection is None or selection.count(255) == len(selection)


# --------------------------------------------------------------------------- errors


def error_message(exc: BaseException, url: str | None = None, settings_path: str | None = None) -> str:
    """A readable message for any exception raised while talking to the engine."""
    if isinstance(exc, PluginError):
        return str(exc)
    code = getattr(exc, "code", None)
    message = str(getattr(exc, "message", "") or "").strip()
    name = type(exc).__name__
    if _is_unreachable(exc):
        return not_running_message(url)
    if code in ERROR_TEXT:
        text = ERROR_TEXT[code].format(message=message, where="", settings=settings_path or gimp_settings.SETTINGS_NAME)
        return text.strip()
    if code:
        return f"The FFCLIP engine reported an error ({code}): {message or 'no details'}"
    if isinstance(exc, TimeoutError | OSError):
        return f"Lost contact with the FFCLIP engine at {url or 'its URL'}: {exc or name}."
    return f"FFCLIP Edit failed: {name}: {exc}"


def not_running_message(url: str | None, extra: str = "") -> str:
    url = url or DEFAULT_URL
    port = gimp_settings.url_port(url)
    text = (
        f"The FFCLIP engine is not running at {url}.\n"
        f"Start it in a terminal with:\n    ffclip-engine serve --port {port}\n"
        "or let the plug-in start it: ffclip-engine install-gimp-plugin --autostart"
    )
    if extra:
        text += "\n\n" + extra
    return text + "\n\n" + DOCTOR_HINT


# --------------------------------------------------------------------------- the job


@dataclass
class NewLayer:
    """What the plug-in paints: the layer over the result region (layer-local), its mask, and the
    engine's result it came from."""

    region: tuple[int, int, int, int]
    layer_rgba: bytes
    mask: bytes | None
    result: EditResult
    models: dict | None = None  # the engine's `models` status (the recipe keeps its identities)


def _client_module():
    from ffclip.plugin import client

    return client


def connect(url: str, settings: dict, progress: Progress, client_factory=None, starter=None):
    """A connected client; starts the engine when allowed and it is not reachable."""
    factory = client_factory or _default_factory(settings)
    progress.text(stage_text("connect"))
    try:
        client = factory(url)
        client.connect()
        return client
    except Exception as exc:  # noqa: BLE001 - classified below
        if not _is_unreachable(exc):
            raise
        first = exc
    if not (settings.get("autostart") and settings.get("start_command") and gimp_settings.is_local_url(url)):
        raise PluginError(not_running_message(url)) from first
    (starter or start_engine)(settings, progress)
    deadline = time.monotonic() + float(settings.get("start_timeout") or 120)
    progress.text(stage_text("start"))
    while True:
        progress.pulse()
        try:
            client = factory(url)
            client.connect()
            return client
        except Exception as exc:  # noqa: BLE001
            if not _is_unreachable(exc):
                raise
            if time.monotonic() > deadline:
                raise PluginError(
                    not_running_message(
                        url,
                        f"The plug-in started the engine but it did not answer within "
                        f"{float(settings.get('start_timeout') or 120):g} s; see {engine_log_path()}.",
                    )
                ) from exc
            time.sleep(0.5)


def _default_factory(settings: dict):
    client = _client_module()

    def factory(url: str):
        timeout = float(settings.get("timeout") or 600)
        tls = _tls_verify(settings)
        plain = bool(settings.get("insecure_plain_token"))
        ours = must_be_ours(settings, url)
        return client.EngineClient(
            url, token=settings.get("token"), timeout=timeout, tls=tls, plain_token=plain, verify_local=ours
        )

    return factory


def _tls_verify(settings: dict):
    try:
        return gimp_settings.tls_verify(settings)
    except ValueError as exc:
        raise PluginError(f"The plug-in's tls_fingerprint setting is not usable: {exc}") from None


session_tls = _tls_verify  # the live dialog's EngineSession verifies the same way


def _is_unreachable(exc: BaseException) -> bool:
    return isinstance(exc, ConnectionFailed | ConnectionRefusedError)


def engine_log_path() -> str:
    """Where a daemon the plug-in starts writes its console output (crashes before its own log)."""
    return str(paths.state_dir() / paths.ENGINE_START_LOG)


def command_for_url(command: list[str], url: str | None) -> list[str]:
    """The start command with its `--port` following the URL (the user may have changed the URL)."""
    if not url or "--port" not in command:
        return command
    i = command.index("--port")
    if i + 1 < len(command):
        command = [*command[: i + 1], str(gimp_settings.url_port(url)), *command[i + 2 :]]
    return command


PRECISIONS = ("auto", "fp32", "bf16", "fp16")  # `serve --precision` (engine/precision.py)


def command_with_precision(command: list[str], precision: str | None) -> list[str]:
    """The start command with the settings' `precision` (an engine started by the plug-in computes
    as the user chose); a command that names its own precision keeps it."""
    if not precision or precision not in PRECISIONS or any(c.startswith("--precision") for c in command):
        return command
    return [*command, "--precision", precision]


def start_engine(settings: dict, progress: Progress) -> subprocess.Popen:
    """Start the daemon from `start_command`, detached, its output in the state folder's engine.log."""
    command = settings.get("start_command")
    if isinstance(command, str):
        command = command.split()
    if not command:
        raise PluginError(not_running_message(settings.get("url")))
    command = command_for_url([str(c) for c in command], settings.get("url"))
    command = command_with_precision(command, settings.get("precision"))
    progress.text(stage_text("start"))
    log_path = engine_log_path()
    try:
        paths.private_folder(Path(log_path).parent)
        paths.rotate_if_larger(log_path, paths.ENGINE_START_LOG_LIMIT)
        with paths.open_private(log_path, "ab") as log:
            return subprocess.Popen(
                [str(c) for c in command],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
                # GIMP's own Python settings (PYTHONHOME, PYTHONPATH on Windows and macOS) must not reach
                # the engine's Python; its console goes quiet once it listens (FFCLIP_DETACHED)
                env={**child_environment(), "FFCLIP_DETACHED": "1"},
            )
    except OSError as exc:
        raise PluginError(
            not_running_message(settings.get("url"), f"Starting it with {' '.join(command)} failed: {exc}")
        ) from exc


class EngineProcess:
    """A daemon the plug-in started (live.StartedEngine): whether it has ended, and why, in the
    start command's own words (the last lines it wrote to engine-start.log)."""

    def __init__(self, process: subprocess.Popen, log_path: str, log_offset: int) -> None:
        self.process, self.log_path, self.log_offset = process, log_path, log_offset

    def exited(self) -> str | None:
        code = self.process.poll()
        if code is None:
            return None
        said = self._said()
        return f"exit status {code}: {said}" if said else f"exit status {code} (nothing in {self.log_path})"

    def _said(self, lines: int = 2) -> str:
        try:
            with open(self.log_path, "rb") as log:
                log.seek(self.log_offset)
                text = log.read(64 * 1024).decode("utf-8", "replace")
        except OSError:
            return ""
        kept = [line.strip() for line in text.splitlines() if line.strip()]
        return " / ".join(kept[-lines:])


class EngineStarter:
    """live.Starter for a local engine: `start_command` from the settings, its output in
    engine-start.log."""

    def __init__(self, settings: dict) -> None:
        self.settings = settings

    def start(self) -> EngineProcess:
        log_path = engine_log_path()
        try:
            offset = os.path.getsize(log_path)
        except OSError:
            offset = 0
        process = start_engine(self.settings, Progress())
        return EngineProcess(process, log_path, offset)


def must_be_ours(settings: dict, url: str) -> bool:
    """With autostart, the engine on the local port must prove it is this user's (plugin/identity.py):
    the plug-in would otherwise hand its photos to whatever program took the port first."""
    return bool(settings.get("autostart")) and can_start(settings, url)


def can_start(settings: dict, url: str) -> bool:
    """Whether the plug-in can start the engine at `url`: a local URL and a start command."""
    return bool(settings.get("start_command")) and gimp_settings.is_local_url(url)


def run_edit(
    params: EditParams,
    output: str,
    url: str | None,
    rgba: bytes,
    width: int,
    height: int,
    selection: bytes | None,
    settings: dict,
    progress: Progress,
    client_factory=None,
    starter=None,
) -> NewLayer:
    """Send one layer to the engine and turn the answer into the new layer's pixels and mask
    (`output`: one of OUTPUT_MODES). Raises PluginError (readable message) or Cancelled; never
    anything else for engine trouble.
    """
    try:
        url = gimp_settings.resolve_url(url, settings)
    except ValueError as exc:
        raise PluginError(f"The engine URL is not usable: {exc}.") from None
    if len(rgba) != width * height * 4:
        raise PluginError(f"Internal error: {len(rgba)} bytes for a {width}x{height} RGBA layer.")
    if selection is not None and selection_is_full(selection):
        selection = None
    if selection is not None and not any(selection):
        raise PluginError("The selection does not cover the layer; select the face (or nothing) and retry.")
    params = replace(params, selection=selection is not None)
    job_id = uuid.uuid4().hex
    client = None
    try:
        client = connect(url, dict(settings, url=url), progress, client_factory, starter)
    except PluginError:
        raise
    except Exception as exc:  # noqa: BLE001 - every engine failure becomes a message
        raise PluginError(error_message(exc, url)) from exc
    try:
        gimp_settings.write_job_state(url, job_id, settings.get("token"))
        progress.text(stage_text("upload"))
        relay = ProgressRelay(progress, params.domain)

        def moved(new_id: str, error: Exception) -> None:  # resent under a new id: FFCLIP Cancel follows it
            nonlocal job_id
            gimp_settings.clear_job_state(job_id)
            job_id = new_id
            gimp_settings.write_job_state(url, job_id, settings.get("token"))
            relay("moved")

        result = client.edit(
            params,
            rgba,
            ImageSpec(width, height),
            selection,
            on_progress=relay,
            on_queued=lambda position: relay("queued", position),
            job_id=job_id,
            on_status=relay.status,
            on_moved=moved,
        )
    except PluginError:
        raise
    except Exception as exc:  # noqa: BLE001 - every engine failure becomes a message
        if isinstance(exc, Cancelled):
            raise Cancelled(ERROR_TEXT["cancelled"]) from exc
        if _is_unreachable(exc) or isinstance(exc, OSError):
            raise PluginError(
                f"Lost contact with the FFCLIP engine at {url} during the edit: {getattr(exc, 'message', '') or exc}"
            ) from exc
        raise PluginError(error_message(exc, url)) from exc
    finally:
        gimp_settings.clear_job_state(job_id)
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()
    models = dict((getattr(client, "last_status", None) or {}).get("models") or {})
    region = check_region(result.region, width, height)
    source = crop(rgba, width, height, region, 4)
    sel = crop(selection, width, height, region, 1) if selection is not None else None
    layer_rgba, mask = compose_result(bytes(result.rgba), source, sel, output)
    progress.fraction(1.0)
    return NewLayer(region, layer_rgba, mask, result, models)


def cancel_running(settings: dict | None = None, client_factory=None) -> str:
    """Cancel the job the edit procedure is running; returns a message for the user."""
    state = gimp_settings.read_job_state()
    if state is None:
        return "No FFCLIP edit is running."
    if state.get("stale"):
        gimp_settings.clear_job_state(state["id"])
        return "No FFCLIP edit is running (the last one ended without cleaning up)."
    settings = dict(settings or gimp_settings.DEFAULTS)
    if state.get("token"):
        settings["token"] = state["token"]
    factory = client_factory or _default_factory(settings)
    client = None
    try:
        client = factory(state["url"])
        client.connect()
        client.cancel(state["id"])
    except Exception as exc:  # noqa: BLE001
        raise PluginError(error_message(exc, state["url"])) from exc
    finally:
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()
    return "Asked the FFCLIP engine to cancel the running edit."
