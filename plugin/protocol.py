"""Wire protocol version 1 between the engine daemon and its clients (docs/protocol.md).

Standard library only: the GIMP plug-in, the command-line client and the daemon all import it, so
every constant, every field limit, the engine's states (`EngineState`) and every value that crosses
the wire are defined here once: the edit's parameters (`EditParams`) and its result (`EditResult`),
and a type per engine message (`StatusMessage`, `QueuedMessage`, `ProgressMessage`, `ResultMessage`,
`CancelledMessage`, `ErrorMessage`). Each builds its own message (`to_message`); the engine reads
requests with `EditParams.from_message` (which validates every field, once, where it is used) and
clients read the engine's messages with one `read_event`.
"""

from __future__ import annotations

import json
import math
import re
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

PROTOCOL_VERSION = 1
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765
DEFAULT_URL = f"ws://{DEFAULT_HOST}:{DEFAULT_PORT}/"

STAGES = ("detect", "align", "invert", "encode_text", "map", "synthesize", "blend")
# Stages a cached inversion lets a re-edit of the same photo skip.
CACHEABLE_STAGES = ("detect", "align", "invert")

ERROR_CODES = (
    "bad_request",
    "bad_image",
    "too_large",
    "no_face",
    "models_missing",
    "cancelled",
    "busy",
    "unauthorized",
    "internal",
)


class EngineState:
    """What the engine can do now: `status.state`, a worker's and a domain's `state` (docs/protocol.md)."""

    READY = "ready"  # edits run
    LOADING = "loading"  # the models are loading; edits wait
    DOWNLOADING = "downloading"  # the daemon fetches its model files (`status.download`); edits wait
    MISSING = "missing"  # model files are absent; edits answer models_missing
    FAILED = "failed"  # loading failed; edits answer the reason
    AVAILABLE = "available"  # a domain whose files are here, loaded on its first edit
    DRAINING = "draining"  # stopping: queued jobs finish, new edits are refused (busy, `draining`)
    ALL = (READY, LOADING, DOWNLOADING, MISSING, FAILED, AVAILABLE, DRAINING)
    WAITING = (LOADING, DOWNLOADING)  # states in which an edit is queued until the engine is ready


IMAGE_FORMATS = ("rgba8", "png")
SELECTION_FORMATS = ("a8",)
FACE_MODES = ("all", "largest")
# What an edit works on: faces (FFHQ), or the paper's other domains, a car or a church in the
# selection (or the whole image). Every domain has its own e4e encoder, FFCLIP mapper and StyleGAN2.
DOMAINS = ("face", "car", "church")
DEFAULT_DOMAIN = "face"
# how closely the edited face keeps the person: e4e's inversion (the paper's), or HyperStyle's
# per-photo generator offsets (slower the first time per photo; needs HyperStyle's files)
FIDELITIES = ("standard", "high")
DEFAULT_FIDELITY = "standard"

# Field limits: clients build within them, the engine refuses anything outside them.
MAX_ID_LENGTH = 128
MAX_REPLY_TEXT = 4 << 20  # the engine's text messages (status, progress, a result's header) take kilobytes
ID_PATTERN = re.compile(r"[A-Za-z0-9._:-]+", re.ASCII)
MAX_PROMPT_LENGTH = 1000
MAX_EDITS = 4  # attributes edited at once: ŵ = w + Σ αᵢ·Δwᵢ
MAX_FACE_INDICES = 64
STRENGTH_RANGE = (-4.0, 4.0)
MIN_SIDE = 16  # smaller images cannot hold a detectable face
DEFAULT_MAX_PIXELS = 40_000_000  # 160 MB as RGBA8; every command takes --max-pixels to raise it


# --------------------------------------------------------------------------- errors


class EngineError(Exception):
    """An error the engine reported (`code` is one of ERROR_CODES) or a client-side failure."""

    def __init__(self, code: str, message: str = "", job_id: str | None = None):
        super().__init__(f"{code}: {message}" if message else code)
        self.code = code
        self.message = message
        self.job_id = job_id


class BadRequest(EngineError, ValueError):
    """A message (or a value meant for one) outside the protocol; `code` says how the engine answers
    it: bad_request, bad_image or too_large."""

    def __init__(self, message: str, code: str = "bad_request", job_id: str | None = None):
        super().__init__(code, message, job_id)


class Cancelled(EngineError):
    """The job ended with `cancelled` (asked by a client, or the engine shut down)."""

    def __init__(self, message: str = "the edit was cancelled", job_id: str | None = None):
        super().__init__("cancelled", message, job_id)


class Draining(EngineError):
    """The engine is stopping (a rolling restart): it refused the edit or the connection, and another
    engine behind the same address takes it (`busy` with `"draining": true`)."""

    def __init__(self, message: str = "the engine is draining", job_id: str | None = None):
        super().__init__("busy", message, job_id)


class ConnectionFailed(EngineError):
    """The engine could not be reached, or the connection broke."""

    def __init__(self, message: str):
        super().__init__("connection_failed", message)


class ConnectionLost(ConnectionFailed):
    """The connection broke before the job ended because the engine went away (it died, drained or
    restarted): the job may be sent again, behind a load balancer to another engine."""


class ProtocolViolation(EngineError):
    """The engine sent something this client does not understand."""

    def __init__(self, message: str):
        super().__init__("protocol", message)


# --------------------------------------------------------------------------- field readers


def _number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise BadRequest(f"'{name}' must be a finite number")
    return float(value)


def _int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest(f"'{name}' must be an integer")
    return value


def _bool(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise BadRequest(f"'{name}' must be true or false")
    return value


def parse_domain(value: Any) -> str:
    """ "face", "car" or "church" (any case, surrounding spaces ignored)."""
    text = value.strip().lower() if isinstance(value, str) else None
    if text not in DOMAINS:
        raise BadRequest(f"'domain' must be one of {', '.join(DOMAINS)}, not {value!r}")
    return text


def parse_fidelity(value: Any) -> str:
    """ "standard" or "high" (any case, surrounding spaces ignored)."""
    text = value.strip().lower() if isinstance(value, str) else None
    if text not in FIDELITIES:
        raise BadRequest(f"'fidelity' must be one of {', '.join(FIDELITIES)}, not {value!r}")
    return text


def parse_faces(value: Any) -> str | tuple[int, ...]:
    """Which faces: "all", "largest", face indices (ints ≥ 0, most confident first), an int, or text
    like "0,2" -> "all" | "largest" | a non-empty tuple of indices."""
    if isinstance(value, str):
        text = value.strip().lower()
        if text in FACE_MODES:
            return text
        try:
            value = [int(part) for part in text.split(",") if part.strip()]
        except ValueError:
            raise BadRequest(f"faces must be 'all', 'largest' or indices like '0,2', not {value!r}") from None
    elif isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    if isinstance(value, list | tuple) and 0 < len(value) <= MAX_FACE_INDICES:
        indices = tuple(_int(v, "faces[]") for v in value)
        if all(i >= 0 for i in indices):
            return indices
    raise BadRequest('\'faces\' must be "all", "largest" or a non-empty list of face indices >= 0')


# --------------------------------------------------------------------------- the request


@dataclass(frozen=True)
class Attribute:
    """One prompt and its strength α (1 = the paper's edit, 0 = the reconstruction)."""

    prompt: str
    strength: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.prompt, str) or not self.prompt.strip():
            raise BadRequest("every edit needs a non-empty 'prompt'")
        if len(self.prompt) > MAX_PROMPT_LENGTH:
            raise BadRequest(f"'prompt' is longer than {MAX_PROMPT_LENGTH} characters")
        strength = _number(self.strength, "strength")
        low, high = STRENGTH_RANGE
        if not low <= strength <= high:
            raise BadRequest(f"'strength' must be between {low:g} and {high:g}")
        object.__setattr__(self, "prompt", " ".join(self.prompt.split()))
        object.__setattr__(self, "strength", strength)

    def to_message(self) -> dict:
        return {"prompt": self.prompt, "strength": self.strength}

    @classmethod
    def parse(cls, text: str) -> Attribute:
        """The command-line form: "grey hair=1.2" -> ("grey hair", 1.2); without "=NUMBER" the
        strength is 1 (an "=" followed by words belongs to the prompt)."""
        prompt, sep, number = text.rpartition("=")
        try:
            strength = float(number)
        except ValueError:
            sep = ""
        return cls(prompt, strength) if sep else cls(text)

    @classmethod
    def from_message(cls, value: Any) -> Attribute:
        if not isinstance(value, dict) or not isinstance(value.get("prompt"), str):
            raise BadRequest("each entry of 'edits' must be an object with a string 'prompt'")
        return cls(value["prompt"], value.get("strength", 1.0))


@dataclass(frozen=True)
class EditParams:
    """What to edit: 1–4 attributes, which faces, preview or full resolution, whether a selection
    mask comes with the image, whether this request supersedes the connection's earlier ones, and the
    domain (faces, or a car or church in the selection; `faces` then must stay "all").

    The plug-in and the command line build it, the wire carries it, the pipeline takes it; building
    one validates it (the same rules on both sides)."""

    edits: tuple[Attribute, ...]
    faces: str | tuple[int, ...] = "all"
    preview: bool = False
    selection: bool = False
    supersede: bool = False
    domain: str = DEFAULT_DOMAIN
    fidelity: str = DEFAULT_FIDELITY  # "standard" (e4e) or "high" (HyperStyle: keeps the person)

    def __post_init__(self) -> None:
        edits = tuple(self.edits) if isinstance(self.edits, list | tuple) else ()
        if not 1 <= len(edits) <= MAX_EDITS or not all(isinstance(e, Attribute) for e in edits):
            raise BadRequest(f"'edits' must hold 1 to {MAX_EDITS} entries of prompt and strength")
        object.__setattr__(self, "edits", edits)
        object.__setattr__(self, "faces", parse_faces(self.faces))
        for name in ("preview", "selection", "supersede"):
            _bool(getattr(self, name), name)
        object.__setattr__(self, "domain", parse_domain(self.domain))
        object.__setattr__(self, "fidelity", parse_fidelity(self.fidelity))
        if self.domain != "face" and self.faces != "all":
            raise BadRequest(f"'faces' chooses faces; a {self.domain} edit takes the selection (or the whole image)")

    @classmethod
    def single(cls, prompt: str, strength: float = 1.0, **fields: Any) -> EditParams:
        return cls((Attribute(prompt, strength),), **fields)

    @property
    def prompts(self) -> tuple[str, ...]:
        return tuple(e.prompt for e in self.edits)

    @property
    def label(self) -> str:
        """The edit in words, e.g. "smiling ×0.8, grey hair" (strength shown when not 1)."""
        return ", ".join(e.prompt if e.strength == 1.0 else f"{e.prompt} \u00d7{e.strength:g}" for e in self.edits)

    def to_message(self, job_id: str, image: ImageSpec | None) -> dict:
        """The `edit` announcement; the image (and selection) binary frames follow it. Without an
        image, the engine reuses the image and selection of this connection's previous edit
        (`reuse_image`: a live preview sends the photo once)."""
        message = {
            "type": "edit",
            "id": job_id,
            "edits": [e.to_message() for e in self.edits],
            "faces": self.faces if isinstance(self.faces, str) else list(self.faces),
            "preview": self.preview,
        }
        if image is None:
            message["reuse_image"] = True
        else:
            message["image"] = image.to_message()
        if self.selection and image is not None:
            message["selection"] = {"format": "a8"}
        if self.supersede:
            message["supersede"] = True
        if self.domain != DEFAULT_DOMAIN:  # a face edit reads exactly as before the field existed
            message["domain"] = self.domain
        if self.fidelity != DEFAULT_FIDELITY:  # likewise a standard one
            message["fidelity"] = self.fidelity
        return message

    @classmethod
    def from_message(cls, message: dict) -> EditParams:
        """The parameters of an `edit` message; `prompt`/`strength` mean a one-entry `edits`."""
        if "edits" in message:
            if "prompt" in message:
                raise BadRequest("give either 'edits' or 'prompt', not both")
            entries = message["edits"]
            if not isinstance(entries, list):
                raise BadRequest(f"'edits' must be a list of 1 to {MAX_EDITS} objects")
            edits = tuple(Attribute.from_message(entry) for entry in entries)
        else:
            if not isinstance(message.get("prompt"), str):
                raise BadRequest("'prompt' must be a non-empty string")
            edits = (Attribute(message["prompt"], message.get("strength", 1.0)),)
        selection = message.get("selection")
        if selection is not None and (
            not isinstance(selection, dict) or selection.get("format") not in SELECTION_FORMATS
        ):
            raise BadRequest('\'selection\' must be {"format": "a8"}')
        faces = message.get("faces", "all")
        if not (faces in FACE_MODES or isinstance(faces, list)):  # the wire's forms; text like "0,2" is the CLI's
            raise BadRequest('\'faces\' must be "all", "largest" or a non-empty list of face indices >= 0')
        return cls(
            edits,
            faces,
            _bool(message.get("preview", False), "preview"),
            selection is not None,
            _bool(message.get("supersede", False), "supersede"),
            message.get("domain", DEFAULT_DOMAIN),
            message.get("fidelity", DEFAULT_FIDELITY),
        )


@dataclass(frozen=True)
class ImageSpec:
    """The image an `edit` announces: its size and how its frame is encoded."""

    width: int
    height: int
    format: str = "rgba8"

    def to_message(self) -> dict:
        return {"width": self.width, "height": self.height, "format": self.format}

    @classmethod
    def from_message(cls, value: Any, max_pixels: int) -> ImageSpec:
        if not isinstance(value, dict):
            raise BadRequest("'image' must be an object {width, height, format}")
        width, height = _int(value.get("width"), "image.width"), _int(value.get("height"), "image.height")
        image_format = value.get("format")
        if image_format not in IMAGE_FORMATS:
            raise BadRequest(f"'image.format' must be one of {', '.join(IMAGE_FORMATS)}")
        check_image_size(width, height, max_pixels)
        return cls(width, height, image_format)

    @property
    def pixels(self) -> int:
        return self.width * self.height


def check_image_size(width: int, height: int, max_pixels: int | None) -> None:
    """The engine's size rules for any image it is given (wire, file or array)."""
    if width <= 0 or height <= 0:
        raise BadRequest(f"image size {width}x{height} is empty", "bad_image")
    if max_pixels and width * height > max_pixels:
        raise BadRequest(
            f"image of {width}x{height} = {width * height / 1e6:.1f} MP exceeds the engine's limit of "
            f"{max_pixels / 1e6:.1f} MP (--max-pixels)",
            "too_large",
        )
    if min(width, height) < MIN_SIDE:
        raise BadRequest(f"image of {width}x{height} is too small (at least {MIN_SIDE} px a side)", "bad_image")


# --------------------------------------------------------------------------- the result


@dataclass
class EditResult:
    """An edit's answer: the edited pixels of `region` with the blend mask as alpha, and what ran."""

    region: tuple[int, int, int, int]  # x, y, w, h in image coordinates
    rgba: bytes  # w*h*4 bytes, row-major; alpha is the blend mask
    faces: list[dict] = field(default_factory=list)  # index, box, quad, score of each edited face
    edits: tuple[Attribute, ...] = ()
    stages: list[str] = field(default_factory=list)  # stages the engine ran for this job
    preview: bool = False
    size: int = 0  # the resolution the faces were synthesized at (the preview's is the engine's choice)
    untrained: bool = False  # made by the tiny profile's random networks
    seconds: float = 0.0
    id: str = ""
    domain: str = DEFAULT_DOMAIN  # what was edited: faces, or the car / church of the selection
    fidelity: str = DEFAULT_FIDELITY  # the inversion the edit used

    @property
    def skipped(self) -> list[str]:
        """Stages this job did not run (cache hits)."""
        return [s for s in STAGES if s not in self.stages]

    def to_message(self) -> dict:
        x, y, w, h = self.region
        return {
            "type": ResultMessage.TYPE,
            "id": self.id,
            "region": [x, y, w, h],
            "format": "rgba8",
            "faces": self.faces,
            "edits": [e.to_message() for e in self.edits],
            "stages": list(self.stages),
            "skipped": self.skipped,
            "preview": self.preview,
            "size": self.size,
            "untrained": self.untrained,
            "seconds": round(self.seconds, 3),
            "domain": self.domain,
            "fidelity": self.fidelity,
        }

    @classmethod
    def from_message(cls, message: dict, rgba: bytes) -> EditResult:
        """A `result` message and its binary frame; raises ProtocolViolation when they do not fit."""
        region = message.get("region")
        if (
            not isinstance(region, list)
            or len(region) != 4
            or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in region)
        ):
            raise ProtocolViolation(f"result has an invalid region: {region!r}")
        if len(rgba) != region[2] * region[3] * 4:
            raise ProtocolViolation(f"result frame has {len(rgba)} bytes for region {region}")
        try:
            edits = tuple(Attribute.from_message(e) for e in message.get("edits") or ())
        except BadRequest as exc:
            raise ProtocolViolation(f"result has invalid edits: {exc.message}") from None
        return cls(
            region=(region[0], region[1], region[2], region[3]),
            rgba=rgba,
            faces=list(message.get("faces") or []),
            edits=edits,
            stages=[s for s in message.get("stages") or () if s in STAGES],
            preview=bool(message.get("preview", False)),
            size=int(message.get("size") or 0),
            untrained=bool(message.get("untrained", False)),
            seconds=float(message.get("seconds") or 0.0),
            id=str(message.get("id") or ""),
            domain=message.get("domain") if message.get("domain") in DOMAINS else DEFAULT_DOMAIN,
            fidelity=message.get("fidelity") if message.get("fidelity") in FIDELITIES else DEFAULT_FIDELITY,
        )


# --------------------------------------------------------------------------- engine → client


@dataclass(frozen=True)
class StatusMessage:
    """`status`: the engine's state and what it holds (the whole message in `fields`)."""

    fields: dict

    TYPE = "status"

    @property
    def state(self) -> str:
        state = self.fields.get("state")
        return state if state in EngineState.ALL else EngineState.READY

    @property
    def protocol(self) -> Any:
        return self.fields.get("protocol")

    @property
    def download(self) -> dict | None:
        """The file being fetched (`file`, `done`, `total`, `files_left`) while `downloading`."""
        download = self.fields.get("download")
        return download if self.state == EngineState.DOWNLOADING and isinstance(download, dict) else None

    @property
    def domains(self) -> dict:
        domains = self.fields.get("domains")
        return domains if isinstance(domains, dict) else {}

    @property
    def fidelities(self) -> tuple[str, ...]:
        """The `fidelity` values this engine's face edits take now: ("standard", "high") once
        HyperStyle's files are in its model store (or loaded), else ("standard",) (an engine from
        before the field: standard only). `models.high_fidelity.missing` names what it lacks."""
        models = self.fields.get("models")
        found = models.get("fidelities") if isinstance(models, dict) else None
        if not isinstance(found, list):
            return (DEFAULT_FIDELITY,)
        return tuple(f for f in FIDELITIES if f in found) or (DEFAULT_FIDELITY,)

    def to_message(self) -> dict:
        return {"type": self.TYPE, "protocol": PROTOCOL_VERSION, **self.fields}


@dataclass(frozen=True)
class QueuedMessage:
    """`queued`: the job waits with `position` jobs ahead of it."""

    id: str
    position: int

    TYPE = "queued"

    def to_message(self) -> dict:
        return {"type": self.TYPE, "id": self.id, "position": self.position}


@dataclass(frozen=True)
class ProgressMessage:
    """`progress`: how far the job is in one of STAGES (0..1)."""

    id: str
    stage: str
    value: float

    TYPE = "progress"

    def to_message(self) -> dict:
        value = round(min(max(self.value, 0.0), 1.0), 4)
        return {"type": self.TYPE, "id": self.id, "stage": self.stage, "value": value}


@dataclass(frozen=True)
class ResultMessage:
    """`result`: announces the RGBA frame that follows; `result(frame)` is the EditResult of both."""

    id: str
    fields: dict

    TYPE = "result"

    def result(self, frame: bytes) -> EditResult:
        return EditResult.from_message(self.fields, frame)


@dataclass(frozen=True)
class CancelledMessage:
    """`cancelled`: the job ended without a result (asked by a client, or the engine shut down)."""

    id: str

    TYPE = "cancelled"

    def to_message(self) -> dict:
        return {"type": self.TYPE, "id": self.id}


@dataclass(frozen=True)
class ErrorMessage:
    """`error`: a job's failure (`id`), or a refusal of a message that names no job (id None)."""

    code: str
    message: str
    id: str | None = None
    draining: bool = False  # a `busy` refusal because the engine is stopping: try another engine

    TYPE = "error"

    def to_message(self) -> dict:
        reply: dict = {"type": self.TYPE, "code": self.code, "message": self.message}
        if self.id is not None:
            reply["id"] = self.id
        if self.draining:
            reply["draining"] = True
        return reply

    def exception(self) -> EngineError:
        if self.code == "cancelled":
            return Cancelled(self.message or "the edit was cancelled", self.id)
        if self.draining and self.code == "busy":
            return Draining(self.message, self.id)
        return EngineError(self.code, self.message, self.id)


ServerMessage = StatusMessage | QueuedMessage | ProgressMessage | ResultMessage | CancelledMessage | ErrorMessage


def read_event(message: dict) -> ServerMessage | None:
    """An engine message (decoded: a dict with a string `type`) as its type; None for a type this
    client does not know (a newer engine's addition: ignored). Raises ProtocolViolation when a
    known type lacks what it must carry."""
    kind = message["type"]
    if kind == StatusMessage.TYPE:
        return StatusMessage(message)
    if kind == ErrorMessage.TYPE:
        job_id = message.get("id") if isinstance(message.get("id"), str) else None
        code, text = str(message.get("code") or "internal"), str(message.get("message") or "")
        return ErrorMessage(code, text, job_id, message.get("draining") is True)
    job_id = message.get("id")
    if not isinstance(job_id, str):
        if kind in (QueuedMessage.TYPE, ProgressMessage.TYPE, ResultMessage.TYPE, CancelledMessage.TYPE):
            raise ProtocolViolation(f"a {kind!r} message without its job id")
        return None
    if kind == QueuedMessage.TYPE:
        return QueuedMessage(job_id, _reported_int(message.get("position")))
    if kind == ProgressMessage.TYPE:
        return ProgressMessage(job_id, str(message.get("stage")), _reported_float(message.get("value")))
    if kind == ResultMessage.TYPE:
        return ResultMessage(job_id, message)
    if kind == CancelledMessage.TYPE:
        return CancelledMessage(job_id)
    return None


def _reported_int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _reported_float(value: Any) -> float:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    return float(value) if ok else 0.0


# --------------------------------------------------------------------------- other messages


def new_job_id() -> str:
    return uuid.uuid4().hex


def encode(message: dict) -> str:
    return json.dumps(message, separators=(",", ":"), allow_nan=False)


def cancel_message(job_id: str) -> dict:
    return {"type": "cancel", "id": job_id}


def status_request() -> dict:
    return {"type": "status"}


def decode(text: str) -> dict:
    """Parse one text frame into a message with a string `type`; raises BadRequest otherwise."""
    try:
        message = json.loads(text)
    except ValueError as exc:
        raise BadRequest(f"malformed JSON: {exc}") from None
    except RecursionError:  # json's C scanner guards its recursion: "[[[[..." of 1 MiB ends here
        raise BadRequest("malformed JSON: nested too deeply") from None
    if not isinstance(message, dict):
        raise BadRequest("a message must be a JSON object")
    if not isinstance(message.get("type"), str):
        raise BadRequest("a message needs a string 'type'")
    return message


def reply_limit(pixels: int = 0) -> int:
    """The largest message an engine's reply can be for requests of up to `pixels` pixels: a text
    message, or a result's RGBA frame (its region lies within the image). A client reads no more."""
    return max(MAX_REPLY_TEXT, 4 * pixels)


def job_id_of(message: dict) -> str:
    """A job id from the wire: letters, digits and `._:-`, 1–128 of them (a UUID fits). Nothing else:
    ids are logged, and a newline in one would forge a log line. The refusal never repeats it."""
    job_id = message.get("id")
    if not isinstance(job_id, str) or not job_id:
        raise BadRequest("'id' must be a non-empty string")
    if len(job_id) > MAX_ID_LENGTH:
        raise BadRequest(f"'id' is longer than {MAX_ID_LENGTH} characters")
    if not ID_PATTERN.fullmatch(job_id):
        raise BadRequest("'id' may only hold letters, digits and . _ : - (a UUID fits)")
    return job_id


def attributes(pairs: Iterable[tuple[str, float]]) -> tuple[Attribute, ...]:
    """(prompt, strength) pairs -> Attributes (validated)."""
    return tuple(Attribute(prompt, strength) for prompt, strength in pairs)
