"""The official layouts of DESIGN.md §2, parsed and checked strictly against our model classes."""

from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path

import pytest
import torch

from ffclip.engine.checkpoints import (
    CheckpointError,
    check_state_dict,
    detect_kind,
    inspect_file,
    read_arcface,
    read_e4e,
    read_ffclip,
    read_generator,
)
from ffclip.engine.checkpoints import layouts as L
from ffclip.engine.checkpoints import synthetic as S
from ffclip.engine.models.e4e import Encoder4Editing
from ffclip.engine.models.mapper import DynamicMapper
from ffclip.engine.models.stylegan2 import Generator


def _manifest_shapes(parity_dir: Path, name: str) -> dict[str, tuple[int, ...]]:
    manifest = json.loads((parity_dir / f"{name}.manifest.json").read_text())
    return {t["key"]: tuple(t["shape"]) for t in manifest["tensors"]}


@pytest.mark.parametrize(
    ("name", "shapes"),
    [
        ("stylegan2_1024", lambda: L.generator_shapes(1024)),
        ("stylegan2_256", lambda: L.generator_shapes(256)),
        ("e4e_1024", lambda: L.e4e_shapes(1024)),
        ("ffclip_mapper", lambda: L.mapper_shapes(18)),
        ("training/arcface_ir_se50", lambda: L.arcface_shapes()),
    ],
)
def test_expected_shapes_are_the_official_state_dicts(parity_dir: Path, name: str, shapes) -> None:
    """What the loader demands (from our classes) is key for key, in order, the reference layout."""
    expected = _manifest_shapes(parity_dir, name)
    assert list(shapes().items()) == list(expected.items())


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_full_size_official_layouts_are_accepted(tmp_path: Path, legacy: bool) -> None:
    files = S.official_size_files(1024)
    paths = {}
    for kind, ckpt in files.items():
        paths[kind] = tmp_path / f"{kind}.pt"
        S.save(ckpt, paths[kind], legacy=legacy)
    g, latent_avg, cfg = read_generator(paths["stylegan2"])
    assert cfg == {"size": 1024, "style_dim": 512, "n_mlp": 8, "channel_multiplier": 2}
    assert latent_avg is not None and latent_avg.shape == (512,) and len(g) == 171
    enc, latent_avg, size = read_e4e(paths["e4e"])
    assert size == 1024 and latent_avg.shape == (18, 512) and len(enc) == 621
    mapper, gen = read_ffclip(paths["ffclip"])
    assert len(mapper) == 80 and "att_mapper.3.attention_layer.k_matrix.weight" in mapper
    assert mapper["att_mapper.0.attention_layer.k_matrix.weight"].shape == (18, 1)
    assert set(gen) == set(g)
    assert [detect_kind(c) for c in files.values()] == ["stylegan2", "e4e", "ffclip"]


@pytest.mark.parametrize(("size", "n_latent"), [(1024, 18), (512, 16), (256, 14)])
def test_other_domains_are_sized_from_the_file(tmp_path: Path, size: int, n_latent: int) -> None:
    """FFHQ, cars and church files: generator size, e4e styles and mapper k_matrix [n_latent, 1]."""
    files = S.official_size_files(size)
    for kind, ckpt in files.items():
        S.save(ckpt, tmp_path / f"{kind}.pt")
    assert read_generator(tmp_path / "stylegan2.pt")[2]["size"] == size
    assert read_e4e(tmp_path / "e4e.pt")[2] == size
    found = inspect_file(tmp_path / "ffclip.pt")
    assert found.info == {"n_latent": n_latent, "generator_size": size}


def test_small_real_generator_loads_into_the_model(tmp_path: Path) -> None:
    """Real values through a size-256, channel_multiplier-1 narrow generator: the state_dict read
    back loads strictly into Generator(**cfg) and gives the same weights."""
    torch.manual_seed(0)
    model = Generator(256, channel_multiplier=1, channel_base=64)
    ckpt = S.rosinality_checkpoint(model.state_dict())
    ckpt["latent_avg"] = torch.randn(512)
    S.save(ckpt, tmp_path / "g.pt", legacy=True)
    sd, latent_avg, cfg = read_generator(tmp_path / "g.pt")
    assert cfg == {"size": 256, "style_dim": 512, "n_mlp": 8, "channel_multiplier": 1, "channel_base": 64}
    assert torch.equal(latent_avg, ckpt["latent_avg"])
    again = Generator(**cfg)
    again.load_state_dict(sd, strict=True)
    for k, v in model.state_dict().items():
        assert torch.equal(again.state_dict()[k], v), k


def test_small_real_mapper_and_encoder_load_into_the_models(tmp_path: Path) -> None:
    torch.manual_seed(1)
    mapper = DynamicMapper(n_latent=14, dim=64)
    gen = Generator(256, channel_multiplier=1, channel_base=64)
    S.save(S.ffclip_checkpoint(mapper.state_dict(), gen.state_dict()), tmp_path / "f.pt")
    mapper_sd, gen_sd = read_ffclip(tmp_path / "f.pt")
    DynamicMapper(n_latent=14, dim=64).load_state_dict(mapper_sd, strict=True)
    assert torch.equal(mapper_sd["att_mapper.2.fc.weight"], mapper.state_dict()["att_mapper.2.fc.weight"])
    assert set(gen_sd) == set(gen.state_dict())

    # the full IR-SE-50 encoder takes seconds to initialise: build it on the meta device and let
    # load_state_dict(strict=True) check the keys and shapes that read_e4e hands over
    S.save(S.e4e_checkpoint(S.cheap_state_dict(L.e4e_shapes(256)), None, 14), tmp_path / "e.pt")
    enc_sd, latent_avg, size = read_e4e(tmp_path / "e.pt")
    with torch.device("meta"):
        encoder = Encoder4Editing(50, "ir_se", size)
    encoder.load_state_dict(enc_sd, strict=True, assign=True)
    assert latent_avg.shape == (14, 512) and encoder.style_count == 14


def _one_wrong(state_dict: OrderedDict, key: str) -> OrderedDict:
    bad = OrderedDict(state_dict)
    bad[key] = torch.zeros(tuple(d + 1 for d in bad[key].shape))
    return bad


@pytest.mark.parametrize(
    ("kind", "where", "key"),
    [
        ("stylegan2", "g_ema", "convs.3.conv.weight"),
        ("e4e", "state_dict", "encoder.styles.5.linear.weight"),
        ("ffclip", "state_dict", "module.att_mapper.att_mapper.1.gamma_.3.weight"),
        ("ffclip", "state_dict", "module.generator.to_rgbs.2.bias"),
    ],
)
def test_one_mis_shaped_tensor_is_refused_naming_it(tmp_path: Path, kind: str, where: str, key: str) -> None:
    ckpt = S.official_size_files(1024)[kind]
    ckpt[where] = _one_wrong(ckpt[where], key)
    S.save(ckpt, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError) as err:
        inspect_file(tmp_path / "bad.pt")
    msg = str(err.value)
    inner = key.split(".", 2)[-1] if kind == "ffclip" else key.split(".", 1)[-1] if kind == "e4e" else key
    assert "1 mis-shaped key" in msg and inner in msg and "missing" not in msg and "unexpected" not in msg


def test_report_lists_missing_unexpected_and_mis_shaped() -> None:
    expected = {"a.weight": (2, 3), "b.weight": (4,), "c.bias": (1,)}
    sd = {"a.weight": torch.zeros(2, 3), "b.weight": torch.zeros(5), "d": torch.zeros(1), "e": "text"}
    with pytest.raises(CheckpointError) as err:
        check_state_dict(sd, expected, "test model")
    assert str(err.value).splitlines() == [
        "test model: the weights do not match the model (4 tensors in the file, 3 expected)",
        "  1 missing key:",
        "    c.bias [1]",
        "  2 unexpected keys:",
        "    d [1]",
        "    e (not a tensor)",
        "  1 mis-shaped key:",
        "    b.weight: file [5], expected [4]",
    ]
    check_state_dict(
        {"a.weight": torch.zeros(2, 3), "b.weight": torch.zeros(4), "c.bias": torch.zeros(1)}, expected, "test model"
    )


def test_prefixed_keys_get_a_hint() -> None:
    expected = L.mapper_shapes(18)
    sd = S.cheap_state_dict({f"module.{k}": v for k, v in expected.items()})
    with pytest.raises(CheckpointError, match="extra prefix 'module.'") as err:
        check_state_dict(sd, expected, "mapper")
    assert "... and 68 more" in str(err.value)


def test_wrong_layouts_are_named(tmp_path: Path) -> None:
    files = S.official_size_files(256)
    S.save(files["e4e"], tmp_path / "e4e.pt")
    with pytest.raises(CheckpointError, match="its layout is e4e, not stylegan2"):
        inspect_file(tmp_path / "e4e.pt", "stylegan2")
    with pytest.raises(CheckpointError, match="'g_ema'"):
        read_generator(tmp_path / "e4e.pt")
    S.save({"model": {}}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not one of the known checkpoint layouts"):
        inspect_file(tmp_path / "other.pt")
    # a mapper for 18 W+ layers beside a 256 (14-layer) generator is inconsistent
    mapper, gen = S.cheap_state_dict(L.mapper_shapes(18)), S.cheap_state_dict(L.generator_shapes(256))
    bad = S.ffclip_checkpoint(mapper, gen)
    S.save(bad, tmp_path / "mixed.pt")
    with pytest.raises(CheckpointError, match="18 W. layers but its generator"):
        read_ffclip(tmp_path / "mixed.pt")
    # HyperStyle's files (the W encoder's keys sit under 'encoder.' too): named, not mistaken for e4e
    # (tests/engine/test_store_hyperstyle.py reads them whole)
    for key, kind in (("hypernet.conv1.weight", "hyperstyle"), ("encoder.linear.weight", "w_encoder")):
        assert (
            detect_kind({"state_dict": {key: torch.zeros(1), "encoder.input_layer.0.weight": torch.zeros(1)}}) == kind
        )
    # a pSp checkpoint (GradualStyleEncoder) is not e4e
    psp = S.e4e_checkpoint(
        S.cheap_state_dict(L.e4e_shapes(256)), None, 14, opts={"encoder_type": "GradualStyleEncoder"}
    )
    S.save(psp, tmp_path / "psp.pt")
    with pytest.raises(CheckpointError, match="not e4e's Encoder4Editing"):
        read_e4e(tmp_path / "psp.pt")


def test_arcface_plain_state_dict(tmp_path: Path) -> None:
    S.save(S.cheap_state_dict(L.arcface_shapes()), tmp_path / "model_ir_se50.pth", legacy=True)
    assert inspect_file(tmp_path / "model_ir_se50.pth").info == {"input_size": 112, "num_layers": 50, "mode": "ir_se"}
    assert len(read_arcface(tmp_path / "model_ir_se50.pth")) == 397


def test_mapper_only_ffclip_file(tmp_path: Path) -> None:
    S.save(
        {"state_dict": {f"att_mapper.{k}": v for k, v in S.cheap_state_dict(L.mapper_shapes(16)).items()}},
        tmp_path / "m.pt",
    )
    mapper, generator = read_ffclip(tmp_path / "m.pt")
    assert generator == {} and mapper["att_mapper.0.attention_layer.k_matrix.weight"].shape == (16, 1)
