"""Issue 6, the parts: the official objective's pieces, schedule, prompts, sharding, metrics, file layouts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ffclip.app.cli import main
from ffclip.engine.training import losses
from ffclip.engine.training.data import epoch_indices, load_latents, steps_per_epoch
from ffclip.engine.training.metrics import PSNR_CAP, masked_psnr_ssim
from ffclip.engine.training.prompts import load_prompts, parse_prompts
from ffclip.engine.training.train import lr_at, lr_milestones


@pytest.mark.parametrize("size", [1024, 256])
def test_area_matrix_equals_nearest_upsampling_then_average_pooling(size: int) -> None:
    x = torch.randn(1, 1, size, size, generator=torch.Generator().manual_seed(0))
    up = 224 // np.gcd(size, 224)
    official = F.avg_pool2d(F.interpolate(x, scale_factor=up, mode="nearest"), size * up // 224)
    assert (up, size * up // 224) == ((7, 32) if size == 1024 else (7, 8))  # 1024: the official ×7 / 32
    torch.testing.assert_close(losses.area_resize(x), official, rtol=0, atol=2e-5)
    assert losses.area_matrix(size).shape == (224, size)


def test_identity_crop_is_the_official_one() -> None:
    x = torch.randn(2, 3, 1024, 1024, generator=torch.Generator().manual_seed(1))
    ref = F.adaptive_avg_pool2d(F.adaptive_avg_pool2d(x, 256)[:, :, 35:223, 32:220], 112)
    torch.testing.assert_close(losses.id_crop(x), ref)


def test_learning_rate_steps_as_the_official_multisteplr() -> None:
    assert lr_milestones(20, [0.5, 0.75, 0.9, 0.95]) == [10, 15, 18, 19]
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=5e-4)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, [10, 15, 18, 19], gamma=0.5)
    for epoch in range(20):
        assert lr_at(epoch, 5e-4, [10, 15, 18, 19], 0.5) == pytest.approx(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lr_milestones(1, [0.5, 0.75]) == [1, 1]  # a one-epoch run does not start decayed


def test_default_prompts_are_the_official_list() -> None:
    p = load_prompts()
    assert len(p) == 51 and len(p.unique) == 43
    assert p.prompts[:4] == ["Sad", "Surprise", "Fear", "Contempt"] and p.prompts.count("Sad") == 2
    assert {
        "Woman Aged 80",
        "Man Aged 10",
        "Blond hair",
        "Beard",
        "bowl cut hairstyle",
        "Blue eyes",
        "wearing glasses",
        "make up",
        "Bald",
    } <= set(p.unique)
    assert set(p.categories) == {"emotion", "age", "face", "eyes", "hair_colour", "hair_style"}
    custom = parse_prompts("# c\n\n[age]\nold\n young \nsmiling\n")
    assert custom.prompts == ["old", "young", "smiling"] and custom.categories == ["age"] * 3
    with pytest.raises(ValueError):
        parse_prompts("# nothing\n")


def test_epochs_are_sharded_like_distributed_sampler() -> None:
    shards = [epoch_indices(11, epoch=3, seed=42, rank=r, world_size=2) for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == 6
    assert set(np.concatenate(shards)) == set(range(11))
    assert not np.array_equal(epoch_indices(11, 0, 42), epoch_indices(11, 1, 42))
    assert steps_per_epoch(11, 4, 2) == 2


def test_latents_are_checked(tmp_path: Path) -> None:
    np.save(tmp_path / "bad.npy", np.zeros((3, 16, 512), np.float32))
    with pytest.raises(ValueError, match="16 W\\+ layers"):
        load_latents(tmp_path / "bad.npy", 18, 512)
    np.save(tmp_path / "w.npy", np.zeros((3, 512), np.float64))  # W codes broadcast to W+
    assert load_latents(tmp_path / "w.npy", 18, 512).array.shape == (3, 18, 512)


class _Tower(torch.nn.Module):
    """Stand-in for CLIP's image tower and ArcFace: a linear map of a pooled image."""

    def __init__(self, dim: int = 8) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(3 * 4 * 4, dim)

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(F.adaptive_avg_pool2d(x, 4).flatten(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.encode_image(x), dim=-1)


def _objective(**kw) -> losses.Objective:
    torch.manual_seed(0)
    weights = losses.LossWeights(**kw)
    text = torch.randn(3, 8)
    return losses.Objective(_Tower(), _Tower(), text, [0, 1, 2, 2], ["emotion", "age", "face", "face"], weights)


def test_clip_loss_is_summed_over_the_batch_and_weighted_per_category() -> None:
    w = torch.randn(4, 6, 8)
    x = torch.randn(4, 3, 32, 32)
    x_hat = x + 0.1 * torch.randn_like(x)
    entries = torch.tensor([0, 1, 2, 3])
    only_clip = {"id": 0.0, "latent": 0.0, "embd": 0.0}
    with torch.no_grad():
        total_sum, terms = _objective(**only_clip)(w, w, x_hat, entries, {})
        total_mean, _ = _objective(clip_reduction="mean", **only_clip)(w, w, x_hat, entries, {})
        weighted, _ = _objective(age=3.0, emotion=0.0, **only_clip)(w, w, x_hat, entries, {})
    assert float(total_sum) == pytest.approx(4 * float(total_mean), rel=1e-5)
    assert float(terms["loss_clip"]) == pytest.approx(float(total_mean), rel=1e-5)
    obj = _objective(**only_clip)
    with torch.no_grad():
        img = F.normalize(obj.clip_model.encode_image(losses.area_resize(x_hat)), dim=-1)
        per = 1 - (img * obj.text_features[obj.entry_to_text[entries]]).sum(-1)
    assert float(weighted) == pytest.approx(float(3 * per[1] + per[2] + per[3]), rel=1e-5)


def test_every_term_reaches_the_mapper() -> None:
    from ffclip.engine.models.mapper import DynamicMapper

    torch.manual_seed(0)
    obj = _objective()
    mapper = DynamicMapper(n_latent=6, dim=8)
    w = torch.randn(2, 6, 8)
    e = torch.randn(2, 1, 8)
    x = torch.randn(2, 3, 32, 32)
    for term in ("id", "clip", "latent", "embd"):
        weights = {k: (1.0 if k == term else 0.0) for k in ("id", "clip", "latent", "embd")}
        obj.weights = losses.LossWeights(**weights)
        mapper.zero_grad()
        w_hat = w + mapper(w, e)
        x_hat = x + w_hat.mean() * torch.ones_like(x) + 0.01 * w_hat[:, :3, :1, None].expand(-1, 3, 32, 32)
        loss, _ = obj(w, w_hat, x_hat, torch.tensor([0, 1]), obj.targets(x))
        loss.backward()
        grads = [p.grad.abs().sum() for p in mapper.parameters() if p.grad is not None]
        assert grads and float(sum(grads)) > 0, term


def test_masked_psnr_and_ssim() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 64, 64, generator=gen)
    ones = torch.ones(2, 1, 64, 64)
    psnr, ssim = masked_psnr_ssim(x, x, ones)
    assert psnr == [PSNR_CAP, PSNR_CAP] and ssim == [pytest.approx(1.0), pytest.approx(1.0)]
    y = (x + 0.1).clamp(0, 1)
    mask = torch.zeros_like(ones)
    mask[:, :, :, :32] = 1  # compare the left half only
    z = y.clone()
    z[:, :, :, 32:] = 1 - z[:, :, :, 32:]  # the right half changes completely
    psnr_l, _ = masked_psnr_ssim(x, z, mask)
    mse = float(((x - y)[0, :, :, :32] ** 2).mean())
    assert psnr_l[0] == pytest.approx(-10 * np.log10(mse), rel=1e-4)
    assert masked_psnr_ssim(x, z, torch.zeros_like(ones)) == ([None, None], [None, None])


def test_face_parser_has_the_official_unet_layout(tmp_path: Path) -> None:
    from ffclip.engine.training.parsenet import FaceParser, load_parsenet

    sd = FaceParser().state_dict()
    for key, shape in {
        "conv1.conv1.0.weight": (16, 3, 3, 3),
        "conv1.conv1.1.running_var": (16,),
        "center.conv2.0.weight": (256, 256, 3, 3),
        "up_concat4.up.weight": (256, 128, 2, 2),
        "up_concat1.conv.conv1.0.weight": (16, 32, 3, 3),
        "final.weight": (19, 16, 1, 1),
    }.items():
        assert tuple(sd[key].shape) == shape
    torch.save({f"module.{k}": v for k, v in sd.items()}, tmp_path / "parsenet.pth")  # saved from DDP
    assert isinstance(load_parsenet(tmp_path / "parsenet.pth"), FaceParser)
    torch.save({k: v for k, v in sd.items() if "final" not in k}, tmp_path / "broken.pth")
    with pytest.raises(Exception, match="final"):
        load_parsenet(tmp_path / "broken.pth")


def _tiny_latents(path: Path, n: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    np.save(path, (0.3 * rng.standard_normal((n, 14, 64))).astype(np.float32))
    return path


def test_the_text_loss_alone_is_optimised(tmp_path: Path) -> None:
    """Only the CLIP term, one prompt: the mapper learns to raise the image-text similarity."""
    (tmp_path / "p.txt").write_text("smiling\n")
    out = tmp_path / "clip_only"
    assert (
        main(
            [
                "train",
                "--profile",
                "tiny",
                "--latents",
                str(_tiny_latents(tmp_path / "t.npy", 2)),
                "--out",
                str(out),
                "--prompts",
                str(tmp_path / "p.txt"),
                "--id-lambda",
                "0",
                "--latent-lambda",
                "0",
                "--embd-lambda",
                "0",
                "--batch-size",
                "2",
                "--epochs",
                "12",
                "--lr",
                "2e-3",
                "--threads",
                "1",
                "--no-progress",
                "--image-interval",
                "0",
                "--save-interval",
                "1000",
            ]
        )
        == 0
    )
    steps = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    clip = [r["loss_clip"] for r in steps]
    assert set(steps[0]) >= {"loss_clip", "loss"} and "loss_id" not in steps[0]
    assert np.mean(clip[-5:]) < clip[0] - 0.01, clip


def test_the_background_loss_runs_with_a_face_parser(tmp_path: Path) -> None:
    from ffclip.engine.training.parsenet import FaceParser

    torch.manual_seed(0)
    torch.save(FaceParser().state_dict(), tmp_path / "parsenet.pth")
    out = tmp_path / "bg"
    assert (
        main(
            [
                "train",
                "--profile",
                "tiny",
                "--latents",
                str(_tiny_latents(tmp_path / "t.npy", 2)),
                "--out",
                str(out),
                "--parsenet",
                str(tmp_path / "parsenet.pth"),
                "--batch-size",
                "1",
                "--epochs",
                "1",
                "--max-steps",
                "1",
                "--threads",
                "1",
                "--no-progress",
                "--image-interval",
                "0",
                "--render-size",
                "64",
            ]
        )
        == 0
    )
    record = json.loads((out / "log.jsonl").read_text().splitlines()[0])
    assert np.isfinite(record["loss_background"])
    assert "background loss on: 2" in (out / "train.log").read_text()
    assert json.loads((out / "summary.json").read_text())["background_loss"] is True


def test_official_checkpoints_load_and_export(tmp_path: Path) -> None:
    """An official-layout file (what FFCLIP's Coach saves, pickled config included) exports to a
    mapper-only file that the engine's reader takes."""
    from ffclip.engine.checkpoints.layouts import read_ffclip
    from ffclip.engine.checkpoints.synthetic import official_size_files, save

    official = official_size_files(1024)["ffclip"]
    save(official, tmp_path / "ffclip_ffhq.pt")
    assert (
        main(["train", "--init", str(tmp_path / "ffclip_ffhq.pt"), "--export-mapper", str(tmp_path / "mapper.pt")]) == 0
    )
    mapper, generator = read_ffclip(tmp_path / "mapper.pt")
    assert generator == {} and len(mapper) == 80


def test_invalid_settings_are_errors_not_tracebacks(tmp_path: Path, capsys) -> None:
    lat = _tiny_latents(tmp_path / "t.npy", 2)
    assert main(["train", "--profile", "tiny", "--out", str(tmp_path / "o")]) == 2
    assert (
        main(
            [
                "train",
                "--profile",
                "tiny",
                "--latents",
                str(lat),
                "--out",
                str(tmp_path / "o"),
                "--render-size",
                "100",
                "--threads",
                "1",
            ]
        )
        == 2
    )
    np.save(tmp_path / "wrong.npy", np.zeros((2, 18, 512), np.float32))
    assert (
        main(
            [
                "train",
                "--profile",
                "tiny",
                "--latents",
                str(tmp_path / "wrong.npy"),
                "--out",
                str(tmp_path / "o"),
                "--threads",
                "1",
            ]
        )
        == 2
    )
    assert (
        main(["train", "--latents", str(lat), "--out", str(tmp_path / "o"), "--models", str(tmp_path / "empty_store")])
        == 2
    )
    err = capsys.readouterr()
    assert "models fetch" in err.out + err.err
