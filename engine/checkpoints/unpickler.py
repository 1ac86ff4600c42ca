"""The restricted unpickler: what a checkpoint's pickle may name, call and build.

A pickle is a program: it names globals (which the stock unpickler imports), calls them, and builds
containers. Here every global goes through an allow-list (tensor rebuilds, containers, numbers,
dtypes; configuration classes become inert placeholders; anything else is refused before it is
imported), and the opcodes that call or mutate are checked as well, because even allowed callables
can be turned against the loader: `bytes(10**12)` or `list(range(10**12))` ask for any amount of
memory from a few bytes of pickle, a tuple nested a million deep crashes the interpreter when it is
hashed, and a pickle can set attributes of shared objects. So:

- calls (REDUCE, NEWOBJ, INST, OBJ) take only callables this pickle imported through the
  allow-list, never a `range` or a byte count as an argument of a constructor, and never
  `torch.Tensor(...)` itself (checkpoints rebuild tensors from their storages);
- APPEND(S) go to lists, SETITEM(S) to dicts, ADDITEMS to sets, BUILD to dicts and placeholders
  only (never a tensor, a class or a dtype);
- tuples and frozensets nest at most MAX_NESTING deep;
- it is the pure-Python unpickler, reading from a source that never hands out more bytes than it
  holds: the C unpickler allocates the length a BINBYTES8 or BYTEARRAY8 opcode claims, and a
  table of `2 x` the largest memo index, before it reads anything; text is decoded in chunks.
"""

from __future__ import annotations

import _compat_pickle
import codecs
import collections
import copyreg
import io
import pickle
import struct
from collections.abc import Callable
from typing import Any

import torch

from .errors import UnsafeCheckpointError

MAX_NESTING = 64  # tuples/frozensets within each other; hashing deeper ones recurses in C


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
    {"argparse", "omegaconf", "typing", "typing_extensions", "pathlib", "enum", "numpy", "datetime", "yacs", "easydict"}
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
# torch names a checkpoint's pickle may mention; the tensor rebuilds are the unpickler's own
TENSOR_REBUILDS = frozenset(
    {
        ("torch._utils", "_rebuild_tensor"),
        ("torch._utils", "_rebuild_tensor_v2"),
        ("torch._utils", "_rebuild_tensor_v3"),
        ("torch._utils", "_rebuild_parameter"),
        ("torch._utils", "_rebuild_parameter_with_state"),
        ("torch._tensor", "_rebuild_from_type_v2"),
    }
)
_TORCH_TYPES = {("torch", "Size"): torch.Size, ("torch", "device"): torch.device}
# named only as the type of a rebuilt tensor; calling them would allocate whatever size they are given
TYPE_MARKERS = {("torch", "Tensor"): torch.Tensor, ("torch.nn.parameter", "Parameter"): torch.nn.Parameter}


def _encode_latin1(text: str, encoding: str = "latin1") -> bytes:
    """Protocol-2 pickles spell bytes as _codecs.encode(text, 'latin1'); allow only that."""
    if not isinstance(text, str) or not isinstance(encoding, str) or codecs.lookup(encoding).name != "iso8859-1":
        said = repr(encoding[:40]) if isinstance(encoding, str) else f"a {type(encoding).__name__}"
        raise UnsafeCheckpointError(f"refusing _codecs.encode with encoding {said}")
    return text.encode("latin1")


def _reconstructor(cls: Any, base: Any, state: Any) -> Any:
    """Protocol 0/1 spelling of object construction; only placeholders may be built this way."""
    if isinstance(cls, type) and issubclass(cls, Inert):
        obj = cls.__new__(cls)
        obj.__dict__["_inert_args"] = (state,) if state is not None else ()
        return obj
    raise UnsafeCheckpointError(f"refusing copyreg._reconstructor for {type(cls).__name__}")


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
    """The object a pickle may get for `module.name`, or UnsafeCheckpointError. Imports nothing new.
    Tensor rebuilds are not resolved here: each unpickler supplies its own (see RestrictedUnpickler)."""
    module, name = _py2_names(module, name)
    if (module, name) in _SPECIAL:
        return _SPECIAL[(module, name)]
    if module == "builtins" and name in _SAFE_BUILTINS:
        return getattr(__import__("builtins"), name)
    if (module, name) in _TORCH_TYPES:
        return _TORCH_TYPES[(module, name)]
    if (module, name) in TYPE_MARKERS:
        return TYPE_MARKERS[(module, name)]
    if module == "torch" and isinstance(vars(torch).get(name), torch.dtype):  # vars: no lazy imports
        return vars(torch)[name]
    if module.partition(".")[0] in INERT_PACKAGES:
        return inert_class(module, name)
    if (module, name) in TENSOR_REBUILDS:
        raise UnsafeCheckpointError(
            f"the pickle references {module}.{name}, a tensor where only plain values may be; refused "
            "(only a checkpoint's unpickler rebuilds tensors, with its own checked functions)"
        )
    raise UnsafeCheckpointError(
        f"the file's pickle references {module}.{name}, which is not a tensor, container or "
        "configuration type; unpickling it could import and run arbitrary code, so the file is "
        "refused (nothing from it was executed)"
    )


class BoundedReader:
    """A file's bytes from its current position up to `end`, never asking the file for more.

    Reading n bytes from a buffered file allocates n bytes before it reads; a pickle's length field
    may claim anything, so every read is clamped to what is left."""

    def __init__(self, file: Any, end: int) -> None:
        self.file, self.pos, self.end = file, file.tell(), end
        self.promised = 0  # bytes after `end` that data following the pickle needs (legacy storages)

    def read(self, n: int | None = -1) -> bytes:
        left = self.end - self.pos
        data = self.file.read(left if n is None or n < 0 else min(n, left))
        self.pos += len(data)
        return data

    def readline(self, size: int | None = -1) -> bytes:
        left = self.end - self.pos
        data = self.file.readline(left if size is None or size < 0 else min(size, left))
        self.pos += len(data)
        return data

    def tell(self) -> int:
        return self.pos


def _kind(obj: Any) -> str:
    """A short description of an object, for messages (never its repr: that could be huge or deep)."""
    name = getattr(obj, "inert_name", None) or getattr(obj, "__qualname__", None) or type(obj).__name__
    return str(name)


class _Dispatch(dict):
    def __missing__(self, key: int) -> Any:
        raise pickle.UnpicklingError(f"invalid pickle opcode {bytes([key])!r}")


def _opcode(code: bytes) -> int:
    return code[0]


TEXT_CHUNK = 1 << 14


def decode_text(raw: bytes, encoding: str = "utf-8", errors: str = "strict") -> str:
    """bytes.decode in chunks: decoding a megabyte of tensor data that a lying length swept into a
    string fails at once, but only after a buffer of its size is allocated, and the error copies
    all of it; chunk by chunk, a failure costs one chunk."""
    if len(raw) <= TEXT_CHUNK or raw.isascii():
        return str(raw, encoding, errors)
    decoder = codecs.getincrementaldecoder(encoding)(errors)
    view = memoryview(raw)
    parts = [decoder.decode(view[i : i + TEXT_CHUNK]) for i in range(0, len(view), TEXT_CHUNK)]
    parts.append(decoder.decode(b"", final=True))
    return "".join(parts)


# A protocol-0 text line (a number, a name, a text value) longer than this is not read: checkpoints
# are written with protocol 2, where text is counted, and a line is read before its end is known.
MAX_LINE = 1 << 16
MAX_PICKLE_READ = 1 << 40  # no pickle of ours holds a terabyte value, whatever the source


def _remaining(source: Any) -> Callable[[], int]:
    """How many bytes `source` can still hand out."""
    if isinstance(source, BoundedReader):
        return lambda: source.end - source.pos
    if isinstance(source, io.BytesIO):
        here = source.tell()
        end = source.seek(0, io.SEEK_END)
        source.seek(here)
        return lambda: end - source.tell()
    raise TypeError(f"the restricted unpickler reads an io.BytesIO or a BoundedReader, not {type(source).__name__}")


class RestrictedUnpickler(pickle._Unpickler):  # type: ignore[name-defined]
    """The pure-Python unpickler with the allow-list and the checks of this module's docstring.

    `source` must not over-allocate on reads: an io.BytesIO, or a BoundedReader over a file.
    Tensors are refused here; subclasses that read a checkpoint's storages rebuild them."""

    dispatch = _Dispatch(pickle._Unpickler.dispatch)  # type: ignore[attr-defined]

    def __init__(self, source: Any) -> None:
        super().__init__(source, encoding="utf-8")  # torch.load's default for Python 2 strings
        self._granted: dict[int, Any] = {}  # id -> callable this pickle imported
        self._depth: dict[int, int] = {}  # id -> nesting of tuples and frozensets built here
        self._keep: list[Any] = []  # keeps those ids from being reused
        # every read of the pickle (opcodes, counted values, frames, protocol-0 lines) goes through
        # these two: a length that claims more than the source holds is refused before reading, so
        # a lying length costs nothing (not even the rest of the file, read to find it short)
        self._left = _remaining(source)
        self._file_read, self._file_readline = self._bounded_read, self._bounded_readline
        self._source = source
        self._source_read, self._source_readline = source.read, source.readline

    def _bounded_read(self, n: int) -> bytes:
        left = self._left()
        if n > left:
            promised = getattr(self._source, "promised", 0)
            if promised:
                raise pickle.UnpicklingError(
                    f"the file ends inside its storages' data (the {promised} bytes its tensors need)"
                )
        if n > left > 0 or n > MAX_PICKLE_READ:
            raise pickle.UnpicklingError(f"a length of {n} bytes where {left} are left")
        return self._source_read(n)

    def _bytes_left(self) -> int:
        """What the next read can hand out: the rest of the current frame (protocol 4), or of the source."""
        frame = self._unframer.current_frame
        if frame is None:
            return self._left()
        with frame.getbuffer() as view:
            return view.nbytes - frame.tell()

    def _bounded_readline(self) -> bytes:
        line = self._source_readline(MAX_LINE + 1)
        if len(line) > MAX_LINE:
            raise pickle.UnpicklingError(
                f"a text line of more than {MAX_LINE} bytes (protocol 0), which no checkpoint has"
            )
        return line

    # ------------------------------------------------------------------ names

    def find_class(self, module: str, name: str) -> Any:
        obj = self.rebuild_function(module, name) if (module, name) in TENSOR_REBUILDS else resolve_global(module, name)
        self._granted[id(obj)] = obj
        return obj

    def rebuild_function(self, module: str, name: str) -> Any:
        raise UnsafeCheckpointError(f"a tensor ({module}.{name}) where only plain values may be")

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("a reference to data outside the pickle, where none may be")

    def get_extension(self, code: int) -> None:
        # never the module-wide cache of extension objects: every name goes through find_class
        key = copyreg._inverted_registry.get(code)  # type: ignore[attr-defined]
        if not key:
            raise pickle.UnpicklingError(f"unregistered extension code {code}")
        self.append(self.find_class(*key))

    # ------------------------------------------------------------------ calls

    def call(self, func: Any, args: Any, kwargs: Any = None) -> Any:
        """func(*args, **kwargs) when func came through find_class and the arguments cannot make it
        allocate more than the pickle holds."""
        kwargs = kwargs or {}
        if not isinstance(args, tuple) or not isinstance(kwargs, dict):
            raise pickle.UnpicklingError("a call whose arguments are not a tuple")
        self._check_call(func, args, kwargs)
        return self.track(func(*args, **kwargs))

    def _check_call(self, func: Any, args: Any, kwargs: dict) -> None:
        if self._granted.get(id(func)) is not func:
            raise UnsafeCheckpointError(f"the pickle calls a {_kind(func)} it did not import")
        if any(func is marker for marker in TYPE_MARKERS.values()):
            raise UnsafeCheckpointError(f"the pickle calls {_kind(func)}(...) itself, which no checkpoint does")
        if isinstance(func, type) and issubclass(func, Inert):
            return  # placeholders only record their arguments
        for value in (*args, *kwargs.values()):
            if isinstance(value, range):
                raise UnsafeCheckpointError(
                    f"the pickle passes a range to {_kind(func)}, which could expand to any size"
                )
            if (func is bytes or func is bytearray) and isinstance(value, int):
                raise UnsafeCheckpointError(f"the pickle asks for {_kind(func)}({value}), a buffer of any size")

    def track(self, obj: Any) -> Any:
        """Record how deep a new tuple or frozenset nests; refuse one nested deeper than MAX_NESTING."""
        if isinstance(obj, tuple | frozenset):
            depth = 1 + max((self._depth.get(id(x), 1) for x in obj if isinstance(x, tuple | frozenset)), default=0)
            if depth > MAX_NESTING:
                raise pickle.UnpicklingError(f"tuples nested more than {MAX_NESTING} deep")
            self._depth[id(obj)] = depth
            self._keep.append(obj)
        return obj

    def load_reduce(self) -> None:
        args = self.stack.pop()
        self.stack[-1] = self.call(self.stack[-1], args)

    def load_newobj(self) -> None:
        args = self.stack.pop()
        cls = self.stack.pop()
        self.append(self._new(cls, args, {}))

    def load_newobj_ex(self) -> None:
        kwargs = self.stack.pop()
        args = self.stack.pop()
        cls = self.stack.pop()
        self.append(self._new(cls, args, kwargs))

    def _new(self, cls: Any, args: Any, kwargs: Any) -> Any:
        if not isinstance(cls, type) or not isinstance(args, tuple) or not isinstance(kwargs, dict):
            raise pickle.UnpicklingError("NEWOBJ needs a class and a tuple of arguments")
        self._check_call(cls, args, kwargs)
        return self.track(cls.__new__(cls, *args, **kwargs))

    def _instantiate(self, klass: Any, args: list) -> None:  # INST and OBJ
        self.append(self.call(klass, tuple(args)))

    # ------------------------------------------------------------------ containers

    def load_tuple(self) -> None:
        items = self.pop_mark()  # first: it switches self.append to the outer stack
        self.append(self.track(tuple(items)))

    def load_tuple1(self) -> None:
        self.stack[-1] = self.track((self.stack[-1],))

    def load_tuple2(self) -> None:
        self.stack[-2:] = [self.track((self.stack[-2], self.stack[-1]))]

    def load_tuple3(self) -> None:
        self.stack[-3:] = [self.track((self.stack[-3], self.stack[-2], self.stack[-1]))]

    def load_frozenset(self) -> None:
        items = self.pop_mark()
        self.append(self.track(frozenset(items)))

    def load_append(self) -> None:
        value = self.stack.pop()
        self._target(list, "APPEND").append(value)

    def load_appends(self) -> None:
        items = self.pop_mark()
        self._target(list, "APPENDS").extend(items)

    def load_setitem(self) -> None:
        value = self.stack.pop()
        key = self.stack.pop()
        self._target(dict, "SETITEM")[key] = value

    def load_setitems(self) -> None:
        items = self.pop_mark()
        target = self._target(dict, "SETITEMS")
        if len(items) % 2:
            raise pickle.UnpicklingError("SETITEMS with an odd number of items")
        for i in range(0, len(items), 2):
            target[items[i]] = items[i + 1]

    def load_additems(self) -> None:
        items = self.pop_mark()
        target = self.stack[-1]
        if not isinstance(target, set):
            raise pickle.UnpicklingError(f"ADDITEMS to a {_kind(target)}")
        target.update(items)

    def _target(self, kind: type, opcode: str) -> Any:
        target = self.stack[-1]
        if not isinstance(target, kind | Inert):
            raise pickle.UnpicklingError(f"{opcode} to a {_kind(target)}")
        return target

    def load_build(self) -> None:
        state = self.stack.pop()
        inst = self.stack[-1]
        if isinstance(inst, Inert):
            inst.__setstate__(state)
            return
        if not isinstance(inst, dict) or type(inst) is dict:  # OrderedDicts carry _metadata this way
            raise pickle.UnpicklingError(f"BUILD (setting the state) of a {_kind(inst)}")
        self.stack.append(state)
        super().load_build()

    def _counted(self, width: int, what: str) -> bytes:
        """The bytes of a counted value: its length, then exactly that many (the source hands out
        no more than it holds, so a lying length allocates nothing)."""
        (size,) = struct.unpack("<I" if width == 4 else "<Q", self.read(width))
        left = self._bytes_left()
        if size > left:
            raise pickle.UnpicklingError(f"{what} of {size} bytes where {left} are left")
        data = self.read(size)
        if len(data) != size:
            raise pickle.UnpicklingError(f"{what} of {size} bytes where {len(data)} are left")
        return data

    def load_binbytes(self) -> None:
        self.append(self._counted(4, "a bytes value"))

    def load_binbytes8(self) -> None:
        self.append(self._counted(8, "a bytes value"))

    def load_binunicode(self) -> None:
        self.append(decode_text(self._counted(4, "a text value"), "utf-8", "surrogatepass"))

    def load_binunicode8(self) -> None:
        self.append(decode_text(self._counted(8, "a text value"), "utf-8", "surrogatepass"))

    def load_unicode(self) -> None:
        self.append(decode_text(self.readline()[:-1], "raw-unicode-escape"))

    def _decode_string(self, value: bytes) -> Any:  # Python 2 str (BINSTRING, STRING)
        return decode_text(value, self.encoding, self.errors)

    def load_bytearray8(self) -> None:
        self.append(bytearray(self._counted(8, "a bytearray")))

    for _code, _method in (
        (pickle.REDUCE, load_reduce),
        (pickle.NEWOBJ, load_newobj),
        (pickle.NEWOBJ_EX, load_newobj_ex),
        (pickle.TUPLE, load_tuple),
        (pickle.TUPLE1, load_tuple1),
        (pickle.TUPLE2, load_tuple2),
        (pickle.TUPLE3, load_tuple3),
        (pickle.FROZENSET, load_frozenset),
        (pickle.APPEND, load_append),
        (pickle.APPENDS, load_appends),
        (pickle.SETITEM, load_setitem),
        (pickle.SETITEMS, load_setitems),
        (pickle.ADDITEMS, load_additems),
        (pickle.BUILD, load_build),
        (pickle.BYTEARRAY8, load_bytearray8),
        (pickle.BINBYTES, load_binbytes),
        (pickle.BINBYTES8, load_binbytes8),
        (pickle.BINUNICODE, load_binunicode),
        (pickle.BINUNICODE8, load_binunicode8),
        (pickle.UNICODE, load_unicode),
    ):
        dispatch[_opcode(_code)] = _method
    del _code, _method


def restricted_loads(data: bytes) -> Any:
    """Unpickle plain pickle bytes with the allow-list (no tensors)."""
    return RestrictedUnpickler(io.BytesIO(data)).load()
