"""Edges of the checkpoint loader found by mutation testing (tools/mutate.py, docs/testing.md):
safetensors files (how CLIP arrives), old tar checkpoints, the text and HTML sniffing at the sample's
boundaries, and reading configuration placeholders that are cyclic, deep or stateless.
"""

from __future__ import annotations

import argparse
import io
import pickle
import struct
import tarfile
import tracemalloc
import zipfile
import zlib
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from ffclip.engine.checkpoints import CheckpointError, load_checkpoint, safe_load, to_plain
from ffclip.engine.checkpoints.errors import DamagedCheckpointError
from ffclip.engine.checkpoints.safe_load import (
    HEAD_BYTES,
    inert_class,
    load_any,
    safe_pickle_loads,
    safetensors_shapes,
    sniff,
)

# --- safetensors ---------------------------------------------------------------------------------


@pytest.fixture
def tensors_file(tmp_path: Path) -> Path:
    path = tmp_path / "open_clip_model.safetensors"
    save_file({"a": torch.arange(6.0).reshape(3, 2), "b": torch.ones(4, dtype=torch.int64)}, str(path))
    return path


def test_a_safetensors_file_is_recognised_and_loaded(tensors_file: Path) -> None:
    assert sniff(tensors_file) == "safetensors"
    loaded = load_any(tensors_file)
    assert set(loaded) == {"a", "b"} and torch.equal(loaded["a"], torch.arange(6.0).reshape(3, 2))
    assert safetensors_shapes(tensors_file) == {"a": (3, 2), "b": (4,)}


def test_a_safetensors_file_without_tensors_has_no_shapes(tmp_path: Path) -> None:
    path = tmp_path / "empty.safetensors"
    save_file({}, str(path), metadata={"format": "pt"})
    assert sniff(path) == "safetensors" and safetensors_shapes(path) == {}


def test_a_safetensors_file_must_be_as_long_as_its_header_says(tensors_file: Path, tmp_path: Path) -> None:
    data = tensors_file.read_bytes()
    short, long = tmp_path / "short.safetensors", tmp_path / "long.safetensors"
    short.write_bytes(data[:-4])
    long.write_bytes(data + bytes(16))
    with pytest.raises(CheckpointError, match="is truncated"):
        safetensors_shapes(short)
    with pytest.raises(CheckpointError, match="has 16 bytes after the data"):
        safetensors_shapes(long)
    for path in (short, long):  # what loading says too (safetensors refuses both)
        with pytest.raises(CheckpointError, match="corrupt or truncated safetensors"):
            load_any(path)


@pytest.mark.parametrize(
    "header",
    [b'{"a": {"dtype": "F32", "shape": [1]}}', b'{"a": 5}', b'{"a": {"dtype": "F32", "data_offsets": [0]}}', b"{oops"],
)
def test_an_unreadable_safetensors_header_is_named(tmp_path: Path, header: bytes) -> None:
    path = tmp_path / "bad.safetensors"
    path.write_bytes(len(header).to_bytes(8, "little") + header + bytes(8))
    assert sniff(path) == "safetensors"
    with pytest.raises(CheckpointError, match="unreadable safetensors header"):
        safetensors_shapes(path)


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        ((2).to_bytes(8, "little") + b"{}", "safetensors"),  # the smallest header
        ((1).to_bytes(8, "little") + b"{ ", "not a PyTorch checkpoint"),  # too short to be a header
        ((2).to_bytes(8, "little") + b"[]", "not a PyTorch checkpoint"),  # not a JSON object
        ((40).to_bytes(8, "little") + b"{}", "not a PyTorch checkpoint"),  # longer than the file
        (b"\x02\x00\x00\x00\x00\x00\x00\x00{", "not a PyTorch checkpoint"),  # 9 bytes: too short
    ],
)
def test_safetensors_sniffing_checks_the_header_length(tmp_path: Path, head: bytes, expected: str) -> None:
    path = tmp_path / "x.bin"
    path.write_bytes(head)
    if expected == "safetensors":
        assert sniff(path) == "safetensors"
    else:
        with pytest.raises(CheckpointError, match=expected):
            sniff(path)


# --- other formats and sniffing ------------------------------------------------------------------


def test_an_old_tar_checkpoint_is_recognised(tmp_path: Path) -> None:
    path = tmp_path / "old.pt"
    with tarfile.open(path, "w") as tar:
        info = tarfile.TarInfo("sys_info")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"abc"))
    assert sniff(path) == "tar"


def test_text_whose_sample_ends_inside_a_character_is_text(tmp_path: Path) -> None:
    """The sniffer reads 4096 bytes; a file of 3-byte characters is cut inside one there."""
    path = tmp_path / "notes.pt"
    path.write_text("checkpoint notes: " + "中文" * 2000 + "\n", encoding="utf-8")
    assert (HEAD_BYTES - len(b"checkpoint notes: ")) % 3 != 0  # the cut falls inside a character
    with pytest.raises(CheckpointError, match="is a text file"):
        load_checkpoint(path)


def test_an_html_page_after_a_kibibyte_of_blank_lines_is_named(tmp_path: Path) -> None:
    """Leading blank lines (up to 1 KiB) do not hide a Google Drive page."""
    path = tmp_path / "e4e_ffhq_encode.pt"
    path.write_bytes(b"\n" * 1010 + b"<!DOCTYPE html><head><title>Google Drive</title></head>")
    with pytest.raises(CheckpointError, match="is an HTML page titled 'Google Drive'"):
        load_checkpoint(path)


# --- configuration placeholders read back --------------------------------------------------------


def _nesting(obj: object) -> int:
    depth = 0
    while isinstance(obj, dict | list):
        obj = next(iter(obj.values())) if isinstance(obj, dict) else obj[0]
        depth += 1
    assert obj == "..."
    return depth


def test_cyclic_configurations_are_cut_at_depth_50() -> None:
    """A pickle can build cycles (memo references); reading them back must end: 50 levels of
    recursion, each container one level, each placeholder or DictConfig wrapper one more."""
    cyclic: dict = {}
    cyclic["self"] = cyclic
    assert _nesting(to_plain(cyclic)) == 51
    looped: list = []
    looped.append(looped)
    assert _nesting(to_plain(looped)) == 51
    node = inert_class("omegaconf.dictconfig", "DictConfig")()
    node.__setstate__({"_content": {"child": node}})
    assert _nesting(to_plain(node)) == 25
    value = inert_class("omegaconf.nodes", "AnyNode")()
    value.__setstate__({"_val": [value]})
    assert _nesting(to_plain(value)) == 25
    namespace = inert_class("argparse", "Namespace")()
    namespace.__setstate__({"inner": namespace})
    assert _nesting(to_plain(namespace)) == 25
    wrapped: dict = {"_metadata": None}
    wrapped["_content"] = {"again": wrapped}
    assert _nesting(to_plain(wrapped)) == 25


def test_a_placeholder_without_state_reads_as_its_name() -> None:
    bare = inert_class("yacs.config", "CfgNode")()
    assert to_plain(bare) == "<inert yacs.config.CfgNode>"
    listed = inert_class("omegaconf.listconfig", "ListConfig")()
    listed.__setstate__([{"_content": [1, 2]}, None])  # a list, not the (dict, slots) pair
    assert to_plain(listed) == "<inert omegaconf.listconfig.ListConfig>"
    paired = inert_class("omegaconf.listconfig", "ListConfig")()
    paired.__setstate__(({"_content": [1, 2]}, {"slot": 1}))
    assert to_plain(paired) == [1, 2]


# --- corrupt files: always a CheckpointError -----------------------------------------------------

# What the parsers raise on randomly corrupted files (the fuzz test below and tools/fuzz find them).
# Not MemoryError: the readers check every size against the file before allocating, so running out
# of memory says nothing about the file (tools/fuzz counts it as an escape, to be fixed at its cause).
LOADER_ERRORS = [
    EOFError("x"),
    pickle.UnpicklingError("x"),
    RuntimeError("x"),
    OSError("x"),
    ValueError("x"),
    UnicodeDecodeError("utf-8", b"\xff", 0, 1, "x"),
    struct.error("x"),
    KeyError("x"),
    AttributeError("x"),
    TypeError("x"),
    IndexError("x"),
    OverflowError("x"),
    NotImplementedError("x"),
    zipfile.BadZipFile("x"),
    zlib.error("x"),
]


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
@pytest.mark.parametrize("error", LOADER_ERRORS, ids=lambda e: type(e).__name__)
def test_every_error_of_the_loader_becomes_a_checkpoint_error(tmp_path: Path, monkeypatch, error, legacy) -> None:
    path = tmp_path / "c.pt"
    torch.save({"w": torch.zeros(2)}, path, _use_new_zipfile_serialization=not legacy)

    def broken(*args, **kwargs):
        raise error

    monkeypatch.setattr(safe_load, "read_legacy" if legacy else "read_zip", broken)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert type(info.value) is DamagedCheckpointError
    message = str(info.value)
    assert message.startswith(f"{path} is damaged (truncated or corrupt): {type(error).__name__}")
    assert "ffclip-engine models fetch" in message


def _checkpoint_bytes(legacy: bool) -> bytes:
    buf = io.BytesIO()
    ckpt = {"w": torch.arange(12.0).reshape(4, 3), "opts": argparse.Namespace(size=256, lr=[0.1, 0.2]), "n": 3}
    torch.save(ckpt, buf, _use_new_zipfile_serialization=not legacy)
    return buf.getvalue()


CHECKPOINTS = {legacy: _checkpoint_bytes(legacy) for legacy in (False, True)}


@given(
    legacy=st.booleans(),
    edits=st.lists(st.tuples(st.floats(0.0, 1.0, exclude_max=True), st.integers(0, 255)), min_size=1, max_size=4),
)
@settings(max_examples=150)
def test_a_corrupted_checkpoint_loads_or_is_refused_in_words(tmp_path_factory, legacy: bool, edits) -> None:
    """Random bytes changed anywhere in a zip or legacy file: a dict, or a CheckpointError; never a
    traceback of another type, and never anything run."""
    data = bytearray(CHECKPOINTS[legacy])
    for where, value in edits:
        data[int(where * len(data))] = value
    path = tmp_path_factory.mktemp("fuzz") / "c.pt"
    path.write_bytes(bytes(data))
    try:
        out = load_checkpoint(path)
    except CheckpointError as exc:
        assert str(path) in str(exc)
    else:
        assert isinstance(out, dict)


def test_a_huge_memo_index_does_not_allocate_memory() -> None:
    """LONG_BINPUT with index 2**26: the C unpickler grows its memo array to 1 GiB (2**32: tens of GB,
    a corrupt checkpoint that takes the machine down); the loader's memo is a dict."""
    payload = b"\x80\x02}r" + (1 << 26).to_bytes(4, "little") + b"."
    tracemalloc.start()
    try:
        assert safe_pickle_loads(payload) == {}
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20, f"{peak >> 20} MiB allocated"
