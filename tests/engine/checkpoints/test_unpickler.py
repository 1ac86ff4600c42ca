"""The restricted unpickler's parts, one by one (written against the survivors of mutation testing,
docs/testing.md): the counted opcodes that Python's own pickler writes only for values of 4 GiB and
more, the nesting limit at its exact depth, the bounded reads and the messages that say how much was
left, the protocol 0/1 spellings of object construction, chunked text decoding."""

from __future__ import annotations

import io
import pickle
import struct

import pytest

from ffclip.engine.checkpoints.errors import UnsafeCheckpointError
from ffclip.engine.checkpoints.safe_load import exception_text
from ffclip.engine.checkpoints.unpickler import (
    MAX_LINE,
    MAX_NESTING,
    TEXT_CHUNK,
    BoundedReader,
    RestrictedUnpickler,
    _reconstructor,
    decode_text,
    inert_class,
    resolve_global,
    restricted_loads,
)

P2, P4, P5 = b"\x80\x02", b"\x80\x04", b"\x80\x05"


# --- counted values ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("opcode", "width", "expected"),
    [
        (pickle.BINBYTES, "<I", b"abc"),
        (pickle.BINBYTES8, "<Q", b"abc"),
        (pickle.BINUNICODE, "<I", "abc"),
        (pickle.BINUNICODE8, "<Q", "abc"),
        (pickle.BYTEARRAY8, "<Q", bytearray(b"abc")),
    ],
)
def test_every_counted_opcode_reads_its_length_and_value(opcode: bytes, width: str, expected) -> None:
    """The 8-byte forms are what Python writes for values of 4 GiB or more, so no ordinary pickle
    has them: hand-made ones, each with a value after it that must still be read in step."""
    data = P5 + opcode + struct.pack(width, 3) + b"abc" + pickle.BININT1 + b"\x07" + pickle.TUPLE2 + pickle.STOP
    value, after = restricted_loads(data)
    assert value == expected and type(value) is type(expected) and after == 7


def test_a_text_value_keeps_lone_surrogates_as_pythons_pickle_does() -> None:
    text = "a\udc80b"
    assert restricted_loads(pickle.dumps(text, protocol=4)) == text == pickle.loads(pickle.dumps(text, protocol=4))


@pytest.mark.parametrize("opcode", [pickle.BINBYTES, pickle.BINUNICODE])
def test_a_length_beyond_the_data_says_how_much_was_left(opcode: bytes) -> None:
    data = P2 + opcode + struct.pack("<I", 1000) + b"abc"
    with pytest.raises(pickle.UnpicklingError, match=r"of 1000 bytes where 3 are left"):
        restricted_loads(data)


def test_a_length_beyond_its_frame_says_how_much_of_the_frame_was_left() -> None:
    """Protocol 4 frames: what is left is the rest of the frame, not of the file."""
    body = pickle.BINBYTES + struct.pack("<I", 50) + b"abcdef"
    data = P4 + pickle.FRAME + struct.pack("<Q", len(body)) + body + b"x" * 100 + pickle.STOP
    with pytest.raises(pickle.UnpicklingError, match=r"of 50 bytes where 6 are left"):
        restricted_loads(data)


def test_a_pickle_cut_short_ends_too_early() -> None:
    """Cut before its STOP: the plain end-of-data error, which the loader words as such."""
    with pytest.raises(EOFError) as caught:
        restricted_loads(P2 + pickle.BININT1 + b"\x01")
    assert exception_text(caught.value) == "its data ends too early (EOFError)"


# --- nesting -------------------------------------------------------------------------------------


def _nested(depth: int, leaf: bytes = pickle.EMPTY_TUPLE) -> bytes:
    """A pickle of a tuple nested `depth` deep: ((((),),),) with `depth` tuples, or (((None,),),)
    when the innermost is a tuple of a plain value (built by TUPLE1, so tracked itself)."""
    if leaf == pickle.EMPTY_TUPLE:
        return P2 + pickle.EMPTY_TUPLE + pickle.TUPLE1 * (depth - 1) + pickle.STOP
    return P2 + leaf + pickle.TUPLE1 * depth + pickle.STOP


@pytest.mark.parametrize("leaf", [pickle.EMPTY_TUPLE, pickle.NONE], ids=["empty", "of-none"])
def test_tuples_nest_exactly_max_nesting_deep(leaf: bytes) -> None:
    value = restricted_loads(_nested(MAX_NESTING, leaf))
    for _ in range(MAX_NESTING - 1):
        (value,) = value
    assert value == (() if leaf == pickle.EMPTY_TUPLE else (None,))
    with pytest.raises(pickle.UnpicklingError, match=f"nested more than {MAX_NESTING} deep"):
        restricted_loads(_nested(MAX_NESTING + 1, leaf))


@pytest.mark.parametrize("opcode", [pickle.TUPLE2, pickle.TUPLE3])
def test_the_depth_is_that_of_the_deepest_item(opcode: bytes) -> None:
    """A tuple of a shallow item and a deep one is as deep as the deep one, in whichever place."""
    items = 2 if opcode == pickle.TUPLE2 else 3
    deep = pickle.EMPTY_TUPLE + pickle.TUPLE1 * (MAX_NESTING - 1)
    for at in range(items):
        parts = [deep if i == at else pickle.NONE for i in range(items)]
        with pytest.raises(pickle.UnpicklingError, match="nested more than"):
            restricted_loads(P2 + b"".join(parts) + opcode + pickle.STOP)


def test_a_frozenset_counts_as_a_level_of_nesting() -> None:
    deep = pickle.EMPTY_TUPLE + pickle.TUPLE1 * (MAX_NESTING - 1)
    data = P4 + pickle.MARK + deep + pickle.FROZENSET + pickle.STOP
    with pytest.raises(pickle.UnpicklingError, match="nested more than"):
        restricted_loads(data)
    shallow = P4 + pickle.MARK + pickle.EMPTY_TUPLE + pickle.TUPLE1 * (MAX_NESTING - 2) + pickle.FROZENSET + pickle.STOP
    assert len(restricted_loads(shallow)) == 1


# --- names ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("module", ["torchvision", "torch.nn", "torchaudio", "zzz", "torc"])
def test_a_dtype_name_is_one_only_in_the_torch_module(module: str) -> None:
    import torch

    assert resolve_global("torch", "float32") is torch.float32
    with pytest.raises(UnsafeCheckpointError):
        resolve_global(module, "float32")


def test_the_protocol_1_construction_builds_only_placeholders() -> None:
    placeholder = inert_class("argparse", "Namespace")
    assert _reconstructor(placeholder, object, None).inert_args == ()
    assert _reconstructor(placeholder, int, 5).inert_args == (5,)
    with pytest.raises(UnsafeCheckpointError):
        _reconstructor(dict, object, None)


def test_a_protocol_0_namespace_becomes_a_placeholder_with_its_state() -> None:
    import argparse

    loaded = restricted_loads(pickle.dumps(argparse.Namespace(lr=0.5, size=1024), protocol=0))
    assert loaded.inert_name == "argparse.Namespace" and loaded.inert_args == ()
    assert loaded.inert_state == {"lr": 0.5, "size": 1024}


# --- reading -------------------------------------------------------------------------------------


def test_a_bounded_reader_hands_out_only_its_part_of_the_file() -> None:
    file = io.BytesIO(b"0123\nabcd\nEFGH\n")
    file.seek(2)
    reader = BoundedReader(file, 12)  # "23\nabcd\nEF"
    assert reader.tell() == 2
    assert reader.readline() == b"23\n" and reader.tell() == 5
    assert reader.read(3) == b"abc" and reader.tell() == 8
    assert reader.readline(1) == b"d" and reader.readline(-1) == b"\n"
    assert reader.read(100) == b"EF" and reader.tell() == 12
    assert reader.read() == b"" and reader.readline() == b""
    file.seek(5)
    rest = BoundedReader(file, 12)
    assert rest.read() == b"abcd\nEF" and rest.read(None) == b""
    file.seek(5)
    assert BoundedReader(file, 12).readline(None) == b"abcd\n"


@pytest.mark.parametrize("size", [TEXT_CHUNK - 1, TEXT_CHUNK, TEXT_CHUNK + 1, 3 * TEXT_CHUNK + 5])
def test_text_is_decoded_whole_across_chunks(size: int) -> None:
    """Multi-byte characters across the chunks' boundaries, the first chunk and the last included."""
    text = ("é€" * size)[:size]
    raw = text.encode()
    assert decode_text(raw) == text
    assert decode_text(raw, "utf-8", "surrogatepass") == text
    with pytest.raises(UnicodeDecodeError):
        decode_text(raw[:-1])  # the last character cut


# --- sets and extension codes --------------------------------------------------------------------


def test_sets_are_filled_by_additems_wherever_they_are() -> None:
    value = {"a": {1, 2}, "b": (1, {3, "x"}), "c": [frozenset({4}), set()]}
    assert restricted_loads(pickle.dumps(value, protocol=4)) == value


def test_additems_fills_only_a_set() -> None:
    data = P4 + pickle.EMPTY_LIST + pickle.MARK + pickle.BININT1 + b"\x01" + pickle.ADDITEMS + pickle.STOP
    with pytest.raises(pickle.UnpicklingError, match="ADDITEMS to a list"):
        restricted_loads(data)


def test_extension_codes_resolve_through_the_allow_list() -> None:
    """EXT1 names a global by a number registered with copyreg: the name then goes through the
    allow-list like any other; an unregistered number is an error."""
    import collections
    import copyreg

    unused = next(code for code in range(200, 256) if code not in copyreg._inverted_registry)
    data = P2 + pickle.EXT1 + bytes([unused]) + pickle.STOP
    with pytest.raises(pickle.UnpicklingError, match=f"unregistered extension code {unused}"):
        restricted_loads(data)
    copyreg.add_extension("collections", "OrderedDict", unused)
    try:
        assert restricted_loads(data) is collections.OrderedDict
        copyreg.remove_extension("collections", "OrderedDict", unused)
        copyreg.add_extension("os", "system", unused)
        with pytest.raises(UnsafeCheckpointError, match="os.system"):
            restricted_loads(data)
    finally:
        for module, name in (("collections", "OrderedDict"), ("os", "system")):
            if copyreg._extension_registry.get((module, name)) == unused:
                copyreg.remove_extension(module, name, unused)


def test_a_protocol_0_line_may_be_max_line_bytes_long() -> None:
    """Protocol 0 reads a line before knowing its end; MAX_LINE bytes, the newline included, is the
    longest it reads."""

    def text(length: int) -> bytes:
        return pickle.UNICODE + b"a" * length + b"\n" + pickle.STOP

    assert restricted_loads(text(MAX_LINE - 1)) == "a" * (MAX_LINE - 1)
    with pytest.raises(pickle.UnpicklingError, match=f"more than {MAX_LINE} bytes"):
        restricted_loads(text(MAX_LINE))


# --- more names, calls and containers ------------------------------------------------------------


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_builtins_are_found_however_the_module_name_is_spelled(protocol: int) -> None:
    """Protocol 2 writes `__builtin__` (mapped through _compat_pickle's constants); 3 and later write
    `builtins`, a string decoded from the pickle: compared by value, never by identity."""
    value = [slice(1, 5, 2), complex(1, 2), range(3)]
    assert restricted_loads(pickle.dumps(value, protocol=protocol)) == value


@pytest.mark.parametrize("module", ["abc", "_io", "aaa", "builtin", "builtinsx", "os", "__main__"])
def test_a_builtin_name_is_one_only_in_the_builtins_module(module: str) -> None:
    for name in ("dict", "list", "bytes", "object"):
        with pytest.raises(UnsafeCheckpointError, match=f"references {module}.{name}"):
            resolve_global(module, name)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("x", "ascii"), "encoding 'ascii'"),
        (("x", "cp1252"), "encoding 'cp1252'"),
        (("x", "utf-8"), "encoding 'utf-8'"),
        (("x", 5), "encoding a int"),
        ((5, "latin1"), "encoding 'latin1'"),
    ],
)
def test_codecs_encode_is_allowed_only_as_protocol_2_spells_bytes(args: tuple, message: str) -> None:
    data = pickle.dumps(_CodecsCall(*args), protocol=2)
    with pytest.raises(UnsafeCheckpointError, match=f"refusing _codecs.encode with {message}"):
        restricted_loads(data)
    assert restricted_loads(pickle.dumps(_CodecsCall("\xe9t\xe9", "latin-1"), protocol=2)) == b"\xe9t\xe9"


class _CodecsCall:
    """Pickles as _codecs.encode(text, encoding), as protocol 2 spells bytes."""

    def __init__(self, text: object, encoding: object) -> None:
        self.text, self.encoding = text, encoding

    def __reduce__(self) -> tuple:
        import codecs

        return (codecs.encode, (self.text, self.encoding))


def test_calling_a_tensor_type_itself_is_refused_by_its_name() -> None:
    data = P2 + pickle.GLOBAL + b"torch\nTensor\n" + pickle.EMPTY_TUPLE + pickle.REDUCE + pickle.STOP
    with pytest.raises(UnsafeCheckpointError, match=r"calls Tensor\(\.\.\.\) itself"):
        restricted_loads(data)


def test_newobj_needs_a_tuple_of_arguments() -> None:
    data = P2 + pickle.GLOBAL + b"__builtin__\nset\n" + pickle.EMPTY_LIST + pickle.NEWOBJ + pickle.STOP
    with pytest.raises(pickle.UnpicklingError, match="NEWOBJ needs a class and a tuple"):
        restricted_loads(data)
    assert restricted_loads(data.replace(pickle.EMPTY_LIST, pickle.EMPTY_TUPLE)) == set()


def test_setitems_needs_pairs() -> None:
    pairs = pickle.BININT1 + b"\x01" + pickle.BININT1 + b"\x02" + pickle.BININT1 + b"\x03" + pickle.BININT1 + b"\x04"
    good = P2 + pickle.EMPTY_DICT + pickle.MARK + pairs + pickle.SETITEMS + pickle.STOP
    assert restricted_loads(good) == {1: 2, 3: 4}
    odd = P2 + pickle.EMPTY_DICT + pickle.MARK + pairs[:-2] + pickle.SETITEMS + pickle.STOP
    with pytest.raises(pickle.UnpicklingError, match="odd number"):
        restricted_loads(odd)


# --- bounded sources -----------------------------------------------------------------------------


def _frame_lie(left: int) -> bytes:
    """A protocol-4 pickle whose FRAME claims 1000 bytes where `left` follow."""
    return P4 + pickle.FRAME + struct.pack("<Q", 1000) + b"N" * left


@pytest.mark.parametrize("left", [1, 2, 50])
def test_a_frame_longer_than_the_source_says_how_much_was_left(left: int) -> None:
    for source in (io.BytesIO(_frame_lie(left)), BoundedReader(io.BytesIO(_frame_lie(left) + b"x" * 5000), 11 + left)):
        with pytest.raises(pickle.UnpicklingError, match=f"a length of 1000 bytes where {left} are left"):
            RestrictedUnpickler(source).load()


def test_a_bounded_reader_stops_a_line_at_its_end_and_reads_nothing_for_zero() -> None:
    file = io.BytesIO(b"0123\nabcd\nEFGH\n")
    file.seek(10)
    reader = BoundedReader(file, 12)
    assert reader.readline(0) == b"" and reader.read(0) == b"" and reader.tell() == 10
    assert reader.readline() == b"EF" and reader.tell() == 12


def test_a_placeholder_class_is_named_after_what_it_stands_for() -> None:
    """Its class name is what a traceback or a debugger shows."""
    assert inert_class("argparse", "Namespace").__name__ == "Namespace"
    assert inert_class("omegaconf.nodes", "Outer.Inner").__name__ == "Inner"
    assert inert_class("omegaconf", "").__name__ == "Inert"
    assert inert_class("argparse", "Namespace") is inert_class("argparse", "Namespace")


def test_reduce_needs_a_tuple_of_arguments() -> None:
    data = P2 + pickle.GLOBAL + b"__builtin__\nset\n" + pickle.EMPTY_LIST + pickle.REDUCE + pickle.STOP
    with pytest.raises(pickle.UnpicklingError, match="a call whose arguments are not a tuple"):
        restricted_loads(data)
    assert restricted_loads(data.replace(pickle.EMPTY_LIST, pickle.EMPTY_TUPLE)) == set()
