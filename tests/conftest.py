"""Shared test fixtures: the reference data the repository carries (tests/data, see its README), and a
local HTTP server that serves official-layout model files the way Google Drive does."""

from __future__ import annotations

import io
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

# Property tests: no per-example deadline (a wall-clock limit, and flaky on a shared 2-core machine);
# in CI the examples are derived from the test's name, so a run is reproducible.
settings.register_profile("ffclip", deadline=None, derandomize=bool(os.environ.get("CI")), print_blob=True)
settings.load_profile("ffclip")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from http_files import Behaviour, Server, start_server, stop_server  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "tests" / "data"


@pytest.fixture(scope="session")
def parity_dir() -> Path:
    return DATA / "parity"


@pytest.fixture(scope="session")
def photos_dir() -> Path:
    return DATA / "photos"


@pytest.fixture
def server() -> Iterator[Server]:
    """A local HTTP server that misbehaves on request (tests/http_files.py)."""
    srv = start_server()
    yield srv
    stop_server(srv)


@pytest.fixture(scope="module")
def official_bytes() -> dict[str, bytes]:
    """Full-size synthetic FFHQ files (zero-stride tensors: tens of KB each), by store name."""
    from ffclip.engine.checkpoints import synthetic as S

    out = {}
    for spec_name, ckpt in S.official_size_files(1024).items():
        buf = io.BytesIO()
        S.save(ckpt, buf)
        out[spec_name] = buf.getvalue()
    return out


@pytest.fixture
def drive(server: Server, official_bytes: dict[str, bytes], monkeypatch: pytest.MonkeyPatch) -> Server:
    """The store's Drive ids served locally, behind the virus-scan confirm page."""
    from ffclip.engine.store import ModelStore

    monkeypatch.setenv("FFCLIP_DRIVE_URL", f"{server.base}/download")
    for spec_name, data in official_bytes.items():
        drive_id = ModelStore.spec(spec_name).drive_id
        server.files[drive_id] = data
        server.behaviour[drive_id] = Behaviour(drive_confirm=True)
    return server
