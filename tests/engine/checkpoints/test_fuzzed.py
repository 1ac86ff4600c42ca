"""Damaged and hostile checkpoint files: every one is a CheckpointError that names the file (damaged,
with what to do; or unsafe, nothing run), never another exception, never code run, never an
allocation the file's own size does not cover. Seeded fuzz runs (tools/fuzz) over both torch formats
and the TorchScript reader, and one hand-made file for each lie the loader must catch."""

from __future__ import annotations

import argparse
import io
import pickle
import struct
import subprocess
import sys
import tracemalloc
import zipfile
import zlib
from collections import OrderedDict
from pathlib import Path

import pytest
import torch

from ffclip.app.cli import main
from ffclip.engine.checkpoints import CheckpointError, UnsafeCheckpointError, load_checkpoint, to_plain
from ffclip.engine.checkpoints.errors import DamagedCheckpointError
from ffclip.engine.checkpoints.safe_load import outline
from ffclip.engine.checkpoints.unpickler import restricted_loads
from tests.support.torch_files import Call, Storage, Tensor, floats, pickle_bytes, write_legacy, write_zip
from tools.fuzz import runner, seeds, targets  # noqa: E402

FORMATS = ["zip", "legacy"]


def _write(fmt: str, path: Path, obj: object, storages: list[Storage], **kw) -> Path:
    return (write_legacy if fmt == "legacy" else write_zip)(path, obj, storages, **kw)


def _damaged(path: Path, match: str) -> DamagedCheckpointError:
    with pytest.raises(DamagedCheckpointError, match=match) as err:
        load_checkpoint(path)
    message = str(err.value)
    assert message.startswith(f"{path} is damaged (truncated or corrupt): ")
    assert "ffclip-engine models fetch" in message and "ffclip-engine models verify" in message
    return err.value


def _peak(fn) -> int:
    """Peak bytes Python allocated while fn ran (every buffer the loader sizes from the file is a
    bytearray: traced)."""
    tracemalloc.start()
    try:
        fn()
    except CheckpointError:
        pass
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


# --------------------------------------------------------------------------- seeded fuzz runs


@pytest.mark.parametrize("target", [targets.CheckpointTarget(legacy=False), targets.CheckpointTarget(legacy=True)])
def test_fuzzed_checkpoints_are_loaded_or_refused_never_escape(target, tmp_path: Path) -> None:
    with runner.address_space_limit(3 << 30):
        report = runner.run(target, 300, seed=18, workdir=tmp_path)
    assert report.escapes == [] and report.executed == [], report.escapes[:3]
    assert report.over_budget == []  # peak memory of each mutant <= 2x its size + 64 KiB (Linux)
    assert report.large_ratio <= 2.0  # mutants of 64 KiB or more: <= 2x, bookkeeping included
    # the mutants reach every kind of outcome: they are not all turned away at the door
    assert report.outcomes["damaged"] > 100 and report.outcomes["unsafe"] > 20 and report.outcomes["ok"] > 20


def test_fuzzed_torchscript_archives_are_read_or_refused_never_escape(tmp_path: Path) -> None:
    report = runner.run(targets.TorchScriptTarget(), 150, seed=18, workdir=tmp_path)
    assert report.escapes == [] and report.executed == [], report.escapes[:3]
    assert report.outcomes["damaged"] > 50 and report.outcomes["unsafe"] > 5 and report.outcomes["ok"] > 10


# --------------------------------------------------------------------------- sound files read as torch.load


def _same(a: object, b: object) -> None:
    assert type(a) is type(b), (type(a), type(b))
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape and a.stride() == b.stride()
        assert a.storage_offset() == b.storage_offset() and a.requires_grad == b.requires_grad
        assert torch.equal(a, b)
    elif isinstance(a, dict):
        assert list(a) == list(b)
        assert getattr(a, "_metadata", None) == getattr(b, "_metadata", None)
        for key in a:
            _same(a[key], b[key])
    elif isinstance(a, list | tuple):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _same(x, y)
    elif not isinstance(a, argparse.Namespace):
        assert a == b


@pytest.mark.parametrize("fmt", FORMATS)
def test_sound_checkpoint_is_what_torch_load_gives(tmp_path: Path, fmt: str) -> None:
    obj = seeds.checkpoint_object(64 << 10)
    path = tmp_path / "c.pt"
    path.write_bytes(seeds.torch_bytes(obj, legacy=fmt == "legacy"))
    ours = load_checkpoint(path)
    theirs = torch.load(path, weights_only=False)  # our own file: safe to unpickle
    for key in ("state_dict", "latent_avg", "param", "step", "meta"):
        _same(ours[key], theirs[key])
    assert to_plain(ours["opts"]) == vars(theirs["opts"])  # argparse.Namespace, never imported
    sd = ours["state_dict"]  # views of one storage share memory, as torch.load's do
    assert sd["weight"].untyped_storage().data_ptr() == sd["bias"].untyped_storage().data_ptr()
    assert isinstance(ours["param"], torch.nn.Parameter) and ours["param"].requires_grad


@pytest.mark.parametrize("fmt", FORMATS)
def test_loading_holds_no_more_than_the_file(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / "c.pt"
    path.write_bytes(seeds.torch_bytes(seeds.checkpoint_object(4 << 20), legacy=fmt == "legacy"))
    assert _peak(lambda: load_checkpoint(path)) < 1.2 * path.stat().st_size


# --------------------------------------------------------------------------- one lie at a time


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_storage_claiming_more_elements_than_the_file_holds_is_damaged_before_allocation(
    tmp_path: Path, fmt: str
) -> None:
    storage = Storage("0", "FloatStorage", floats(1, 2, 3, 4), numel=1 << 40)  # 4 TB of float32
    path = _write(fmt, tmp_path / "c.pt", {"w": Tensor(storage, (4,))}, [storage])
    assert _peak(lambda: _damaged(path, "storage|data/0")) < 1 << 20


def test_a_zip_storage_whose_member_is_shorter_than_its_elements_is_damaged(tmp_path: Path) -> None:
    storage = Storage("0", "FloatStorage", floats(1, 2, 3), numel=4)
    path = write_zip(tmp_path / "c.pt", {"w": Tensor(storage, (4,))}, [storage])
    _damaged(path, r"data/0 holds 12 bytes; 4 FloatStorage elements need 16")


def test_a_zip_member_reaching_beyond_the_file_is_damaged(tmp_path: Path) -> None:
    storage = Storage("0", "FloatStorage", floats(*range(256)))
    path = write_zip(tmp_path / "c.pt", {"w": Tensor(storage, (256,))}, [storage])
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        entry = zf.start_dir  # the central directory: one entry per member, name at +46
    while data[entry + 46 : entry + 46 + 14] != b"archive/data/0":
        entry = data.index(b"PK\x01\x02", entry + 4)
    data[entry + 20 : entry + 28] = (0xFFFFFFF0).to_bytes(4, "little") * 2  # both sizes: 4 GB
    path.write_bytes(bytes(data))
    assert _peak(lambda: _damaged(path, "ends beyond the file")) < 1 << 20


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("pid", ["not a tuple", ("storage",), ("module", int, "src", "src"), ("other", 1, 2, 3, 4, 5)])
def test_a_reference_that_is_not_a_storage_is_damaged_not_an_assertion(tmp_path: Path, fmt: str, pid) -> None:
    class Bad(pickle.Pickler):
        def persistent_id(self, obj: object) -> object:
            return pid if obj == "REF" else None

    buffer = io.BytesIO()
    Bad(buffer, protocol=2).dump({"w": "REF"})
    path = tmp_path / "c.pt"
    kw = {"object_pkl": buffer.getvalue()} if fmt == "legacy" else {"data_pkl": buffer.getvalue()}
    _write(fmt, path, None, [], **kw)
    with pytest.raises(CheckpointError) as err:  # ('module', ...) is refused as unsafe
        load_checkpoint(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_storage_the_archive_lacks_is_damaged(tmp_path: Path, fmt: str) -> None:
    named, present = Storage("7", "FloatStorage", floats(1, 2)), Storage("0", "FloatStorage", floats(1, 2))
    path = _write(fmt, tmp_path / "c.pt", {"w": Tensor(named, (2,))}, [present])
    _damaged(path, "lacks archive/data/7" if fmt == "zip" else "storages")


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize(
    ("size", "stride", "offset"),
    [((5,), (1,), 0), ((2, 2), (1, 3), 0), ((2,), (1,), 3), ((1 << 62, 4), (4, 1), 0), ((2,), (-1,), 1)],
)
def test_a_tensor_reaching_outside_its_storage_is_damaged(tmp_path: Path, fmt: str, size, stride, offset) -> None:
    storage = Storage("0", "FloatStorage", floats(1, 2, 3, 4))
    path = _write(fmt, tmp_path / "c.pt", {"w": Tensor(storage, size, stride, offset)}, [storage])
    _damaged(path, "tensor")


def test_legacy_storage_counts_and_trailing_bytes_must_agree_with_the_pickle(tmp_path: Path) -> None:
    storage = Storage("0", "FloatStorage", floats(1, 2, 3, 4))
    obj = {"w": Tensor(storage, (4,))}
    path = write_legacy(tmp_path / "c.pt", obj, [storage], trailing=b"\x00")
    _damaged(path, "goes on after its last storage")
    data = write_legacy(tmp_path / "d.pt", obj, [storage]).read_bytes()
    cut = tmp_path / "cut.pt"
    cut.write_bytes(data[:-3])
    _damaged(cut, "ends inside its storages' data")  # the key list now runs into the bytes they need
    path = write_legacy(tmp_path / "e.pt", obj, [storage], keys=["0", "0"])
    _damaged(path, "key list")


def test_bit_rot_in_a_zip_storage_is_caught_by_its_crc(tmp_path: Path) -> None:
    storage = Storage("0", "FloatStorage", floats(*range(64)))
    path = write_zip(tmp_path / "c.pt", {"w": Tensor(storage, (64,))}, [storage])
    data = bytearray(path.read_bytes())
    data[data.index(floats(*range(64))) + 100] ^= 0x10
    path.write_bytes(bytes(data))
    _damaged(path, "CRC")


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_pickle_length_beyond_the_file_allocates_nothing(tmp_path: Path, fmt: str) -> None:
    # BINBYTES8 claiming 2**40 bytes: the C unpickler allocates that much before reading
    hostile = b"\x80\x04\x8e" + (1 << 40).to_bytes(8, "little") + b"abc"
    path = tmp_path / "c.pt"
    _write(fmt, path, None, [], **({"object_pkl": hostile} if fmt == "legacy" else {"data_pkl": hostile}))
    assert _peak(lambda: _damaged(path, r"a bytes value of 1099511627776 bytes where \d+ are left")) < 1 << 20


@pytest.mark.parametrize("claim", ["2**31-1", "the rest of the file"])
@pytest.mark.parametrize("fmt", FORMATS)
def test_a_lying_length_after_a_storage_is_refused_before_reading(tmp_path: Path, fmt: str, claim: str) -> None:
    """A text length hit after a tensor's storage was allocated (a legacy file's 1 MB buffer): the
    length is checked before anything is read against what the pickle has left, which excludes
    the data promised to the storages, so the loader does not also read the rest of the file
    (tools/fuzz checkpoint-legacy seed 18 #186: 2.03x the file's size; seed 0 #7945: a length
    within the file that swept up the storage's data, 2.04x)."""
    storage = Storage("0", "FloatStorage", bytes(1 << 20))
    placeholder = "PLACEHOLDER-TEXT"
    raw = pickle_bytes({"w": Tensor(storage, (1 << 18,)), "s": placeholder}, legacy=fmt == "legacy")
    counted = b"X" + len(placeholder).to_bytes(4, "little") + placeholder.encode()
    at = raw.index(counted)
    rest = len(raw) - at - 5 + len(pickle.dumps(["0"], 2)) + 8 + len(storage.data)  # legacy: to the file's end
    length = 2**31 - 1 if claim == "2**31-1" else rest
    hostile = raw[:at] + b"X" + length.to_bytes(4, "little") + raw[at + 5 :]
    path = tmp_path / "c.pt"
    _write(fmt, path, None, [storage], **({"object_pkl": hostile} if fmt == "legacy" else {"data_pkl": hostile}))
    peak = _peak(lambda: _damaged(path, rf"a text value of {length} bytes where \d+ are left"))
    assert peak < 1.5 * path.stat().st_size


def test_a_frame_longer_than_the_pickle_is_refused_before_reading(tmp_path: Path) -> None:
    hostile = b"\x80\x04\x95" + (1 << 40).to_bytes(8, "little") + b"}."
    path = write_zip(tmp_path / "c.pt", None, [], data_pkl=hostile)
    assert _peak(lambda: _damaged(path, r"a length of 1099511627776 bytes where \d+ are left")) < 1 << 20


def test_a_protocol_0_line_without_its_end_is_refused_after_64_kib(tmp_path: Path) -> None:
    hostile = b"V" + b"a" * (1 << 20)  # UNICODE: text up to the newline, which never comes
    path = write_zip(tmp_path / "c.pt", None, [], data_pkl=hostile)
    _damaged(path, "a text line of more than 65536 bytes")
    assert restricted_loads(b"Vshort text\np0\n.") == "short text"  # protocol-0 pickles still load


@pytest.mark.parametrize("size", [10, 100_000])
def test_protocol_4_frames_and_large_values_outside_them_still_load(size: int) -> None:
    value = {"text": "t" * size, "data": b"d" * size, "n": list(range(50))}
    assert restricted_loads(pickle.dumps(value, protocol=4)) == value
    assert restricted_loads(pickle.dumps(value, protocol=5)) == value


def _local_header(name: str, data: bytes) -> bytes:
    n, crc, size = name.encode(), zlib.crc32(data), len(data)
    return struct.pack("<4s5H3I2H", b"PK\x03\x04", 20, 0, 0, 0, 0x21, crc, size, size, len(n), 0) + n


def _directory_entry(name: str, data: bytes, offset: int) -> bytes:
    n, crc, size = name.encode(), zlib.crc32(data), len(data)
    fields = (20, 20, 0, 0, 0, 0x21, crc, size, size, len(n), 0, 0, 0, 0, 0, offset)
    return struct.pack("<4s6H3I5H2I", b"PK\x01\x02", *fields) + n


def nested_zip(path: Path, levels: int, inner: bytes) -> Path:
    """A torch zip whose storage members nest: storage k's data holds storage k+1's local header and
    data, each with a correct CRC (an overlapping-member zip bomb: `levels` x the file's size to read)."""
    datas = [inner]
    for k in range(levels - 1, 0, -1):
        datas.insert(0, _local_header(f"archive/data/{k}", datas[0]) + datas[0])
    obj = {f"w{k}": Tensor(Storage(str(k), "FloatStorage", d), (len(d) // 4,)) for k, d in enumerate(datas)}
    body, entries = b"", []
    small = {"archive/data.pkl": pickle_bytes(obj), "archive/byteorder": b"little", "archive/version": b"3\n"}
    for name, data in small.items():
        entries.append(_directory_entry(name, data, len(body)))
        body += _local_header(name, data) + data
    offset = len(body)
    body += _local_header("archive/data/0", datas[0]) + datas[0]
    header = len(_local_header("archive/data/0", b""))
    entries += [_directory_entry(f"archive/data/{k}", d, offset + header * k) for k, d in enumerate(datas)]
    central = b"".join(entries)
    end = struct.pack("<4s4H2IH", b"PK\x05\x06", 0, 0, len(entries), len(entries), len(central), len(body), 0)
    path.write_bytes(body + central + end)
    return path


def test_members_that_overlap_cannot_read_the_file_twice(tmp_path: Path) -> None:
    """Every member lies inside the file, every CRC is right, yet reading them all would cost ten
    times the file: the storages' bytes are charged to a budget of the file's size."""
    path = nested_zip(tmp_path / "c.pt", 10, bytes(100_000))
    assert _peak(lambda: _damaged(path, r"archive/data/1 needs \d+ bytes, but the file")) < 2 * path.stat().st_size


def test_text_whose_length_sweeps_up_the_tensor_data_costs_no_more_than_the_file(tmp_path: Path) -> None:
    # a legacy pickle's text length hit by a flipped bit claims the megabyte of storages after it;
    # decoding that as UTF-8 in one go allocates the output and copies the input into the error
    storage = Storage(
        "0", "FloatStorage", torch.randn(1 << 18, generator=torch.Generator().manual_seed(0)).numpy().tobytes()
    )
    rest = len(pickle.dumps(["0"], 2)) + 8 + len(storage.data)  # the key list, then the storage
    hostile = b"\x80\x02X" + rest.to_bytes(4, "little")
    path = write_legacy(tmp_path / "c.pt", None, [storage], object_pkl=hostile)
    assert _peak(lambda: _damaged(path, "UnicodeDecodeError")) < 1.2 * path.stat().st_size


HUGE_CALLS = {
    "bytes": Call(bytes, (1 << 40,)),
    "bytearray": Call(bytearray, (1 << 40,)),
    "list-range": Call(list, (range(1 << 40),)),
    "torch.Tensor": Call(torch.Tensor, (1 << 20, 1 << 20)),
}


@pytest.mark.parametrize("name", list(HUGE_CALLS))
def test_allowed_callables_cannot_be_asked_for_any_amount_of_memory(tmp_path: Path, name: str) -> None:
    path = write_zip(tmp_path / "c.pt", {"opts": HUGE_CALLS[name]}, [])
    with pytest.raises(UnsafeCheckpointError, match=str(path)):
        load_checkpoint(path)
    assert _peak(lambda: load_checkpoint(path)) < 1 << 20


@pytest.mark.process
def test_a_tuple_nested_a_million_deep_is_damaged_not_a_crash(tmp_path: Path) -> None:
    # a dict key hashes its tuple recursively in C: a million levels crash CPython outright
    hostile = b"\x80\x02}(" + b")" + b"\x85" * 1_000_000 + b"K\x01u."
    path = write_zip(tmp_path / "c.pt", None, [], data_pkl=hostile)
    code = f"from ffclip.engine.checkpoints import load_checkpoint\nload_checkpoint({str(path)!r})"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and "DamagedCheckpointError" in done.stderr and "nested" in done.stderr


def test_pickles_cannot_reach_shared_objects(tmp_path: Path) -> None:
    # BUILD on torch.float32 would set an attribute of the dtype itself; SETITEM on the dict type
    # would write into a class; APPENDS on a tensor would call its methods
    hostile = [
        b"\x80\x02ctorch\nfloat32\n}X\x01\x00\x00\x00aK\x01sb.",
        b"\x80\x02c__builtin__\ndict\nK\x00K\x01s.",
        b"\x80\x02ctorch\nSize\n)R(K\x01e.",
    ]
    for i, data in enumerate(hostile):
        path = write_zip(tmp_path / f"c{i}.pt", None, [], data_pkl=data)
        with pytest.raises(DamagedCheckpointError, match="BUILD|SETITEM|APPENDS"):
            load_checkpoint(path)
    assert "a" not in dir(torch.float32)


def test_big_endian_files_are_refused_by_name(tmp_path: Path) -> None:
    storage = Storage("0", "FloatStorage", floats(1, 2))
    path = write_zip(tmp_path / "c.pt", {"w": Tensor(storage, (2,))}, [storage], byteorder="big")
    _damaged(path, "big-endian")
    info = {"protocol_version": 1001, "little_endian": False, "type_sizes": {}}
    _damaged(write_legacy(tmp_path / "d.pt", {"w": Tensor(storage, (2,))}, [storage], sys_info=info), "big-endian")


def test_outline_refuses_what_the_loader_refuses(tmp_path: Path) -> None:
    hostile = b"\x80\x04\x8e" + (1 << 40).to_bytes(8, "little") + b"abc"
    path = write_legacy(tmp_path / "c.pt", None, [], object_pkl=hostile)
    with pytest.raises(DamagedCheckpointError, match=str(path)):
        outline(path)
    storage = Storage("0", "FloatStorage", floats(1, 2), numel=1 << 40)
    shapes = outline(write_zip(tmp_path / "d.pt", {"w": Tensor(storage, (1 << 40,))}, [storage]))
    assert shapes["w"].shape == (1 << 40,)  # the outline reads no storage: nothing to allocate


# --------------------------------------------------------------------------- what the user sees


def test_models_import_of_a_damaged_file_says_so_without_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    storage = Storage("0", "FloatStorage", floats(1, 2), numel=1 << 40)
    path = write_legacy(tmp_path / "e4e_ffhq_encode.pt", {"w": Tensor(storage, (2,))}, [storage])
    assert main(["models", "import", str(path), "--models", str(tmp_path / "store")]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"import refused: {path} is damaged (truncated or corrupt): storage 0 needs")
    assert "Traceback" not in err and "ffclip-engine models fetch NAME" in err


def test_verify_names_the_model_to_fetch_again(tmp_path: Path, official_bytes: dict[str, bytes]) -> None:
    from ffclip.engine.store import ModelStore

    store = ModelStore(tmp_path)
    path = store.path("e4e")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(official_bytes["e4e"][:-5000])  # an interrupted download
    result = store.verify("e4e")
    assert result.status == "invalid" and "is damaged" in result.message
    assert f"`ffclip-engine models fetch --models {tmp_path} e4e`" in result.message


def test_pickled_state_is_never_reached_through_torch_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The loader reads files itself: torch.load (which trusts sizes) is never called."""

    def refuse(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("torch.load was called")

    monkeypatch.setattr(torch, "load", refuse)
    for fmt in FORMATS:
        path = tmp_path / f"{fmt}.pt"
        path.write_bytes(seeds.torch_bytes({"w": torch.ones(2), "o": OrderedDict(a=1)}, legacy=fmt == "legacy"))
        assert torch.equal(load_checkpoint(path)["w"], torch.ones(2))
