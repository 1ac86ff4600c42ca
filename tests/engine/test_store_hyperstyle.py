"""HyperStyle's official files (issue 29) in the model store: recognised by content, checked
strictly, imported, verified and fetched like the other models. The files are synthetic, in the
official layouts (zero-stride tensors: full-size keys and shapes, a few hundred KB each)."""

from __future__ import annotations

import dataclasses
import hashlib
import io
from collections import OrderedDict
from pathlib import Path

import pytest
import torch

from ffclip.app.cli import main
from ffclip.engine.checkpoints import CheckpointError, inspect_file, read_hyperstyle, read_w_encoder
from ffclip.engine.checkpoints import layouts as L
from ffclip.engine.checkpoints import synthetic as S
from ffclip.engine.domains import high_fidelity_models
from ffclip.engine.store import (
    FIRST_SEEN,
    HYPERSTYLE_FACES_W_ENCODER,
    SPEC_BY_NAME,
    VERIFIED,
    ModelStore,
    Published,
)
from tests.support.http_files import Behaviour, Server

FAST = {"backoff": 0.01, "progress": False}
FACES = ("hyperstyle", "hyperstyle-w-encoder")
CARS = ("hyperstyle-cars", "hyperstyle-w-encoder-cars")


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The four official files, synthetic, by store name (under names unlike the official ones)."""
    folder = tmp_path_factory.mktemp("hyperstyle")
    out = {}
    for size, names in ((1024, FACES), (512, CARS)):
        for name, ckpt in zip(names, S.hyperstyle_files(size).values(), strict=True):
            out[name] = folder / f"download_{len(out)}.pt"
            S.save(ckpt, out[name])
    return out


def test_the_official_layouts_are_recognised_and_summarised(files: dict[str, Path]) -> None:
    faces = inspect_file(files["hyperstyle"])
    assert faces.kind == "hyperstyle"
    assert faces.info == {
        "size": 1024,
        "n_latent": 18,
        "layers_to_tune": [0, 2, 3, 5, 6, 8, 9, 11, 12, 14, 15, 17, 18, 20, 21, 23, 24],
        "n_iters": 5,
    }
    assert inspect_file(files["hyperstyle-cars"]).info["size"] == 512
    assert inspect_file(files["hyperstyle-w-encoder"]).info == {"stylegan_size": 1024, "n_latent": 18}
    assert inspect_file(files["hyperstyle-w-encoder-cars"]).info == {"stylegan_size": 512, "n_latent": 16}
    parts = read_hyperstyle(files["hyperstyle"])
    assert (
        parts.latent_avg.shape == (18, 512) and "conv1.weight" in parts.hypernet and "style.1.weight" in parts.decoder
    )
    assert "linear.weight" in read_w_encoder(files["hyperstyle-w-encoder"]).encoder


def test_damaged_or_foreign_files_are_refused_with_the_reason(tmp_path: Path) -> None:
    ckpt = S.hyperstyle_files(1024)["hyperstyle"]
    state = OrderedDict(ckpt["state_dict"])
    del state["hypernet.refinement_blocks.14.output.1.weight"]
    S.save({**ckpt, "state_dict": state}, tmp_path / "h.pt")
    with pytest.raises(CheckpointError, match="refinement_blocks.14.output.1.weight"):
        inspect_file(tmp_path / "h.pt")
    S.save({**ckpt, "latent_avg": torch.zeros(512)}, tmp_path / "h.pt")
    with pytest.raises(CheckpointError, match="latent_avg has shape"):
        inspect_file(tmp_path / "h.pt")
    S.save({**ckpt, "opts": {"encoder_type": "SharedWeightsHyperNetResNetSeparable"}}, tmp_path / "h.pt")
    with pytest.raises(CheckpointError, match="not SharedWeightsHyperNetResNet"):
        inspect_file(tmp_path / "h.pt")
    # a W encoder saying nothing of its generator's size
    w = S.w_encoder_checkpoint(S.cheap_state_dict(L.w_encoder_shapes()), None, 18, opts={"encoder_type": "WEncoder"})
    del w["latent_avg"]
    S.save(w, tmp_path / "w.pt")
    with pytest.raises(CheckpointError, match="generator size is unclear"):
        inspect_file(tmp_path / "w.pt")
    # e4e is still e4e, and neither HyperStyle file passes for it
    e4e = S.official_size_files(1024)["e4e"]
    S.save(e4e, tmp_path / "e.pt")
    assert inspect_file(tmp_path / "e.pt").kind == "e4e"
    S.save(S.hyperstyle_files(1024)["w_encoder"], tmp_path / "w.pt")
    with pytest.raises(CheckpointError, match="its layout is w_encoder, not e4e"):
        inspect_file(tmp_path / "w.pt", "e4e")


def test_import_puts_each_file_where_its_content_belongs(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = ModelStore(tmp_path / "models")
    for name, path in files.items():
        stored, result = store.import_file(path)
        assert stored == name and result.ok
    assert {p.name for p in store.root.glob("*.pt")} == {
        "hyperstyle_ffhq.pt",
        "faces_w_encoder.pt",
        "hyperstyle_cars.pt",
        "cars_w_encoder.pt",
    }
    assert high_fidelity_models("face") == FACES and high_fidelity_models("car") == CARS
    assert high_fidelity_models("church") == ()
    capsys.readouterr()
    assert main(["models", "verify", *FACES, *CARS, "--models", str(store.root)]) == 0
    out = capsys.readouterr().out
    assert all(f"ok       {name}: matches the recorded sha256" in out for name in (*FACES, *CARS))
    # a synthetic W encoder is not the published one: kept (the user vouches), said so
    assert "hyperstyle-w-encoder: matches the recorded sha256" in out and "differs from the published" in out


def test_fetch_high_brings_the_faces_files_and_checks_the_published_digest(
    server: Server, files: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FFCLIP_DRIVE_URL", f"{server.base}/download")
    for name in FACES:
        spec = SPEC_BY_NAME[name]
        server.files[spec.drive_id] = files[name].read_bytes()
        server.behaviour[spec.drive_id] = Behaviour(drive_confirm=True)
    assert SPEC_BY_NAME["hyperstyle-w-encoder"].published == HYPERSTYLE_FACES_W_ENCODER
    store = ModelStore(tmp_path / "models")
    # the real digest: the synthetic download is not the published file, so it is refused and deleted
    result = store.fetch("hyperstyle-w-encoder", **FAST)
    assert result.status == "invalid" and "it is not the published faces_w_encoder.pt" in result.message
    assert not store.present("hyperstyle-w-encoder") and not store.part_path("hyperstyle-w-encoder").exists()
    data = files["hyperstyle-w-encoder"].read_bytes()
    spec = dataclasses.replace(
        SPEC_BY_NAME["hyperstyle-w-encoder"], published=Published(hashlib.sha256(data).hexdigest(), len(data))
    )
    monkeypatch.setitem(SPEC_BY_NAME, "hyperstyle-w-encoder", spec)
    out = io.StringIO()
    monkeypatch.setattr("sys.stdout", out)
    assert main(["models", "fetch", "high", "--quiet", "--retries", "1", "--models", str(store.root)]) == 0
    assert store.index()["hyperstyle-w-encoder"]["trust"] == VERIFIED
    assert store.index()["hyperstyle"]["trust"] == FIRST_SEEN  # HyperStyle publishes no digest for it
    assert store.missing(store.high_fidelity()) == []
