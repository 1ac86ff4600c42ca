"""Where the repository and the test data are: the tests read their data from tests/data only."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "tests" / "data"
PHOTOS = DATA / "photos"
SCENES = DATA / "scenes"
PARITY = DATA / "parity"
