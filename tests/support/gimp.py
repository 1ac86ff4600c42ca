"""What the real-GIMP tests share: their prerequisites (skipped here, failed in CI) and the result
lines their GIMP-side scripts print."""

from __future__ import annotations

import json
import os
import subprocess

import pytest


def need(ok: bool, why: str) -> None:
    """GIMP-side prerequisites: fail under CI, skip elsewhere."""
    if ok:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{why} (CI is set, so this is a failure; run `bash .ci/setup-gimp.sh`)")
    pytest.skip(why)


def result_lines(proc: subprocess.CompletedProcess, mark: str = "RESULT ") -> list[dict]:
    return [json.loads(line[len(mark) :]) for line in proc.stdout.splitlines() if line.startswith(mark)]
