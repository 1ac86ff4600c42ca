"""Protocol messages on the engine side: reading client requests, building replies.

The request and result values, the message types, the constants and the field rules are
`ffclip.plugin.protocol`'s (one definition for the daemon and its clients); this module builds the
engine's messages from those types and adds what only the engine does: the lenient frame count of a
refused announcement, JSON encoding of numpy values, and scrubbing this machine's paths out of
every message.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from ffclip.plugin.protocol import (
    BadRequest,
    CancelledMessage,
    EditParams,
    ErrorMessage,
    ImageSpec,
    ProgressMessage,
    QueuedMessage,
    StatusMessage,
    job_id_of,
)


@dataclass(frozen=True)
class EditAnnouncement:
    """A validated `edit` announcement: the job's id, what to edit and the image frame to expect
    (None: `reuse_image`, the connection's previous image and selection)."""

    id: str
    params: EditParams
    image: ImageSpec | None

    @property
    def frames(self) -> int:
        if self.image is None:
            return 0
        return 2 if self.params.selection else 1


def announced_frames(message: dict) -> int:
    """How many binary frames an `edit` announces, judged leniently so a refused one stays in step."""
    count = 1 if message.get("image") is not None else 0
    return count + (1 if message.get("selection") is not None else 0)


def parse_edit(message: dict, max_pixels: int) -> EditAnnouncement:
    """Validate an `edit` announcement; raises BadRequest carrying the job id when known."""
    job_id = job_id_of(message)
    try:
        params = EditParams.from_message(message)
        reuse = message.get("reuse_image", False)
        if not isinstance(reuse, bool):
            raise BadRequest("'reuse_image' must be true or false")
        if reuse:
            if "image" in message or params.selection:
                raise BadRequest("'reuse_image' takes the previous edit's image and selection: send neither")
            return EditAnnouncement(job_id, params, None)
        return EditAnnouncement(job_id, params, ImageSpec.from_message(message.get("image"), max_pixels))
    except BadRequest as exc:
        exc.job_id = job_id
        raise


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
    return StatusMessage(fields).to_message()


def queued(job_id: str, position: int) -> dict:
    return QueuedMessage(job_id, position).to_message()


def progress(job_id: str, stage: str, value: float) -> dict:
    return ProgressMessage(job_id, stage, value).to_message()


def error(code: str, message: str, job_id: str | None = None) -> dict:
    return ErrorMessage(code, scrub_paths(message), job_id).to_message()


def cancelled(job_id: str) -> dict:
    return CancelledMessage(job_id).to_message()


# ---------------------------------------------------------------------- no paths on the wire

# An absolute POSIX path (two or more components), a home-relative one, or a Windows drive path.
# A folder's name may hold spaces (`/home/john doe/models`), though not at either end, so that the
# words after a path stay apart from it; the last name may not (it is where a path ends in prose),
# except in a quoted path, which ends at its closing quote.
_DIR = r"[^\s{sep}'\"](?:[^{sep}'\"\r\n]*[^\s{sep}'\"])?{sep}"
_PATH = re.compile(
    r"(?:(?<=(['\"]))~?/(?:(?!\1)[^/\r\n])+/(?:(?!\1)[^\r\n])*(?<!\s)(?=\1))"
    r"|(?:(?<=(['\"]))\b[A-Za-z]:\\(?:(?!\2)[^\r\n])*(?<!\s)(?=\2))"
    rf"|(?:(?<![\w.:/])~?/(?:{_DIR.format(sep='/')})+[^\s/'\"]*)"
    rf"|(?:\b[A-Za-z]:\\(?:{_DIR.format(sep=chr(92) * 2)})*[^\s\\'\"]*)"
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
