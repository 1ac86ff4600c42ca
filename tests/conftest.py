"""Shared test fixtures: the reference data the repository carries (tests/data, see its README)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import settings

# Property tests: no per-example deadline (a wall-clock limit, and flaky on a shared 2-core machine);
# in CI the examples are derived from the test's name, so a run is reproducible.
settings.register_profile("ffclip", deadline=None, derandomize=bool(os.environ.get("CI")), print_blob=True)
settings.load_profile("ffclip")

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "tests" / "data"


@pytest.fixture(scope="session")
def parity_dir() -> Path:
    return DATA / "parity"


@pytest.fixture(scope="session")
def photos_dir() -> Path:
    return DATA / "photos"
