"""The GIMP plug-in's logic without GIMP: request, progress, pixels, errors, job, cancel, installer, batch."""

from __future__ import annotations

import os
import stat
import sys
import threading
import time

import pytest

from ffclip.gimp import edit as gimp_edit
from ffclip.gimp import settings as gimp_settings
from ffclip.plugin import paths
from ffclip.plugin.protocol import Attribute, ConnectionFailed, EditParams, EditResult, EngineError
from tests.support.engine_server import FakeEngineServer, fake_mask, fake_region
from tests.support.net import free_port
from tests.support.paths import REPO


@pytest.fixture(autouse=True)
def _state_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("FFCLIP_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.delenv("FFCLIP_ENGINE_URL", raising=False)


@pytest.fixture(scope="module")
def fake_engine():
    with FakeEngineServer() as engine:
        yield engine


class Recorder(gimp_edit.Progress):
    def __init__(self):
        self.texts, self.fractions, self.pulses = [], [], 0

    def text(self, message):
        self.texts.append(message)

    def fraction(self, value):
        self.fractions.append(value)

    def pulse(self):
        self.pulses += 1


def image(width, height, alpha=255):
    return bytes(
        (x * 7 + y * 3 + c * 50) % 256 if c < 3 else alpha
        for y in range(height)
        for x in range(width)
        for c in range(4)
    )


def test_procedure_arguments_become_edit_params():
    params = gimp_edit.ProcedureArgs("  smiling,   blond hair ", 1.5, "index", 2, "layer").params()
    assert params.edits == (Attribute("smiling, blond hair", 1.5),) and params.faces == (2,)
    assert gimp_edit.ProcedureArgs("x", face_mode="largest").params().faces == "largest"
    assert gimp_edit.ProcedureArgs("x").params(selection=True) == EditParams.single("x", selection=True)
    for bad in (
        gimp_edit.ProcedureArgs(""),
        gimp_edit.ProcedureArgs("x", strength=2.5),
        gimp_edit.ProcedureArgs("x", strength=-0.1),
        gimp_edit.ProcedureArgs("x", strength=float("nan")),
        gimp_edit.ProcedureArgs("x", face_mode="some"),
        gimp_edit.ProcedureArgs("x", output="png"),
        gimp_edit.ProcedureArgs("x", face_mode="index", face_index=-1),
        gimp_edit.ProcedureArgs("x" * 1001),
    ):
        with pytest.raises(gimp_edit.PluginError):
            bad.params()


def test_layer_name():
    assert gimp_edit.layer_name(EditParams.single("smiling")) == "FFCLIP: smiling 1"
    assert gimp_edit.layer_name(EditParams.single(" a\n b ", strength=0.8)) == "FFCLIP: a b 0.8"
    two = EditParams((Attribute("smiling", 0.8), Attribute("grey hair", 1.25)))
    assert gimp_edit.layer_name(two) == "FFCLIP: smiling 0.8 + grey hair 1.25"  # the strengths tell edits apart
    assert len(gimp_edit.layer_name(EditParams.single("x" * 500))) == len("FFCLIP: ") + 120


def test_procedure_arguments_of_an_edit_give_the_edit_back():
    """What the dialog stores as the procedure's last values (Repeat, WITH_LAST_VALS) asks for the
    same edit."""
    for params in (
        EditParams.single("smiling", strength=0.8),
        EditParams((Attribute("smiling", 0.8), Attribute("grey hair", 1.2), Attribute("beard", 0.35)), "largest"),
        EditParams.single("bald", faces=(2,)),
        EditParams.single("a red car", domain="car"),
    ):
        args = gimp_edit.ProcedureArgs.of(params, "layer")
        assert args.output == "layer" and args.params() == params


def test_progress_is_monotone_and_named():
    rec = Recorder()
    relay = gimp_edit.ProgressRelay(rec)
    relay("queued", 2)
    for stage in gimp_edit.STAGES:
        for v in (0.0, 0.5, 1.0):
            relay(stage, v)
    relay("detect", 0.0)  # late or repeated messages never move the bar back
    assert rec.fractions == sorted(rec.fractions)
    assert rec.fractions[-1] == pytest.approx(1.0)
    assert rec.pulses == 1
    assert "position 2" in rec.texts[0]
    assert any("Finding faces" in t for t in rec.texts)
    assert gimp_edit.overall_progress("blend", 1.0) == pytest.approx(1.0)
    assert gimp_edit.overall_progress("nope", 0.3) is None


@pytest.mark.parametrize("domain", ["car", "church"])
def test_progress_of_a_car_or_church_speaks_of_it_not_of_faces(domain):
    rec = Recorder()
    relay = gimp_edit.ProgressRelay(rec, domain)
    for stage in gimp_edit.STAGES:
        relay(stage, 0.0)
    assert not any("face" in t.lower() for t in rec.texts), rec.texts
    assert f"FFCLIP: Framing the {domain}\u2026" in rec.texts
    assert f"FFCLIP: Drawing the edited {domain}\u2026" in rec.texts


def run(args: gimp_edit.ProcedureArgs, *rest, **options):
    """What the GIMP entry does with its procedure arguments."""
    return gimp_edit.run_edit(args.params(), args.output, args.url, *rest, **options)


def test_crop_rows():
    w, h = 5, 4
    data = bytes(range(w * h))
    assert gimp_edit.crop(data, w, h, (1, 1, 2, 2), 1) == bytes([6, 7, 11, 12])
    with pytest.raises(ValueError):
        gimp_edit.crop(data, w, h, (4, 0, 2, 1), 1)


def test_compose_with_mask_keeps_source_alpha_and_limits_to_selection():
    n = 4
    result = bytes([10, 20, 30, 255, 11, 21, 31, 128, 12, 22, 32, 0, 13, 23, 33, 200])
    source = bytes([1, 2, 3, 255, 1, 2, 3, 100, 1, 2, 3, 255, 1, 2, 3, 0])
    layer, mask = gimp_edit.compose_result(result, source, None, "layer-mask")
    assert layer[0::4] == result[0::4] and layer[1::4] == result[1::4]
    assert layer[3::4] == bytes([255, 100, 255, 0])
    assert mask == bytes([255, 128, 0, 200])
    _, mask = gimp_edit.compose_result(result, source, bytes([0, 255, 255, 100]), "layer-mask")
    assert mask == bytes([0, 128, 0, 100])
    assert len(layer) == 4 * n


def test_compose_without_mask_puts_blend_in_alpha():
    result = bytes([10, 20, 30, 255, 11, 21, 31, 128])
    layer, mask = gimp_edit.compose_result(result, bytes([0, 0, 0, 255] * 2), bytes([255, 64]), "layer")
    assert mask is None
    assert layer[3::4] == bytes([255, 64])
    layer, _ = gimp_edit.compose_result(result, bytes([0, 0, 0, 255, 0, 0, 0, 0]), None, "layer")
    assert layer[3::4] == bytes([255, 0])  # transparent source stays transparent


def test_result_size_and_region_are_checked():
    with pytest.raises(gimp_edit.PluginError):
        gimp_edit.compose_result(b"\0" * 8, b"\0" * 12, None, "layer")
    assert gimp_edit.check_region([1, 2, 3, 4], 10, 10) == (1, 2, 3, 4)
    for bad in ([8, 0, 5, 5], [0, 0, 0, 3], "x", [1, 2, 3]):
        with pytest.raises(gimp_edit.PluginError):
            gimp_edit.check_region(bad, 10, 10)


@pytest.mark.parametrize("code", ["no_face", "models_missing", "too_large", "busy", "internal", "bad_image"])
def test_engine_errors_read_as_sentences(code):
    text = gimp_edit.error_message(EngineError(code, "details here"))
    assert "Traceback" not in text and code not in text.split()[0]
    assert len(text) > 20


def test_unreachable_message_says_how_to_start():
    text = gimp_edit.error_message(ConnectionFailed("refused"), "ws://127.0.0.1:9999/")
    assert "not running at ws://127.0.0.1:9999/" in text
    assert "ffclip-engine serve --port 9999" in text
    assert "--autostart" in text


def test_run_edit_against_fake_engine(fake_engine):
    w, h = 40, 30
    rgba = image(w, h)
    rec = Recorder()
    out = run(
        gimp_edit.ProcedureArgs("smiling", url=fake_engine.url), rgba, w, h, None, dict(gimp_settings.DEFAULTS), rec
    )
    region = fake_region(w, h)
    assert out.region == region
    assert out.mask == fake_mask(region[2], region[3])
    assert len(out.layer_rgba) == region[2] * region[3] * 4
    assert rec.fractions[-1] == pytest.approx(1.0)
    assert gimp_settings.read_job_state() is None  # cleaned up
    sent = fake_engine.requests[-1]
    assert sent["edits"] == [{"prompt": "smiling", "strength": 1.0}]
    assert sent["faces"] == "all" and sent["selection_bytes"] is None


def test_run_edit_shows_the_engines_download_while_the_job_waits(fake_engine):
    w, h = 40, 30
    rec = Recorder()
    out = run(
        gimp_edit.ProcedureArgs("download then smile", url=fake_engine.url),
        image(w, h),
        w,
        h,
        None,
        dict(gimp_settings.DEFAULTS),
        rec,
    )
    assert out.region == fake_region(w, h)
    shown = rec.texts[rec.texts.index("FFCLIP: Downloading model files (100 of 400 MB, 2 files to go)\u2026") :]
    assert shown[:3] == [
        "FFCLIP: Downloading model files (100 of 400 MB, 2 files to go)\u2026",
        "FFCLIP: Downloading model files (300 of 400 MB, 2 files to go)\u2026",
        "FFCLIP: The engine is loading its models\u2026",
    ]
    assert shown[3] == gimp_edit.stage_text("detect")  # the edit's own progress follows
    assert rec.fractions[:2] == [0.25, 0.75]  # the download's own fraction, then the edit's


def test_download_text() -> None:
    status = {"state": "downloading", "download": {"file": "x.pt", "done": 5_000_000, "total": None, "files_left": 1}}
    assert gimp_edit.download_text(status) == "Downloading model files (5 MB)\u2026"
    assert gimp_edit.download_text({"state": "ready"}) is None


def test_run_edit_sends_selection_and_limits_mask(fake_engine):
    w, h = 20, 20
    selection = bytes(255 if x < 10 else 0 for y in range(h) for x in range(w))
    out = run(
        gimp_edit.ProcedureArgs("x", url=fake_engine.url, output="layer"),
        image(w, h),
        w,
        h,
        selection,
        dict(gimp_settings.DEFAULTS),
        Recorder(),
    )
    assert fake_engine.requests[-1]["selection_bytes"] == selection
    x0, y0, rw, rh = out.region
    alphas = out.layer_rgba[3::4]
    for j in range(rh):
        for i in range(rw):
            if x0 + i >= 10:
                assert alphas[j * rw + i] == 0


def test_full_selection_is_not_sent(fake_engine):
    w, h = 8, 8
    run(
        gimp_edit.ProcedureArgs("x", url=fake_engine.url),
        image(w, h),
        w,
        h,
        b"\xff" * 64,
        dict(gimp_settings.DEFAULTS),
        Recorder(),
    )
    assert fake_engine.requests[-1]["selection_bytes"] is None


def test_engine_error_becomes_plugin_error(fake_engine):
    with pytest.raises(gimp_edit.PluginError, match="No face was found"):
        run(
            gimp_edit.ProcedureArgs("noface", url=fake_engine.url),
            image(8, 8),
            8,
            8,
            None,
            dict(gimp_settings.DEFAULTS),
            Recorder(),
        )


def test_bad_url_is_a_clean_error():
    with pytest.raises(gimp_edit.PluginError, match="engine URL"):
        run(
            gimp_edit.ProcedureArgs("x", url="ftp://h:1"),
            image(8, 8),
            8,
            8,
            None,
            dict(gimp_settings.DEFAULTS),
            Recorder(),
        )


def test_unreachable_engine_is_a_clean_error():
    url = f"ws://127.0.0.1:{free_port()}"
    with pytest.raises(gimp_edit.PluginError) as info:
        run(gimp_edit.ProcedureArgs("x", url=url), image(8, 8), 8, 8, None, dict(gimp_settings.DEFAULTS), Recorder())
    assert "not running" in str(info.value) and "ffclip-engine serve" in str(info.value)


@pytest.mark.process
def test_autostart_starts_the_engine_and_waits():
    port = free_port()
    settings = dict(
        gimp_settings.DEFAULTS,
        autostart=True,
        start_timeout=30,
        start_command=[sys.executable, str(REPO / "tests" / "support" / "engine_server.py"), str(port)],
    )
    rec = Recorder()
    started = []

    def starter(s, progress):
        started.append(gimp_edit.start_engine(s, progress))

    try:
        out = run(
            gimp_edit.ProcedureArgs("x", url=f"ws://127.0.0.1:{port}"),
            image(16, 16),
            16,
            16,
            None,
            settings,
            rec,
            starter=starter,
        )
        assert out.region == fake_region(16, 16)
        assert any("Starting" in t for t in rec.texts) and rec.pulses > 0
    finally:
        for p in started:
            p.terminate()
            p.wait(10)


def test_start_command_follows_the_url_port():
    cmd = ["py", "-m", "ffclip.app", "serve", "--port", "8765"]
    assert gimp_edit.command_for_url(cmd, "ws://127.0.0.1:9001/")[-2:] == ["--port", "9001"]
    assert gimp_edit.command_for_url(["x"], "ws://h:1") == ["x"]


@pytest.mark.process
def test_autostart_timeout_and_bad_command_are_clean_errors():
    port = free_port()
    url = f"ws://127.0.0.1:{port}"
    settings = dict(
        gimp_settings.DEFAULTS,
        autostart=True,
        start_timeout=1,
        start_command=[sys.executable, "-c", "import time; time.sleep(5)"],
    )
    with pytest.raises(gimp_edit.PluginError, match="did not answer within 1 s"):
        run(gimp_edit.ProcedureArgs("x", url=url), image(8, 8), 8, 8, None, settings, Recorder())
    settings["start_command"] = ["/nonexistent/ffclip-engine", "serve"]
    with pytest.raises(gimp_edit.PluginError, match="failed"):
        run(gimp_edit.ProcedureArgs("x", url=url), image(8, 8), 8, 8, None, settings, Recorder())
    # never for a remote URL
    settings["start_command"] = [sys.executable, "-c", "raise SystemExit(3)"]
    with pytest.raises(gimp_edit.PluginError, match="not running"):
        run(
            gimp_edit.ProcedureArgs("x", url="ws://192.0.2.1:9"),
            image(8, 8),
            8,
            8,
            None,
            dict(settings, timeout=1),
            Recorder(),
            client_factory=lambda u: _Unreachable(),
        )


class _Unreachable:
    def connect(self):
        raise ConnectionFailed("no route")

    def close(self):
        pass


def test_cancel_reaches_the_running_job_from_another_connection(fake_engine):
    errors = []

    def work():
        try:
            run(
                gimp_edit.ProcedureArgs("slow", url=fake_engine.url),
                image(16, 16),
                16,
                16,
                None,
                dict(gimp_settings.DEFAULTS),
                Recorder(),
            )
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    thread = threading.Thread(target=work)
    thread.start()
    deadline = time.monotonic() + 10
    while gimp_settings.read_job_state() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    state = gimp_settings.read_job_state()
    assert state is not None and state["url"] == gimp_settings.normalize_url(fake_engine.url)
    assert gimp_edit.cancel_running() == "Asked the FFCLIP engine to cancel the running edit."
    thread.join(20)
    assert len(errors) == 1 and isinstance(errors[0], gimp_edit.Cancelled)
    assert state["id"] in fake_engine.cancelled
    assert gimp_settings.read_job_state() is None
    assert gimp_edit.cancel_running() == "No FFCLIP edit is running."


@pytest.mark.process
@pytest.mark.slow
def test_autostart_real_tiny_engine(photos_dir):
    """The plug-in's autostart runs `ffclip-engine serve --profile tiny` and edits a real photo with it."""
    from PIL import Image

    with Image.open(photos_dir / "astronaut.png") as im:
        im = im.convert("RGBA")
        w, h, rgba = im.width, im.height, im.tobytes()
    port = free_port()
    url = f"ws://127.0.0.1:{port}/"
    command = [sys.executable, "-m", "ffclip.app", "serve", "--profile", "tiny", "--port", "1"]
    settings = dict(gimp_settings.DEFAULTS, autostart=True, start_timeout=240, start_command=command)
    started = []

    def starter(s, progress):
        started.append(gimp_edit.start_engine(s, progress))

    try:
        out = run(gimp_edit.ProcedureArgs("smiling", url=url), rgba, w, h, None, settings, Recorder(), starter=starter)
        assert started and started[0].args[-1] == str(port)
        x, y, rw, rh = out.region
        assert 0 < rw < w and 0 < rh < h and out.mask is not None and max(out.mask) == 255
    finally:
        for p in started:
            p.terminate()
            p.wait(30)


@pytest.mark.process
def test_a_start_command_that_fails_is_reported_in_its_own_words(tmp_path, monkeypatch):
    """The dialog's Start: a start command that exits says why, from what it wrote (issue 25)."""
    monkeypatch.setenv("FFCLIP_STATE_DIR", str(tmp_path / "state"))
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "engine-start.log").write_text("an older run's last words\n")
    failing = [sys.executable, "-c", "import sys; print('serve: port 8765 is in use by another program'); sys.exit(3)"]
    started = gimp_edit.EngineStarter({"start_command": failing, "url": "ws://127.0.0.1:8765/"}).start()
    for _ in range(200):
        reason = started.exited()
        if reason is not None:
            break
        time.sleep(0.05)
    assert reason == "exit status 3: serve: port 8765 is in use by another program"  # not the older run's
    running = gimp_edit.EngineStarter({"start_command": [sys.executable, "-c", "import time; time.sleep(30)"]}).start()
    assert running.exited() is None
    running.process.kill()
    running.process.wait()
    assert gimp_edit.can_start({"start_command": ["x"]}, "ws://127.0.0.1:8765/")
    assert not gimp_edit.can_start({"start_command": ["x"]}, "wss://gpu.lan:8765/")
    assert not gimp_edit.can_start({}, "ws://127.0.0.1:8765/")


@pytest.mark.process
def test_the_start_log_is_private_bounded_and_quiet_after_the_start(tmp_path, monkeypatch):
    """engine-start.log: 0600 from its creation in a 0700 folder, moved aside past its limit, and the
    daemon is told that it runs detached (its console goes quiet once it listens) (issue 30)."""
    state = tmp_path / "state"
    monkeypatch.setenv("FFCLIP_STATE_DIR", str(state))
    monkeypatch.setattr(paths, "ENGINE_START_LOG_LIMIT", 100)
    state.mkdir(mode=0o755)
    (state / "engine-start.log").write_bytes(b"x" * 101)
    command = [sys.executable, "-c", "import os; print('detached', os.environ.get('FFCLIP_DETACHED'))"]
    old = os.umask(0o022)
    try:
        gimp_edit.start_engine({"start_command": command, "url": "ws://127.0.0.1:8765/"}, Recorder()).wait(30)
    finally:
        os.umask(old)
    log = state / "engine-start.log"
    assert log.read_text() == "detached 1\n" and (state / "engine-start.log.1").stat().st_size == 101
    assert stat.S_IMODE(log.stat().st_mode) == 0o600 and stat.S_IMODE(state.stat().st_mode) == 0o700


def test_with_autostart_a_program_that_took_the_port_gets_no_photo(tmp_path, monkeypatch):
    """Another program answers like an engine on the local port before ours starts: with autostart the
    edit stops at its greeting, which proves no key of this user's engine records (issue 30)."""
    monkeypatch.setenv("FFCLIP_STATE_DIR", str(tmp_path))
    with FakeEngineServer() as impostor:
        settings = dict(gimp_settings.DEFAULTS, autostart=True, start_command=["ffclip-engine", "serve"])
        with pytest.raises(gimp_edit.PluginError, match="not an FFCLIP engine started by this user"):
            run(gimp_edit.ProcedureArgs("x", url=impostor.url), image(16, 16), 16, 16, None, settings, Recorder())
        assert impostor.requests == []
        settings["autostart"] = False  # the user runs the engine themselves: no proof asked
        run(gimp_edit.ProcedureArgs("x", url=impostor.url), image(16, 16), 16, 16, None, settings, Recorder())
        assert len(impostor.requests) == 1


def test_a_resent_layer_keeps_ffclip_cancel_pointed_at_its_new_job(tmp_path, monkeypatch):
    """The engine went away mid-edit and the client resent the layer under a new id (issue 28): the
    running-job file that FFCLIP Cancel reads follows it, and the user reads that it moved."""
    monkeypatch.setenv("FFCLIP_STATE_DIR", str(tmp_path))
    seen: list[str] = []

    class MovingClient:
        def connect(self) -> dict:
            return {"type": "status", "state": "ready"}

        def edit(self, params, rgba, spec, selection, on_moved=None, job_id=None, **callbacks):
            seen.append(gimp_settings.read_job_state()["id"])
            on_moved("resent-job", ConnectionFailed("the engine went away"))
            seen.append(gimp_settings.read_job_state()["id"])
            region = fake_region(spec.width, spec.height)
            return EditResult(region, bytes(region[2] * region[3] * 4), [], id="resent-job")

        def close(self) -> None:
            pass

    rec = Recorder()
    run(gimp_edit.ProcedureArgs("x"), image(16, 16), 16, 16, None, dict(gimp_settings.DEFAULTS), rec,
        client_factory=lambda url: MovingClient())  # fmt: skip
    assert seen[1] == "resent-job" and seen[0] != "resent-job"
    assert any(gimp_edit.STAGE_TEXT["moved"] in t for t in rec.texts)
    assert gimp_settings.read_job_state() is None  # cleaned up after the result


@pytest.mark.process
def test_an_engine_the_plugin_starts_computes_in_the_settings_precision(tmp_path, monkeypatch):
    monkeypatch.setenv("FFCLIP_STATE_DIR", str(tmp_path))
    command = [sys.executable, "-c", "import sys; print(sys.argv[1:])"]
    settings = {"start_command": command, "url": "ws://127.0.0.1:8765/", "precision": "bf16"}
    gimp_edit.start_engine(settings, Recorder()).wait(30)
    assert (tmp_path / "engine-start.log").read_text() == "['--precision', 'bf16']\n"


@pytest.mark.process
def test_gimps_own_python_settings_do_not_reach_the_engine(tmp_path, monkeypatch):
    """GIMP on Windows and macOS runs plug-ins with its embedded Python's PYTHONHOME and PYTHONPATH:
    the engine's Python, another installation, must not inherit them."""
    monkeypatch.setenv("FFCLIP_STATE_DIR", str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", "/gimp/lib/python3.11")
    command = [sys.executable, "-c", "import os; print(os.environ.get('PYTHONPATH'), os.environ['FFCLIP_DETACHED'])"]
    gimp_edit.start_engine({"start_command": command, "url": "ws://127.0.0.1:8765/"}, Recorder()).wait(30)
    assert (tmp_path / "engine-start.log").read_text() == "None 1\n"


def test_the_settings_precision_goes_into_the_start_command():
    cmd = ["python", "-m", "ffclip.app", "serve", "--port", "8765"]
    assert gimp_edit.command_with_precision(cmd, "bf16") == [*cmd, "--precision", "bf16"]
    assert gimp_edit.command_with_precision(cmd, None) == cmd
    assert gimp_edit.command_with_precision(cmd, "fp64; rm -rf ~") == cmd  # only the engine's words
    own = [*cmd, "--precision=fp32"]
    assert gimp_edit.command_with_precision(own, "bf16") == own  # the command's own choice stands
