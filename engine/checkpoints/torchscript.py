"""The tensors of a TorchScript archive (OpenAI's CLIP `ViT-B-32.pt`), read without running its code.

`torch.jit.load`, which OpenAI's `clip.load` and older open_clip versions use, compiles the archive's
`code/` and unpickles its `data.pkl` with torch's own unpickler, then `.state_dict()` gives the
weights. Here nothing is compiled or run: `data.pkl` goes through the restricted unpickler of
`safe_load` (the archive's module classes, `__torch__.*`, become inert placeholders that only record
their attributes; anything outside the allow-list is refused before it is imported), each storage
is read as raw bytes from the archive's `data/` folder, and the state_dict is rebuilt from the
placeholders: every parameter and buffer by its dotted name. Which attributes are parameters or
buffers each class declares in its code file (`__parameters__ = [...]`, `__buffers__ = [...]`),
read here as text with a regular expression.
"""

from __future__ import annotations

import io
import os
import pickle
import re
import zipfile
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .errors import CheckpointError, UnsafeCheckpointError
from .safe_load import Inert, inert_class, resolve_global

# torch.<Name>Storage in a pickle names the element type of a storage
STORAGE_DTYPES = {
    "DoubleStorage": torch.float64,
    "FloatStorage": torch.float32,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}
MAX_DEPTH = 64  # module nesting; CLIP needs 6
_DECLARED = re.compile(r"^\s*__(parameters|buffers)__\s*=\s*\[(.*?)\]", re.MULTILINE | re.DOTALL)


def is_torchscript_archive(path: str | os.PathLike[str]) -> bool:
    """A zip with a `*/data.pkl` and TorchScript's `constants.pkl` or `code/` beside it."""
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    return any(n.endswith("/data.pkl") for n in names) and any(
        n.endswith("/constants.pkl") or "/code/" in n for n in names
    )


class _StorageType:
    """What `torch.FloatStorage` etc. unpickle to here: only the element type."""

    def __init__(self, name: str) -> None:
        self.name, self.dtype = name, STORAGE_DTYPES[name]


def _rebuild_tensor(storage: Any, offset: int, size: Any, stride: Any, *_rest: Any) -> torch.Tensor:
    """torch._utils._rebuild_tensor(_v2) on a flat tensor of the storage's elements: a view,
    bounds-checked by as_strided."""
    if not isinstance(storage, torch.Tensor):
        raise CheckpointError("a tensor in the archive does not refer to a storage")
    try:
        return storage.as_strided(tuple(size), tuple(stride), int(offset))
    except (RuntimeError, TypeError, ValueError) as exc:
        raise CheckpointError(f"a tensor reaches outside its storage ({exc})") from None


def _rebuild_parameter(data: Any, _requires_grad: Any = None, _hooks: Any = None, *_rest: Any) -> Any:
    return data


def _typed_value(value: Any, *_type: Any) -> Any:
    """torch.jit._pickle's list builders and type tags: the value itself (as torch's own are)."""
    return value


_REBUILD = {
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    **{
        ("torch.jit._pickle", name): _typed_value
        for name in ("build_intlist", "build_tensorlist", "build_doublelist", "build_boollist", "restore_type_tag")
    },
}


class _ArchiveUnpickler(pickle.Unpickler):
    """data.pkl of a TorchScript archive: module classes inert, storages read from data/."""

    def __init__(self, file: Any, archive: zipfile.ZipFile, prefix: str) -> None:
        super().__init__(file)
        self.archive, self.prefix = archive, prefix
        self.storages: dict[str, torch.Tensor] = {}

    def find_class(self, module: str, name: str) -> Any:
        if module == "__torch__" or module.startswith("__torch__."):
            return inert_class(module, name)  # TorchScript classes: never compiled, never imported
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(name)
        if (module, name) in _REBUILD:
            return _REBUILD[(module, name)]
        return resolve_global(module, name)  # containers and dtypes, or a refusal

    def persistent_load(self, pid: Any) -> torch.Tensor:
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage" and isinstance(pid[1], _StorageType)):
            raise UnsafeCheckpointError(f"the archive refers to an unknown persistent object {str(pid)[:80]!r}")
        kind, key, numel = pid[1], str(pid[2]), int(pid[4])
        cached = self.storages.get(key)
        if cached is None:
            cached = self.storages[key] = self._read_storage(kind, key, numel)
        return cached

    def _read_storage(self, kind: _StorageType, key: str, numel: int) -> torch.Tensor:
        name = f"{self.prefix}data/{key}"
        try:
            info = self.archive.getinfo(name)
        except KeyError:
            raise CheckpointError(f"the archive lacks {name}, a storage its data.pkl refers to") from None
        itemsize = torch.empty((), dtype=kind.dtype).element_size()
        if info.file_size != numel * itemsize:
            raise CheckpointError(
                f"{name} holds {info.file_size} bytes; {numel} {kind.name} elements need {numel * itemsize}"
            )
        if numel == 0:
            return torch.empty(0, dtype=kind.dtype)
        buffer = bytearray(info.file_size)  # read straight into the tensor's memory: one copy, not two
        view, filled = memoryview(buffer), 0
        with self.archive.open(info) as f:
            while filled < info.file_size and (n := f.readinto(view[filled:])):
                filled += n
        if filled != info.file_size:
            raise CheckpointError(f"{name} is shorter than the archive's directory says")
        return torch.frombuffer(buffer, dtype=kind.dtype)


def _declared_names(archive: zipfile.ZipFile, prefix: str, cls: str) -> set[str] | None:
    """Parameter and buffer names that class `cls` ('__torch__.a.b.Name') declares in its code
    file, or None when the file or the declarations are absent (older archives)."""
    module, _, name = cls.rpartition(".")
    path = f"{prefix}code/{module.replace('.', '/')}.py"
    try:
        text = archive.read(path).decode("utf-8", "replace")
    except KeyError:
        return None
    match = re.search(rf"^class {re.escape(name)}\(.*?\):\n((?:[ \t]+.*\n|\s*\n)*)", text, re.MULTILINE)
    if not match:
        return None
    found = {kind: re.findall(r'"([^"]*)"', items) for kind, items in _DECLARED.findall(match.group(1))}
    if "parameters" not in found:
        return None
    return set(found["parameters"]) | set(found.get("buffers", []))


def _module_state(obj: Inert, where: str) -> dict[str, Any]:
    state = obj.inert_state
    if isinstance(state, tuple) and len(state) == 2 and isinstance(state[0], dict):
        state = state[0]
    if not isinstance(state, dict):
        raise CheckpointError(f"the archive's module {where or '(root)'} has no attribute dict")
    return state


def _collect(
    obj: Inert,
    prefix: str,
    archive: zipfile.ZipFile,
    root: str,
    out: dict[str, torch.Tensor],
    declared: dict[str, set[str] | None],
    depth: int = 0,
) -> None:
    """Parameters and buffers of `obj` and its submodules, as state_dict() orders them."""
    if depth > MAX_DEPTH:
        raise CheckpointError("the archive's modules nest too deeply")
    cls = obj.inert_name
    if cls not in declared:
        declared[cls] = _declared_names(archive, root, cls)
    names = declared[cls]
    state = _module_state(obj, prefix.rstrip("."))
    children = []
    for key, value in state.items():
        if isinstance(value, torch.Tensor):
            if names is None or key in names:
                out[prefix + key] = value
        elif isinstance(value, Inert) and value.inert_name.startswith("__torch__."):
            children.append((key, value))
    for key, child in children:
        _collect(child, f"{prefix}{key}.", archive, root, out, declared, depth + 1)


def read_torchscript_state_dict(path: str | os.PathLike[str]) -> OrderedDict[str, torch.Tensor]:
    """What `torch.jit.load(path).state_dict()` holds, read without compiling or running anything.

    The tensors are views of storages read into memory (clone them before writing them elsewhere).
    """
    path = Path(path)
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise CheckpointError(f"{path} is a truncated or corrupt TorchScript archive ({exc})") from None
    with archive:
        pkls = [n for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pkls) != 1:
            raise CheckpointError(f"{path} is not a TorchScript archive (no single <name>/data.pkl inside)")
        root = pkls[0][: -len("data.pkl")]
        order = archive.read(f"{root}byteorder").decode().strip() if f"{root}byteorder" in archive.namelist() else ""
        if order not in ("", "little"):
            raise CheckpointError(f"{path} was written on a {order}-endian machine; only little-endian is read")
        try:
            top = _ArchiveUnpickler(io.BytesIO(archive.read(pkls[0])), archive, root).load()
        except CheckpointError as exc:
            raise type(exc)(f"{path}: {exc}") from None
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, KeyError, IndexError) as exc:
            raise CheckpointError(f"{path}: its data.pkl is unreadable ({type(exc).__name__}: {exc})") from None
        if not (isinstance(top, Inert) and top.inert_name.startswith("__torch__.")):
            raise CheckpointError(f"{path}: its data.pkl holds {type(top).__name__}, not a TorchScript module")
        out: OrderedDict[str, torch.Tensor] = OrderedDict()
        _collect(top, "", archive, root, out, {})
    return out


# --- OpenAI's CLIP archive ----------------------------------------------------------------------

# sha256 of OpenAI's ViT-B-32.pt (also the folder of its URL; FFCLIP's config names this file)
OPENAI_VIT_B_32_SHA256 = "40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af"
OPENAI_VIT_B_32_URL = f"https://openaipublic.azureedge.net/clip/models/{OPENAI_VIT_B_32_SHA256}/ViT-B-32.pt"
# what open_clip's build_model_from_openai_state_dict drops before load_state_dict (not weights)
OPENAI_NON_WEIGHT_KEYS = ("input_resolution", "context_length", "vocab_size")


def openai_to_open_clip(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """OpenAI's CLIP state_dict in open_clip's layout: the same keys, less the three scalars that
    describe the model (as open_clip's build_model_from_openai_state_dict does)."""
    return {k: v for k, v in state_dict.items() if k not in OPENAI_NON_WEIGHT_KEYS}
