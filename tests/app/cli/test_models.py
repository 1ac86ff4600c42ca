"""`ffclip-engine models list | import | verify` on synthetic checkpoints in each official layout."""

from __future__ import annotations

import argparse
import json
import os
import sys
import types
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from ffclip.app.cli import main
from ffclip.engine.checkpoints import layouts as L
from ffclip.engine.checkpoints import synthetic as S
from ffclip.engine.store import ModelStore, default_root


@contextmanager
def omegaconf_stand_in() -> Iterator[dict[str, type]]:
    """Classes pickled under OmegaConf's module names, present only while saving."""
    names = {"omegaconf.dictconfig": "DictConfig", "omegaconf.base": "ContainerMetadata", "omegaconf.nodes": "AnyNode"}
    saved = {m: sys.modules.get(m) for m in ["omegaconf", *names]}
    classes = {}
    sys.modules["omegaconf"] = types.ModuleType("omegaconf")
    for module, cls_name in names.items():
        cls = type(cls_name, (), {"__module__": module})
        sys.modules[module] = types.ModuleType(module)
        setattr(sys.modules[module], cls_name, cls)
        classes[cls_name] = cls
    try:
        yield classes
    finally:
        for module, old in saved.items():
            if old is None:
                sys.modules.pop(module, None)
            else:
                sys.modules[module] = old


def _obj(cls: type, **state: object) -> object:
    obj = object.__new__(cls)
    obj.__dict__.update(state)
    return obj


def ffclip_opts(classes: dict[str, type]) -> dict:
    """vars(DictConfig) as FFCLIP's coach saves it, nodes and metadata included."""
    meta = _obj(classes["ContainerMetadata"], ref_type=None, object_type=dict, optional=True, key=None)

    def node(value: object) -> object:
        return _obj(classes["AnyNode"], _val=value, _metadata=meta, _parent=None)

    def section(**items: object) -> object:
        content = {k: node(v) for k, v in items.items()}
        return _obj(classes["DictConfig"], _metadata=meta, _parent=None, _content=content)

    content = {
        "generator": section(size=1024, channel_multiplier=2),
        "train": section(max_epoch=20),
        "pretrain_path": node("pretrained_models/stylegan2-ffhq-config-f.pt"),
    }
    return {"_metadata": meta, "_parent": None, "_flags_cache": None, "_content": content}


@pytest.fixture(scope="module")
def official(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Full-size FFHQ files in each official layout, as the projects wrote them."""
    folder = tmp_path_factory.mktemp("official")
    files = S.official_size_files(1024)
    paths = {k: folder / f"{k}.pt" for k in ("stylegan2", "e4e", "ffclip", "arcface")}
    S.save(files["stylegan2"], paths["stylegan2"], legacy=True)  # rosinality's conversion predates zip
    files["e4e"]["opts"] = vars(
        argparse.Namespace(exp_dir="x", encoder_type="Encoder4Editing", stylegan_size=1024, lpips_lambda=0.8)
    )
    S.save(files["e4e"], paths["e4e"])
    with omegaconf_stand_in() as classes:
        files["ffclip"]["opts"] = ffclip_opts(classes)
        S.save(files["ffclip"], paths["ffclip"])
    S.save(S.cheap_state_dict(L.arcface_shapes()), paths["arcface"], legacy=True)
    return paths


def run(*args: str) -> int:
    return main(["models", *args])


def test_import_and_verify_accept_every_official_layout(
    official: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "store"
    imported_before = "omegaconf" in sys.modules
    for kind, path in official.items():
        assert run("import", str(path), "--models", str(root)) == 0, kind
    out = capsys.readouterr().out
    assert "imported" in out and "as ffclip (n_latent=18, generator_size=1024)" in out
    assert ("omegaconf" in sys.modules) == imported_before  # the pickled OmegaConf opts needed nothing
    store = ModelStore(root)
    assert store.missing() == ["clip"]
    for name in ("stylegan2", "e4e", "ffclip", "arcface"):
        assert store.path(name).read_bytes() == official[name].read_bytes()
    assert run("--models", str(root), "verify") == 0
    out = capsys.readouterr().out
    assert out.count("matches the recorded sha256") == 4 and "not in the store: clip" in out
    index = json.loads((root / "index.json").read_text())["models"]
    assert index["ffclip"]["sha256"] == store.verify("ffclip").sha256
    assert index["e4e"]["source"] == f"import: {official['e4e'].resolve()}"


def test_ffclip_opts_are_readable_without_omegaconf(official: dict[str, Path]) -> None:
    parts = L.inspect_file(official["ffclip"]).parts
    assert parts.opts["generator"] == {"size": 1024, "channel_multiplier": 2}
    assert parts.opts["pretrain_path"].endswith("stylegan2-ffhq-config-f.pt")


def test_import_refuses_a_pickle_that_runs_code(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    marker = tmp_path / "code-ran"

    class Payload:
        def __reduce__(self) -> tuple:
            return (os.system, (f"touch {marker}",))

    ckpt = S.official_size_files(1024)["stylegan2"]
    ckpt["args"] = Payload()
    S.save(ckpt, tmp_path / "stylegan2-ffhq-config-f.pt")
    root = tmp_path / "store"
    assert run("import", str(tmp_path / "stylegan2-ffhq-config-f.pt"), "--models", str(root)) == 1
    err = capsys.readouterr().err
    assert "import refused" in err and "posix.system" in err and "nothing from it was executed" in err
    assert not marker.exists() and not ModelStore(root).present("stylegan2")


def test_html_page_is_refused_by_import_and_verify(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    page = "<!DOCTYPE html><html><head><title>Google Drive - Virus scan warning</title></head></html>"
    (tmp_path / "dl.pt").write_text(page)
    root = tmp_path / "store"
    assert run("import", str(tmp_path / "dl.pt"), "--models", str(root)) == 1
    assert "is an HTML page titled 'Google Drive - Virus scan warning'" in capsys.readouterr().err
    root.mkdir()
    (root / "e4e_ffhq_encode.pt").write_text(page)  # as a browser "save as" would leave it
    assert run("verify", "--models", str(root)) == 1
    out = capsys.readouterr().out
    assert "INVALID  e4e: " in out and "is an HTML page" in out and "not a checkpoint" in out


@pytest.mark.parametrize(
    ("kind", "where", "key", "shown"),
    [
        (
            "stylegan2",
            "g_ema",
            "to_rgbs.4.conv.weight",
            "to_rgbs.4.conv.weight: file [2, 4, 257, 2, 2], expected [1, 3, 256, 1, 1]",
        ),
        (
            "e4e",
            "state_dict",
            "encoder.body.7.res_layer.1.weight",
            "body.7.res_layer.1.weight: file [257, 129, 4, 4], expected [256, 128, 3, 3]",
        ),
        (
            "ffclip",
            "state_dict",
            "module.att_mapper.att_mapper.2.attention_layer.k_matrix.weight",
            "att_mapper.2.attention_layer.k_matrix.weight: file [19, 2], expected [18, 1]",
        ),
    ],
)
def test_one_wrong_shape_is_refused_naming_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str, where: str, key: str, shown: str
) -> None:
    ckpt = S.official_size_files(1024)[kind]
    ckpt[where][key] = torch.zeros(tuple(d + 1 for d in ckpt[where][key].shape))
    S.save(ckpt, tmp_path / "bad.pt")
    assert run("import", str(tmp_path / "bad.pt"), "--models", str(tmp_path / "store")) == 1
    err = capsys.readouterr().err
    assert "1 mis-shaped key:" in err and shown in err
    assert "missing key" not in err and "unexpected key" not in err


def test_verify_notices_a_changed_file_and_accept_re_records(
    official: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "store"
    assert run("import", str(official["stylegan2"]), "--models", str(root)) == 0
    ckpt = S.official_size_files(1024)["stylegan2"]
    ckpt["latent_avg"] = torch.ones(512)
    S.save(ckpt, ModelStore(root).path("stylegan2"))  # valid structure, other bytes
    capsys.readouterr()
    assert run("list", "--models", str(root)) == 0
    assert "CHANGED since verified" in capsys.readouterr().out
    assert run("verify", "stylegan2", "--models", str(root)) == 1
    assert "CHANGED  stylegan2: " in capsys.readouterr().out
    assert run("verify", "stylegan2", "--accept", "--models", str(root)) == 0
    assert run("verify", "stylegan2", "--models", str(root)) == 0


def test_import_routes_other_domains_and_checks_named_entries(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "store"
    cars = S.official_size_files(512)
    S.save(cars["e4e"], tmp_path / "e4e_cars_encode.pt")
    S.save(cars["ffclip"], tmp_path / "car.pt")
    assert run("import", str(tmp_path / "e4e_cars_encode.pt"), "--models", str(root)) == 0
    assert run("import", str(tmp_path / "car.pt"), "--kind", "ffclip", "--models", str(root)) == 0
    store = ModelStore(root)
    assert store.present("e4e-cars") and store.present("ffclip-car") and not store.present("e4e")
    assert run("import", str(tmp_path / "car.pt"), "--name", "ffclip", "--models", str(root)) == 1
    assert "ffclip needs n_latent=18" in capsys.readouterr().err
    assert run("import", str(tmp_path / "car.pt"), "--kind", "e4e", "--models", str(root)) == 1
    assert "its layout is ffclip, not e4e" in capsys.readouterr().err


def test_store_location_and_hints(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert default_root() == tmp_path / "xdg" / "ffclip-edit" / "models"
    assert ModelStore().fetch_hint == "ffclip-engine models fetch"
    monkeypatch.setenv("XDG_DATA_HOME", "relative/is/ignored")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_root() == tmp_path / "home" / ".local" / "share" / "ffclip-edit" / "models"
    store = ModelStore(tmp_path / "m")
    assert store.fetch_hint == f"ffclip-engine models fetch --models {tmp_path / 'm'}"
    assert store.missing() == ["ffclip", "e4e", "clip"]  # the FFCLIP file brings its generator
    assert store.path("e4e") == store.path("e4e_ffhq_encode.pt") == tmp_path / "m" / "e4e_ffhq_encode.pt"
    store.root.mkdir()
    store.part_path("ffclip").write_bytes(b"x" * 1500)
    assert run("list", "--models", str(store.root)) == 0
    out = capsys.readouterr().out
    assert "missing; partial download 1.5 KB" in out and "(optional)" in out
    assert f"`ffclip-engine models fetch --models {store.root}`" in out
    assert run("verify", "nonexistent", "--models", str(store.root)) == 2


def test_files_are_recognised_by_content_not_by_name(official: dict[str, Path], tmp_path: Path) -> None:
    """The FFCLIP Drive file's name is not published (the official code saves best_model.pt)."""
    root = tmp_path / "store"
    for kind, name in (("ffclip", "best_model.pt"), ("e4e", "download (1).pt"), ("stylegan2", "ffclip_ffhq.pt")):
        renamed = tmp_path / name
        renamed.write_bytes(official[kind].read_bytes())
        assert run("import", str(renamed), "--models", str(root)) == 0
    store = ModelStore(root)
    assert store.path("ffclip").read_bytes() == official["ffclip"].read_bytes()
    assert store.path("stylegan2").read_bytes() == official["stylegan2"].read_bytes()  # despite its name
    assert store.path("e4e").read_bytes() == official["e4e"].read_bytes()


def _mapper_only(path: Path) -> None:
    full = S.official_size_files(1024)["ffclip"]
    mapper = {k: v for k, v in full["state_dict"].items() if k.startswith("module.att_mapper.")}
    S.save({"state_dict": mapper, "opts": {}}, path)


@pytest.mark.parametrize("how", ["imported", "copied in"])
def test_stylegan2_is_needed_only_with_a_mapper_only_ffclip_file(
    official: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], how: str
) -> None:
    from ffclip.engine.inference import Engine, ModelsMissing

    store = ModelStore(tmp_path / "store")
    assert store.needed() == ["ffclip", "e4e", "clip"]  # nothing there: the Drive file carries a generator
    assert run("import", str(official["ffclip"]), "--models", str(store.root)) == 0
    assert store.needed() == ["ffclip", "e4e", "clip"]
    _mapper_only(tmp_path / "mapper.pt")
    if how == "imported":  # the index records generator_size None
        assert run("import", str(tmp_path / "mapper.pt"), "--models", str(store.root)) == 0
    else:  # unverified: read from the file's pickle
        store.path("ffclip").write_bytes((tmp_path / "mapper.pt").read_bytes())
    assert store.needed() == ["ffclip", "stylegan2", "e4e", "clip"]
    capsys.readouterr()
    assert run("list", "--models", str(store.root)) == 0
    out = capsys.readouterr().out
    assert (
        "serve/edit need: ffclip, stylegan2, e4e, clip (stylegan2: the FFCLIP file in the store is mapper-only)" in out
    )
    assert "missing for serve/edit: stylegan2, e4e, clip" in out
    with pytest.raises(ModelsMissing) as info:  # Engine.load follows the same rule
        Engine.load("real", models_dir=store.root)
    assert info.value.missing == ["stylegan2", "e4e", "clip"]
