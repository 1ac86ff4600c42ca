"""Loading checkpoint files safely and strictly.

`load_checkpoint` never executes pickled code; the `read_*` functions take the official files of
DESIGN.md §2 apart and check every key and shape against our model classes.
"""

from .errors import CheckpointError, UnsafeCheckpointError
from .layouts import (
    KINDS,
    detect_kind,
    inspect_file,
    parse_e4e,
    parse_ffclip,
    parse_generator,
    read_arcface,
    read_e4e,
    read_ffclip,
    read_generator,
    read_hyperstyle,
    read_w_encoder,
)
from .report import check_state_dict, mismatch_report
from .safe_load import load_any, load_checkpoint, to_plain

__all__ = [
    "KINDS",
    "CheckpointError",
    "UnsafeCheckpointError",
    "check_state_dict",
    "detect_kind",
    "inspect_file",
    "load_any",
    "load_checkpoint",
    "mismatch_report",
    "parse_e4e",
    "parse_ffclip",
    "parse_generator",
    "read_arcface",
    "read_e4e",
    "read_ffclip",
    "read_generator",
    "read_hyperstyle",
    "read_w_encoder",
    "to_plain",
]
