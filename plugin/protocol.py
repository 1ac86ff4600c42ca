"""Wire protocol version 1 between the engine daemon and its clients (docs/protocol.md).

Standard library only: this module is shared by the GIMP plug-in, the command-line client and the
daemon (which imports the constants from here so both sides agree on them).
"""

from __future__ import annotations

import json
import math
import uuid
from dataclasses import dataclass, field
from typing import Any

PROTOCOL_VERSION = 1
DEFAULT_PORT = 8765
DEFAULT_URL = f"ws://127.0.0.1:{DEFAULT_PORT}/"

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

IMAGE_FORMATS = ("rgba8", "png")
SELECTION_FORMATS = ("a8",)
FACE_MODES = ("all", "largest")

# Client-side field limits; the daemon enforces the same ones.
MAX_ID_LENGTH = 128
MAX_PROMPT_LENGTH = 1000
STRENGTH_RANGE = (-4.0, 4.0)


class EngineError(Exception):
    """An error the engine reported (`code` is one of ERROR_CODES) or a client-side failure."""

    def __init__(self, code: str, message: str = "", job_id: str | None = None):
        super().__init__(f"{code}: {message}" if message else code)
        self.code = code
        self.message = message
        self.job_id = job_id


class Cancelled(EngineError):
    """The job ended with `cancelled` (asked by a client, or the engine shut down)."""

    def __init__(self, message: str = "the edit was cancelled", job_id: str | None = None):
        super().__init__("cancelled", message, job_id)


class ConnectionFailed(EngineError):
    """The engine could not be reached, or the connection broke."""

    def __init__(self, message: str):
        super().__init__("connection_failed", message)


class ProtocolViolation(EngineError):
    """The engine sent something this client does not understand."""

    def __init__(self, message: str):
        super().__init__("protocol", message)


@dataclass
class EditResult:
    region: tuple[int, int, int, int]  # x, y, w, h in image coordinates
    rgba: bytes  # w*h*4 bytes, row-major; alpha is the blend mask
    faces: list[dict] = field(default_factory=list)
    id: str = ""
    stages: list[str] = field(default_factory=list)  # stages the engine ran for this job
    skipped: list[str] = field(default_factory=list)  # stages it did not run (cache hits: detect..invert)
    preview: bool = False
    seconds: float = 0.0


def new_job_id() -> str:
    return uuid.uuid4().hex


def encode(message: dict) -> str:
    return json.dumps(message, separators=(",", ":"), allow_nan=False)


def normalize_faces(faces: Any) -> str | list[int]:
    """`"all"`, `"largest"`, an int, a list of ints or `"0,2"` → the wire form."""
    if isinstance(faces, str):
        text = faces.strip().lower()
        if text in FACE_MODES:
            return text
        try:
            return [int(part) for part in text.split(",") if part.strip()]
        except ValueError:
            raise ValueError(f"faces must be 'all', 'largest' or indices like '0,2', not {faces!r}") from None
    if isinstance(faces, bool):
        raise ValueError("faces must be 'all', 'largest' or a list of indices")
    if isinstance(faces, int):
        return [faces]
    if isinstance(faces, list | tuple) and all(isinstance(i, int) and not isinstance(i, bool) for i in faces):
        return list(faces)
    raise ValueError(f"faces must be 'all', 'largest' or a list of indices, not {faces!r}")


def edit_message(
    job_id: str,
    prompt: str,
    width: int,
    height: int,
    *,
    image_format: str = "rgba8",
    strength: float = 1.0,
    faces: Any = "all",
    preview: bool = False,
    selection: bool = False,
) -> dict:
    """The `edit` announcement; the image (and selection) binary frames follow it."""
    if image_format not in IMAGE_FORMATS:
        raise ValueError(f"image format must be one of {IMAGE_FORMATS}")
    if not isinstance(strength, int | float) or not math.isfinite(strength):
        raise ValueError("strength must be a finite number")
    message = {
        "type": "edit",
        "id": job_id,
        "prompt": prompt,
        "strength": float(strength),
        "faces": normalize_faces(faces),
        "preview": bool(preview),
        "image": {"width": int(width), "height": int(height), "format": image_format},
    }
    if selection:
        message["selection"] = {"format": "a8"}
    return message


def cancel_message(job_id: str) -> dict:
    return {"type": "cancel", "id": job_id}


def status_request() -> dict:
    return {"type": "status"}


def decode(text: str) -> dict:
    """Parse one engine → client text frame; raises ProtocolViolation when it is not a message."""
    try:
        message = json.loads(text)
    except ValueError as exc:
        raise ProtocolViolation(f"engine sent malformed JSON: {exc}") from None
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise ProtocolViolation("engine sent a message without a type")
    return message


def error_from(message: dict) -> EngineError:
    """The exception for an engine `error` (or `cancelled`) message."""
    job_id = message.get("id") if isinstance(message.get("id"), str) else None
    if message.get("type") == "cancelled":
        return Cancelled(job_id=job_id)
    code = str(message.get("code") or "internal")
    text = str(message.get("message") or "")
    if code == "cancelled":
        return Cancelled(text or "the edit was cancelled", job_id)
    return EngineError(code, text, job_id)


def region_of(message: dict) -> tuple[int, int, int, int]:
    region = message.get("region")
    if (
        not isinstance(region, list)
        or len(region) != 4
        or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in region)
    ):
        raise ProtocolViolation(f"result has an invalid region: {region!r}")
    x, y, w, h = region
    return x, y, w, h
