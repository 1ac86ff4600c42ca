"""Torch checkpoint files written by hand, byte for byte as torch.save lays them out, so that a test
can make one lie in exactly one place: a storage's element count, a member's size, a reference
that is not a storage, a call that asks for a terabyte.

    storage = Storage("0", "FloatStorage", b"...")   # a storage and its bytes
    obj = {"w": Tensor(storage, (2, 3))}             # a tensor on it (as _rebuild_tensor_v2)
    write_zip(path, obj, [storage]) / write_legacy(path, obj, [storage])
"""

from __future__ import annotations

import io
import pickle
import struct
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ffclip.engine.checkpoints.torchfile import STORAGE_DTYPES

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
SYS_INFO = {"protocol_version": 1001, "little_endian": True, "type_sizes": {"short": 2, "int": 4, "long": 4}}


def itemsize(type_name: str) -> int:
    return torch.empty((), dtype=STORAGE_DTYPES[type_name]).element_size()


@dataclass
class Storage:
    key: str
    type_name: str  # FloatStorage, LongStorage, ...
    data: bytes
    numel: int | None = None  # what the pickle claims; default: len(data) / element size
    view: Any = None  # legacy view metadata

    @property
    def claimed(self) -> int:
        if self.numel is not None:
            return self.numel
        return len(self.data) // itemsize(self.type_name)


@dataclass
class Tensor:
    storage: Any
    size: tuple
    stride: tuple | None = None
    offset: int = 0
    requires_grad: Any = False

    def __reduce__(self) -> tuple:
        stride = self.stride
        if stride is None:
            stride, step = [], 1
            for n in reversed(self.size):
                stride.insert(0, step)
                step *= n
        args = (self.storage, self.offset, tuple(self.size), tuple(stride), self.requires_grad, OrderedDict())
        return (torch._utils._rebuild_tensor_v2, args)


@dataclass
class Call:
    """Pickles as `func(*args)`: what a hostile pickle can ask of an allowed callable."""

    func: Any
    args: tuple = ()

    def __reduce__(self) -> tuple:
        return (self.func, self.args)


class _Pickler(pickle.Pickler):
    def __init__(self, file: io.BytesIO, legacy: bool) -> None:
        super().__init__(file, protocol=2)
        self.legacy = legacy

    def persistent_id(self, obj: Any) -> Any:
        if isinstance(obj, Storage):
            pid = ("storage", getattr(torch, obj.type_name), obj.key, "cpu", obj.claimed)
            return (*pid, obj.view) if self.legacy else pid
        return None


def pickle_bytes(obj: Any, legacy: bool = False) -> bytes:
    buffer = io.BytesIO()
    _Pickler(buffer, legacy).dump(obj)
    return buffer.getvalue()


def write_zip(
    path: Path,
    obj: Any,
    storages: list[Storage],
    byteorder: str | None = "little",
    data_pkl: bytes | None = None,
    extra: dict[str, bytes] | None = None,
) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", data_pkl if data_pkl is not None else pickle_bytes(obj))
        if byteorder is not None:
            zf.writestr("archive/byteorder", byteorder)
        for storage in storages:
            zf.writestr(f"archive/data/{storage.key}", storage.data)
        for name, content in (extra or {}).items():
            zf.writestr(name, content)
        zf.writestr("archive/version", "3\n")
    return path


def write_legacy(
    path: Path,
    obj: Any,
    storages: list[Storage],
    keys: list[str] | None = None,
    trailing: bytes = b"",
    object_pkl: bytes | None = None,
    sys_info: dict | None = None,
) -> Path:
    parts = [pickle.dumps(LEGACY_MAGIC, 2), pickle.dumps(1001, 2), pickle.dumps(sys_info or SYS_INFO, 2)]
    parts.append(object_pkl if object_pkl is not None else pickle_bytes(obj, legacy=True))
    parts.append(pickle.dumps(keys if keys is not None else [s.key for s in storages], 2))
    for storage in storages:
        parts.append(struct.pack("<q", len(storage.data) // itemsize(storage.type_name)) + storage.data)
    path.write_bytes(b"".join(parts) + trailing)
    return path


def floats(*values: float) -> bytes:
    return struct.pack(f"<{len(values)}f", *values)
