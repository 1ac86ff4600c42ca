"""The torch-file readers' parts that ordinary checkpoints rarely reach (written against the
survivors of mutation testing, docs/testing.md): tensor subclasses rebuilt through
`_rebuild_from_type_v2`, parameters and tensors carrying attributes, TorchScript code members and
their sizes, the byte-order record, views of legacy storages."""

from __future__ import annotations

import io
import pickle
import struct
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from ffclip.engine.checkpoints import UnsafeCheckpointError, load_checkpoint
from ffclip.engine.checkpoints.errors import DamagedCheckpointError
from ffclip.engine.checkpoints.torchfile import Archive
from tests.support.torch_files import (
    LEGACY_MAGIC,
    SYS_INFO,
    Storage,
    Tensor,
    floats,
    pickle_bytes,
    write_legacy,
    write_zip,
)

FORMATS = ["zip", "legacy"]


def _write(fmt: str, path: Path, obj: object, storages: list[Storage]) -> Path:
    return (write_legacy if fmt == "legacy" else write_zip)(path, obj, storages)


@dataclass
class FromType:
    """Pickles as torch._tensor._rebuild_from_type_v2(func, new_type, args, state): how torch saves
    a tensor subclass."""

    func: Any
    new_type: Any
    args: tuple
    state: Any = None

    def __reduce__(self) -> tuple:
        return (torch._tensor._rebuild_from_type_v2, (self.func, self.new_type, self.args, self.state))


@dataclass
class WithState:
    """Pickles as torch._utils._rebuild_parameter_with_state(data, requires_grad, hooks, state)."""

    data: Any
    requires_grad: bool
    state: Any

    def __reduce__(self) -> tuple:
        return (torch._utils._rebuild_parameter_with_state, (self.data, self.requires_grad, OrderedDict(), self.state))


def _v2_args(storage: Storage) -> tuple:
    return (storage, 0, (2,), (1,), False, OrderedDict())


def _storage() -> Storage:
    return Storage("0", "FloatStorage", floats(1.5, -2.0))


# --- tensor subclasses ---------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("new_type", [torch.Tensor, torch.nn.Parameter])
def test_a_tensor_or_parameter_rebuilt_from_its_type_loads(tmp_path: Path, fmt: str, new_type: type) -> None:
    storage = _storage()
    obj = {"w": FromType(torch._utils._rebuild_tensor_v2, new_type, _v2_args(storage), {"note": "kept"})}
    loaded = load_checkpoint(_write(fmt, tmp_path / "c.pt", obj, [storage]))["w"]
    assert type(loaded) is new_type and loaded.tolist() == [1.5, -2.0] and loaded.note == "kept"


@pytest.mark.parametrize("new_type", [torch.Size, dict, torch.float32])
def test_a_subclass_other_than_tensor_or_parameter_is_refused(tmp_path: Path, new_type: Any) -> None:
    storage = _storage()
    obj = {"w": FromType(torch._utils._rebuild_tensor_v2, new_type, _v2_args(storage))}
    with pytest.raises(UnsafeCheckpointError, match="is not rebuilt"):
        load_checkpoint(write_zip(tmp_path / "c.pt", obj, [storage]))


@pytest.mark.parametrize("func", [OrderedDict, list, torch.Size])
def test_a_subclass_rebuilt_by_another_function_is_refused(tmp_path: Path, func: Any) -> None:
    storage = _storage()
    obj = {"w": FromType(func, torch.Tensor, ((1, 2),))}
    with pytest.raises(UnsafeCheckpointError, match="rebuilt by another function"):
        load_checkpoint(write_zip(tmp_path / "c.pt", obj, [storage]))


def test_a_subclass_whose_arguments_are_not_a_tuple_is_refused(tmp_path: Path) -> None:
    storage = _storage()
    obj = {"w": FromType(torch._utils._rebuild_tensor_v2, torch.Tensor, [storage, 0, (2,), (1,), False, {}])}
    with pytest.raises(UnsafeCheckpointError, match="rebuilt by another function"):
        load_checkpoint(write_zip(tmp_path / "c.pt", obj, [storage]))


# --- attributes ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "state",
    [{"note": "kept"}, ({"note": "kept"}, None), (None, {"note": "kept"}), ({}, {"note": "kept"})],
    ids=["dict", "dict-and-no-slots", "slots-only", "empty-dict-and-slots"],
)
def test_attributes_come_from_the_dict_and_the_slots(tmp_path: Path, state: Any) -> None:
    storage = _storage()
    obj = {"p": WithState(Tensor(storage, (2,)), False, state)}
    loaded = load_checkpoint(write_zip(tmp_path / "c.pt", obj, [storage]))["p"]
    assert isinstance(loaded, torch.nn.Parameter) and not loaded.requires_grad and loaded.note == "kept"


@pytest.mark.parametrize("state", [{"__class__": dict}, {"__dict__": {}}, {1: "x"}, ([("note", 1)], None)])
def test_attributes_are_plain_names_only(tmp_path: Path, state: Any) -> None:
    storage = _storage()
    obj = {"p": WithState(Tensor(storage, (2,)), True, state)}
    with pytest.raises(DamagedCheckpointError, match="not a dict of names"):
        load_checkpoint(write_zip(tmp_path / "c.pt", obj, [storage]))


def test_a_real_parameter_with_an_attribute_round_trips(tmp_path: Path) -> None:
    """What torch.save itself writes for a parameter that carries an attribute."""
    parameter = torch.nn.Parameter(torch.tensor([3.0, 4.0]), requires_grad=False)
    parameter.note = "kept"
    path = tmp_path / "p.pt"
    torch.save({"p": parameter}, path)
    loaded = load_checkpoint(path)["p"]
    assert isinstance(loaded, torch.nn.Parameter) and loaded.tolist() == [3.0, 4.0]
    assert not loaded.requires_grad and loaded.note == "kept"


# --- TorchScript code members --------------------------------------------------------------------


def _code_archive(path: Path, text: bytes) -> Archive:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/code/m.py", text, compress_type=zipfile.ZIP_DEFLATED)
    return Archive(path)


def test_a_code_member_is_read_as_text(tmp_path: Path) -> None:
    with _code_archive(tmp_path / "a.zip", "déf f(): return 1\n".encode()) as archive:
        assert archive.read_text(archive.info("archive/code/m.py", "code")) == "déf f(): return 1\n"


def test_a_code_member_cannot_claim_more_than_deflate_can_expand(tmp_path: Path) -> None:
    """Deflate expands at most ~1032 times: an entry claiming more is refused before reading."""
    with _code_archive(tmp_path / "a.zip", b"\0" * 100_000) as archive:
        info = archive.info("archive/code/m.py", "code")
        ratio = info.file_size / info.compress_size
        assert 100 < ratio < 1032  # zeros compress well, within deflate's limit
        assert archive.read_text(info) == "\0" * 100_000
        for claim in (1032 * info.compress_size + 1, 1033 * info.compress_size, 64 << 20):
            info.file_size = claim
            with pytest.raises(DamagedCheckpointError, match=f"claims {claim} bytes"):
                archive.read_text(info)
        info.file_size = 100_001  # within the ratio, but not what the member holds
        with pytest.raises(DamagedCheckpointError, match="does not hold the 100001 bytes"):
            archive.read_text(info)


# --- byte order ----------------------------------------------------------------------------------


@pytest.mark.parametrize("order", [None, "little", "little\n"])
def test_a_little_endian_or_unrecorded_byte_order_loads(tmp_path: Path, order: str | None) -> None:
    storage = _storage()
    path = write_zip(tmp_path / "c.pt", {"w": Tensor(storage, (2,))}, [storage], byteorder=order)
    assert load_checkpoint(path)["w"].tolist() == [1.5, -2.0]


@pytest.mark.parametrize("order", ["middle", "", "LITTLE"])
def test_an_unknown_byte_order_is_damaged(tmp_path: Path, order: str) -> None:
    storage = _storage()
    path = write_zip(tmp_path / "c.pt", {"w": Tensor(storage, (2,))}, [storage], byteorder=order)
    with pytest.raises(DamagedCheckpointError, match="byte order record says"):
        load_checkpoint(path)


# --- legacy views --------------------------------------------------------------------------------


def test_legacy_views_share_their_root_storage(tmp_path: Path) -> None:
    """torch < 0.4 wrote a view of a storage as (view key, element offset, element count)."""
    root = Storage("0", "FloatStorage", floats(1, 2, 3, 4, 5), view=None)
    first = Storage("0", "FloatStorage", floats(1, 2, 3, 4, 5), view=("v1", 1, 2))
    second = Storage("0", "FloatStorage", floats(1, 2, 3, 4, 5), view=("v2", 3, 2))
    obj = {"all": Tensor(root, (5,)), "a": Tensor(first, (2,)), "b": Tensor(second, (2,)), "a2": Tensor(first, (1,))}
    loaded = load_checkpoint(write_legacy(tmp_path / "c.pt", obj, [root]))
    assert loaded["a"].tolist() == [2.0, 3.0] and loaded["b"].tolist() == [4.0, 5.0]
    assert loaded["a2"].tolist() == [2.0]
    loaded["all"][1] = 20.0  # one buffer under all of them
    assert loaded["a"][0] == 20.0 and loaded["a2"][0] == 20.0


@pytest.mark.parametrize("view", [("v", 4, 2), ("v", -1, 1), ("v", 0, -1), ("v", 0, 6), ("v", 1), ("v", 0.5, 1)])
def test_a_legacy_view_outside_its_storage_is_damaged(tmp_path: Path, view: tuple) -> None:
    root = Storage("0", "FloatStorage", floats(1, 2, 3, 4, 5))
    viewed = Storage("0", "FloatStorage", floats(1, 2, 3, 4, 5), view=view)
    path = write_legacy(tmp_path / "c.pt", {"all": Tensor(root, (5,)), "v": Tensor(viewed, (1,))}, [root])
    with pytest.raises(DamagedCheckpointError, match="storage view"):
        load_checkpoint(path)


# --- sizes and the messages that name them -------------------------------------------------------


def test_the_budget_says_how_much_more_the_file_can_hold() -> None:
    from ffclip.engine.checkpoints.torchfile import Budget

    budget = Budget(100)
    budget.charge(60, "storage a")
    with pytest.raises(
        DamagedCheckpointError, match=r"storage b needs 50 bytes, but the file \(100 bytes\) can hold only 40 more"
    ):
        budget.charge(50, "storage b")
    budget.charge(40, "storage c")
    with pytest.raises(DamagedCheckpointError, match="can hold only 0 more"):
        budget.charge(1, "storage d")
    with pytest.raises(DamagedCheckpointError, match="needs -1 bytes"):
        Budget(10).charge(-1, "storage e")


def test_a_zip_storage_named_with_two_element_types_is_damaged(tmp_path: Path) -> None:
    data = floats(1, 2)
    as_float, as_int = Storage("0", "FloatStorage", data), Storage("0", "IntStorage", data)
    path = write_zip(tmp_path / "c.pt", {"a": Tensor(as_float, (2,)), "b": Tensor(as_int, (2,))}, [as_float])
    with pytest.raises(DamagedCheckpointError, match="storage 0 is named with two element types"):
        load_checkpoint(path)
    # an untyped name for the same storage is how torch >= 2 may refer to it: the first type holds
    untyped = Storage("0", "UntypedStorage", data)
    path = write_zip(tmp_path / "u.pt", {"a": Tensor(as_float, (2,)), "b": Tensor(untyped, (2,))}, [as_float])
    loaded = load_checkpoint(path)
    assert loaded["a"].tolist() == [1.0, 2.0] and loaded["b"].dtype == torch.float32


def test_a_legacy_storage_larger_than_the_rest_of_the_file_says_what_is_left(tmp_path: Path) -> None:
    """The storage reference is the whole object pickle here, so what follows it is known: STOP,
    the key list, the storage's 8-byte element count and its 8 bytes of data."""
    lying = Storage("0", "FloatStorage", floats(1, 2), numel=100)
    path = write_legacy(tmp_path / "c.pt", lying, [lying])
    left = 1 + len(pickle.dumps(["0"], 2)) + 8 + 8 - 8  # less the count, which comes before the data
    with pytest.raises(DamagedCheckpointError, match=f"needs 400 bytes, but only {left} are left"):
        load_checkpoint(path)


@pytest.mark.parametrize(("version", "said"), [(1002, "1002"), (-5, "-5"), (1 << 64, "a int"), ("1001", "a str")])
def test_a_legacy_file_of_another_protocol_version_says_which(tmp_path: Path, version: Any, said: str) -> None:
    storage = Storage("0", "FloatStorage", floats(1, 2))
    data = write_legacy(tmp_path / "c.pt", {"w": Tensor(storage, (2,))}, [storage]).read_bytes()
    data = data.replace(pickle.dumps(1001, 2), pickle.dumps(version, 2), 1)
    (tmp_path / "v.pt").write_bytes(data)
    with pytest.raises(DamagedCheckpointError, match=f"its protocol version is {said}, not 1001"):
        load_checkpoint(tmp_path / "v.pt")


@pytest.mark.parametrize(("size", "stride"), [((-1,), (1,)), ((2,), (-1,)), ((2, -2), (1, 1)), ((2, 2), (1, -3))])
def test_a_negative_size_or_stride_is_named(tmp_path: Path, size: tuple, stride: tuple) -> None:
    storage = Storage("0", "FloatStorage", floats(1, 2, 3, 4))
    path = write_zip(tmp_path / "c.pt", {"w": Tensor(storage, size, stride)}, [storage])
    with pytest.raises(DamagedCheckpointError, match="a tensor has a negative size or stride"):
        load_checkpoint(path)


def test_an_archive_of_many_members_loads(tmp_path: Path) -> None:
    """Real checkpoints hold hundreds of storages (e4e: about 800): member counts are compared by
    value, whatever their size."""
    storages = [Storage(str(i), "FloatStorage", floats(float(i))) for i in range(300)]
    obj = {f"w{i}": Tensor(s, (1,)) for i, s in enumerate(storages)}
    loaded = load_checkpoint(write_zip(tmp_path / "c.pt", obj, storages))
    assert len(loaded) == 300 and loaded["w299"].item() == 299.0


# --- tensors at their storage's edges ------------------------------------------------------------


@pytest.mark.parametrize(("elements", "shape"), [(4, (5,)), (3, (4,)), (6, (2, 4))])
def test_a_tensor_one_element_beyond_its_storage_is_named(tmp_path: Path, elements: int, shape: tuple) -> None:
    """Exactly one element too far, with the last index even and odd: the byte it would reach."""
    storage = Storage("0", "FloatStorage", floats(*range(elements)))
    path = write_zip(tmp_path / "c.pt", {"w": Tensor(storage, shape)}, [storage])
    reach = 4 * (elements + 1) if len(shape) == 1 else 4 * 8
    with pytest.raises(DamagedCheckpointError, match=f"reaches byte {reach} of a storage of {4 * elements}"):
        load_checkpoint(path)
    fits = write_zip(tmp_path / "f.pt", {"w": Tensor(storage, (elements,))}, [storage])
    assert load_checkpoint(fits)["w"].tolist() == [float(i) for i in range(elements)]


@pytest.mark.parametrize(("size", "stride"), [((2,), (1, 1)), ((2, 2), (1,))])
def test_a_shape_and_strides_of_different_lengths_are_named(tmp_path: Path, size: tuple, stride: tuple) -> None:
    storage = Storage("0", "FloatStorage", floats(1, 2, 3, 4))
    path = write_zip(tmp_path / "c.pt", {"w": Tensor(storage, size, stride)}, [storage])
    with pytest.raises(DamagedCheckpointError, match="shape, strides and offset do not fit together"):
        load_checkpoint(path)


@dataclass
class TensorV2:
    """_rebuild_tensor_v2 with any requires_grad and metadata (the conj/neg flags)."""

    storage: Any
    requires_grad: Any = False
    metadata: Any = None

    def __reduce__(self) -> tuple:
        args = (self.storage, 0, (2,), (1,), self.requires_grad, OrderedDict(), self.metadata)
        return (torch._utils._rebuild_tensor_v2, args)


@pytest.mark.parametrize("requires_grad", [None, 0, 1, "yes", -1])
def test_requires_grad_is_true_or_false_only(tmp_path: Path, requires_grad: Any) -> None:
    storage = _storage()
    path = write_zip(tmp_path / "c.pt", {"w": TensorV2(storage, requires_grad)}, [storage])
    with pytest.raises(DamagedCheckpointError, match="requires_grad is not true or false"):
        load_checkpoint(path)
    for flag in (True, False):
        ok = write_zip(tmp_path / f"{flag}.pt", {"w": TensorV2(storage, flag)}, [storage])
        assert load_checkpoint(ok)["w"].requires_grad is flag


def test_tensor_metadata_is_a_dict_of_flags(tmp_path: Path) -> None:
    storage = _storage()
    # a negated view, as torch.save writes one: the flag set, the stored values as they were
    ok = write_zip(tmp_path / "ok.pt", {"w": TensorV2(storage, False, {"neg": True})}, [storage])
    loaded = load_checkpoint(ok)["w"]
    assert loaded.is_neg() and loaded.tolist() == [-1.5, 2.0]
    for bad in (["neg"], {"neg": 1}, ("conj", True)):
        path = write_zip(tmp_path / "bad.pt", {"w": TensorV2(storage, False, bad)}, [storage])
        with pytest.raises(DamagedCheckpointError, match="metadata is not a dict of flags"):
            load_checkpoint(path)


# --- storage references --------------------------------------------------------------------------


def test_a_zip_storage_reference_has_exactly_five_fields(tmp_path: Path) -> None:
    """The legacy format's six (a view field) are malformed in a zip file."""
    storage = _storage()
    obj = {"w": Tensor(storage, (2,))}
    path = write_zip(tmp_path / "c.pt", obj, [storage], data_pkl=pickle_bytes(obj, legacy=True))
    with pytest.raises(DamagedCheckpointError, match="a storage reference is not a tuple of 5"):
        load_checkpoint(path)


@pytest.mark.parametrize("kind", ["module", "aaa", "Storage", "storagE"])
def test_a_reference_to_anything_but_a_storage_is_named(tmp_path: Path, kind: str) -> None:
    class Other(pickle.Pickler):
        def persistent_id(self, obj: object) -> object:
            return (kind, 1, "0", "cpu", 2) if obj == "REF" else None

    buffer = io.BytesIO()
    Other(buffer, protocol=2).dump({"w": "REF"})
    path = write_zip(tmp_path / "c.pt", None, [], data_pkl=buffer.getvalue())
    with pytest.raises(DamagedCheckpointError, match=f"a reference to something other than a storage \\('{kind}'\\)"):
        load_checkpoint(path)


def test_a_code_member_may_not_claim_more_than_64_mib(tmp_path: Path) -> None:
    from ffclip.engine.checkpoints.torchfile import MAX_CODE_MEMBER

    with _code_archive(tmp_path / "a.zip", b"x = 1\n") as archive:
        info = archive.info("archive/code/m.py", "code")
        info.file_size, info.compress_size = MAX_CODE_MEMBER + 1, MAX_CODE_MEMBER  # a ratio deflate allows
        with pytest.raises(DamagedCheckpointError, match=f"claims {MAX_CODE_MEMBER + 1} bytes"):
            archive.read_text(info)


# --- legacy storages and views -------------------------------------------------------------------


def test_legacy_views_at_one_offset_are_told_apart_by_their_keys(tmp_path: Path) -> None:
    root = Storage("0", "FloatStorage", floats(1, 2, 3, 4, 5))
    short = Storage("0", "FloatStorage", floats(1, 2, 3, 4, 5), view=("v2", 1, 2))
    long = Storage("0", "FloatStorage", floats(1, 2, 3, 4, 5), view=("v3", 1, 3))
    empty = Storage("0", "FloatStorage", floats(1, 2, 3, 4, 5), view=("v0", 5, 0))
    obj = {"all": Tensor(root, (5,)), "s": Tensor(short, (2,)), "l": Tensor(long, (3,)), "e": Tensor(empty, (0,))}
    loaded = load_checkpoint(write_legacy(tmp_path / "c.pt", obj, [root]))
    assert loaded["s"].tolist() == [2.0, 3.0] and loaded["l"].tolist() == [2.0, 3.0, 4.0]
    assert loaded["e"].tolist() == []


def test_a_legacy_storage_announced_with_more_elements_is_named(tmp_path: Path) -> None:
    storage = Storage("0", "FloatStorage", floats(1, 2))
    data = write_legacy(tmp_path / "c.pt", {"w": Tensor(storage, (2,))}, [storage]).read_bytes()
    at = data.rindex(struct.pack("<q", 2))  # the element count before the storage's bytes
    for count in (3, 1):
        (tmp_path / "d.pt").write_bytes(data[:at] + struct.pack("<q", count) + data[at + 8 :])
        said = f"storage 0 is announced with {count} elements, its tensors say 2\\. Delete"
        with pytest.raises(DamagedCheckpointError, match=said):
            load_checkpoint(tmp_path / "d.pt")


def test_the_pickle_after_a_storage_reference_ends_where_its_data_begins(tmp_path: Path) -> None:
    """Once the pickle names a storage, what is left for the key list stops before the storage's
    count and bytes: a key list claiming 1000 bytes has exactly 0 left."""
    storage = Storage("0", "FloatStorage", floats(1, 2))
    parts = [pickle.dumps(LEGACY_MAGIC, 2), pickle.dumps(1001, 2), pickle.dumps(SYS_INFO, 2)]
    parts.append(pickle_bytes({"w": Tensor(storage, (2,))}, legacy=True))
    parts.append(b"\x80\x02B" + struct.pack("<I", 1000))  # the key list: a lying bytes value
    parts.append(struct.pack("<q", 2) + floats(1, 2))
    (tmp_path / "c.pt").write_bytes(b"".join(parts))
    with pytest.raises(DamagedCheckpointError, match="a bytes value of 1000 bytes where 0 are left"):
        load_checkpoint(tmp_path / "c.pt")


@dataclass
class TensorV3:
    """_rebuild_tensor_v3: the element type given apart from the storage (torch >= 2.1 writes it for
    dtypes that have no typed storage)."""

    storage: Any
    dtype: Any

    def __reduce__(self) -> tuple:
        args = (self.storage, 0, (2,), (1,), False, OrderedDict(), self.dtype)
        return (torch._utils._rebuild_tensor_v3, args)


def test_a_tensor_with_its_own_element_type_loads(tmp_path: Path) -> None:
    untyped = Storage("0", "UntypedStorage", floats(1.5, -2.0))
    path = write_zip(tmp_path / "c.pt", {"w": TensorV3(untyped, torch.float32)}, [untyped])
    loaded = load_checkpoint(path)["w"]
    assert loaded.dtype == torch.float32 and loaded.tolist() == [1.5, -2.0]
    bad = write_zip(tmp_path / "b.pt", {"w": TensorV3(untyped, "float32")}, [untyped])
    with pytest.raises(DamagedCheckpointError, match="element type is not a torch dtype"):
        load_checkpoint(bad)


def test_tensor_attributes_in_a_one_tuple_are_not_names(tmp_path: Path) -> None:
    storage = _storage()
    obj = {"p": WithState(Tensor(storage, (2,)), False, ({"note": 1},))}
    with pytest.raises(DamagedCheckpointError, match="not a dict of names"):
        load_checkpoint(write_zip(tmp_path / "c.pt", obj, [storage]))


def test_an_encrypted_member_is_named(tmp_path: Path) -> None:
    storage = _storage()
    path = write_zip(tmp_path / "c.pt", {"w": Tensor(storage, (2,))}, [storage])
    data = bytearray(path.read_bytes())
    entry = data.index(b"PK\x01\x02")  # the first central directory entry: archive/data.pkl
    data[entry + 8] |= 0x1  # its general purpose flags: encrypted
    path.write_bytes(bytes(data))
    with pytest.raises(DamagedCheckpointError, match="archive/data.pkl is encrypted"):
        load_checkpoint(path)


def test_a_pickled_module_in_a_legacy_file_is_unsafe(tmp_path: Path) -> None:
    """torch.save(model) of torch < 1.6 writes a module's source as ('module', class, file, source)."""

    class Module(pickle.Pickler):
        def persistent_id(self, obj: object) -> object:
            return ("module", int, "model.py", "class Model: ...") if obj == "REF" else None

    buffer = io.BytesIO()
    Module(buffer, protocol=2).dump({"model": "REF"})
    path = write_legacy(tmp_path / "c.pt", None, [], object_pkl=buffer.getvalue())
    with pytest.raises(UnsafeCheckpointError, match="a pickled nn.Module"):
        load_checkpoint(path)


def test_a_legacy_file_cut_inside_its_data_says_how_many_bytes_its_tensors_need(tmp_path: Path) -> None:
    storage = Storage("0", "FloatStorage", floats(1, 2, 3, 4))
    data = write_legacy(tmp_path / "c.pt", {"w": Tensor(storage, (4,))}, [storage]).read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[:-3])
    with pytest.raises(DamagedCheckpointError, match=r"\(the 24 bytes its tensors need\)"):  # 8 + 4 x 4
        load_checkpoint(tmp_path / "cut.pt")


# --- archives and legacy heads that lie ----------------------------------------------------------


def test_an_archive_naming_a_member_twice_is_damaged(tmp_path: Path) -> None:
    import warnings

    storage = _storage()
    path = write_zip(tmp_path / "c.pt", {"w": Tensor(storage, (2,))}, [storage])
    with warnings.catch_warnings(), zipfile.ZipFile(path, "a") as zf:
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate it is asked to write
        zf.writestr("archive/data/0", floats(7, 8))
    with pytest.raises(DamagedCheckpointError, match="the archive names a member twice"):
        load_checkpoint(path)


def test_an_archive_with_two_pickles_is_damaged(tmp_path: Path) -> None:
    storage = _storage()
    path = write_zip(tmp_path / "c.pt", {"w": Tensor(storage, (2,))}, [storage])
    with zipfile.ZipFile(path, "a") as zf:
        zf.writestr("other/data.pkl", pickle.dumps({"w": 1}, 2))
    with pytest.raises(DamagedCheckpointError, match="no single <name>/data.pkl"):
        load_checkpoint(path)


def test_a_legacy_view_of_four_fields_is_damaged(tmp_path: Path) -> None:
    root = Storage("0", "FloatStorage", floats(1, 2, 3, 4, 5))
    viewed = Storage("0", "FloatStorage", floats(1, 2, 3, 4, 5), view=("v", 1, 2, 9))
    path = write_legacy(tmp_path / "c.pt", {"all": Tensor(root, (5,)), "v": Tensor(viewed, (2,))}, [root])
    with pytest.raises(DamagedCheckpointError, match=r"a storage view that is not \(key, offset, size\)"):
        load_checkpoint(path)


@pytest.mark.parametrize("magic", [LEGACY_MAGIC + 1, 0, "x"])
def test_a_legacy_reader_checks_the_magic_number_itself(tmp_path: Path, magic: Any) -> None:
    """load_checkpoint recognises the format by its magic number first; the reader (also behind
    outline and the TorchScript check) does not rely on that."""
    from ffclip.engine.checkpoints.torchfile import read_legacy, read_legacy_pickle
    from ffclip.engine.checkpoints.unpickler import RestrictedUnpickler

    storage = _storage()
    data = write_legacy(tmp_path / "c.pt", {"w": Tensor(storage, (2,))}, [storage]).read_bytes()
    (tmp_path / "m.pt").write_bytes(data.replace(pickle.dumps(LEGACY_MAGIC, 2), pickle.dumps(magic, 2), 1))
    for read in (read_legacy, lambda path: read_legacy_pickle(path, RestrictedUnpickler)):
        with pytest.raises(DamagedCheckpointError, match="its magic number is wrong"):
            read(tmp_path / "m.pt")
    assert read_legacy(tmp_path / "c.pt")["w"].tolist() == [1.5, -2.0]


def test_the_old_module_name_torch_tensor_is_read_as_torch_tensor(tmp_path: Path) -> None:
    """torch < 1.8 named `torch._tensor` `torch.tensor`; torch.load maps the old name, and so do we
    (compared by value: a name decoded from a pickle is not interned)."""
    storage = _storage()
    obj = {"w": FromType(torch._utils._rebuild_tensor_v2, torch.Tensor, _v2_args(storage))}
    data = pickle_bytes(obj).replace(b"torch._tensor\n", b"torch.tensor\n")
    assert b"ctorch.tensor\n_rebuild_from_type_v2" in data
    path = write_zip(tmp_path / "c.pt", None, [storage], data_pkl=data)
    assert load_checkpoint(path)["w"].tolist() == [1.5, -2.0]
