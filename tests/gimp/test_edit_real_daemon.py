"""The GIMP plug-in's job against the real daemon (`serve --profile tiny --token T`), not the fake.

The edit sends the token from the settings; FFCLIP Cancel, a separate process, reads the job-state
file that `run_edit` wrote and cancels with the token saved there (gimp/edit.py `cancel_running`).
tests/gimp/test_edit.py checks the same flows against tests/support/engine_server.py, which
ignores tokens.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ffclip.gimp import edit as gimp_edit
from ffclip.gimp import settings as gimp_settings
from ffclip.plugin.client import EngineClient
from tests.support.daemon import Daemon

pytestmark = pytest.mark.slow

TOKEN = "tiny-t0ken"
CANCEL = "from ffclip.gimp import edit; print(edit.cancel_running())"


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    log = tmp_path_factory.mktemp("tiny-token") / "engine.log"
    process = Daemon("--port", "0", "--profile", "tiny", "--device", "cpu", "--token", TOKEN, "--log-file", str(log))
    with EngineClient(process.url, token=TOKEN, timeout=120) as client:
        while client.status()["state"] == "loading":
            time.sleep(0.2)
    yield process
    assert process.stop() == 0


@pytest.fixture(autouse=True)
def state_dir(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("FFCLIP_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.delenv("FFCLIP_ENGINE_URL", raising=False)
    return tmp_path / "state"


@pytest.fixture(scope="module")
def layer(photos_dir) -> tuple[bytes, int, int]:
    from PIL import Image

    with Image.open(photos_dir / "astronaut.png") as im:
        im = im.convert("RGBA")
        return im.tobytes(), im.width, im.height


class Stages(gimp_edit.Progress):
    """Records the stage texts the plug-in shows; runs `on_detect` once the engine starts detecting."""

    def __init__(self, on_detect=None):
        self.texts: list[str] = []
        self.on_detect = on_detect

    def text(self, message: str) -> None:
        self.texts.append(message)
        if self.on_detect is not None and message == gimp_edit.stage_text("detect"):
            self.on_detect()
            self.on_detect = None


def _edit(prompt: str, url: str, rgba: bytes, w: int, h: int, token: str | None, progress) -> gimp_edit.NewLayer:
    """What the GIMP entry does with the procedure's arguments (a new layer with its mask)."""
    args = gimp_edit.ProcedureArgs(prompt, url=url)
    return gimp_edit.run_edit(args.params(), args.output, args.url, rgba, w, h, None, _settings(token), progress)


def _settings(token: str | None) -> dict:
    return dict(gimp_settings.DEFAULTS, token=token, timeout=300)


def _jobs(daemon) -> dict:
    with EngineClient(daemon.url, token=TOKEN, timeout=30) as client:
        return client.status()["jobs"]


def _cancel_in_another_process(state_dir: Path) -> str:
    """What Filters → FFCLIP Cancel does: a new process, its only link the job-state file."""
    env = dict(os.environ, FFCLIP_STATE_DIR=str(state_dir))
    done = subprocess.run([sys.executable, "-c", CANCEL], capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_the_edit_sends_the_token_from_the_settings(daemon, layer) -> None:
    rgba, w, h = layer
    out = _edit("smiling", daemon.url, rgba, w, h, TOKEN, Stages())
    x, y, rw, rh = out.region
    assert 0 < rw < w and 0 < rh < h and x >= 0 and y >= 0
    assert out.mask is not None and len(out.mask) == rw * rh and max(out.mask) == 255 and min(out.mask) == 0
    assert len(out.layer_rgba) == rw * rh * 4
    assert gimp_settings.read_job_state() is None


@pytest.mark.parametrize("token", [None, "wrong", TOKEN[:-1], TOKEN.upper()])
def test_a_missing_or_wrong_token_is_a_readable_error(daemon, layer, token: str | None) -> None:
    rgba, w, h = layer
    with pytest.raises(gimp_edit.PluginError) as info:
        _edit("x", daemon.url, rgba, w, h, token, Stages())
    assert str(info.value).startswith("The FFCLIP engine refused the access token. Check the token in")


@pytest.mark.process
def test_cancel_uses_the_token_saved_with_the_job(daemon, layer, state_dir) -> None:
    rgba, w, h = layer
    other = bytearray(rgba)
    other[0] ^= 1  # another photo for the engine's cache: the whole pipeline runs, seconds of it
    before = _jobs(daemon)
    seen: dict = {}

    def cancel() -> None:  # the job is on the device now, detecting; the rest takes seconds
        seen["state"] = gimp_settings.read_job_state()
        seen["answer"] = _cancel_in_another_process(state_dir)

    progress = Stages(on_detect=cancel)
    with pytest.raises(gimp_edit.Cancelled):
        # the edit's own settings carry the token; FFCLIP Cancel's process has only the state file
        _edit("blond hair", daemon.url, bytes(other), w, h, TOKEN, progress)
    state = seen["state"]
    assert state["token"] == TOKEN and state["url"] == gimp_settings.normalize_url(daemon.url)
    assert seen["answer"] == "Asked the FFCLIP engine to cancel the running edit."
    assert gimp_edit.stage_text("blend") not in progress.texts
    after = _jobs(daemon)
    assert after.get("cancelled", 0) == before.get("cancelled", 0) + 1
    assert after.get("done", 0) == before.get("done", 0)
    assert gimp_settings.read_job_state() is None
    assert _cancel_in_another_process(state_dir) == "No FFCLIP edit is running."


def test_cancel_without_the_saved_token_is_refused(daemon) -> None:
    """The daemon does check the cancel's token: a state file without one gets a readable refusal."""
    gimp_settings.write_job_state(gimp_settings.normalize_url(daemon.url), "0" * 32, None)
    with pytest.raises(gimp_edit.PluginError, match="^The FFCLIP engine refused the access token"):
        gimp_edit.cancel_running()
