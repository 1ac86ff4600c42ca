"""Loading torch checkpoint files without executing pickled code, and without believing them.

A `.pt` file is a pickle, and a pickle can name any importable callable and call it. The official
files only need tensors, containers and numbers, plus configuration objects (argparse.Namespace,
OmegaConf) in their `opts` entry. So the unpickler (unpickler.py) resolves globals from an allow-list
of tensor rebuild functions and plain container types, turns configuration classes into inert
placeholders (which record their arguments and state and never run anything), and refuses every
other global before it is imported. Both torch formats are read by torchfile.py, not torch.load:
zip files (torch >= 1.6) and legacy pickles, which is what older conversions such as rosinality's
StyleGAN2 file use; every size the file states is checked against the file's own size before
anything is allocated.

Before unpickling, the first bytes say what the file is, so an HTML page or a text file saved under
a checkpoint's name, an empty file or a truncated download is reported as such. Whatever goes wrong
while reading a file is a CheckpointError that names it: DamagedCheckpointError (truncated,
corrupt, inconsistent; with what to do about it), UnsafeCheckpointError (code), or plain
CheckpointError (not a checkpoint at all).
"""

from __future__ import annotations

import codecs
import errno
import html
import json
import os
import re
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .errors import CheckpointError, DamagedCheckpointError, UnsafeCheckpointError
from .torchfile import MAX_DIMS, READ_ERRORS, Archive, read_legacy, read_legacy_pickle, read_zip, read_zip_pickle
from .unpickler import (  # noqa: F401 - the restricted unpickler's names, as they were imported from here
    INERT_PACKAGES,
    Inert,
    RestrictedUnpickler,
    inert_class,
    resolve_global,
    restricted_loads,
)

# --- what a file is, from its first bytes -------------------------------------------------------

ZIP_MAGIC = b"PK\x03\x04"
# A legacy torch file opens with pickle protocol 2 and the long 0x1950a86a20f9469cfc6c.
LEGACY_MAGIC = b"\x80\x02\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little")
HEAD_BYTES = 4096


def _html_title(text: str) -> str | None:
    match = re.search(r"<title[^>]*>(.*?)</title>", text, re.IGNORECASE | re.DOTALL)
    return " ".join(html.unescape(match.group(1)).split()) if match else None


def looks_like_html(head: bytes) -> bool:
    text = head[:1024].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    return text.startswith((b"<!doctype html", b"<html", b"<head", b"<body", b"<!--", b"<meta")) or (
        text.startswith(b"<") and b"<html" in head[:HEAD_BYTES].lower()
    )


def _is_text(head: bytes) -> bool:
    try:
        # final=False: a multi-byte character cut at the end of the sample is still text
        text = codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    except UnicodeDecodeError:
        return False
    return all(ch.isprintable() or ch in "\t\r\n\f" for ch in text)


def _not_a_checkpoint(path: Path, head: bytes, size: int) -> CheckpointError:
    if looks_like_html(head):
        title = _html_title(head.decode("utf-8", "replace"))
        said = f" titled {title!r}" if title else ""
        return CheckpointError(
            f"{path} is an HTML page{said} ({size} bytes), not a checkpoint: a web page (for example "
            "Google Drive's virus-scan or download-quota page) was saved under the checkpoint's name. "
            "Delete it and fetch the file again, or download it in a browser and use "
            "`ffclip-engine models import FILE`."
        )
    if _is_text(head):
        first = head.decode("utf-8", "replace").strip().splitlines()[0][:80] if head.strip() else ""
        lfs = first.startswith("version https://git-lfs")
        extra = " (a Git LFS pointer, not the file itself)" if lfs else ""
        return CheckpointError(f"{path} is a text file{extra}, not a checkpoint; it starts with {first!r}")
    return CheckpointError(
        f"{path} is not a PyTorch checkpoint (unrecognised header {head[:8].hex(' ')}); "
        "it may be corrupt or a different kind of file"
    )


def sniff(path: str | os.PathLike[str]) -> str:
    """'zip', 'legacy', 'tar' or 'safetensors'; raises CheckpointError saying what the file is otherwise."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist" if not path.exists() else f"{path} is not a file")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"{path} is empty (0 bytes): an interrupted download?")
    with path.open("rb") as f:
        head = f.read(HEAD_BYTES)
    if head.startswith(ZIP_MAGIC):
        return "zip"
    if head.startswith(LEGACY_MAGIC):
        return "legacy"
    if len(head) > 262 and head[257:262] == b"ustar":
        return "tar"  # torch < 0.4 wrote tar archives
    if _is_safetensors(head, size):
        return "safetensors"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        raise CheckpointError(f"{path} is a plain Python pickle, not a torch checkpoint (no magic number)")
    raise _not_a_checkpoint(path, head, size)


def _is_safetensors(head: bytes, size: int) -> bool:
    if len(head) < 10:
        return False
    (n,) = struct.unpack("<Q", head[:8])
    return 2 <= n <= size - 8 and head[8:9] == b"{"


# --- loading ------------------------------------------------------------------------------------


def safe_pickle_loads(data: bytes) -> Any:
    """Unpickle plain pickle bytes with the same restrictions (no tensors)."""
    return restricted_loads(data)


def _cannot_read(path: Path, exc: OSError) -> CheckpointError:
    """An OSError while parsing: a seek to where a lying offset points is the file's fault; a
    failing disk or a permission is not."""
    if exc.errno in (None, errno.EINVAL):
        return DamagedCheckpointError(f"{type(exc).__name__}: {exc.strerror or exc}", path)
    return CheckpointError(f"cannot read {path}: {exc.strerror or exc}")


def exception_text(exc: BaseException) -> str:
    """'Type: message' of a parser's exception; its message only when it is text (a KeyError's
    is the repr of the key, which could be a tensor of the file: slow and large to format)."""
    args = exc.args
    text = args[0] if len(args) == 1 and isinstance(args[0], str) and not isinstance(exc, KeyError) else ""
    if isinstance(exc, EOFError) and not text:
        return "its data ends too early (EOFError)"
    return f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__


def read_guarded(path: Path, read: Callable[[], Any]) -> Any:
    """read(), with every failure of reading `path` turned into a CheckpointError naming it: damaged
    (sizes, references or structure that contradict themselves), unsafe (code), or unreadable."""
    try:
        return read()
    except DamagedCheckpointError as exc:
        raise exc.at(path) from None
    except UnsafeCheckpointError as exc:
        raise UnsafeCheckpointError(f"{path}: {exc}") from None
    except CheckpointError:
        raise
    except OSError as exc:
        raise _cannot_read(path, exc) from None
    except READ_ERRORS as exc:
        raise DamagedCheckpointError(exception_text(exc), path) from None


def _zip_kind(path: Path) -> None:
    """Refuse zip files that are not plain torch checkpoints, saying what they are."""
    with Archive(path) as archive:
        names = archive.names()
    if not any(n.endswith("/data.pkl") for n in names):
        raise CheckpointError(f"{path} is a zip archive but not a torch checkpoint (no data.pkl inside)")
    if any(n.endswith("/constants.pkl") or "/code/" in n for n in names):
        raise CheckpointError(
            f"{path} is a TorchScript archive, which carries executable code; only plain checkpoints "
            "(state_dicts) are loaded (`models import` reads OpenAI's CLIP archive, without its code, as clip)"
        )


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        from safetensors.torch import load_file
    except ImportError:  # pragma: no cover - safetensors comes with open_clip
        raise CheckpointError(f"{path}: reading safetensors needs the safetensors package") from None
    try:
        return load_file(str(path), device="cpu")
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
        raise DamagedCheckpointError(f"a corrupt or truncated safetensors file ({str(exc)[:200]})", path) from None


def safetensors_shapes(path: str | os.PathLike[str]) -> dict[str, tuple[int, ...]]:
    """Keys and shapes from a safetensors header, without reading the data; checks the file length
    (exactly: safetensors itself refuses a file longer than its header describes)."""
    path = Path(path)
    return read_guarded(path, lambda: _safetensors_header(path))


def _safetensors_header(path: Path) -> dict[str, tuple[int, ...]]:
    size = path.stat().st_size
    with path.open("rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        if n > size - 8:
            raise DamagedCheckpointError(f"its header claims {n} bytes of a {size}-byte file")
        raw = f.read(n)
    try:
        shapes, end = _safetensors_entries(json.loads(raw))
    except CheckpointError:  # a ValueError too, but already in words
        raise
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        said = f"no {str(exc.args[0])[:40]!r} field" if isinstance(exc, KeyError) else exception_text(exc)
        raise DamagedCheckpointError(f"an unreadable safetensors header ({said})") from None
    if 8 + n + end > size:
        raise DamagedCheckpointError(f"it is truncated: {size} bytes, the header describes {8 + n + end}")
    if 8 + n + end < size:  # safetensors itself refuses a file longer than its header describes
        raise DamagedCheckpointError(f"it has {size - 8 - n - end} bytes after the data its header describes")
    return shapes


def _safetensors_entries(header: Any) -> tuple[dict[str, tuple[int, ...]], int]:
    """{key: shape} of a parsed safetensors header, and where its data ends."""
    if not isinstance(header, dict):
        raise DamagedCheckpointError("an unreadable safetensors header (not a JSON object)")
    header.pop("__metadata__", None)
    shapes, end = {}, 0
    for key, entry in header.items():
        begin, stop = entry["data_offsets"]
        shape = entry["shape"]
        if not (isinstance(begin, int) and isinstance(stop, int) and 0 <= begin <= stop):
            raise DamagedCheckpointError(f"tensor {key[:80]!r} has malformed data offsets")
        if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise DamagedCheckpointError(f"tensor {key[:80]!r} has a malformed shape")
        shapes[key], end = tuple(shape), max(end, stop)
    return shapes, end


def load_any(path: str | os.PathLike[str]) -> Any:
    """Whatever the checkpoint holds, loaded safely onto the CPU."""
    path = Path(path)
    fmt = sniff(path)
    if fmt == "safetensors":
        return _load_safetensors(path)
    if fmt == "tar":
        raise CheckpointError(
            f"{path} is in the tar format of torch < 0.4, which is not read; load it with that torch "
            "and save it again with torch.save"
        )
    if fmt == "zip":
        read_guarded(path, lambda: _zip_kind(path))
        return read_guarded(path, lambda: read_zip(path))
    return read_guarded(path, lambda: read_legacy(path))


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A checkpoint's top-level dict, loaded safely; CheckpointError when unusable."""
    obj = load_any(path)
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a dict of weights")
    return obj


# --- the structure alone -------------------------------------------------------------------------


class TensorStub:
    """A tensor's place in an outline: its shape, no data."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        self.shape = shape

    def __repr__(self) -> str:
        return f"<tensor {list(self.shape)}>"


class _OutlineUnpickler(RestrictedUnpickler):
    """The restricted unpickler with every tensor a TensorStub and no storage read."""

    def find_class(self, module: str, name: str) -> Any:
        if module.startswith("torch") and name.endswith("Storage"):
            return name
        return super().find_class(module, name)

    def rebuild_function(self, module: str, name: str) -> Any:
        if name.startswith("_rebuild_tensor"):
            return _stub_tensor
        if name.startswith("_rebuild_parameter"):
            return _stub_parameter
        return _stub_from_type

    def persistent_load(self, pid: Any) -> None:
        return None


def _stub_tensor(_storage: Any, _offset: Any, size: Any, *_rest: Any) -> TensorStub:
    if not isinstance(size, tuple | list) or len(size) > MAX_DIMS or not all(isinstance(d, int) for d in size):
        raise DamagedCheckpointError("a tensor's shape is not a list of numbers")
    return TensorStub(tuple(size))


def _stub_parameter(data: Any, *_rest: Any) -> Any:
    return data


def _stub_from_type(func: Any, _new_type: Any, args: Any, _state: Any) -> Any:
    if (func is not _stub_tensor and func is not _stub_parameter) or not isinstance(args, tuple):
        raise UnsafeCheckpointError("a tensor subclass rebuilt by another function")
    return func(*args)


def outline(path: str | os.PathLike[str]) -> Any:
    """A torch checkpoint's object tree with TensorStubs for tensors, read from its pickle alone
    (a zip's data.pkl, or the head of a legacy file): milliseconds for a file of gigabytes."""
    path = Path(path)
    fmt = sniff(path)
    if fmt == "zip":
        read_guarded(path, lambda: _zip_kind(path))
        return read_guarded(path, lambda: read_zip_pickle(path, _OutlineUnpickler))
    if fmt == "legacy":
        return read_guarded(path, lambda: read_legacy_pickle(path, _OutlineUnpickler))
    raise CheckpointError(f"{path} is a {fmt} file, not a pickled torch checkpoint")


# --- reading placeholders back as plain data ----------------------------------------------------


def to_plain(obj: Any, _depth: int = 0) -> Any:
    """Plain dicts/lists/values from config placeholders (OmegaConf nodes, argparse.Namespace)."""
    if _depth > 50:
        return "..."
    if isinstance(obj, type) and issubclass(obj, Inert):
        return obj.inert_name
    if isinstance(obj, Inert):
        return _inert_to_plain(obj, _depth)
    if isinstance(obj, dict):
        if "_content" in obj and "_metadata" in obj:  # vars() of a DictConfig, as FFCLIP saves `opts`
            return to_plain(obj["_content"], _depth + 1)
        return {k: to_plain(v, _depth + 1) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v, _depth + 1) for v in obj]
    return obj


def _inert_to_plain(obj: Inert, depth: int) -> Any:
    state = obj.inert_state
    if isinstance(state, tuple) and len(state) == 2 and isinstance(state[0], dict):
        state = state[0]  # (dict state, slot state)
    if isinstance(state, dict):
        if "_content" in state:  # OmegaConf DictConfig / ListConfig
            return to_plain(state["_content"], depth + 1)
        if "_val" in state:  # OmegaConf value node
            return to_plain(state["_val"], depth + 1)
        if obj.inert_name == "argparse.Namespace":
            return to_plain(state, depth + 1)
    if obj.__dict__.get("_inert_items"):
        return to_plain(obj.__dict__["_inert_items"], depth + 1)
    return repr(obj)
