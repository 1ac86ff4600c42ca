"""`ffclip-engine doctor` without GIMP: fake profiles (HOME, environment), an in-process engine, and
tests/support/fake_gimp_console.py in place of GIMP (it applies GIMP 3's loading rules). Each breakage must
give exactly its ✘ and fix. tests/app/doctor/test_gimp.py runs the same breakages in the real GIMP 3."""

from __future__ import annotations

import json
import os
import socket
import ssl
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from ffclip.app import install
from ffclip.app.doctor import engine as ed
from ffclip.app.doctor import gimp as gd
from ffclip.bridge import daemon
from ffclip.bridge.backend import UnavailableBackend
from ffclip.bridge.fake import FakeBackend
from ffclip.bridge.testing import running_server
from ffclip.engine import __version__
from ffclip.gimp import edit as gimp_edit
from ffclip.gimp.settings import url_port
from ffclip.plugin.protocol import ConnectionFailed, EngineError, ProtocolViolation
from ffclip.plugin.tls import TLSVerify
from tests.support.doctor import GB, by_id, context, environment, install_plugin, native_plugins
from tests.support.net import free_port

NATIVE = "plugin.native-3.0"


class TinyLike(FakeBackend):
    """The fake backend, reporting itself as the tiny profile (what `serve --profile tiny` says)."""

    def describe(self) -> dict:
        return {"state": "ready", "models": {"profile": "tiny", "untrained": True}, "device": "cpu"}


def failures(checks) -> dict[str, gd.Check]:
    return {c.id: c for c in checks if c.status == gd.FAIL}


@pytest.fixture()
def engine():
    with running_server(TinyLike, version=__version__) as server:
        yield server


@pytest.fixture()
def setup(tmp_path, engine):
    """A healthy set-up: the plug-in in the native profile, pointing at a running tiny-like engine."""
    env = environment(tmp_path)
    target = install_plugin(native_plugins(env), engine.url)
    return env, target


# --------------------------------------------------------------------------- the healthy set-up


@pytest.mark.process
def test_everything_passes_after_install(setup):
    env, target = setup
    checks = ed.diagnose(context(env))
    assert failures(checks) == {}, gd.render_text(checks, __version__)
    ok = {c.id for c in checks if c.status == gd.OK}
    for name in ("installed", "version", "executable", "interpreter", "settings"):
        assert f"{NATIVE}.{name}" in ok
    assert {"gimp.registers", "engine.reachable", "engine.version", "engine.state", "engine.token"} <= ok
    assert {"models.tiny", "device"} <= ok
    checks = by_id(checks)
    assert checks["engine.tls"].status == gd.INFO and "not checked" in checks["engine.tls"].text
    assert "python-fu-ffclip-edit" in checks["gimp.registers"].text
    assert checks["models.real"].status == gd.INFO  # not in use by a tiny engine


@pytest.mark.process
def test_text_and_json_output(setup):
    env, target = setup
    (target / "ffclip-edit.py").chmod(0o644)
    checks = ed.diagnose(context(env))
    text = gd.render_text(checks, __version__)
    assert "\u2718 ffclip-edit.py is not executable" in text
    assert f"fix: chmod +x {target / 'ffclip-edit.py'}" in text
    assert "\u2714 an FFCLIP engine" in text and "2 problems found" in text
    data = gd.to_json(checks, __version__)
    assert data["ok"] is False and data["failed"] == [f"{NATIVE}.executable", "gimp.registers"]
    json.dumps(data)


# --------------------------------------------------------------------------- each breakage: exactly its ✘


@pytest.mark.process
def test_exec_bit_removed(setup):
    env, target = setup
    entry = target / "ffclip-edit.py"
    entry.chmod(0o644)
    failed = failures(ed.diagnose(context(env)))
    assert set(failed) == {f"{NATIVE}.executable", "gimp.registers"}
    assert failed[f"{NATIVE}.executable"].fix.startswith(f"chmod +x {entry}")
    assert failed["gimp.registers"].cause == f"{NATIVE}.executable"
    assert failed["gimp.registers"].fix == failed[f"{NATIVE}.executable"].fix


@pytest.mark.process
def test_plugin_from_an_older_version(setup):
    env, target = setup
    (target / install.VERSION_NAME).write_text("0.0.9\n")
    failed = failures(ed.diagnose(context(env)))
    assert set(failed) == {f"{NATIVE}.version"}  # GIMP still loads an old plug-in
    assert "plug-in 0.0.9" in failed[f"{NATIVE}.version"].text
    assert failed[f"{NATIVE}.version"].fix.startswith(f"ffclip-engine install-gimp-plugin --dest {native_plugins(env)}")


@pytest.mark.process
def test_plugin_without_version_or_with_edited_files(setup):
    env, target = setup
    (target / install.VERSION_NAME).unlink()
    failed = failures(ed.diagnose(context(env)))
    assert set(failed) == {f"{NATIVE}.version"} and "records no version" in failed[f"{NATIVE}.version"].text
    install_plugin(native_plugins(env), "ws://127.0.0.1:1/")
    with open(target / "ffclip" / "gimp" / "settings.py", "a") as f:
        f.write("# edited\n")
    check = by_id(ed.diagnose(context(env, run_gimp=False)))[f"{NATIVE}.version"]
    assert check.status == gd.FAIL and "ffclip/gimp/settings.py" in check.text


@pytest.mark.process
def test_plugin_installed_only_in_another_profile(setup, engine):
    env, target = setup
    flatpak = Path(env["HOME"]) / ".var/app/org.gimp.GIMP/config/GIMP/3.0/plug-ins"
    install_plugin(flatpak, engine.url)
    install.uninstall(native_plugins(env))
    failed = failures(ed.diagnose(context(env)))
    assert set(failed) == {f"{NATIVE}.installed", "gimp.registers"}
    assert "installed in" in failed[f"{NATIVE}.installed"].text
    assert failed[f"{NATIVE}.installed"].fix.startswith(
        f"ffclip-engine install-gimp-plugin --dest {native_plugins(env)} --url {engine.url}"
    )
    assert failed["gimp.registers"].cause == f"{NATIVE}.installed"


@pytest.mark.process
def test_engine_not_running(tmp_path):
    env = environment(tmp_path)
    port = free_port()
    install_plugin(native_plugins(env), f"ws://127.0.0.1:{port}/")
    failed = failures(ed.diagnose(context(env)))
    assert set(failed) == {"engine.reachable"}
    assert failed["engine.reachable"].fix.startswith(f"ffclip-engine serve --profile tiny --port {port}")


@pytest.mark.process
def test_engine_on_another_port(setup, engine, monkeypatch):
    env, target = setup
    for name in ("XDG_STATE_HOME", "FFCLIP_STATE_DIR"):  # where the engine's record goes
        monkeypatch.setenv(name, env[name])
    elsewhere = f"ws://127.0.0.1:{free_port()}/"
    install_plugin(native_plugins(env), elsewhere)
    with daemon.announce(engine.url, __version__) as record:
        assert daemon.running_engines(env)[0]["url"] == engine.url
        failed = failures(ed.diagnose(context(env)))
    assert not record.exists()
    assert set(failed) == {"engine.reachable"}
    check = failed["engine.reachable"]
    assert f"runs at {engine.url}" in check.text
    assert check.fix.splitlines()[0] == (
        f"ffclip-engine install-gimp-plugin --dest {native_plugins(env)} --url {engine.url}"
    )
    assert f"kill {os.getpid()} && ffclip-engine serve --profile tiny --port {url_port(elsewhere)}" in check.fix


@pytest.mark.process
def test_models_missing(tmp_path):
    env = environment(tmp_path)
    models = {"profile": "real", "missing": ["e4e", "ffclip", "clip"], "fetch": "ffclip-engine models fetch"}
    with running_server(lambda: UnavailableBackend("models_missing", "no weights", models), version=__version__) as e:
        install_plugin(native_plugins(env), e.url)
        failed = failures(ed.diagnose(context(env)))
    assert set(failed) == {"engine.state", "models.real"}
    assert failed["models.real"].fix == "ffclip-engine models fetch"
    assert "3 of 3 model files missing" in failed["models.real"].text  # ffclip, e4e, clip: store.needed()
    assert failed["engine.state"].cause == "models.real"
    assert failed["engine.state"].fix.startswith("ffclip-engine models fetch   (then restart the engine")
    assert "--profile tiny" not in failed["engine.state"].fix  # the restart keeps the engine's profile


def test_models_present_but_engine_started_before(tmp_path):
    """All files in the store, the engine still says missing: it only needs a restart."""
    env = environment(tmp_path)
    fill_store(tmp_path / "data" / "ffclip-edit" / "models")
    models = {"profile": "real", "missing": ["clip"]}
    with running_server(lambda: UnavailableBackend("models_missing", "no weights", models), version=__version__) as e:
        install_plugin(native_plugins(env), e.url)
        failed = failures(ed.diagnose(context(env, run_gimp=False)))
    assert set(failed) == {"engine.state"}
    assert failed["engine.state"].cause is None and "restart the engine" in failed["engine.state"].fix


# --------------------------------------------------------------------------- more plug-in checks


@pytest.mark.process
def test_windows_line_endings_and_wrong_interpreter(setup):
    env, target = setup
    entry = target / "ffclip-edit.py"
    text = entry.read_bytes()
    entry.write_bytes(text.replace(b"\n", b"\r\n"))
    failed = failures(ed.diagnose(context(env)))
    assert "CRLF" in failed[f"{NATIVE}.interpreter"].text
    assert failed["gimp.registers"].cause == f"{NATIVE}.interpreter"
    entry.write_bytes(b"import sys\n" + text.split(b"\n", 1)[1])
    check = by_id(ed.diagnose(context(env, run_gimp=False)))[f"{NATIVE}.interpreter"]
    assert check.status == gd.FAIL and "'import sys'" in check.text
    assert check.fix.startswith("ffclip-engine install-gimp-plugin --dest")


def test_broken_settings_file(setup):
    env, target = setup
    (target / "ffclip-edit.json").write_text("{not json")
    failed = failures(ed.diagnose(context(env, run_gimp=False)))
    # the plug-in falls back to the default URL, where whatever runs on this machine may answer
    assert f"{NATIVE}.settings" in failed and "unreadable" in failed[f"{NATIVE}.settings"].text
    install_plugin(native_plugins(env), "ftp://nowhere")
    check = by_id(ed.diagnose(context(env, run_gimp=False)))[f"{NATIVE}.settings"]
    assert check.status == gd.FAIL and "unusable" in check.text
    assert "--url ws://HOST:PORT" in check.fix


def test_gimp3_directory_is_the_only_profile(tmp_path):
    env = environment(tmp_path, GIMP3_DIRECTORY=str(tmp_path / "profile"))
    (Path(env["HOME"]) / ".config/GIMP/3.0").mkdir(parents=True)  # not read by a GIMP with GIMP3_DIRECTORY
    install_plugin(tmp_path / "profile" / "plug-ins", "ws://127.0.0.1:1/")
    profiles, checks = gd.gimp_side(context(env, run_gimp=False))
    assert [p.kind for p in profiles] == ["GIMP3_DIRECTORY"]
    assert {c.id for c in checks if c.status == gd.FAIL} == set()


@pytest.mark.process
def test_gimp_that_does_not_answer(setup):
    env, _ = setup
    checks = by_id(ed.diagnose(context(dict(env, FAKE_GIMP_FAIL="1"))))
    assert checks["gimp.registers"].status == gd.FAIL
    assert "did not answer" in checks["gimp.registers"].text and "Segmentation fault" in checks["gimp.registers"].text


def test_no_gimp_and_no_profile(tmp_path):
    env = environment(tmp_path, PATH="/nonexistent", FFCLIP_GIMP_ROOT=str(tmp_path / "no-chroot"))
    del env["FFCLIP_GIMP_CONSOLE"]
    checks = by_id(ed.diagnose(context(env)))
    assert checks["plugin.profiles"].status == gd.FAIL
    assert "ffclip-engine install-gimp-plugin" in checks["plugin.profiles"].fix
    assert checks["gimp.registers"].status == gd.INFO and "not checked" in checks["gimp.registers"].text


def test_profiles_on_each_system(tmp_path):
    home = tmp_path / "home"
    for sub in (
        ".config/GIMP/3.0",
        ".config/GIMP/3.2",
        ".config/GIMP/2.10",
        ".var/app/org.gimp.GIMP/config/GIMP/3.0",
        "snap/gimp/current/.config/GIMP/3.0",
        "Library/Application Support/GIMP/3.0",
        "AppData/Roaming/GIMP/3.0",
    ):
        (home / sub).mkdir(parents=True)
    env = {"HOME": str(home)}
    linux = install.find_profiles(env, home, "linux")
    assert [(p.kind, p.path.relative_to(home).as_posix()) for p in linux] == [
        ("native", ".config/GIMP/3.0"),
        ("native", ".config/GIMP/3.2"),
        ("flatpak", ".var/app/org.gimp.GIMP/config/GIMP/3.0"),
        ("snap", "snap/gimp/current/.config/GIMP/3.0"),
    ]
    assert install.find_plugin_dirs(env, home, "linux") == [p.plugin_dir for p in linux]
    mac = install.find_profiles(env, home, "darwin")
    assert [p.path for p in mac] == [home / "Library/Application Support/GIMP/3.0"]
    windows = install.find_profiles({**env, "APPDATA": str(home / "AppData/Roaming")}, home, "win32")
    assert [p.path for p in windows] == [home / "AppData/Roaming/GIMP/3.0"]
    assert install.sandboxed(linux[2].plugin_dir) and install.sandboxed(linux[3].plugin_dir)
    assert not install.sandboxed(linux[0].plugin_dir)


def test_windows_profile_skips_the_exec_bit(tmp_path):
    home = tmp_path / "home"
    env = {"HOME": str(home), "APPDATA": str(home / "AppData/Roaming")}
    target = install.install(home / "AppData/Roaming/GIMP/3.0/plug-ins", {"url": "ws://127.0.0.1:1/"})
    (target / "ffclip-edit.py").chmod(0o644)
    ctx = context(env, platform="win32", run_gimp=False)
    ids = {c.id for c in gd.gimp_side(ctx)[1]}
    assert "plugin.native-3.0.installed" in ids and "plugin.native-3.0.executable" not in ids


def test_install_records_its_version_and_its_files(tmp_path):
    target = install.install(tmp_path / "plug-ins", {})
    assert install.installed_version(target) == __version__
    assert install.differing_files(target) == []
    assert not (target / "ffclip" / "gimp" / "doctor.py").exists()
    (target / "ffclip" / "plugin" / "client.py").unlink()
    assert install.differing_files(target) == ["ffclip/plugin/client.py"]


# --------------------------------------------------------------------------- engine checks


def test_token_needed(tmp_path):
    env = environment(tmp_path)
    with running_server(TinyLike, version=__version__, token="s3cret") as e:
        install_plugin(native_plugins(env), e.url)
        failed = failures(ed.diagnose(context(env, run_gimp=False)))
        assert set(failed) == {"engine.token"}
        assert failed["engine.token"].fix.endswith(f"--dest {native_plugins(env)} --token TOKEN")
        install_plugin(native_plugins(env), e.url, token="s3cret")
        checks = by_id(ed.diagnose(context(env, run_gimp=False)))
    assert checks["engine.token"].status == gd.OK and "accepted" in checks["engine.token"].text


def test_engine_from_an_older_version(tmp_path):
    env = environment(tmp_path)
    with running_server(TinyLike, version="0.0.1") as e:
        install_plugin(native_plugins(env), e.url)
        failed = failures(ed.diagnose(context(env, run_gimp=False)))
    assert set(failed) == {"engine.version"}
    assert "0.0.1" in failed["engine.version"].text and "ffclip-engine serve" in failed["engine.version"].fix


def test_port_taken_by_another_program(tmp_path):
    env = environment(tmp_path)
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        thread = threading.Thread(target=_answer_http, args=(listener,), daemon=True)
        thread.start()
        install_plugin(native_plugins(env), f"ws://127.0.0.1:{port}/")
        failed = failures(ed.diagnose(context(env, run_gimp=False)))
    assert set(failed) == {"engine.reachable"}
    assert "not as an FFCLIP engine" in failed["engine.reachable"].text
    assert f"--port {port + 1}" in failed["engine.reachable"].fix


def test_engine_of_another_protocol(tmp_path):
    from websockets.sync.server import serve

    def greet_v2(ws):
        ws.send(json.dumps({"type": "status", "protocol": 2, "version": "9.0"}))
        ws.recv()

    env = environment(tmp_path)
    with serve(greet_v2, "127.0.0.1", 0) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        install_plugin(native_plugins(env), f"ws://127.0.0.1:{server.socket.getsockname()[1]}/")
        failed = failures(ed.diagnose(context(env, run_gimp=False)))
        server.shutdown()
    assert set(failed) == {"engine.reachable"}
    assert "another protocol" in failed["engine.reachable"].text
    assert "install-gimp-plugin" in failed["engine.reachable"].fix


def _answer_http(listener: socket.socket) -> None:
    for _ in range(3):
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        with conn:
            conn.recv(4096)
            conn.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")


def test_autostart_start_command(tmp_path):
    env = environment(tmp_path)
    url = f"ws://127.0.0.1:{free_port()}/"
    install_plugin(native_plugins(env), url, autostart=True)
    check = by_id(ed.diagnose(context(env, run_gimp=False)))["engine.reachable"]
    assert check.status == gd.OK and "starts it when needed" in check.text
    gone = str(tmp_path / "old-venv" / "bin" / "python")
    install_plugin(native_plugins(env), url, autostart=True, start_command=[gone, "-m", "ffclip.app", "serve"])
    check = by_id(ed.diagnose(context(env, run_gimp=False)))["engine.reachable"]
    assert check.status == gd.FAIL and gone in check.text
    assert f"--start-command '{sys.executable} -m ffclip.app serve --port {url_port(url)}'" in check.fix


def test_engine_states():
    target = ed.Target("ws://127.0.0.1:8765/", "test")
    ctx = context({"HOME": "/nonexistent"})

    def state(status: dict) -> gd.Check:
        return ed.state_check(ctx, target, status, lambda name, *a, **d: gd.Check(name, "g", *a, details=d))

    assert state({"state": "loading"}).status == gd.OK
    download = {"state": "downloading", "download": {"file": "e4e_ffhq_encode.pt", "done": GB, "total": 2 * GB}}
    assert "1.00 GB of 2.00 GB" in state(download).text
    failed = state({"state": "failed"})
    assert failed.status == gd.FAIL and "engine log" in failed.fix
    assert state({"state": "what"}).status == gd.FAIL


@pytest.mark.process
def test_tls_certificate_trust(tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    made = subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=localhost"]
        + ["-keyout", str(key), "-out", str(cert), "-addext", "subjectAltName=DNS:localhost"],
        capture_output=True,
    )
    if made.returncode:
        pytest.skip("openssl cannot make a test certificate")
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        threading.Thread(target=_tls_accept, args=(listener, server_ctx), daemon=True).start()
        env = environment(tmp_path)
        install_plugin(native_plugins(env), f"wss://localhost:{port}/")
        failed = failures(ed.diagnose(context(env, run_gimp=False)))
        trusted = ed.tls_probe("localhost", port, 3.0, TLSVerify(ca_file=str(cert)))
    assert set(failed) == {"engine.tls", "engine.reachable"}
    assert "not trusted" in failed["engine.tls"].text and "self-signed" in failed["engine.tls"].text
    assert failed["engine.reachable"].cause == "engine.tls"
    assert trusted[0] is True, trusted


def _tls_accept(listener: socket.socket, server_ctx: ssl.SSLContext) -> None:
    for _ in range(4):
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        try:
            with server_ctx.wrap_socket(conn, server_side=True) as tls:
                tls.recv(1)
        except (OSError, ssl.SSLError):
            pass


# --------------------------------------------------------------------------- models, device, logs


def fill_store(root: Path) -> None:
    from ffclip.engine.store import ModelStore

    store = ModelStore(root)
    root.mkdir(parents=True)
    for name in store.needed():
        store.path(name).write_bytes(name.encode() * 10)
        store.record(name, {"sha256": "x" * 64, "size": store.path(name).stat().st_size})


def test_real_models_verified_and_changed(tmp_path):
    from ffclip.engine.store import ModelStore, sha256_file

    root = tmp_path / "models"
    fill_store(root)
    ctx = context({"HOME": str(tmp_path)})
    assert ed.real_models_check(ctx, str(root)).status == gd.OK
    hashed = ed.real_models_check(context({"HOME": str(tmp_path)}, hash_models=True), str(root))
    assert hashed.status == gd.FAIL and "sha256" in hashed.text  # the recorded hashes are fake
    store = ModelStore(root)
    for name in store.needed():
        store.record(name, {**store.index()[name], "sha256": sha256_file(store.path(name))})
    assert ed.real_models_check(context({"HOME": str(tmp_path)}, hash_models=True), str(root)).status == gd.OK
    with open(store.path("e4e"), "ab") as f:
        f.write(b"more")
    check = ed.real_models_check(ctx, str(root))
    assert check.status == gd.FAIL and "e4e changed" in check.text
    assert check.fix == f"ffclip-engine models verify --models {root}"


def test_device_needs():
    ctx = context({"HOME": "/nonexistent"})
    assert ed.device_check(ctx, {"device": "cuda:0", "memory": {"rss_bytes": GB}}, "real").status == gd.OK
    small_gpu = context({}, device_probe=lambda: {"cuda": True, "name": "T", "free": GB, "total": 4 * GB})
    check = ed.device_check(small_gpu, None, "real")
    assert check.status == gd.FAIL and "--device cpu" in check.fix
    assert ed.device_check(small_gpu, None, "tiny").status == gd.OK
    low_ram = context({}, device_probe=lambda: {"cuda": False, "ram_available": 2 * GB})
    assert ed.device_check(low_ram, None, "real").status == gd.FAIL
    assert ed.device_check(low_ram, None, "tiny").status == gd.OK


def test_last_error_in_logs(tmp_path):
    log = tmp_path / "engine.log"
    log.write_text(
        "2025-01-02 10:00:00,001 ERROR ffclip.bridge: old failure\n"
        "2025-01-02 10:00:02,001 ERROR ffclip.bridge: job failed\n"
        "Traceback (most recent call last):\n"
        '  File "y.py", line 2, in run\n'
        "ValueError: bad value\n"
        "2025-01-02 10:00:03,001 WARNING ffclip.bridge: warm-up failed; the first edit will be slower\n"
        "Traceback (most recent call last):\n"
        '  File "x.py", line 1, in <module>\n'
        "RuntimeError: only a warning\n"
        "2025-01-02 10:00:04,001 INFO ffclip.bridge: listening\n"
    )
    assert gd.last_error(log) == ("2025-01-02 10:00:02", "ffclip.bridge: job failed: ValueError: bad value")
    plugin = tmp_path / "plugin.log"
    plugin.write_text(
        "Traceback (most recent call last):\n  File \"a\", line 1\nKeyError: 'x'\n\n"
        "During handling of the above exception, another exception occurred:\n\n"
        'Traceback (most recent call last):\n  File "b", line 2\nOSError: disk full\n'
    )
    assert gd.last_error(plugin) == (None, "OSError: disk full")
    clean = tmp_path / "clean.log"
    clean.write_text("2025-01-02 10:00:03,001 INFO ffclip.bridge: listening\n")
    assert gd.last_error(clean) is None
    check = gd.log_check("log.x", "engine log", log)
    assert check.status == gd.INFO and "last error at 2025-01-02 10:00:02" in check.text
    assert gd.log_check("log.y", "engine log", clean).status == gd.OK


@pytest.mark.parametrize("override", [True, False])
def test_logs_at_the_real_locations(tmp_path, override):
    """One state folder for every log (plugin/paths.py): $FFCLIP_STATE_DIR, else $XDG_STATE_HOME/ffclip-edit."""
    env = environment(tmp_path)
    if not override:
        del env["FFCLIP_STATE_DIR"]
    folder = tmp_path / "plugin-state" if override else tmp_path / "state" / "ffclip-edit"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "engine.log").write_text("2025-01-02 10:00:00,001 CRITICAL x: boom\n")
    checks = by_id(ed.diagnose(context(env, run_gimp=False)))
    assert checks["log.engine"].details["path"] == str(folder / "engine.log")
    assert checks["log.engine"].details["error"] == "x: boom"
    assert checks["log.plugin"].details["path"] == str(folder / "plugin.log")
    assert checks["log.autostart"].details["path"] == str(folder / "engine-start.log")


def test_daemon_record_lifecycle(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    folder = daemon.running_dir()
    folder.mkdir(parents=True)
    (folder / "999999999.json").write_text(json.dumps({"url": "ws://127.0.0.1:1/", "pid": 999999999}))
    with daemon.announce("ws://127.0.0.1:5/", "9.9") as path:
        records = daemon.running_engines({"XDG_STATE_HOME": str(tmp_path)})
        assert [r["url"] for r in records] == ["ws://127.0.0.1:5/"]  # the dead engine's record is gone
        assert records[0]["pid"] == os.getpid() and records[0]["version"] == "9.9"
    assert not path.exists()


# --------------------------------------------------------------------------- command line, plug-in messages


@pytest.mark.process
def test_command_line(tmp_path):
    env = environment(tmp_path, PYTHONPATH=os.environ.get("PYTHONPATH", ""))
    install_plugin(native_plugins(env), f"ws://127.0.0.1:{free_port()}/")
    run = [sys.executable, "-m", "ffclip.app", "doctor", "--no-gimp", "--timeout", "2"]
    out = subprocess.run([*run, "--json"], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 1, out.stderr
    data = json.loads(out.stdout)
    assert data["failed"] == ["engine.reachable"]
    out = subprocess.run(run, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and "\u2718 the engine is not running" in out.stdout
    assert "fix: ffclip-engine serve --profile tiny" in out.stdout
    out = subprocess.run([*run, "--url", "ftp://x"], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "ws://" in out.stderr and "Traceback" not in out.stderr


def test_plugin_messages_point_to_the_doctor():
    hint = "ffclip-engine doctor"
    assert gimp_edit.error_message(ConnectionFailed("refused"), "ws://127.0.0.1:9/").endswith(gimp_edit.DOCTOR_HINT)
    assert hint in gimp_edit.error_message(EngineError("models_missing", "fetch them"))
    assert hint in gimp_edit.error_message(ProtocolViolation("engine speaks protocol 2, this client 1"))
    assert hint not in gimp_edit.error_message(EngineError("no_face", ""))
