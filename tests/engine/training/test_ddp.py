"""Issue 6: `torchrun --nproc_per_node 2` (gloo on CPU) runs the same training, and both ranks hold the
same mapper weights after a step."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ffclip.engine.checkpoints.layouts import read_ffclip
from ffclip.engine.inference import build_tiny
from ffclip.engine.profiles import TINY

pytestmark = pytest.mark.process  # every test here starts a process


def test_torchrun_two_processes_agree_on_the_weights(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    np.save(tmp_path / "train.npy", (0.3 * rng.standard_normal((8, 14, 64))).astype(np.float32))
    np.save(tmp_path / "val.npy", (0.3 * rng.standard_normal((3, 14, 64))).astype(np.float32))
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [  # torchrun of this interpreter: a `torchrun` on PATH may run another environment's code
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "ffclip.app",
        "train",
        "--profile",
        "tiny",
        "--latents",
        str(tmp_path / "train.npy"),
        "--val-latents",
        str(tmp_path / "val.npy"),
        "--out",
        str(out),
        "--epochs",
        "1",
        "--batch-size",
        "1",
        "--max-steps",
        "2",
        "--no-progress",
        "--image-interval",
        "0",
        "--device",
        "cpu",
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["backend"] == "gloo"
    assert summary["ddp_weight_max_abs_diff"] == {"after_first_step": 0.0, "at_end": 0.0}
    assert summary["steps"] == 2 and summary["samples"] == 8
    assert "ranks agree on the mapper weights" in proc.stdout
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if r["kind"] == "train"] == [1, 2]  # written once, by rank 0
    assert [r["kind"] for r in log].count("val") == 1  # validation over both ranks' shards, reduced
    mapper, generator = read_ffclip(out / "checkpoints" / "last.pt")
    tiny = build_tiny(TINY)
    assert set(mapper) == set(tiny.mapper.state_dict()) and set(generator) == set(tiny.generator.state_dict())
