"""Shared test fixtures: the reference data the repository carries (tests/data, see its README), a
local HTTP server that serves official-layout model files the way Google Drive does, and the rule
that a test which starts a process says so (`@pytest.mark.process`: the quick subset leaves it out).

The tests mirror the code: tests/<package>/test_<module>.py; what they share is tests/support/."""

from __future__ import annotations

import io
import multiprocessing.process
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

# torch's first import runs `ldconfig -p` (cuda.pathfinder): done here, or it would count as a process
# started by whichever unmarked test happened to import torch first
import torch  # noqa: F401
from hypothesis import settings

from tests.support.http_files import Behaviour, Server, start_server, stop_server
from tests.support.paths import DATA

# Property tests: no per-example deadline (a wall-clock limit, and flaky on a shared 2-core machine);
# in CI the examples are derived from the test's name, so a run is reproducible.
settings.register_profile("ffclip", deadline=None, derandomize=bool(os.environ.get("CI")), print_blob=True)
settings.load_profile("ffclip")


@pytest.fixture(autouse=True)
def _a_process_is_marked(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Fail a test that starts a process (subprocess, multiprocessing) without the `process` or
    `gimp` mark, so that `-m "not slow and not process and not gimp"` stays quick and honest."""
    if request.node.get_closest_marker("process") or request.node.get_closest_marker("gimp"):
        yield
        return
    started: list[str] = []
    popen_init, process_start = subprocess.Popen.__init__, multiprocessing.process.BaseProcess.start

    def popen(self, args, *rest, **kwargs):
        started.append(repr(args)[:120])
        popen_init(self, args, *rest, **kwargs)

    def start(self):
        started.append(f"a {type(self).__name__}")
        process_start(self)

    monkeypatch.setattr(subprocess.Popen, "__init__", popen)
    monkeypatch.setattr(multiprocessing.process.BaseProcess, "start", start)
    yield
    if started:
        pytest.fail(f"this test starts a process ({started[0]}) but is not marked @pytest.mark.process")


@pytest.fixture(scope="session")
def parity_dir() -> Path:
    return DATA / "parity"


@pytest.fixture(scope="session")
def photos_dir() -> Path:
    return DATA / "photos"


@pytest.fixture
def server() -> Iterator[Server]:
    """A local HTTP server that misbehaves on request (tests/support/http_files.py)."""
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
    """The store's Drive ids served locally, behind the virus-scan confirm page. The files are
    synthetic, so no published sha256 or size applies to them (tests/engine/test_store.py sets some)."""
    import dataclasses

    from ffclip.engine.store import SPEC_BY_NAME, ModelStore

    monkeypatch.setenv("FFCLIP_DRIVE_URL", f"{server.base}/download")
    for spec_name, data in official_bytes.items():
        spec = ModelStore.spec(spec_name)
        monkeypatch.setitem(SPEC_BY_NAME, spec.name, dataclasses.replace(spec, published=None))
        server.files[spec.drive_id] = data
        server.behaviour[spec.drive_id] = Behaviour(drive_confirm=True)
    return server
