"""The restricted unpickler: tensors and containers load, configuration objects become inert
placeholders, anything that could run code is refused before it is imported, and files that are
not checkpoints (HTML, text, empty, truncated) are named for what they are."""

from __future__ import annotations

import argparse
import base64
import io
import os
import pickle
import sys
import types
import zipfile
from collections import OrderedDict
from pathlib import Path

import pytest
import torch

from ffclip.engine.checkpoints import CheckpointError, UnsafeCheckpointError, load_checkpoint, to_plain
from ffclip.engine.checkpoints.safe_load import Inert, load_any, safe_pickle_loads, sniff

# pickle.dumps({"opts": vars(OmegaConf.create({...}))}, protocol=2) made with the real omegaconf 2.1.2,
# as FFCLIP's coach stores `opts` (omegaconf itself is not needed, nor installed, to read it)
OMEGACONF_21_PICKLE = "".join(
    [
        "gAJ9cQBYBAAAAG9wdHNxAX1xAihYCQAAAF9tZXRhZGF0YXEDY29tZWdhY29uZi5iYXNlCkNvbnRhaW5lck1ldGFkYXRhCnEE"
        "KYFxBX1xBihYCAAAAHJlZl90eXBlcQdjdHlwaW5nCkFueQpxCFgLAAAAb2JqZWN0X3R5cGVxCU5YCAAAAG9wdGlvbmFscQqI"
        "WAMAAABrZXlxC05YBQAAAGZsYWdzcQx9cQ1YCgAAAGZsYWdzX3Jvb3RxDolYDgAAAHJlc29sdmVyX2NhY2hlcQ9jY29sbGVj"
        "dGlvbnMKZGVmYXVsdGRpY3QKcRBjX19idWlsdGluX18KZGljdApxEYVxElJxE1gIAAAAa2V5X3R5cGVxFGgIWAwAAABlbGVt"
        "ZW50X3R5cGVxFWgIdWJYBwAAAF9wYXJlbnRxFk5YDAAAAF9mbGFnc19jYWNoZXEXTlgIAAAAX2NvbnRlbnRxGH1xGShYBQAA"
        "AHRyYWlucRpjb21lZ2Fjb25mLmRpY3Rjb25maWcKRGljdENvbmZpZwpxGymBcRx9cR0oaANoBCmBcR59cR8oaAdoCGgJTmgK"
        "iGgLaBpoDH1xIGgOiWgPaBBoEYVxIVJxImgUaAhoFWgIdWJoFmgbKYFxI31xJChoA2gEKYFxJX1xJihoB2gIaAlOaAqIaAtO"
        "aAxoDWgOiWgPaBNoFGgIaBVoCHViaBZOaBhoGXViaBh9cScoWAkAAABtYXhfZXBvY2hxKGNvbWVnYWNvbmYubm9kZXMKQW55"
        "Tm9kZQpxKSmBcSp9cSsoaANjb21lZ2Fjb25mLmJhc2UKTWV0YWRhdGEKcSwpgXEtfXEuKGgHaAhoCU5oCohoC2goaAx9cS9o"
        "DoloD2gQaBGFcTBScTF1YmgWaBxYBAAAAF92YWxxMksUdWJYDAAAAGxyX3N0ZXBzX3JlbHEzY29tZWdhY29uZi5saXN0Y29u"
        "ZmlnCkxpc3RDb25maWcKcTQpgXE1fXE2KGgDaAQpgXE3fXE4KGgHaAhoCWNfX2J1aWx0aW5fXwpsaXN0CnE5aAqIaAtoM2gM"
        "fXE6aA6JaA9oEGgRhXE7UnE8aBRjX19idWlsdGluX18KbG9uZwpxPWgVaAh1YmgWaBxoGF1xPihoKSmBcT99cUAoaANoLCmB"
        "cUF9cUIoaAdoCGgJTmgKiGgLSwBoDH1xQ2gOiWgPaBBoEYVxRFJxRXViaBZoNWgyRz/gAAAAAAAAdWJoKSmBcUZ9cUcoaANo"
        "LCmBcUh9cUkoaAdoCGgJTmgKiGgLSwFoDH1xSmgOiWgPaBBoEYVxS1JxTHViaBZoNWgyRz/oAAAAAAAAdWJldWJYDQAAAGxl"
        "YXJuaW5nX3JhdGVxTWgpKYFxTn1xTyhoA2gsKYFxUH1xUShoB2gIaAlOaAqIaAtoTWgMfXFSaA6JaA9oEGgRhXFTUnFUdWJo"
        "FmgcaDJHP0BiTdLxqfx1YnV1YlgJAAAAZ2VuZXJhdG9ycVVoGymBcVZ9cVcoaANoBCmBcVh9cVkoaAdoCGgJTmgKiGgLaFVo"
        "DH1xWmgOiWgPaBBoEYVxW1JxXGgUaAhoFWgIdWJoFmgjaBh9cV0oWAQAAABzaXplcV5oKSmBcV99cWAoaANoLCmBcWF9cWIo"
        "aAdoCGgJTmgKiGgLaF5oDH1xY2gOiWgPaBBoEYVxZFJxZXViaBZoVmgyTQAEdWJYCwAAAGJsdXJfa2VybmVscWZoNCmBcWd9"
        "cWgoaANoBCmBcWl9cWooaAdoCGgJaDloCohoC2hmaAx9cWtoDoloD2gQaBGFcWxScW1oFGg9aBVoCHViaBZoVmgYXXFuKGgp"
        "KYFxb31xcChoA2gsKYFxcX1xcihoB2gIaAlOaAqIaAtLAGgMfXFzaA6JaA9oEGgRhXF0UnF1dWJoFmhnaDJLAXViaCkpgXF2"
        "fXF3KGgDaCwpgXF4fXF5KGgHaAhoCU5oCohoC0sBaAx9cXpoDoloD2gQaBGFcXtScXx1YmgWaGdoMksDdWJoKSmBcX19cX4o"
        "aANoLCmBcX99cYAoaAdoCGgJTmgKiGgLSwJoDH1xgWgOiWgPaBBoEYVxglJxg3ViaBZoZ2gySwN1YmgpKYFxhH1xhShoA2gs"
        "KYFxhn1xhyhoB2gIaAlOaAqIaAtLA2gMfXGIaA6JaA9oEGgRhXGJUnGKdWJoFmhnaDJLAXViZXVidXViWA0AAABwcmV0cmFp"
        "bl9wYXRocYtoKSmBcYx9cY0oaANoLCmBcY59cY8oaAdoCGgJTmgKiGgLaItoDH1xkGgOiWgPaBBoEYVxkVJxknViaBZoI2gy"
        "WAQAAAB4LnB0cZN1YlgGAAAAcmVzdW1lcZRoGymBcZV9cZYoaANoBCmBcZd9cZgoaAdoCGgJTmgKiGgLaJRoDH1xmWgOiWgP"
        "aBBoEYVxmlJxm2gUaAhoFWgIdWJoFmgjaBh9cZwoWAgAAABwcmV0cmFpbnGdaCkpgXGefXGfKGgDaCwpgXGgfXGhKGgHaAho"
        "CU5oCohoC2idaAx9caJoDoloD2gQaBGFcaNScaR1YmgWaJVoMoh1YlgKAAAAcmVzdW1lX2RpcnGlaCkpgXGmfXGnKGgDaCwp"
        "gXGofXGpKGgHaAhoCU5oCohoC2ilaAx9capoDoloD2gQaBGFcatScax1YmgWaJVoMk51YnV1YnV1cy4="
    ]
)


@pytest.fixture(params=[False, True], ids=["zip", "legacy"])
def legacy(request: pytest.FixtureRequest) -> bool:
    return request.param


def _save(obj: object, path: Path, legacy: bool) -> Path:
    torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
    return path


def test_tensors_containers_and_namespace_round_trip(tmp_path: Path, legacy: bool) -> None:
    sd = OrderedDict(w=torch.randn(3, 4), n=torch.zeros((), dtype=torch.int64), v=torch.arange(6.0)[::2])
    ckpt = {
        "state_dict": sd,
        "latent_avg": torch.randn(18, 512),
        "param": torch.nn.Parameter(torch.ones(2)),
        "opts": argparse.Namespace(stylegan_size=1024, lr=1e-4, paths=["a", "b"]),
        "step": 7,
    }
    out = load_checkpoint(_save(ckpt, tmp_path / "c.pt", legacy))
    assert torch.equal(out["state_dict"]["w"], sd["w"])
    assert torch.equal(out["state_dict"]["v"], torch.tensor([0.0, 2.0, 4.0]))
    assert out["state_dict"]["n"].dtype == torch.int64
    assert isinstance(out["param"], torch.nn.Parameter)
    assert out["step"] == 7
    # the Namespace is a placeholder, not an argparse object; its content is still readable
    assert isinstance(out["opts"], Inert) and not isinstance(out["opts"], argparse.Namespace)
    assert to_plain(out["opts"]) == {"stylegan_size": 1024, "lr": 1e-4, "paths": ["a", "b"]}


def test_real_omegaconf_pickle_becomes_plain_config() -> None:
    imported_before = "omegaconf" in sys.modules
    obj = safe_pickle_loads(base64.b64decode(OMEGACONF_21_PICKLE))
    assert ("omegaconf" in sys.modules) == imported_before  # reading it imports nothing
    assert type(obj["opts"]["_metadata"]).inert_name == "omegaconf.base.ContainerMetadata"
    assert to_plain(obj["opts"]) == {
        "train": {"max_epoch": 20, "lr_steps_rel": [0.5, 0.75], "learning_rate": 0.0005},
        "generator": {"size": 1024, "blur_kernel": [1, 3, 3, 1]},
        "pretrain_path": "x.pt",
        "resume": {"pretrain": True, "resume_dir": None},
    }


CALLS: list[str] = []


def _tripwire_module(name: str) -> types.ModuleType:
    """A stand-in module whose class records any call: loading must never touch it."""

    class Tripwire:
        def __init__(self, *args: object) -> None:
            CALLS.append(f"{name}.__init__")

        def __setstate__(self, state: object) -> None:
            CALLS.append(f"{name}.__setstate__")

    Tripwire.__module__ = name
    Tripwire.__qualname__ = "Tripwire"
    module = types.ModuleType(name)
    module.Tripwire = Tripwire  # type: ignore[attr-defined]
    return module


def test_config_classes_are_never_called_even_when_importable(
    tmp_path: Path, legacy: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = _tripwire_module("omegaconf.tripwire")
    monkeypatch.setitem(sys.modules, "omegaconf", types.ModuleType("omegaconf"))
    monkeypatch.setitem(sys.modules, "omegaconf.tripwire", module)
    opts = object.__new__(module.Tripwire)
    opts.__dict__.update(_content={"size": 1024})  # saved as NEWOBJ + BUILD(state), as OmegaConf is
    path = _save({"opts": opts}, tmp_path / "t.pt", legacy)
    CALLS.clear()
    out = load_checkpoint(path)
    assert CALLS == []
    assert type(out["opts"]).inert_name == "omegaconf.tripwire.Tripwire"
    assert to_plain(out["opts"]) == {"size": 1024}


class _RunsCode:
    def __init__(self, func: object, *args: object) -> None:
        self.func, self.args = func, args

    def __reduce__(self) -> tuple:
        return (self.func, self.args)


@pytest.mark.parametrize("payload", ["os.system", "builtins.exec", "subprocess.call", "builtins.eval"])
def test_code_in_pickle_is_refused_and_never_runs(tmp_path: Path, legacy: bool, payload: str) -> None:
    marker = tmp_path / "pwned"
    if payload == "os.system":
        evil = _RunsCode(os.system, f"touch {marker}")
    elif payload == "builtins.exec":
        evil = _RunsCode(exec, f"open({str(marker)!r}, 'w').close()")
    elif payload == "subprocess.call":
        import subprocess

        evil = _RunsCode(subprocess.call, ["touch", str(marker)])
    else:
        evil = _RunsCode(eval, f"open({str(marker)!r}, 'w').close()")
    path = _save({"state_dict": {"w": torch.zeros(2)}, "opts": evil}, tmp_path / "evil.pt", legacy)
    with pytest.raises(UnsafeCheckpointError) as err:
        load_checkpoint(path)
    assert not marker.exists()
    msg = str(err.value)
    assert "refused" in msg and "nothing from it was executed" in msg
    assert payload.split(".")[1] in msg and str(path) in msg


def test_html_page_saved_as_checkpoint_is_named(tmp_path: Path) -> None:
    page = tmp_path / "e4e_ffhq_encode.pt"
    page.write_text(
        "<!DOCTYPE html><html><head><title>Google Drive - Virus scan warning</title></head>"
        "<body>Google Drive can't scan this file for viruses.</body></html>"
    )
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(page)
    msg = str(err.value)
    assert "is an HTML page titled 'Google Drive - Virus scan warning'" in msg
    assert "not a checkpoint" in msg and "models import" in msg


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"", r"is empty \(0 bytes\)"),
        (b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 12\n", "Git LFS pointer"),
        (b"Quota exceeded, try again later\n", "is a text file"),
        (b"\x00\x01\x02\x03\xff\xfe" * 10, "not a PyTorch checkpoint"),
        (pickle.dumps({"a": 1}, protocol=2), "plain Python pickle"),
    ],
)
def test_non_checkpoints_are_named(tmp_path: Path, content: bytes, expected: str) -> None:
    path = tmp_path / "x.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=expected):
        load_checkpoint(path)


def test_truncated_files_are_reported(tmp_path: Path, legacy: bool) -> None:
    full = _save({"w": torch.randn(64, 64)}, tmp_path / "full.pt", legacy)
    data = full.read_bytes()
    cut = tmp_path / "cut.pt"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(cut)


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit is deprecated; still what old files use
def test_torchscript_archive_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(path))
    assert sniff(path) == "zip"
    with pytest.raises(CheckpointError, match="TorchScript"):
        load_any(path)


def test_zip_without_data_pkl_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.pt"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("readme.txt", "hello")
    with pytest.raises(CheckpointError, match="not a torch checkpoint"):
        load_any(path)


def test_top_level_must_be_a_dict(tmp_path: Path) -> None:
    path = _save([torch.zeros(1)], tmp_path / "list.pt", False)
    with pytest.raises(CheckpointError, match="not a dict"):
        load_checkpoint(path)


def test_bytes_and_defaultdict_protocol2_spellings() -> None:
    from collections import defaultdict

    data = pickle.dumps({"b": b"\x00\xffraw", "d": defaultdict(list, a=[1])}, protocol=2)
    out = safe_pickle_loads(data)
    assert out["b"] == b"\x00\xffraw" and out["d"]["a"] == [1]
    sneaky = io.BytesIO()
    pickle.Pickler(sneaky, protocol=2).dump(_RunsCode(__import__("codecs").encode, "x", "rot13"))
    with pytest.raises(UnsafeCheckpointError):
        safe_pickle_loads(sneaky.getvalue().replace(b"ccodecs\nencode", b"c_codecs\nencode"))
