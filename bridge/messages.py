"""Protocol messages on the engine side: validating client requests, building replies.

The constants (stages, error codes, formats, field limits) come from `ffclip.plugin.protocol` so that
the daemon and its clients cannot drift apart.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from typing import Any

from ffclip.plugin.protocol import (
    FACE_MODES,
    IMAGE_FORMATS,
    MAX_ID_LENGTH,
    MAX_PROMPT_LENGTH,
    PROTOCOL_VERSION,
    SELECTION_FORMATS,
    STRENGTH_RANGE,
)

MIN_SIDE = 16  # smaller images cannot hold a detectable face
MAX_FACE_INDICES = 64


class RequestError(Exception):
    """A client message the engine refuses; becomes an `error` message with `code`."""

    def __init__(self, code: str, message: str, job_id: str | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.job_id = job_id


@dataclass(frozen=True)
class EditSpec:
    """A validated `edit` announcement."""

    id: str
    prompt: str
    strength: float
    faces: str | tuple[int, ...]
    preview: bool
    width: int
    height: int
    image_format: str
    has_selection: bool

    @property
    def frames(self) -> int:
        return 2 if self.has_selection else 1

    @property
    def pixels(self) -> int:
        return self.width * self.height


def parse_json(text: str) -> dict:
    """A text frame → message dict with a string `type` (or RequestError bad_request)."""
    try:
        message = json.loads(text)
    except ValueError as exc:
        raise RequestError("bad_request", f"malformed JSON: {exc}") from None
    if not isinstance(message, dict):
        raise RequestError("bad_request", "a message must be a JSON object")
    if not isinstance(message.get("type"), str):
        raise RequestError("bad_request", "a message needs a string 'type'")
    return message


def announced_frames(message: dict) -> int:
    """How many binary frames an `edit` announces, judged leniently so a refused one stays in step."""
    count = 1 if message.get("image") is not None else 0
    return count + (1 if message.get("selection") is not None else 0)


def job_id_of(message: dict) -> str:
    job_id = message.get("id")
    if not isinstance(job_id, str) or not job_id.strip():
        raise RequestError("bad_request", "'id' must be a non-empty string")
    if len(job_id) > MAX_ID_LENGTH:
        raise RequestError("bad_request", f"'id' is longer than {MAX_ID_LENGTH} characters")
    return job_id


def parse_edit(message: dict, max_pixels: int) -> EditSpec:
    """Validate an `edit` announcement; raises RequestError carrying the job id when known."""
    job_id = job_id_of(message)
    try:
        return _parse_edit(message, job_id, max_pixels)
    except RequestError as exc:
        exc.job_id = job_id
        raise


def _parse_edit(message: dict, job_id: str, max_pixels: int) -> EditSpec:
    prompt = message.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise RequestError("bad_request", "'prompt' must be a non-empty string")
    if len(prompt) > MAX_PROMPT_LENGTH:
        raise RequestError("bad_request", f"'prompt' is longer than {MAX_PROMPT_LENGTH} characters")
    strength = _number(message.get("strength", 1.0), "strength")
    low, high = STRENGTH_RANGE
    if not low <= strength <= high:
        raise RequestError("bad_request", f"'strength' must be between {low:g} and {high:g}")
    preview = message.get("preview", False)
    if not isinstance(preview, bool):
        raise RequestError("bad_request", "'preview' must be true or false")
    width, height, image_format = _image(message.get("image"), max_pixels)
    has_selection = _selection(message.get("selection"))
    return EditSpec(
        job_id,
        prompt.strip(),
        strength,
        _faces(message.get("faces", "all")),
        preview,
        width,
        height,
        image_format,
        has_selection,
    )


def _number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise RequestError("bad_request", f"'{name}' must be a finite number")
    return float(value)


def _int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestError("bad_request", f"'{name}' must be an integer")
    return value


def _faces(value: Any) -> str | tuple[int, ...]:
    if isinstance(value, str) and value in FACE_MODES:
        return value
    if isinstance(value, list) and value and len(value) <= MAX_FACE_INDICES:
        indices = tuple(_int(v, "faces[]") for v in value)
        if all(i >= 0 for i in indices):
            return indices
    raise RequestError("bad_request", '\'faces\' must be "all", "largest" or a non-empty list of face indices')


def _image(value: Any, max_pixels: int) -> tuple[int, int, str]:
    if not isinstance(value, dict):
        raise RequestError("bad_request", "'image' must be an object {width, height, format}")
    width, height = _int(value.get("width"), "image.width"), _int(value.get("height"), "image.height")
    image_format = value.get("format")
    if image_format not in IMAGE_FORMATS:
        raise RequestError("bad_request", f"'image.format' must be one of {', '.join(IMAGE_FORMATS)}")
    if width <= 0 or height <= 0:
        raise RequestError("bad_image", f"image size {width}x{height} is empty")
    if width * height > max_pixels:
        raise RequestError(
            "too_large",
            f"image of {width}x{height} = {width * height} pixels exceeds the engine's limit of "
            f"{max_pixels} pixels (ffclip-engine serve --max-pixels)",
        )
    if min(width, height) < MIN_SIDE:
        raise RequestError("bad_image", f"image of {width}x{height} is too small (at least {MIN_SIDE} px a side)")
    return width, height, image_format


def _selection(value: Any) -> bool:
    if value is None:
        return False
    if not isinstance(value, dict) or value.get("format") not in SELECTION_FORMATS:
        raise RequestError("bad_request", '\'selection\' must be {"format": "a8"}')
    return True


# ---------------------------------------------------------------------- engine → client


def encode(message: dict) -> str:
    return json.dumps(message, separators=(",", ":"), allow_nan=False, default=_plain)


def _plain(value: Any) -> Any:
    """numpy scalars and arrays, tuples → JSON-able values."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def status(fields: dict) -> dict:
    return {"type": "status", "protocol": PROTOCOL_VERSION, **fields}


def queued(job_id: str, position: int) -> dict:
    return {"type": "queued", "id": job_id, "position": position}


def progress(job_id: str, stage: str, value: float) -> dict:
    return {"type": "progress", "id": job_id, "stage": stage, "value": round(min(max(value, 0.0), 1.0), 4)}


def error(code: str, message: str, job_id: str | None = None) -> dict:
    reply: dict = {"type": "error", "code": code, "message": scrub_paths(message)}
    if job_id is not None:
        reply["id"] = job_id
    return reply


def cancelled(job_id: str) -> dict:
    return {"type": "cancelled", "id": job_id}


# ---------------------------------------------------------------------- no paths on the wire

# An absolute POSIX path (two or more components), a home-relative one, or a Windows drive path.
_PATH = re.compile(
    r"(?:(?<![\w.:/])~?/(?:[^\s/'\"]+/)+[^\s/'\"]*)"
    r"|(?:\b[A-Za-z]:\\(?:[^\s\\'\"]+\\)*[^\s\\'\"]*)"
)


def scrub_paths(value: Any) -> Any:
    """Replace file paths of this machine by their last component, in strings, lists and dicts."""
    if isinstance(value, str):
        return _PATH.sub(_last_component, value)
    if isinstance(value, dict):
        return {k: scrub_paths(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [scrub_paths(v) for v in value]
    return value


def _last_component(match: re.Match) -> str:
    text = match.group(0)
    tail = text[len(text.rstrip(":;,.)]")) :]  # punctuation after the path is not part of it
    text = text[: len(text) - len(tail)].rstrip("/\\")
    name = re.split(r"[/\\]", text)[-1] if text else ""
    return (f"<{name}>" if name else "<path>") + tail


def safe_name(path: str | os.PathLike) -> str:
    return os.path.basename(os.fspath(path).rstrip("/\\")) or "<path>"
