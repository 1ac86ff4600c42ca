"""Issue 6 at the real sizes (synthetic weights in the official file layouts): `train` writes a checkpoint
whose keys and shapes are those of the parity manifests, and the engine loads it for editing."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from ffclip.app.cli import main
from ffclip.engine.checkpoints.safe_load import load_checkpoint
from ffclip.engine.training.synthetic import CLIP_NAME, write_real_size_files


@pytest.fixture(scope="module")
def files(parity_dir: Path, tmp_path_factory) -> dict[str, Path]:
    return write_real_size_files(tmp_path_factory.mktemp("real_files"), parity_dir)


def _train(files: dict[str, Path], out: Path, *extra: str) -> int:
    return main(
        [
            "train",
            "--latents",
            str(files["latents"]),
            "--generator",
            str(files["generator"]),
            "--arcface",
            str(files["arcface"]),
            "--clip",
            str(files["clip"]),
            "--out",
            str(out),
            "--batch-size",
            "1",
            "--threads",
            "1",
            "--no-progress",
            "--image-interval",
            "0",
            *extra,
        ]
    )


def _manifest(parity_dir: Path, name: str) -> list[tuple[str, tuple[int, ...]]]:
    data = json.loads((parity_dir / name).read_text())
    return [(t["key"], tuple(t["shape"])) for t in data["tensors"]]


def _check_layout(ckpt_path: Path, parity_dir: Path, with_generator: bool = True) -> dict:
    ckpt = load_checkpoint(ckpt_path)
    sd = ckpt["state_dict"]
    mapper = [
        (k.removeprefix("module.att_mapper."), tuple(v.shape))
        for k, v in sd.items()
        if k.startswith("module.att_mapper.")
    ]
    generator = [
        (k.removeprefix("module.generator."), tuple(v.shape))
        for k, v in sd.items()
        if k.startswith("module.generator.")
    ]
    assert len(mapper) + len(generator) == len(sd)
    assert mapper == _manifest(parity_dir, "ffclip_mapper.manifest.json")  # keys, shapes and order
    if with_generator:
        assert generator == _manifest(parity_dir, "stylegan2_1024.manifest.json")
    else:
        assert generator == []
    return ckpt


@pytest.mark.slow
def test_real_size_training_writes_the_official_layout_and_the_engine_edits_with_it(
    files: dict[str, Path], parity_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    # one step; the losses see the image at 64 px (--render-size) to keep CPU time down; the full
    # resolution runs in the slow test below
    assert (
        _train(
            files,
            out,
            "--epochs",
            "1",
            "--max-steps",
            "1",
            "--render-size",
            "64",
            "--export-mapper",
            str(tmp_path / "mapper_only.pt"),
        )
        == 0
    )
    ckpt = _check_layout(out / "checkpoints" / "epoch_1.pt", parity_dir)
    assert ckpt["opts"]["generator"] == {"size": 1024, "n_latent": 18}
    _check_layout(tmp_path / "mapper_only.pt", parity_dir, with_generator=False)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 1 and summary["generator_size"] == 1024

    # the engine loads the checkpoint from a model store, unchanged, and edits with it
    from ffclip.engine.checkpoints.synthetic import official_size_files, save
    from ffclip.engine.inference import Engine
    from ffclip.engine.store import ModelStore

    store = ModelStore(tmp_path / "models")
    store.root.mkdir()
    save(official_size_files(1024)["e4e"], store.path("e4e"))
    os.link(out / "checkpoints" / "epoch_1.pt", store.path("ffclip"))
    os.link(files["clip"], store.root / CLIP_NAME)
    assert store.path("clip").name == CLIP_NAME
    engine = Engine.load("real", models_dir=store.root)
    trained = {
        k.removeprefix("module.att_mapper."): v
        for k, v in ckpt["state_dict"].items()
        if k.startswith("module.att_mapper.")
    }
    for k, v in engine.mapper.state_dict().items():
        assert torch.equal(v.cpu(), trained[k]), k
    w = 0.3 * torch.randn(1, 18, 512, generator=torch.Generator().manual_seed(0))
    w_hat = engine.map(w, engine.encode_text(["smiling"]))
    image = engine.synthesize(w_hat, preview=True)
    assert image.shape[-1] <= 256 and torch.isfinite(image).all()
    assert not torch.equal(w_hat, w)


@pytest.mark.slow
def test_full_resolution_steps_with_validation(files: dict[str, Path], parity_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "full"
    assert (
        _train(
            files, out, "--val-latents", str(files["latents"]), "--val-limit", "1", "--epochs", "1", "--max-steps", "2"
        )
        == 0
    )
    _check_layout(out / "checkpoints" / "best_model.pt", parity_dir)
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "train"] == [1, 2]
    assert json.loads((out / "summary.json").read_text())["render_size"] == 1024
