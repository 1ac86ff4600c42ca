"""Loading torch checkpoint files without executing pickled code.

A `.pt` file is a pickle, and a pickle can name any importable callable and call it. The official
files only need tensors, containers and numbers, plus configuration objects (argparse.Namespace,
OmegaConf) in their `opts` entry. So the unpickler here resolves globals from an allow-list of tensor
rebuild functions and plain container types, turns configuration classes into inert placeholders
(which record their arguments and state and never run anything), and refuses every other global
before it is imported. Both torch formats go through it: zip files (torch >= 1.6) and legacy
pickles, which is what older conversions such as rosinality's StyleGAN2 file use.

Before unpickling, the first bytes say what the file is, so an HTML page or a text file saved under
a checkpoint's name, an empty file or a truncated download is reported as such.
"""

from __future__ import annotations

import _compat_pickle
import codecs
import collections
import html
import io
import json
import os
import pickle
import re
import struct
import types
import zipfile
from pathlib import Path
from typing import Any

import torch

from .errors import CheckpointError, UnsafeCheckpointError

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


# --- the restricted unpickler -------------------------------------------------------------------


class Inert:
    """Stand-in for an object of a class that is never imported (argparse, OmegaConf, numpy...).

    It records what the pickle handed it: constructor arguments, state, items. Nothing is called.
    """

    inert_name = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> Inert:
        obj = object.__new__(cls)
        obj.__dict__.update(_inert_args=args, _inert_kwargs=kwargs, _inert_state=None, _inert_items={}, _inert_list=[])
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # REDUCE calls the class: keep the arguments, as __new__ did
        self.__dict__.update(_inert_args=args, _inert_kwargs=kwargs)

    def __setstate__(self, state: Any) -> None:
        self.__dict__["_inert_state"] = state

    def __setitem__(self, key: Any, value: Any) -> None:  # dict-like classes are filled by SETITEMS
        self.__dict__["_inert_items"][key] = value

    def append(self, value: Any) -> None:  # list-like classes are filled by APPENDS
        self.__dict__["_inert_list"].append(value)

    def extend(self, values: Any) -> None:
        self.__dict__["_inert_list"].extend(values)

    @property
    def inert_state(self) -> Any:
        return self.__dict__.get("_inert_state")

    @property
    def inert_args(self) -> tuple[Any, ...]:
        return self.__dict__.get("_inert_args", ())

    def __repr__(self) -> str:
        return f"<inert {self.inert_name}>"


_INERT_CLASSES: dict[str, type[Inert]] = {}


def inert_class(module: str, name: str) -> type[Inert]:
    full = f"{module}.{name}"
    cls = _INERT_CLASSES.get(full)
    if cls is None:
        cls = type(name.rpartition(".")[2] or "Inert", (Inert,), {"inert_name": full, "__module__": __name__})
        _INERT_CLASSES[full] = cls
    return cls


# Packages whose objects only carry configuration: they become placeholders, never imported.
INERT_PACKAGES = frozenset(
    {
        "argparse",
        "omegaconf",
        "typing",
        "typing_extensions",
        "pathlib",
        "enum",
        "numpy",
        "datetime",
        "yacs",
        "easydict",
    }
)
_SAFE_BUILTINS = frozenset(
    {
        "dict",
        "list",
        "tuple",
        "set",
        "frozenset",
        "int",
        "float",
        "complex",
        "bool",
        "str",
        "bytes",
        "bytearray",
        "slice",
        "range",
        "object",
    }
)
_TORCH_REBUILD = frozenset(
    {
        ("torch._utils", "_rebuild_tensor"),
        ("torch._utils", "_rebuild_tensor_v2"),
        ("torch._utils", "_rebuild_tensor_v3"),
        ("torch._utils", "_rebuild_parameter"),
        ("torch._utils", "_rebuild_parameter_with_state"),
        ("torch._tensor", "_rebuild_from_type_v2"),
        ("torch", "Size"),
        ("torch", "Tensor"),
        ("torch", "device"),
        ("torch.nn.parameter", "Parameter"),
    }
)


def _encode_latin1(text: str, encoding: str = "latin1") -> bytes:
    """Protocol-2 pickles spell bytes as _codecs.encode(text, 'latin1'); allow only that."""
    if codecs.lookup(encoding).name != "iso8859-1" or not isinstance(text, str):
        raise UnsafeCheckpointError(f"refusing _codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


def _reconstructor(cls: Any, base: Any, state: Any) -> Any:
    """Protocol 0/1 spelling of object construction; only placeholders may be built this way."""
    if isinstance(cls, type) and issubclass(cls, Inert):
        obj = cls.__new__(cls)
        obj.__dict__["_inert_args"] = (state,) if state is not None else ()
        return obj
    raise UnsafeCheckpointError(f"refusing copyreg._reconstructor for {cls!r}")


_SPECIAL = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("collections", "defaultdict"): collections.defaultdict,
    ("_codecs", "encode"): _encode_latin1,
    ("copyreg", "_reconstructor"): _reconstructor,
}


def _py2_names(module: str, name: str) -> tuple[str, str]:
    """Map Python 2 spellings (`__builtin__ long`) as the stock unpickler does with fix_imports."""
    if (module, name) in _compat_pickle.NAME_MAPPING:
        return _compat_pickle.NAME_MAPPING[(module, name)]
    return _compat_pickle.IMPORT_MAPPING.get(module, module), name


def resolve_global(module: str, name: str) -> Any:
    """The object a pickle may get for `module.name`, or UnsafeCheckpointError. Imports nothing new."""
    module, name = _py2_names(module, name)
    if (module, name) in _SPECIAL:
        return _SPECIAL[(module, name)]
    if module == "builtins" and name in _SAFE_BUILTINS:
        return getattr(__import__("builtins"), name)
    if (module, name) in _TORCH_REBUILD:
        return _torch_attr(module, name)
    if module == "torch" and isinstance(vars(torch).get(name), torch.dtype):  # vars: no lazy imports
        return vars(torch)[name]
    if module.partition(".")[0] in INERT_PACKAGES:
        return inert_class(module, name)
    raise UnsafeCheckpointError(
        f"the file's pickle references {module}.{name}, which is not a tensor, container or "
        "configuration type; unpickling it could import and run arbitrary code, so the file is "
        "refused (nothing from it was executed)"
    )


def _torch_attr(module: str, name: str) -> Any:
    obj: Any = torch
    for part in module.split(".")[1:] + [name]:
        obj = getattr(obj, part)
    return obj


class SafeUnpickler(pickle._Unpickler):
    """The pure-Python unpickler: its memo is a dict, where the C one is an array that a corrupt
    LONG_BINPUT index (up to 2**32) grows to tens of GB. Checkpoint pickles are small (the tensor
    data is not in them), so the speed does not matter."""

    def find_class(self, module: str, name: str) -> Any:
        return resolve_global(module, name)


def _safe_load(file: Any, **kwargs: Any) -> Any:
    return SafeUnpickler(file, **kwargs).load()


# torch.load accepts a pickle module; it subclasses our Unpickler (adding storage types) and calls load.
SAFE_PICKLE_MODULE = types.ModuleType("ffclip_safe_pickle")
SAFE_PICKLE_MODULE.Unpickler = SafeUnpickler  # type: ignore[attr-defined]
SAFE_PICKLE_MODULE.load = _safe_load  # type: ignore[attr-defined]
SAFE_PICKLE_MODULE.__dict__["Pickler"] = pickle.Pickler


def safe_pickle_loads(data: bytes) -> Any:
    """Unpickle plain pickle bytes with the same restrictions (no torch storages)."""
    return SafeUnpickler(io.BytesIO(data)).load()


# --- loading ------------------------------------------------------------------------------------


def _check_zip(path: Path) -> None:
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except (zipfile.BadZipFile, OSError, ValueError, NotImplementedError) as exc:  # a corrupt directory
        raise CheckpointError(
            f"{path} is a truncated or corrupt torch archive ({exc}); an interrupted download? Fetch or copy it again"
        ) from None
    if not any(n.endswith("/data.pkl") or n == "data.pkl" for n in names):
        raise CheckpointError(f"{path} is a zip archive but not a torch checkpoint (no data.pkl inside)")
    if any(n.endswith("/constants.pkl") or "/code/" in n for n in names):
        raise CheckpointError(
            f"{path} is a TorchScript archive, which carries executable code; only plain checkpoints "
            "(state_dicts) are loaded (`models import` reads OpenAI's CLIP archive, without its code, as clip)"
        )


def _torch_load(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", pickle_module=SAFE_PICKLE_MODULE, weights_only=False, mmap=False)
    except UnsafeCheckpointError as exc:
        raise UnsafeCheckpointError(f"{path}: {exc}") from None
    except CheckpointError:
        raise
    except (
        EOFError,
        pickle.UnpicklingError,
        RuntimeError,
        OSError,
        ValueError,
        struct.error,
        KeyError,
        AttributeError,
        TypeError,
        IndexError,
        AssertionError,  # torch's legacy loader asserts on storage keys that a corrupt file lacks
        MemoryError,  # a corrupt length asks the unpickler for an impossible string
    ) as exc:
        raise CheckpointError(
            f"{path} could not be read as a torch checkpoint ({type(exc).__name__}: {exc}); "
            "it is probably truncated or corrupt"
        ) from None


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        from safetensors.torch import load_file
    except ImportError:  # pragma: no cover - safetensors comes with open_clip
        raise CheckpointError(f"{path}: reading safetensors needs the safetensors package") from None
    try:
        return load_file(str(path), device="cpu")
    except Exception as exc:  # safetensors raises its own error types
        raise CheckpointError(f"{path} is a corrupt or truncated safetensors file ({exc})") from None


def safetensors_shapes(path: str | os.PathLike[str]) -> dict[str, tuple[int, ...]]:
    """Keys and shapes from a safetensors header, without reading the data; checks the file length
    (exactly: safetensors itself refuses a file longer than its header describes)."""
    path = Path(path)
    size = path.stat().st_size
    try:
        with path.open("rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n))
        header.pop("__metadata__", None)
        end = max((int(v["data_offsets"][1]) for v in header.values()), default=0)
        shapes = {k: tuple(v["shape"]) for k, v in header.items()}
    except (struct.error, ValueError, KeyError, TypeError, AttributeError, IndexError) as exc:
        raise CheckpointError(f"{path} has an unreadable safetensors header ({type(exc).__name__}: {exc})") from None
    if 8 + n + end > size:
        raise CheckpointError(f"{path} is truncated: {size} bytes, the header describes {8 + n + end}")
    if 8 + n + end < size:
        raise CheckpointError(f"{path} has {size - 8 - n - end} bytes after the data its header describes")
    return shapes


def load_any(path: str | os.PathLike[str]) -> Any:
    """Whatever the checkpoint holds, loaded safely onto the CPU."""
    path = Path(path)
    fmt = sniff(path)
    if fmt == "safetensors":
        return _load_safetensors(path)
    if fmt == "zip":
        _check_zip(path)
    return _torch_load(path)


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


def _stub_tensor(_storage: Any, _offset: Any, size: Any, *_rest: Any) -> TensorStub:
    return TensorStub(tuple(int(d) for d in size))


def _stub_parameter(data: Any, *_rest: Any) -> Any:
    return data


_STUB_REBUILD = {
    ("torch._utils", "_rebuild_tensor"): _stub_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _stub_tensor,
    ("torch._utils", "_rebuild_tensor_v3"): _stub_tensor,
    ("torch._utils", "_rebuild_parameter"): _stub_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _stub_parameter,
}


class _OutlineUnpickler(SafeUnpickler):
    """The restricted unpickler with every tensor a TensorStub and no storage read."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _STUB_REBUILD:
            return _STUB_REBUILD[(module, name)]
        if module == "torch" and name.endswith("Storage"):
            return name
        return super().find_class(module, name)

    def persistent_load(self, pid: Any) -> None:
        return None


def outline(path: str | os.PathLike[str]) -> Any:
    """A torch checkpoint's object tree with TensorStubs for tensors, read from its pickle alone
    (a zip's data.pkl, or the head of a legacy file): milliseconds for a file of gigabytes."""
    path = Path(path)
    fmt = sniff(path)
    try:
        if fmt == "zip":
            _check_zip(path)
            with zipfile.ZipFile(path) as zf:
                name = next(n for n in zf.namelist() if n.endswith("data.pkl"))
                data = zf.read(name)
            return _OutlineUnpickler(io.BytesIO(data)).load()
        if fmt == "legacy":
            with path.open("rb") as f:
                for _ in range(3):  # magic number, protocol version, sys_info
                    SafeUnpickler(f).load()
                return _OutlineUnpickler(f).load()
    except CheckpointError:
        raise
    except (EOFError, pickle.UnpicklingError, OSError, ValueError, TypeError, AttributeError, IndexError) as exc:
        raise CheckpointError(f"{path} could not be read ({type(exc).__name__}: {exc})") from None
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
