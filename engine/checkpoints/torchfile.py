"""Reading torch's two file formats ourselves, believing no size the file states until it is checked
against the file's own size.

`torch.load` trusts its input: a legacy file's pickle says how many elements a storage has and torch
allocates them before reading a byte (a flipped bit asks for terabytes), a zip member is read at
the size the archive's directory claims, and a malformed reference to a storage ends in an
AssertionError. Here:

- zip (torch >= 1.6): the archive's directory is checked first (every member inside the file,
  stored uncompressed as torch writes them, no duplicate names); `data.pkl` goes through the
  restricted unpickler; each storage it names is `data/<key>`, whose size must be exactly its
  element count times its element size, read in chunks into one buffer (the zip's CRC is checked
  as it is read, so bit rot in tensor data is caught too);
- legacy (torch < 1.6): magic number, protocol, system info, the object pickle, the storage keys,
  then each storage as an 8-byte element count and its bytes. A storage is allocated only when its
  size fits in what is left of the file, and all of them together must too.

Every storage's bytes are charged to a `Budget` of the file's size, so whatever the file says, the
loader never holds more tensor memory than the file is long. Tensors are rebuilt by our own
functions: storage, offset, shape and strides are checked in Python integers (no overflow) before
torch makes the view.
"""

from __future__ import annotations

import io
import pickle
import struct
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .errors import DamagedCheckpointError, UnsafeCheckpointError
from .unpickler import BoundedReader, RestrictedUnpickler

CHUNK = 1 << 16  # bytes read at a time into a storage's buffer (each chunk is a copy while it lasts)


def chunk_size(total: int) -> int:
    """The chunk for reading `total` bytes from a zip member: CHUNK, or an eighth of a small member,
    so that the copies in flight (zipfile's and ours) stay a fraction of what is read."""
    return min(CHUNK, max(4096, total // 8))


MAX_DIMS = 64
LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL_VERSION = 1001
MAX_CODE_MEMBER = 64 << 20  # a TorchScript code file, decompressed

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
    "ComplexFloatStorage": torch.complex64,
    "ComplexDoubleStorage": torch.complex128,
    "UntypedStorage": torch.uint8,
}


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


class Budget:
    """The bytes a file can account for; every allocation sized by the file is charged here first."""

    def __init__(self, total: int) -> None:
        self.total, self.used = total, 0

    def charge(self, nbytes: int, what: str) -> None:
        if nbytes < 0 or self.used + nbytes > self.total:
            raise DamagedCheckpointError(
                f"{what} needs {nbytes} bytes, but the file ({self.total} bytes) can hold only "
                f"{max(self.total - self.used, 0)} more"
            )
        self.used += nbytes


class StorageType:
    """What `torch.FloatStorage` etc. unpickle to here: only the element type."""

    def __init__(self, name: str) -> None:
        self.name, self.dtype = name, STORAGE_DTYPES[name]
        self.itemsize = _itemsize(self.dtype)


class Storage:
    """A storage's bytes: `buffer[offset:offset + nbytes]`, filled when read (views share it)."""

    def __init__(self, buffer: bytearray, dtype: torch.dtype, offset: int = 0, nbytes: int | None = None) -> None:
        self.buffer, self.dtype, self.offset = buffer, dtype, offset
        self.nbytes = len(buffer) - offset if nbytes is None else nbytes
        self._untyped: torch.UntypedStorage | None = None

    def untyped(self) -> torch.UntypedStorage:
        """One torch storage over the buffer (no copy): tensors on the same storage share memory."""
        if self._untyped is None:
            if self.nbytes == 0:
                self._untyped = torch.UntypedStorage(0)
            else:
                flat = torch.frombuffer(self.buffer, dtype=torch.uint8, count=self.nbytes, offset=self.offset)
                self._untyped = flat.untyped_storage()
        return self._untyped


def _ints(value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, tuple | list | torch.Size) or len(value) > MAX_DIMS:
        raise DamagedCheckpointError(f"a tensor's {what} is not a list of at most {MAX_DIMS} numbers")
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise DamagedCheckpointError(f"a tensor's {what} holds something other than integers")
    return tuple(value)


def rebuild_tensor(storage: Any, offset: Any, size: Any, stride: Any, dtype: torch.dtype | None = None) -> torch.Tensor:
    """torch._utils._rebuild_tensor: a tensor over `storage`, after checking that it stays inside."""
    if not isinstance(storage, Storage):
        raise DamagedCheckpointError("a tensor does not refer to a storage of the file")
    dtype = storage.dtype if dtype is None else dtype
    if not isinstance(dtype, torch.dtype):
        raise DamagedCheckpointError("a tensor's element type is not a torch dtype")
    shape, strides = _ints(size, "shape"), _ints(stride, "strides")
    if len(shape) != len(strides) or not isinstance(offset, int) or offset < 0:
        raise DamagedCheckpointError("a tensor's shape, strides and offset do not fit together")
    if any(n < 0 for n in shape) or any(s < 0 for s in strides):
        raise DamagedCheckpointError("a tensor has a negative size or stride")
    itemsize = _itemsize(dtype)
    if all(shape):  # the last element it reaches, in Python integers: no overflow
        last = offset + sum((n - 1) * s for n, s in zip(shape, strides, strict=True))
        if (last + 1) * itemsize > storage.nbytes:
            raise DamagedCheckpointError(
                f"a tensor of shape {list(shape)} reaches byte {(last + 1) * itemsize} of a storage of {storage.nbytes}"
            )
    return torch.empty((0,), dtype=dtype).set_(storage.untyped(), offset, shape, strides)


def _finish_tensor(tensor: torch.Tensor, requires_grad: Any, metadata: Any) -> torch.Tensor:
    if requires_grad is True:
        tensor.requires_grad = True  # a RuntimeError for integer tensors: the file is damaged
    elif requires_grad is not False:
        raise DamagedCheckpointError("a tensor's requires_grad is not true or false")
    if metadata:  # conj/neg bits
        if not isinstance(metadata, dict) or not all(isinstance(v, bool) for v in metadata.values()):
            raise DamagedCheckpointError("a tensor's metadata is not a dict of flags")
        torch._C._set_tensor_metadata(tensor, metadata)
    return tensor  # backward hooks are never restored: a checkpoint has none to give


class CheckpointUnpickler(RestrictedUnpickler):
    """A checkpoint's pickle: tensors rebuilt from the storages that `load_storage` reads."""

    def __init__(self, source: Any, load_storage: Callable[[Any], Storage]) -> None:
        super().__init__(source)
        self._load_storage = load_storage

    def find_class(self, module: str, name: str) -> Any:
        if module.startswith("torch") and name in STORAGE_DTYPES:  # also torch.cuda.FloatStorage
            return StorageType(name)
        if module == "torch.tensor":  # the module's old name (torch.load maps it too)
            module = "torch._tensor"
        return super().find_class(module, name)

    def rebuild_function(self, module: str, name: str) -> Any:
        return {
            "_rebuild_tensor": self._rebuild_v1,
            "_rebuild_tensor_v2": self._rebuild_v2,
            "_rebuild_tensor_v3": self._rebuild_v3,
            "_rebuild_parameter": self._rebuild_parameter,
            "_rebuild_parameter_with_state": self._rebuild_parameter_with_state,
            "_rebuild_from_type_v2": self._rebuild_from_type_v2,
        }[name]

    def persistent_load(self, pid: Any) -> Storage:
        return self._load_storage(pid)

    @staticmethod
    def _rebuild_v1(storage: Any, offset: Any, size: Any, stride: Any) -> torch.Tensor:
        return rebuild_tensor(storage, offset, size, stride)

    @staticmethod
    def _rebuild_v2(
        storage: Any, offset: Any, size: Any, stride: Any, requires_grad: Any, _hooks: Any, metadata: Any = None
    ) -> torch.Tensor:
        return _finish_tensor(rebuild_tensor(storage, offset, size, stride), requires_grad, metadata)

    @staticmethod
    def _rebuild_v3(
        storage: Any,
        offset: Any,
        size: Any,
        stride: Any,
        requires_grad: Any,
        _hooks: Any,
        dtype: Any,
        metadata: Any = None,
    ) -> torch.Tensor:
        return _finish_tensor(rebuild_tensor(storage, offset, size, stride, dtype), requires_grad, metadata)

    @staticmethod
    def _rebuild_parameter(data: Any, requires_grad: Any, _hooks: Any = None) -> torch.nn.Parameter:
        if not isinstance(data, torch.Tensor) or not isinstance(requires_grad, bool):
            raise DamagedCheckpointError("a parameter does not hold a tensor")
        return torch.nn.Parameter(data, requires_grad)

    def _rebuild_parameter_with_state(self, data: Any, requires_grad: Any, hooks: Any, state: Any) -> Any:
        return _set_state(self._rebuild_parameter(data, requires_grad, hooks), state)

    def _rebuild_from_type_v2(self, func: Any, new_type: Any, args: Any, state: Any) -> Any:
        """A tensor subclass: only torch.Tensor and Parameter, rebuilt by our own functions."""
        if new_type is not torch.Tensor and new_type is not torch.nn.Parameter:
            raise UnsafeCheckpointError(f"a tensor of type {type(new_type).__name__} is not rebuilt")
        own = (self._rebuild_v1, self._rebuild_v2, self._rebuild_v3, self._rebuild_parameter)
        if not any(func == f for f in own) or not isinstance(args, tuple):
            raise UnsafeCheckpointError("a tensor subclass rebuilt by another function")
        tensor = func(*args)
        if type(tensor) is not new_type:
            tensor = tensor.as_subclass(new_type)
        return _set_state(tensor, state)


def _set_state(obj: torch.Tensor, state: Any) -> torch.Tensor:
    """torch._utils._set_obj_state: plain attributes (names only) on a rebuilt tensor or parameter."""
    dict_state, slots = state if isinstance(state, tuple) and len(state) == 2 else (state, None)
    for part in (dict_state, slots):
        if not part:
            continue
        if not isinstance(part, dict) or not all(isinstance(k, str) and not k.startswith("__") for k in part):
            raise DamagedCheckpointError("a tensor's attributes are not a dict of names")
        for key, value in part.items():
            setattr(obj, key, value)
    return obj


def _storage_id(pid: Any, fields: int) -> tuple[StorageType, str, int, Any]:
    """(type, key, numel, rest) of a ('storage', type, key, location, numel[, view]) reference."""
    if not isinstance(pid, tuple) or len(pid) != fields:
        raise DamagedCheckpointError(f"a storage reference is not a tuple of {fields}")
    kind = pid[0].decode("ascii", "replace") if isinstance(pid[0], bytes) else pid[0]
    if kind != "storage":
        said = repr(kind[:40]) if isinstance(kind, str) else f"a {type(kind).__name__}"  # never a tensor's repr
        raise DamagedCheckpointError(f"a reference to something other than a storage ({said})")
    storage_type, key, numel = pid[1], pid[2], pid[4]
    if not isinstance(storage_type, StorageType):
        raise DamagedCheckpointError("a storage reference without a storage type")
    if not isinstance(key, str | int) or isinstance(key, bool) or not isinstance(numel, int) or numel < 0:
        raise DamagedCheckpointError("a storage reference with a malformed key or element count")
    return storage_type, str(key), numel, pid[5:] if fields > 5 else None


# --------------------------------------------------------------------------- zip archives


class Archive:
    """A zip file whose directory was checked against the file: every member lies inside it, is
    stored as torch writes it (uncompressed; only TorchScript code may be deflated), no name twice.
    Members are read in chunks, and their CRC is checked as the last chunk comes."""

    def __init__(self, path: Path) -> None:
        self.path, self.size = path, path.stat().st_size
        self.zip = zipfile.ZipFile(path)
        self.budget = Budget(self.size)
        try:
            self._check_directory()
        except BaseException:
            self.zip.close()
            raise

    def _check_directory(self) -> None:
        infos = self.zip.infolist()
        names = [i.filename for i in infos]
        if len(set(names)) != len(names):
            raise DamagedCheckpointError("the archive names a member twice")
        for info in infos:
            if info.header_offset < 0 or info.header_offset + info.compress_size > self.size:
                raise DamagedCheckpointError(
                    f"{info.filename} ({info.compress_size} bytes at offset {info.header_offset}) ends beyond the file"
                )
            if info.flag_bits & 0x1:
                raise DamagedCheckpointError(f"{info.filename} is encrypted")
            if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                raise DamagedCheckpointError(f"{info.filename} uses compression method {info.compress_type}")
            if info.compress_type == zipfile.ZIP_STORED and info.compress_size != info.file_size:
                raise DamagedCheckpointError(
                    f"{info.filename} is stored uncompressed, yet its directory entry gives two sizes "
                    f"({info.compress_size} and {info.file_size})"
                )

    def __enter__(self) -> Archive:
        return self

    def __exit__(self, *_exc: Any) -> None:
        self.zip.close()

    def names(self) -> list[str]:
        return self.zip.namelist()

    def info(self, name: str, what: str) -> zipfile.ZipInfo:
        try:
            return self.zip.getinfo(name)
        except KeyError:
            raise DamagedCheckpointError(f"the archive lacks {name}, {what}") from None

    def read(self, info: zipfile.ZipInfo, into: bytearray | None = None) -> bytearray:
        """A stored member's bytes, charged to the budget; allocated once, read in chunks."""
        if info.compress_type != zipfile.ZIP_STORED:
            raise DamagedCheckpointError(
                f"{info.filename} is compressed (torch stores tensors and pickles uncompressed)"
            )
        self.budget.charge(info.file_size, info.filename)
        buffer = bytearray(info.file_size) if into is None else into
        view, filled, step = memoryview(buffer), 0, chunk_size(len(buffer))
        with self.zip.open(info) as member:
            while filled < len(buffer):
                chunk = member.read(min(step, len(buffer) - filled))
                if not chunk:
                    break
                view[filled : filled + len(chunk)] = chunk
                filled += len(chunk)
            if filled != len(buffer) or member.read(1):
                raise DamagedCheckpointError(f"{info.filename} does not hold the {len(buffer)} bytes its entry says")
        return buffer

    def read_text(self, info: zipfile.ZipInfo) -> str:
        """A (possibly deflated) text member such as TorchScript code, at most MAX_CODE_MEMBER bytes."""
        if info.file_size > MAX_CODE_MEMBER or info.file_size > 1032 * max(info.compress_size, 1):
            raise DamagedCheckpointError(f"{info.filename} claims {info.file_size} bytes")
        with self.zip.open(info) as member:
            data = member.read(info.file_size + 1)
        if len(data) != info.file_size:
            raise DamagedCheckpointError(f"{info.filename} does not hold the {info.file_size} bytes its entry says")
        return data.decode("utf-8", "replace")

    def root(self) -> str:
        """'<name>/' of the one '<name>/data.pkl' (torch keeps everything in one top folder)."""
        pkls = [n for n in self.names() if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pkls) != 1:
            raise DamagedCheckpointError("the archive has no single <name>/data.pkl")
        return pkls[0][: -len("data.pkl")]

    def check_byteorder(self, root: str) -> None:
        name = f"{root}byteorder"
        if name not in self.names():
            return  # written before torch 2.1: little-endian, as every machine torch runs on
        order = bytes(self.read(self.info(name, "its byte order"))).decode("ascii", "replace").strip()
        if order == "big":
            raise DamagedCheckpointError("it was written on a big-endian machine; only little-endian files are read")
        if order != "little":
            raise DamagedCheckpointError(f"its byte order record says {order[:20]!r}")


class ZipStorages:
    """persistent_load for a zip checkpoint: storage `key` is `<root>data/<key>`, read once."""

    def __init__(self, archive: Archive, root: str) -> None:
        self.archive, self.root = archive, root
        self.storages: dict[str, Storage] = {}

    def __call__(self, pid: Any) -> Storage:
        storage_type, key, numel, _ = _storage_id(pid, 5)
        cached = self.storages.get(key)
        if cached is not None:
            if cached.dtype != storage_type.dtype and storage_type.name != "UntypedStorage":
                raise DamagedCheckpointError(f"storage {key} is named with two element types")
            return cached
        info = self.archive.info(f"{self.root}data/{key}", "a storage its data.pkl refers to")
        nbytes = numel * storage_type.itemsize
        if info.file_size != nbytes:
            raise DamagedCheckpointError(
                f"{info.filename} holds {info.file_size} bytes; {numel} {storage_type.name} elements need {nbytes}"
            )
        storage = self.storages[key] = Storage(self.archive.read(info), storage_type.dtype)
        return storage


def read_zip(path: Path, unpickler: type[CheckpointUnpickler] = CheckpointUnpickler) -> Any:
    with Archive(path) as archive:
        root = archive.root()
        archive.check_byteorder(root)
        data = archive.read(archive.info(f"{root}data.pkl", "its pickle"))
        return unpickler(io.BytesIO(data), ZipStorages(archive, root)).load()


def read_zip_pickle(path: Path, unpickler: Callable[[io.BytesIO], RestrictedUnpickler]) -> Any:
    """The object of a zip checkpoint's data.pkl through `unpickler`, without reading storages."""
    with Archive(path) as archive:
        data = archive.read(archive.info(f"{archive.root()}data.pkl", "its pickle"))
    return unpickler(io.BytesIO(data)).load()


# --------------------------------------------------------------------------- legacy files


class LegacyStorages:
    """persistent_load for a legacy file: each storage is allocated when the pickle first names
    it (if it fits in what is left of the file) and filled from the data after the pickle."""

    def __init__(self, reader: BoundedReader) -> None:
        self.reader = reader
        self.roots: dict[str, Storage] = {}
        self.views: dict[str, Storage] = {}

    def __call__(self, pid: Any) -> Storage:
        if isinstance(pid, tuple) and pid[:1] in (("module",), (b"module",)):
            raise UnsafeCheckpointError("the file holds a pickled nn.Module, not a dict of weights")
        storage_type, key, numel, view = _storage_id(pid, 6)
        root = self.roots.get(key)
        if root is None:
            nbytes = numel * storage_type.itemsize
            left = self.reader.end - self.reader.tell() - 8  # its element count comes first
            if nbytes > left:
                raise DamagedCheckpointError(
                    f"storage {key} needs {nbytes} bytes, but only {max(left, 0)} are left in the file after it"
                )
            # the pickle (and the key list) end before the data now promised to this storage: a
            # lying length further on cannot sweep it up as well (a second copy of it in memory)
            self.reader.end -= nbytes + 8
            self.reader.promised += nbytes + 8
            root = self.roots[key] = Storage(bytearray(nbytes), storage_type.dtype)
        elif root.dtype != storage_type.dtype:
            raise DamagedCheckpointError(f"storage {key} is named with two element types")
        if view is None or view == (None,):
            return root
        return self._view(root, view[0])

    def _view(self, root: Storage, meta: Any) -> Storage:
        """A view storage of torch < 0.4: (view key, element offset, element count) of a root."""
        if not (isinstance(meta, tuple) and len(meta) == 3 and all(isinstance(v, int) for v in meta[1:])):
            raise DamagedCheckpointError("a storage view that is not (key, offset, size)")
        key, offset, count = str(meta[0]), meta[1], meta[2]
        itemsize = _itemsize(root.dtype)
        if offset < 0 or count < 0 or (offset + count) * itemsize > root.nbytes:
            raise DamagedCheckpointError(f"storage view {key} lies outside its storage")
        if key not in self.views:
            self.views[key] = Storage(root.buffer, root.dtype, offset * itemsize, count * itemsize)
        return self.views[key]

    def fill(self, keys: Any, file: Any) -> None:
        """Read each storage's bytes, in the order of the key list that follows the pickle."""
        if not isinstance(keys, list) or not all(isinstance(k, str | int) for k in keys):
            raise DamagedCheckpointError("the storage key list is not a list of keys")
        keys = [str(k) for k in keys]
        if sorted(keys) != sorted(self.roots) or len(set(keys)) != len(keys):
            raise DamagedCheckpointError(
                f"the pickle names {len(self.roots)} storages, the key list after it {len(keys)} that differ"
            )
        for key in keys:
            storage = self.roots[key]
            head = file.read(8)
            if len(head) != 8:
                raise DamagedCheckpointError(f"the file ends before storage {key}")
            (count,) = struct.unpack("<q", head)
            itemsize = _itemsize(storage.dtype)
            if count * itemsize != storage.nbytes:
                raise DamagedCheckpointError(
                    f"storage {key} is announced with {count} elements, its tensors say {storage.nbytes // itemsize}"
                )
            _read_into(file, storage.buffer, f"storage {key}")
        if file.read(1):
            raise DamagedCheckpointError("it goes on after its last storage")


def _read_into(file: Any, buffer: bytearray, what: str) -> None:
    view, filled = memoryview(buffer), 0
    while filled < len(buffer):
        n = file.readinto(view[filled : filled + CHUNK])
        if not n:
            raise DamagedCheckpointError(f"the file ends inside {what} ({filled} of {len(buffer)} bytes)")
        filled += n


def _legacy_head(reader: BoundedReader) -> None:
    """Magic number, protocol version and system information, each a small pickle."""
    if restricted_load(reader) != LEGACY_MAGIC_NUMBER:
        raise DamagedCheckpointError("its magic number is wrong")
    version = restricted_load(reader)
    if version != LEGACY_PROTOCOL_VERSION:
        said = version if isinstance(version, int) and abs(version) < 1 << 64 else f"a {type(version).__name__}"
        raise DamagedCheckpointError(f"its protocol version is {said}, not {LEGACY_PROTOCOL_VERSION}")
    info = restricted_load(reader)
    if not isinstance(info, dict):
        raise DamagedCheckpointError("its system information is not a dict")
    if info.get("little_endian") is False:
        raise DamagedCheckpointError("it was written on a big-endian machine; only little-endian files are read")


def restricted_load(source: Any) -> Any:
    return RestrictedUnpickler(source).load()


def read_legacy(path: Path, unpickler: type[CheckpointUnpickler] = CheckpointUnpickler) -> Any:
    size = path.stat().st_size
    with path.open("rb") as file:
        reader = BoundedReader(file, size)
        _legacy_head(reader)
        storages = LegacyStorages(reader)
        obj = unpickler(reader, storages).load()
        storages.fill(restricted_load(reader), file)
    return obj


def read_legacy_pickle(path: Path, unpickler: Callable[[Any], RestrictedUnpickler]) -> Any:
    """The object of a legacy file through `unpickler`, without reading storages."""
    size = path.stat().st_size
    with path.open("rb") as file:
        reader = BoundedReader(file, size)
        _legacy_head(reader)
        return unpickler(reader).load()


# errors that reading a damaged file raises from the parsers (zipfile, struct, the unpickler, torch)
READ_ERRORS: tuple[type[BaseException], ...] = (
    EOFError,
    pickle.UnpicklingError,
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    zlib.error,
    struct.error,
    ValueError,
    TypeError,
    KeyError,
    IndexError,
    AttributeError,
    LookupError,
    RuntimeError,
    OverflowError,
    NotImplementedError,
)
