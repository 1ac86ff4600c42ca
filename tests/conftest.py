"""Shared test fixtures: where the project's shared reference data lives."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("FFCLIP_SHARED", REPO.parent / "shared"))


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.fail(f"shared reference data not found at {SHARED} (set FFCLIP_SHARED)")
    return SHARED


@pytest.fixture(scope="session")
def parity_dir(shared_dir: Path) -> Path:
    return shared_dir / "parity"


@pytest.fixture(scope="session")
def photos_dir(shared_dir: Path) -> Path:
    return shared_dir / "photos"
