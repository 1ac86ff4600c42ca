"""Shared test fixtures: the reference data the repository carries (tests/data, see its README)."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "tests" / "data"


@pytest.fixture(scope="session")
def parity_dir() -> Path:
    return DATA / "parity"


@pytest.fixture(scope="session")
def photos_dir() -> Path:
    return DATA / "photos"
