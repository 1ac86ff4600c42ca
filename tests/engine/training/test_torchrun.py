"""Issue 15: `invert-folder` and `evaluate` under torchrun (2 processes, gloo on the CPU) give the
single-process output; each rank does its own share, and a killed run resumes per rank without
redoing finished work. Also: detection runs in worker processes, and a worker that dies on a photo
costs that photo only."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from ffclip.app.cli import main
from ffclip.engine.inference import build_tiny
from ffclip.engine.models.mapper import DynamicMapper
from ffclip.engine.profiles import TINY
from ffclip.engine.training import evaluate as evaluate_mod
from ffclip.engine.training.ckpt import save_checkpoint
from ffclip.engine.training.photos import CRASHED, PhotoPipeline, PrepOptions, prepare_photo
from tests.support.crashing_prepare import crashing_prepare

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
N_PHOTOS = 18
pytestmark = pytest.mark.slow


def torchrun_cmd(*args: str) -> list[str]:
    """torchrun of this interpreter (a `torchrun` on PATH may belong to another environment)."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    return [*launcher, "-m", "ffclip.app", *args]


def torchrun(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(torchrun_cmd(*args), env=ENV, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


# --- invert-folder ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def photos(photos_dir: Path, tmp_path_factory) -> Path:
    """18 files: the four test photos at 1/2 and 1/3 size, mirrored copies in a sub-folder, a
    faceless image and a broken file (small, so that CI's two cores get through them quickly)."""
    d = tmp_path_factory.mktemp("photos")
    (d / "sub").mkdir()
    for path in sorted(photos_dir.glob("*.*g")):
        with Image.open(path) as im:
            rgb = im.convert("RGB")
        for f in (2, 3):
            small = rgb.reduce(f)
            small.save(d / f"{path.stem}_r{f}.jpg", quality=92)
            ImageOps.mirror(small).save(d / "sub" / f"{path.stem}_r{f}_mirror.png")
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((120, 160)) * 255).astype(np.uint8)).save(d / "noise.png")
    (d / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a JPEG")
    return d


def _invert_args(photos: Path, out: Path, *extra: str) -> list[str]:
    common = ["--profile", "tiny", "--threads", "1", "--no-progress", "--device", "cpu"]
    return ["invert-folder", str(photos), "-o", str(out), *common, *extra]


@pytest.fixture(scope="module")
def reference(photos: Path, tmp_path_factory) -> Path:
    """The single-process run (detection in this process)."""
    out = tmp_path_factory.mktemp("single") / "latents.npy"
    assert main(_invert_args(photos, out, "--workers", "0")) == 0
    return out


def _index(out: Path) -> dict:
    return json.loads(out.with_name(out.stem + ".index.json").read_text())


def _assert_same_output(out: Path, reference: Path) -> None:
    assert _index(out) == _index(reference)  # same files, order, statuses, boxes, scores, rows
    codes, ref = np.load(out), np.load(reference)
    assert codes.shape == ref.shape == (16, TINY.n_latent, TINY.style_dim)
    np.testing.assert_allclose(codes, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.process
def test_invert_folder_on_two_ranks_equals_one_process(photos: Path, reference: Path, tmp_path: Path) -> None:
    out = tmp_path / "latents.npy"
    proc = torchrun(*_invert_args(photos, out, "--report", str(tmp_path / "report.json"), "--batch-size", "3"))
    _assert_same_output(out, reference)
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["world_size"] == 2 and report["photos"] == N_PHOTOS and report["faces"] == 16
    assert [r["photos"] for r in report["ranks"]] == [9, 9]  # each rank its own half
    assert sum(r["faces"] for r in report["ranks"]) == 16
    assert all(r["workers"] >= 1 for r in report["ranks"])  # detection in worker processes
    assert "rank 1: 9 photo(s)" in proc.stdout and not (tmp_path / "latents.npy.partial").exists()


def _finished_per_rank(partial: Path) -> dict[str, int]:
    counts = {}
    for state in sorted(partial.glob("rank*/state.json")):
        counts[state.parent.name] = len(json.loads(state.read_text())["entries"])
    return counts


def _children(pid: int) -> list[int]:
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def _kill_like_a_lost_machine(torchrun_pid: int) -> None:
    """SIGKILL torchrun and every rank with its detection workers. torchrun starts each rank in
    its own session, so a rank's process group holds the rank and its workers."""
    ranks = _children(torchrun_pid)
    os.kill(torchrun_pid, signal.SIGKILL)
    for pid in ranks:
        with contextlib.suppress(ProcessLookupError):  # already gone
            os.killpg(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while not all(_gone(pid) for pid in ranks) and time.monotonic() < deadline:
        time.sleep(0.05)


def _descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        kids = _children(todo.pop())
        found += kids
        todo += kids
    return found


@pytest.mark.process
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the ranks through /proc")
def test_ranks_and_their_workers_end_when_torchrun_is_killed(photos: Path, tmp_path: Path) -> None:
    out = tmp_path / "latents.npy"
    partial = tmp_path / "latents.npy.partial"
    cmd = torchrun_cmd(*_invert_args(photos, out, "--flush-every", "1", "--batch-size", "1"))
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    family: list[int] = []
    try:
        deadline = time.monotonic() + 240
        while len(_finished_per_rank(partial)) < 2:  # both ranks at work, their detection workers started
            assert proc.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.02)
        family = _descendants(proc.pid)
        assert len(family) >= 4, family  # two ranks, a detection worker or more each
        os.kill(proc.pid, signal.SIGKILL)  # torchrun alone, as a lost machine's OOM killer would
        proc.wait()
        deadline = time.monotonic() + 30
        while not all(_gone(pid) for pid in family) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [pid for pid in family if not _gone(pid)] == []
    finally:
        for pid in family or _descendants(proc.pid):  # whatever is left, however the test ended
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.kill()


@pytest.mark.process
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the ranks through /proc")
def test_a_killed_two_rank_run_resumes_per_rank(photos: Path, reference: Path, tmp_path: Path) -> None:
    out = tmp_path / "latents.npy"
    partial = tmp_path / "latents.npy.partial"
    cmd = torchrun_cmd(*_invert_args(photos, out, "--flush-every", "1", "--batch-size", "1"))
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        # once each rank has saved some photos
        while len(_finished_per_rank(partial)) < 2 or min(_finished_per_rank(partial).values()) < 1:
            assert proc.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.02)
    finally:
        _kill_like_a_lost_machine(proc.pid)
        proc.wait()
    finished = _finished_per_rank(partial)
    done = sum(finished.values())
    assert not out.exists() and 2 <= done < N_PHOTOS, finished

    torchrun(*_invert_args(photos, out, "--report", str(tmp_path / "report.json")))
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["resumed_from"] == "partial"
    assert report["reused"] == done and report["inverted_this_run"] == N_PHOTOS - done
    assert sum(r["photos"] for r in report["ranks"]) == N_PHOTOS - done  # nothing finished is redone
    _assert_same_output(out, reference)


def test_progress_of_other_layouts_and_world_sizes_is_reused(
    photos: Path, reference: Path, tmp_path: Path, monkeypatch
) -> None:
    """A single process resumes from (a) the one-folder progress of the version before ranks and
    (b) the part of a rank that it does not have (an earlier run on more processes)."""
    out = tmp_path / "latents.npy"
    partial = tmp_path / "latents.npy.partial"
    args = _invert_args(photos, out, "--workers", "0", "--flush-every", "1")
    monkeypatch.setattr(PhotoPipeline, "run", _stop_after(PhotoPipeline.run, 5))
    assert main(args) == 130
    for path in (partial / "rank00000").iterdir():  # (a): state.json and chunks in OUT.partial/
        path.rename(partial / path.name)
    (partial / "rank00000").rmdir()
    assert main(args) == 130  # 5 reused, 5 more in rank00000/
    (partial / "rank00000").rename(partial / "rank00001")  # (b)
    monkeypatch.undo()

    assert main(_invert_args(photos, out, "--workers", "0", "--report", str(tmp_path / "r.json"))) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["reused"] == 10 and report["inverted_this_run"] == N_PHOTOS - 10
    _assert_same_output(out, reference)


def _stop_after(run, n: int):
    def limited(self, rels):
        for k, item in enumerate(run(self, rels)):
            if k == n:
                raise KeyboardInterrupt
            yield item

    return limited


# --- worker processes ------------------------------------------------------------------------------


@pytest.mark.process
def test_a_worker_that_dies_costs_only_its_photo(photos: Path, tmp_path: Path) -> None:
    folder = tmp_path / "with_crash"
    folder.mkdir()
    for name in ("obama_r3.jpg", "noise.png"):
        shutil.copy(photos / name, folder / name)
    shutil.copy(photos / "astronaut_r3.jpg", folder / "wait_astronaut.jpg")
    shutil.copy(photos / "obama_r3.jpg", folder / "crash_obama.jpg")
    rels = ["wait_astronaut.jpg", "crash_obama.jpg", "obama_r3.jpg", "noise.png"]
    options = PrepOptions(max_pixels=10**8)
    with PhotoPipeline(folder, options, workers=2, prepare=crashing_prepare) as pipeline:
        results = list(pipeline.run(rels))
    assert [r.rel for r in results] == rels  # in order, none lost
    # the photo in flight in the other worker is not blamed: retried alone, it is fine
    assert [r.entry["status"] for r in results] == ["ok", "unreadable", "ok", "no_face"]
    assert results[1].entry["reason"] == CRASHED
    # two deaths (in the first pool, then again in the second, which the photo's retry alone
    # confirms); the other photos in flight are resubmitted, not retried one by one
    assert pipeline.crashes == 2
    for got in (results[0], results[2]):  # the same crops as in this process
        np.testing.assert_array_equal(got.crops, prepare_photo(folder, got.rel, options).crops)


# --- evaluate --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def eval_data(tmp_path_factory) -> Path:
    """Ten tiny latents and a seeded (untrained) mapper-only checkpoint."""
    d = tmp_path_factory.mktemp("eval")
    g = build_tiny(TINY).generator
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        w = g.mapping(torch.randn(10, TINY.style_dim, generator=gen))
    w = w[:, None].repeat(1, TINY.n_latent, 1) + 0.05 * torch.randn(10, TINY.n_latent, TINY.style_dim, generator=gen)
    np.save(d / "latents.npy", w.numpy().astype(np.float32))
    torch.manual_seed(0)
    save_checkpoint(d / "mapper.pt", DynamicMapper(n_latent=TINY.n_latent, dim=TINY.style_dim), None, {})
    (d / "prompts.txt").write_text("smiling\nblond hair\n")
    return d


def _eval_args(d: Path, out: Path, *extra: str) -> list[str]:
    inputs = [
        "--latents",
        str(d / "latents.npy"),
        "--checkpoint",
        str(d / "mapper.pt"),
        "--prompts",
        str(d / "prompts.txt"),
    ]
    common = ["--batch-size", "2", "--grid-rows", "3", "--threads", "1", "--device", "cpu"]
    return ["evaluate", "--profile", "tiny", *inputs, "-o", str(out), *common, *extra]


@pytest.fixture(scope="module")
def eval_reference(eval_data: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("eval_single")
    assert main(_eval_args(eval_data, out)) == 0
    return out


def _assert_same_report(out: Path, reference: Path) -> None:
    got, ref = json.loads((out / "report.json").read_text()), json.loads((reference / "report.json").read_text())
    assert got["samples"] == ref["samples"] == 10
    assert [p["prompt"] for p in got["prompts"]] == [p["prompt"] for p in ref["prompts"]]
    for a, b in [*zip(got["prompts"], ref["prompts"], strict=True), (got["mean"], ref["mean"])]:
        for metric in evaluate_mod.METRICS:
            assert a[metric] == pytest.approx(b[metric], rel=1e-5, abs=1e-6), metric
    names = sorted(p.name for p in (reference / "images").iterdir())
    assert names == sorted(p.name for p in (out / "images").iterdir()) and len(names) == 3 * 3
    for name in names:
        a = np.asarray(Image.open(out / "images" / name), dtype=np.int16)
        b = np.asarray(Image.open(reference / "images" / name), dtype=np.int16)
        assert np.abs(a - b).max() <= 1, name  # float noise may move a rounding by one level
    assert (out / "index.html").read_text().count("<img") == 3 * 3
    assert not (out / "partial").exists()


@pytest.mark.process
def test_evaluate_on_two_ranks_equals_one_process(eval_data: Path, eval_reference: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    proc = torchrun(*_eval_args(eval_data, out))
    _assert_same_report(out, eval_reference)
    report = json.loads((out / "report.json").read_text())
    assert report["world_size"] == 2 and [r["samples"] for r in report["ranks"]] == [5, 5]
    assert "rank 1: evaluated 5/5 samples" in proc.stdout


def test_an_interrupted_evaluation_resumes_on_two_ranks(
    eval_data: Path, eval_reference: Path, tmp_path: Path, monkeypatch
) -> None:
    out = tmp_path / "report"
    calls = {"n": 0}
    original = evaluate_mod.evaluate_batch

    def flaky(ctx, idx):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return original(ctx, idx)

    monkeypatch.setattr(evaluate_mod, "evaluate_batch", flaky)
    assert main(_eval_args(eval_data, out)) == 130  # two batches of two samples saved
    monkeypatch.undo()
    assert not (out / "report.json").exists()

    proc = torchrun(*_eval_args(eval_data, out))
    report = json.loads((out / "report.json").read_text())
    assert report["reused"] == 4 and report["evaluated_this_run"] == 6
    assert [r["samples"] for r in report["ranks"]] == [3, 3]
    assert "4 sample(s) reused" in proc.stdout
    _assert_same_report(out, eval_reference)


@pytest.mark.process
def test_every_rank_stops_with_rank_0s_error(eval_data: Path, tmp_path: Path) -> None:
    """Rank 0 finds progress of another evaluation: both ranks exit with its message (none waits
    for rank 0 until a timeout); --restart discards it."""
    out = tmp_path / "report"
    (out / "partial").mkdir(parents=True)
    (out / "partial" / "config.json").write_text(json.dumps({"version": 1, "strength": 3.0}))
    proc = subprocess.run(
        torchrun_cmd(*_eval_args(eval_data, out)), env=ENV, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode != 0
    for who in ("error: ", "error (rank 1): "):
        assert f"{who}{out / 'partial'} holds an interrupted evaluation of something else" in proc.stderr
    assert "differs in: checkpoint, latents, prompts, strength" in proc.stderr and "--restart" in proc.stderr
    # a rank returned 2 (torchrun may stop the other before it exits: its message is above); the
    # one traceback is torchrun's own report of the failure
    assert "exitcode  : 2" in proc.stderr
    assert proc.stderr.count("Traceback") == 1 and "ChildFailedError" in proc.stderr
    assert main(_eval_args(eval_data, out, "--restart", "--limit", "2")) == 0
