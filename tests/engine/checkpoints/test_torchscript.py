"""OpenAI's TorchScript CLIP archive (`ViT-B-32.pt`) read without running it: the reader gives what
`torch.jit.load(...).state_dict()` gives, `models import` maps it to open_clip's layout and stores
it as safetensors, and an archive whose pickle would run code is refused without running it."""

from __future__ import annotations

import io
import os
import pickle
import warnings
import zipfile
from pathlib import Path

import pytest
import torch

from ffclip.app.cli import main
from ffclip.engine import store as store_module
from ffclip.engine.checkpoints import CheckpointError, UnsafeCheckpointError
from ffclip.engine.checkpoints import layouts as L
from ffclip.engine.checkpoints.torchscript import is_torchscript_archive, read_torchscript_state_dict
from ffclip.engine.models.clip import load_clip_weights
from ffclip.engine.store import ModelStore
from tests.support.http_files import Server
from tests.support.openai_clip_archive import CLIP, open_clip_twin, save_archive

NON_WEIGHTS = {"input_resolution", "context_length", "vocab_size"}


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("openai") / "ViT-B-32.pt"
    save_archive(path)
    return path


@pytest.fixture
def tiny_clip_shapes(monkeypatch: pytest.MonkeyPatch) -> None:
    """The strict check against open_clip's CLIP at the archive's tiny widths instead of ViT-B-32."""
    shapes = {k: tuple(v.shape) for k, v in open_clip_twin().state_dict().items()}
    monkeypatch.setattr(L, "clip_shapes", lambda: shapes)


def _jit_state_dict(path: Path) -> dict[str, torch.Tensor]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.jit.load(str(path), map_location="cpu").state_dict()  # our own archive: safe to run


@pytest.mark.parametrize("how", ["trace", "script"])
def test_reader_gives_what_torch_jit_load_gives(tmp_path: Path, archive: Path, how: str) -> None:
    path = archive
    if how == "script":  # scripted archives keep plain tensor attributes (attn_mask) in data.pkl
        path = tmp_path / "scripted.pt"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.jit.save(torch.jit.script(CLIP().eval()), str(path))
    assert is_torchscript_archive(path)
    ours, reference = read_torchscript_state_dict(path), _jit_state_dict(path)
    assert list(ours) == list(reference)  # every parameter and buffer, nothing else, same order
    assert all(ours[k].dtype == v.dtype and torch.equal(ours[k], v) for k, v in reference.items())
    assert "transformer.resblocks.0.attn_mask" not in ours


def test_import_maps_the_archive_to_open_clip_and_stores_safetensors(
    archive: Path, tmp_path: Path, tiny_clip_shapes: None, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "store"
    assert main(["models", "import", str(archive), "--models", str(root)]) == 0
    assert "as clip (model=ViT-B-32, pretrained=openai, format=torchscript)" in capsys.readouterr().out
    store = ModelStore(root)
    stored = load_clip_weights(store.path("clip"))
    expected = {k: v for k, v in _jit_state_dict(archive).items() if k not in NON_WEIGHTS}
    assert set(stored) == set(expected) and all(torch.equal(stored[k], v) for k, v in expected.items())
    open_clip_twin().load_state_dict(stored, strict=True)  # open_clip's own strict load agrees
    entry = store.index()["clip"]
    assert "TorchScript archive" in entry["source"] and "not OpenAI's published file" in entry["source"]
    assert entry["sha256"] == store.verify("clip").sha256


def test_openai_published_archive_is_named_as_such(
    archive: Path, tmp_path: Path, tiny_clip_shapes: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_module, "OPENAI_VIT_B_32_SHA256", store_module.sha256_file(archive))
    _, result = ModelStore(tmp_path).import_file(archive)
    assert result.ok
    assert "sha256 as published" in ModelStore(tmp_path).index()["clip"]["source"]


def test_real_size_check_refuses_the_tiny_archive_naming_keys(
    archive: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["models", "import", str(archive), "--models", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "read as OpenAI's CLIP ViT-B/32" in err and "mis-shaped" in err
    assert "visual.conv1.weight: file [32, 3, 8, 8], expected [768, 3, 32, 32]" in err
    assert not ModelStore(tmp_path).present("clip")


def test_open_clip_handing_over_the_torchscript_file_is_converted(
    archive: Path, tmp_path: Path, tiny_clip_shapes: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """open_clip < 2.29 fetched OpenAI's TorchScript file: that converts now, instead of escaping."""
    import open_clip.pretrained

    def old_open_clip(cfg: dict, prefer_hf_hub: bool = True, cache_dir: str | None = None) -> str:
        target = Path(cache_dir) / "ViT-B-32.pt"
        target.parent.mkdir(parents=True)
        target.write_bytes(archive.read_bytes())
        return str(target)

    monkeypatch.setattr(open_clip.pretrained, "download_pretrained", old_open_clip)
    result = ModelStore(tmp_path).fetch("clip")
    assert result.status == "recorded", result.message
    assert set(load_clip_weights(ModelStore(tmp_path).path("clip"))) == set(L.clip_shapes())


def test_open_clip_handing_over_an_unreadable_file_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import open_clip.pretrained

    def broken(cfg: dict, prefer_hf_hub: bool = True, cache_dir: str | None = None) -> str:
        target = Path(cache_dir) / "open_clip_pytorch_model.bin"
        target.parent.mkdir(parents=True)
        target.write_bytes(b"PK\x03\x04 not really a zip")
        return str(target)

    monkeypatch.setattr(open_clip.pretrained, "download_pretrained", broken)
    result = ModelStore(tmp_path).fetch("clip")  # a CheckpointError used to escape from here
    assert result.status == "invalid" and "the downloaded file cannot be used" in result.message
    assert "manual route" in result.message and "ViT-B-32.pt" in result.message


# --- archives that are not what they claim ------------------------------------------------------


class _RunsCode:
    def __init__(self, call: object, arg: str) -> None:
        self.call, self.arg = call, arg

    def __reduce__(self) -> tuple:
        return (self.call, (self.arg,))


def _with_data_pkl(src: Path, dest: Path, payload: bytes) -> None:
    """A copy of the archive `src` whose data.pkl is `payload` (everything else unchanged)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dest, "w", zipfile.ZIP_STORED) as zout:
        for item in zin.infolist():
            data = payload if item.filename.endswith("/data.pkl") else zin.read(item)
            zout.writestr(item, data)


@pytest.mark.parametrize("call", [os.system, eval], ids=["os.system", "eval"])
def test_an_archive_whose_pickle_would_run_code_is_refused_without_running_it(
    archive: Path, tmp_path: Path, call: object, capsys: pytest.CaptureFixture[str]
) -> None:
    marker = tmp_path / "code-ran"
    command = f"touch {marker}" if call is os.system else f"open({str(marker)!r}, 'w').close()"
    # the real archive (code/, constants, storages) with a data.pkl that runs `command` when unpickled
    evil = pickle.dumps({"logit_scale": _RunsCode(call, command)}, protocol=2)
    bad = tmp_path / "ViT-B-32.pt"
    _with_data_pkl(archive, bad, evil)
    assert is_torchscript_archive(bad)
    assert main(["models", "import", str(bad), "--models", str(tmp_path / "store")]) == 1
    err = capsys.readouterr().err
    assert "import refused" in err and "nothing from it was executed" in err
    assert ("posix.system" in err) if call is os.system else ("builtins.eval" in err)
    assert not marker.exists() and not ModelStore(tmp_path / "store").present("clip")
    with pytest.raises(UnsafeCheckpointError):
        read_torchscript_state_dict(bad)
    assert not marker.exists()


def test_a_storage_missing_from_the_archive_is_named(archive: Path, tmp_path: Path) -> None:
    bad = tmp_path / "cut.pt"
    with zipfile.ZipFile(archive) as zin, zipfile.ZipFile(bad, "w") as zout:
        for item in zin.infolist():
            if not item.filename.endswith("/data/3"):
                zout.writestr(item, zin.read(item))
    with pytest.raises(CheckpointError, match=r"lacks .*data/3, a storage its data.pkl refers to"):
        read_torchscript_state_dict(bad)


def test_a_truncated_archive_is_named(archive: Path, tmp_path: Path) -> None:
    bad = tmp_path / "half.pt"
    bad.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        L.inspect_file(bad)
    buffer = io.BytesIO()
    torch.save({"a": torch.zeros(2)}, buffer)
    plain = tmp_path / "plain.pt"
    plain.write_bytes(buffer.getvalue())
    assert not is_torchscript_archive(plain)  # a plain zip checkpoint is not mistaken for one


def test_fetch_clip_from_a_mirror_of_openais_file(
    archive: Path, server: Server, tmp_path: Path, tiny_clip_shapes: None
) -> None:
    server.files["/clip/models/ViT-B-32.pt"] = archive.read_bytes()
    url = f"{server.base}/clip/models/ViT-B-32.pt"
    store = ModelStore(tmp_path)
    result = store.fetch("clip", url=url, progress=False, backoff=0.01)
    assert result.status == "recorded", result.message
    assert store.index()["clip"]["source"] == f"fetch: {url}"
    assert set(load_clip_weights(store.path("clip"))) == set(L.clip_shapes())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip_vit_b_32_openai.safetensors", "index.json"]
