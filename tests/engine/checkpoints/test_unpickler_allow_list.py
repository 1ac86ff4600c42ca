"""The restricted unpickler's allow-list is a closed set.

The expected set is written out here, independently of engine/checkpoints/safe_load.py: a name
added there (say `builtins.getattr`) makes these tests fail until it is added here too, on purpose.
Every global a pickle may name is either one of these objects, an inert placeholder of a
configuration package, or refused before anything is imported or called.
"""

from __future__ import annotations

import _compat_pickle
import builtins
import collections
import importlib
import io
import pickle
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from ffclip.engine.checkpoints import UnsafeCheckpointError, load_checkpoint
from ffclip.engine.checkpoints.safe_load import Inert, resolve_global, safe_pickle_loads
from ffclip.engine.checkpoints.torchfile import CheckpointUnpickler

# --- the allow-list, spelled out -----------------------------------------------------------------

ALLOWED_BUILTINS = {
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
# a checkpoint's tensors: these names resolve to the checkpoint unpickler's own rebuild functions
# (sizes checked against the storages read from the file), never torch's; a plain pickle has no tensors
TENSOR_REBUILDS = {
    ("torch._utils", "_rebuild_tensor"),
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_tensor_v3"),
    ("torch._utils", "_rebuild_parameter"),
    ("torch._utils", "_rebuild_parameter_with_state"),
    ("torch._tensor", "_rebuild_from_type_v2"),
}
ALLOWED_TORCH = {
    ("torch", "Size"),
    ("torch", "Tensor"),
    ("torch", "device"),
    ("torch.nn.parameter", "Parameter"),
}
# resolved to the loader's own guarded stand-ins (latin-1 only, placeholders only), not the stdlib's
GUARDED = {("_codecs", "encode"), ("copyreg", "_reconstructor")}
ALLOWED_COLLECTIONS = {("collections", "OrderedDict"), ("collections", "defaultdict")}
INERT_PACKAGES = {
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


def _canonical(module: str, name: str) -> tuple[str, str]:
    """Python 2 spellings name the same objects (the stdlib's own fix_imports table)."""
    if (module, name) in _compat_pickle.NAME_MAPPING:
        return _compat_pickle.NAME_MAPPING[(module, name)]
    return _compat_pickle.IMPORT_MAPPING.get(module, module), name


def expected(module: str, name: str) -> str:
    """'allowed', 'guarded', 'rebuild', 'inert' or 'refused' for a pickle's global `module.name`."""
    module, name = _canonical(module, name)
    if (module, name) in TENSOR_REBUILDS:
        return "rebuild"
    if module == "builtins" and name in ALLOWED_BUILTINS:
        return "allowed"
    if (module, name) in ALLOWED_TORCH or (module, name) in ALLOWED_COLLECTIONS:
        return "allowed"
    if module == "torch" and isinstance(vars(torch).get(name), torch.dtype):
        return "allowed"
    if (module, name) in GUARDED:
        return "guarded"
    if module.partition(".")[0] in INERT_PACKAGES:
        return "inert"
    return "refused"


def _real_object(module: str, name: str) -> object:
    module, name = _canonical(module, name)
    obj = importlib.import_module(module)
    for part in name.split("."):
        obj = getattr(obj, part)
    return obj


def check_global(module: str, name: str) -> None:
    """resolve_global(module, name) does exactly what the spelled-out allow-list says, importing nothing."""
    imported = set(sys.modules)
    kind = expected(module, name)
    if kind in ("refused", "rebuild"):
        with pytest.raises(UnsafeCheckpointError, match="refused"):
            resolve_global(module, name)
        if kind == "rebuild":
            assert_own_rebuild(module, name)
    else:
        got = resolve_global(module, name)
        if kind == "allowed":
            assert got is _real_object(module, name), (module, name)
        elif kind == "guarded":
            assert got is not _real_object(module, name) and getattr(got, "__module__", "").startswith("ffclip.")
        else:
            assert isinstance(got, type) and issubclass(got, Inert) and got.inert_name == f"{module}.{name}"
    assert set(sys.modules) == imported, "resolving a pickle global imported a module"


def assert_own_rebuild(module: str, name: str) -> None:
    """A checkpoint's unpickler resolves a tensor rebuild to a function of its own, not torch's."""

    def no_storage(pid: object) -> None:
        raise AssertionError("no storage is read by resolving a name")

    got = CheckpointUnpickler(io.BytesIO(b""), no_storage).find_class(module, name)
    assert callable(got) and got is not _real_object(module, name), (module, name)
    assert getattr(got, "__module__", "").startswith("ffclip."), (module, name, got)


# Modules whose every attribute is tried: the stdlib's ways to run code, and torch (thousands of
# callables, of which only the tensor rebuild functions, Size, Tensor, device and dtypes may pass).
SWEPT_MODULES = [
    "builtins",
    "__builtin__",
    "os",
    "posix",
    "sys",
    "subprocess",
    "shutil",
    "socket",
    "importlib",
    "runpy",
    "pickle",
    "codecs",
    "_codecs",
    "copyreg",
    "copy_reg",
    "collections",
    "functools",
    "operator",
    "types",
    "io",
    "torch",
    "torch._utils",
    "torch._tensor",
    "torch.nn.parameter",
    "torch.serialization",
    "torch.storage",
    "torch.jit",
]


def _names(module: str) -> list[str]:
    return sorted(dir(importlib.import_module(_canonical(module, "")[0])))


@pytest.mark.parametrize("module", SWEPT_MODULES)
def test_every_attribute_of_dangerous_modules_is_classified(module: str) -> None:
    names = _names(module)
    assert len(names) > 10
    for name in names:
        check_global(module, name)


def test_the_allow_list_is_complete_for_what_checkpoints_need() -> None:
    """The other side of the closed set: everything listed resolves (no silent shrinkage)."""
    for name in ALLOWED_BUILTINS:
        assert resolve_global("builtins", name) is getattr(builtins, name)
    for module, name in ALLOWED_TORCH:
        assert resolve_global(module, name) is _real_object(module, name)
    for module, name in TENSOR_REBUILDS:
        assert_own_rebuild(module, name)
    assert resolve_global("collections", "OrderedDict") is collections.OrderedDict
    assert resolve_global("torch", "float16") is torch.float16 and resolve_global("torch", "bfloat16") is torch.bfloat16
    assert resolve_global("__builtin__", "long") is int and resolve_global("__builtin__", "unicode") is str


_IDENT = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,20}", fullmatch=True)
_DOTTED = st.lists(_IDENT, min_size=1, max_size=4).map(".".join)


@given(module=_DOTTED, name=st.one_of(_IDENT, _DOTTED, st.text(max_size=30)))
def test_arbitrary_names_are_refused_unless_listed(module: str, name: str) -> None:
    check_global(module, name)


@given(data=st.data())
def test_names_of_loaded_modules_are_refused_unless_listed(data: st.DataObject) -> None:
    """Any attribute of any module this process has loaded (what a crafted pickle would reach for)."""
    module = data.draw(st.sampled_from(sorted(m for m in sys.modules if not m.startswith("__main__"))))
    names = dir(sys.modules[module]) or ["x"]
    check_global(module, data.draw(st.sampled_from(sorted(names))))


# --- a hand-made pickle: os.system through a rebuild function's globals ---------------------------


def _global(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _text(value: str) -> bytes:
    raw = value.encode()
    return b"X" + len(raw).to_bytes(4, "little") + raw


def _call(func: bytes, *args: bytes) -> bytes:
    return func + b"(" + b"".join(args) + b"tR"


def getattr_exploit(command: str) -> bytes:
    """Protocol-2 pickle of os.system(command), reached as
    getattr(dict.get(getattr(torch._utils._rebuild_tensor, '__globals__'), 'torch'), 'os').system:
    only allowed names besides `builtins.getattr`, which is exactly what must stay out."""
    getattr_ = _global("builtins", "getattr")
    module_globals = _call(getattr_, _global("torch._utils", "_rebuild_tensor"), _text("__globals__"))
    dict_get = _call(getattr_, _global("builtins", "dict"), _text("get"))
    torch_module = _call(dict_get, module_globals, _text("torch"))
    os_module = _call(getattr_, torch_module, _text("os"))
    system = _call(getattr_, os_module, _text("system"))
    return b"\x80\x02" + b"}" + _text("opts") + _call(system, _text(command)) + b"s."


def _zip_checkpoint_with(data_pkl: bytes, path: Path) -> Path:
    """A torch zip checkpoint whose data.pkl is replaced by `data_pkl` (the rest as torch writes it)."""
    template = io.BytesIO()
    torch.save({}, template)
    with zipfile.ZipFile(template) as src, zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            dst.writestr(info, data_pkl if info.filename.endswith("/data.pkl") else src.read(info))
    return path


def test_the_exploit_is_real_for_an_unrestricted_unpickler(tmp_path: Path) -> None:
    """Without the allow-list the hand-made pickle does run its command (so the test below means something)."""
    marker = tmp_path / "ran"
    out = pickle.loads(getattr_exploit(f"touch {marker}"))
    assert marker.exists() and out == {"opts": 0}


@pytest.mark.parametrize("container", ["pickle", "zip"])
def test_getattr_exploit_is_refused_and_never_runs(tmp_path: Path, container: str) -> None:
    marker = tmp_path / "pwned"
    payload = getattr_exploit(f"touch {marker}")
    with pytest.raises(UnsafeCheckpointError, match=r"builtins\.getattr.*refused") as err:
        if container == "pickle":
            safe_pickle_loads(payload)
        else:
            load_checkpoint(_zip_checkpoint_with(payload, tmp_path / "evil.pt"))
    assert not marker.exists()
    assert "nothing from it was executed" in str(err.value)


def test_a_zip_with_a_replaced_data_pkl_still_loads_when_harmless(tmp_path: Path) -> None:
    """The zip rewriting above produces a readable checkpoint: the refusal is the pickle's, not the archive's."""
    path = _zip_checkpoint_with(pickle.dumps({"step": 3, "name": "x"}, protocol=2), tmp_path / "ok.pt")
    assert load_checkpoint(path) == {"step": 3, "name": "x"}
