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
import re
import zipfile
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .errors import DamagedCheckpointError
from .torchfile import Archive, CheckpointUnpickler, ZipStorages
from .unpickler import Inert, inert_class

MAX_DEPTH = 64  # module nesting; CLIP needs 6
_DECLARED = re.compile(r"^\s*__(parameters|buffers)__\s*=\s*\[(.*?)\]", re.MULTILINE | re.DOTALL)


def is_torchscript_archive(path: str | os.PathLike[str]) -> bool:
    """A zip with a `*/data.pkl` and TorchScript's `constants.pkl` or `code/` beside it."""
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        return False
    return any(n.endswith("/data.pkl") for n in names) and any(
        n.endswith("/constants.pkl") or "/code/" in n for n in names
    )


def _typed_value(value: Any, *_type: Any) -> Any:
    """torch.jit._pickle's list builders and type tags: the value itself (as torch's own are)."""
    return value


_JIT_BUILDERS = frozenset(
    ("torch.jit._pickle", name)
    for name in ("build_intlist", "build_tensorlist", "build_doublelist", "build_boollist", "restore_type_tag")
)


class _ArchiveUnpickler(CheckpointUnpickler):
    """data.pkl of a TorchScript archive: module classes inert, storages read from data/."""

    def find_class(self, module: str, name: str) -> Any:
        if module == "__torch__" or module.startswith("__torch__."):
            obj: Any = inert_class(module, name)  # TorchScript classes: never compiled, never imported
        elif (module, name) in _JIT_BUILDERS:
            obj = _typed_value
        else:
            return super().find_class(module, name)  # storages, tensors, containers, or a refusal
        self._granted[id(obj)] = obj
        return obj


def _declared_names(archive: Archive, prefix: str, cls: str) -> set[str] | None:
    """Parameter and buffer names that class `cls` ('__torch__.a.b.Name') declares in its code
    file, or None when the file or the declarations are absent (older archives)."""
    module, _, name = cls.rpartition(".")
    path = f"{prefix}code/{module.replace('.', '/')}.py"
    if path not in archive.names():
        return None
    text = archive.read_text(archive.info(path, "a code file"))
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
        raise DamagedCheckpointError(f"the archive's module {where or '(root)'} has no attribute dict")
    return state


def _collect(
    obj: Inert,
    prefix: str,
    archive: Archive,
    root: str,
    out: dict[str, torch.Tensor],
    declared: dict[str, set[str] | None],
    depth: int = 0,
) -> None:
    """Parameters and buffers of `obj` and its submodules, as state_dict() orders them."""
    if depth > MAX_DEPTH:
        raise DamagedCheckpointError("the archive's modules nest too deeply")
    cls = obj.inert_name
    if cls not in declared:
        declared[cls] = _declared_names(archive, root, cls)
    names = declared[cls]
    state = _module_state(obj, prefix.rstrip("."))
    children = []
    for key, value in state.items():
        if not isinstance(key, str):
            raise DamagedCheckpointError(
                f"the archive's module {prefix.rstrip('.') or '(root)'} has a non-text attribute name"
            )
        if isinstance(value, torch.Tensor):
            if names is None or key in names:
                out[prefix + key] = value
        elif isinstance(value, Inert) and value.inert_name.startswith("__torch__."):
            children.append((key, value))
    for key, child in children:
        _collect(child, f"{prefix}{key}.", archive, root, out, declared, depth + 1)


def _read_archive(path: Path) -> OrderedDict[str, torch.Tensor]:
    with Archive(path) as archive:
        root = archive.root()
        archive.check_byteorder(root)
        data = archive.read(archive.info(f"{root}data.pkl", "its pickle"))
        top = _ArchiveUnpickler(io.BytesIO(data), ZipStorages(archive, root)).load()
        if not (isinstance(top, Inert) and top.inert_name.startswith("__torch__.")):
            raise DamagedCheckpointError(f"its data.pkl holds {type(top).__name__}, not a TorchScript module")
        out: OrderedDict[str, torch.Tensor] = OrderedDict()
        _collect(top, "", archive, root, out, {})
    return out


def read_torchscript_state_dict(path: str | os.PathLike[str]) -> OrderedDict[str, torch.Tensor]:
    """What `torch.jit.load(path).state_dict()` holds, read without compiling or running anything.

    The tensors are views of storages read into memory (clone them before writing them elsewhere).
    """
    from .safe_load import read_guarded

    path = Path(path)
    return read_guarded(path, lambda: _read_archive(path))


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
