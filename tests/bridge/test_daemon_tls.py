"""wss:// for a team engine (issue 15): the engine serves TLS, every client verifies its certificate
(the system store, a CA file or a pinned SHA-256 fingerprint) and refuses a mismatch before a single
byte of the websocket handshake (which carries the token) or of an image is sent; `serve` refuses a
token over plain ws:// off loopback.

Certificates are made here with openssl (tests/support/certs.py): a CA, a server certificate it signs for
127.0.0.1, and an impostor (self-signed, same address, another key).
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from ffclip.bridge.fake import FakeBackend
from ffclip.bridge.testing import running_server
from ffclip.gimp import edit as gimp_edit
from ffclip.plugin import identity
from ffclip.plugin import session as live
from ffclip.plugin.client import EngineClient, edit_file
from ffclip.plugin.protocol import ConnectionFailed, EditParams, ImageSpec
from ffclip.plugin.tls import CertificateRefused, TLSVerify, format_fingerprint, normalize_fingerprint
from tests.support.certs import make_certs
from tests.support.daemon import daemon_env, run_cli

PHOTO = np.random.default_rng(3).integers(0, 256, (64, 80, 4), dtype=np.uint8)
TOKEN = "team-token-0123456789abcdef"
KEY = identity.new_key()


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def engine(certs):
    """The engine over wss:// with the CA-signed certificate, and a token (and an identity key, for a
    plug-in with autostart, which checks that the engine is this user's: plugin/identity.py)."""
    tls = certs.server_context()
    with running_server(lambda: FakeBackend(0.0), token=TOKEN, tls=tls, identity_key=KEY) as server:
        yield server


class Recorder:
    """A TLS server that records every byte a client sends after the TLS handshake."""

    def __init__(self, context: ssl.SSLContext):
        self.context = context
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.received: list[bytes] = []  # per connection
        self.handshakes = 0
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"wss://127.0.0.1:{self.port}/"

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._record, args=(conn,), daemon=True).start()

    def _record(self, conn: socket.socket) -> None:
        data = b""
        conn.settimeout(5)
        try:
            with self.context.wrap_socket(conn, server_side=True) as tls:
                self.handshakes += 1
                while True:
                    chunk = tls.recv(65536)
                    if not chunk:
                        break
                    data += chunk
        except (OSError, ssl.SSLError):
            pass
        self.received.append(data)

    def wait(self, connections: int) -> list[bytes]:
        deadline = time.monotonic() + 10
        while len(self.received) < connections and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.received

    def close(self) -> None:
        with contextlib.suppress(OSError):  # wakes the accept (closing alone leaves it blocked for good)
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        self._thread.join(timeout=5)


def _edit(client: EngineClient):
    return client.edit(EditParams.single("smiling"), PHOTO.tobytes(), ImageSpec(80, 64))


# --------------------------------------------------------------------------- verification that passes


def test_ca_file_verifies_the_engine_and_the_edit_runs(engine, certs):
    with EngineClient(engine.url, token=TOKEN, timeout=20, tls=TLSVerify(ca_file=str(certs.ca))) as client:
        assert client.last_status["auth"] is True
        assert _edit(client).region[2] > 0


def test_pinned_fingerprint_alone_accepts_exactly_that_certificate(engine, certs):
    pin = TLSVerify.make(fingerprint=format_fingerprint(certs.fingerprint))  # as serve prints it
    with EngineClient(engine.url, token=TOKEN, timeout=20, tls=pin) as client:
        assert _edit(client).region[2] > 0


# --------------------------------------------------------------------------- refusals, before anything is sent


def test_wrong_fingerprint_is_refused_before_the_token_or_an_image_is_sent(certs):
    recorder = Recorder(certs.server_context(impostor=True))
    try:
        right = TLSVerify(fingerprint=certs.impostor_fingerprint)  # control: the recorder does record
        with EngineClient(recorder.url, token=TOKEN, timeout=2, connect_timeout=2, tls=right) as client:
            pytest.fail(f"the recorder is no engine, yet {client} connected")
    except (ConnectionFailed, TimeoutError):
        pass
    assert TOKEN.encode() in recorder.wait(1)[0]  # the handshake went out, with the token
    wrong = TLSVerify(fingerprint=certs.fingerprint)  # pins the real engine's certificate
    client = EngineClient(recorder.url, token=TOKEN, timeout=2, connect_timeout=2, tls=wrong)
    with pytest.raises(CertificateRefused) as refused:
        _edit(client)
    try:
        assert recorder.wait(2)[1] == b""  # not one byte: no handshake, no token, no image
        assert recorder.handshakes == 2  # the TLS handshake itself did complete: the pin refused it
    finally:
        recorder.close()
    text = refused.value.message
    assert refused.value.code == "certificate"
    assert format_fingerprint(certs.impostor_fingerprint) in text and format_fingerprint(certs.fingerprint) in text
    assert "nothing was sent" in text


def test_live_session_and_edit_file_refuse_a_wrong_fingerprint_too(certs, tmp_path):
    recorder = Recorder(certs.server_context(impostor=True))
    wrong = TLSVerify(fingerprint=certs.fingerprint)
    events = []
    done = threading.Event()

    def on_event(event):
        events.append(event)
        if isinstance(event, live.JobFailed):
            done.set()

    session = live.EngineSession(recorder.url, on_event, token=TOKEN, connect_timeout=2, tls=wrong)
    try:
        job = session.submit(EditParams.single("smiling", preview=True), PHOTO.tobytes(), ImageSpec(80, 64))
        assert done.wait(10)
        photo = tmp_path / "in.png"
        from PIL import Image

        Image.fromarray(PHOTO).save(photo)
        with pytest.raises(CertificateRefused):
            edit_file(recorder.url, photo, EditParams.single("smiling"), tmp_path / "out.png", token=TOKEN, tls=wrong)
        assert recorder.wait(2) == [b"", b""]
    finally:
        session.close()
        recorder.close()
    failed = [e for e in events if isinstance(e, live.JobFailed)]
    assert failed[0].job_id == job and isinstance(failed[0].error, CertificateRefused)


def test_untrusted_certificate_is_refused_with_the_system_store(engine):
    client = EngineClient(engine.url, token=TOKEN, timeout=5)  # no CA file, no pin: the system's store
    with pytest.raises(CertificateRefused) as refused:
        client.connect()
    assert "not trusted" in refused.value.message and "the system's trust store" in refused.value.message


def test_ca_file_still_checks_the_host_name(engine, certs):
    url = engine.url.replace("127.0.0.1", "localhost")  # the certificate names 127.0.0.1 only
    with pytest.raises(CertificateRefused) as refused:
        EngineClient(url, token=TOKEN, timeout=5, tls=TLSVerify(ca_file=str(certs.ca))).connect()
    assert "localhost" in refused.value.message or "mismatch" in refused.value.message


def test_the_plugin_verifies_with_its_settings_and_says_why(engine, certs, tmp_path, monkeypatch):
    monkeypatch.setenv("FFCLIP_STATE_DIR", str(tmp_path))
    monkeypatch.setattr(identity, "local_keys", lambda port, folder=None: [KEY])  # as its record would say
    base = dict(gimp_edit.gimp_settings.DEFAULTS, url=engine.url, token=TOKEN, autostart=True, start_command=["x"])
    rgba, spec = PHOTO.tobytes(), (80, 64)
    args = (EditParams.single("smiling"), "layer", engine.url, rgba, *spec, None)
    wrong = dict(base, tls_fingerprint=format_fingerprint(certs.impostor_fingerprint))
    started = []
    with pytest.raises(gimp_edit.PluginError) as refused:
        gimp_edit.run_edit(*args, wrong, gimp_edit.Progress(), starter=lambda *a: started.append(a))
    assert "refused the FFCLIP engine's certificate" in str(refused.value) and "tls_fingerprint" in str(refused.value)
    assert not started  # a refused certificate is not an engine to start
    pinned = dict(base, tls_fingerprint=certs.fingerprint)
    assert gimp_edit.run_edit(*args, pinned, gimp_edit.Progress()).region[2] > 0
    with_ca = dict(base, tls_ca_file=str(certs.ca))
    assert gimp_edit.run_edit(*args, with_ca, gimp_edit.Progress()).region[2] > 0
    with pytest.raises(gimp_edit.PluginError, match="tls_fingerprint setting"):
        gimp_edit.run_edit(*args, dict(base, tls_fingerprint="12:34"), gimp_edit.Progress())


def test_fingerprint_forms():
    digits = "ab" * 32
    for form in (digits, digits.upper(), format_fingerprint(digits), f"sha256:{digits}",
                 f"sha256 Fingerprint={format_fingerprint(digits)}"):  # fmt: skip
        assert normalize_fingerprint(form) == digits
    for bad in ("", "ab" * 31, "zz" * 32, "ab" * 33):
        with pytest.raises(ValueError, match="SHA-256"):
            normalize_fingerprint(bad)


# --------------------------------------------------------------------------- serve


@pytest.mark.process
def test_serve_refuses_a_plain_token_off_loopback(tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text(f"alice {TOKEN}\n")
    for access in (["--token", "t0k"], ["--tokens-file", str(tokens)]):
        refused = run_cli("serve", "--host", "0.0.0.0", "--port", "0", "--fake-engine", *access)
        assert refused.returncode == 2, refused
        assert "refusing to send tokens over plain ws://" in refused.stderr and "--tls-cert" in refused.stderr
        assert "t0k" not in refused.stderr and TOKEN not in refused.stderr
    plain_loopback = subprocess.Popen(
        [sys.executable, "-m", "ffclip.app", "serve", "--port", "0", "--fake-engine", "--token", "t0k"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=daemon_env(XDG_STATE_HOME=str(tmp_path / "state")),
    )
    try:  # loopback stays allowed: the token never leaves the machine
        assert "listening on ws://127.0.0.1:" in plain_loopback.stdout.readline()
    finally:
        plain_loopback.terminate()
        plain_loopback.wait(15)


@pytest.mark.process
def test_serve_over_tls_and_edit_url_wss(certs, tmp_path):
    log = tmp_path / "engine.log"
    command = [sys.executable, "-m", "ffclip.app", "serve", "--host", "0.0.0.0", "--port", "0", "--fake-engine"]
    command += ["--token", TOKEN, "--tls-cert", str(certs.cert), "--tls-key", str(certs.key), "--log-file", str(log)]
    env = daemon_env(XDG_STATE_HOME=str(tmp_path / "state"), FFCLIP_TOKEN=TOKEN)
    daemon = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        port = int(re.search(r"listening on wss://[^:]+:(\d+)/", daemon.stdout.readline()).group(1))
        printed = daemon.stdout.readline()
        assert format_fingerprint(certs.fingerprint) in printed  # what an admin gives the plug-ins
        photo = tmp_path / "in.png"
        from PIL import Image

        Image.fromarray(PHOTO).save(photo)
        url = f"wss://127.0.0.1:{port}/"
        common = ("edit", str(photo), "smiling", "--url", url)
        good = run_cli(*common, "-o", str(tmp_path / "out.png"), "--tls-fingerprint", printed.split()[-1], env=env)
        assert good.returncode == 0, good.stderr
        bad = run_cli(
            *common, "-o", str(tmp_path / "bad.png"), "--tls-fingerprint", certs.impostor_fingerprint, env=env
        )
        assert bad.returncode == 2 and "error [certificate]" in bad.stderr and "nothing was sent" in bad.stderr
        assert not (tmp_path / "bad.png").exists()
        with_ca = run_cli(*common, "-o", str(tmp_path / "ca.png"), "--tls-ca", str(certs.ca), env=env)
        assert with_ca.returncode == 0, with_ca.stderr
        (record,) = (tmp_path / "state" / "ffclip-edit" / "engines").glob("*.json")
        announced = json.loads(record.read_text())  # what the doctor greets other engines with
        assert announced["url"] == url and announced["fingerprint"] == certs.fingerprint
    finally:
        daemon.terminate()
        assert daemon.wait(15) == 0
    text = log.read_text()
    assert text.count("connected as token") == 2  # the refused client never reached the websocket layer
    assert TOKEN not in text
    assert not list((tmp_path / "state" / "ffclip-edit" / "engines").glob("*.json"))  # removed at exit


def test_doctor_checks_tls_the_way_the_plugin_connects(engine, certs, tmp_path):
    from ffclip.app.doctor import engine as ed
    from tests.support.doctor import by_id, context, environment, install_plugin, native_plugins

    env = environment(tmp_path)
    install_plugin(native_plugins(env), engine.url, token=TOKEN, tls_fingerprint=certs.fingerprint)
    checks = by_id(ed.diagnose(context(env, run_gimp=False)))
    assert checks["engine.tls"].status == "ok" and "pinned" in checks["engine.tls"].text
    assert checks["engine.reachable"].status == "ok"
    install_plugin(native_plugins(env), engine.url, token=TOKEN, tls_fingerprint=certs.impostor_fingerprint)
    checks = by_id(ed.diagnose(context(env, run_gimp=False)))
    tls, reachable = checks["engine.tls"], checks["engine.reachable"]
    assert tls.status == "fail" and format_fingerprint(certs.impostor_fingerprint) in tls.text
    assert "--tls-fingerprint" in tls.fix and reachable.cause == "engine.tls"
    install_plugin(native_plugins(env), engine.url, token=TOKEN, tls_fingerprint=None, tls_ca_file=str(certs.ca))
    assert by_id(ed.diagnose(context(env, run_gimp=False)))["engine.tls"].status == "ok"
    settings = json.loads((native_plugins(env) / "ffclip-edit" / "ffclip-edit.json").read_text())
    assert settings["tls_ca_file"] == str(certs.ca)
    assert Path(settings["tls_ca_file"]).is_file()


@pytest.mark.process
def test_service_unit_for_a_team_server(certs, tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text(f"alice {TOKEN}\n")
    common = ("service", "install", "--host", "0.0.0.0", "--unit-dir", str(tmp_path / "units"), "--no-systemctl")
    plain = run_cli(*common, "--tokens-file", str(tokens))
    assert plain.returncode == 2 and "--tls-cert" in plain.stderr
    team = ("--tokens-file", str(tokens), "--tls-cert", str(certs.cert), "--tls-key", str(certs.key))
    installed = run_cli(*common, *team, "--devices", "cuda:0,cuda:1")
    assert installed.returncode == 0, installed.stderr
    unit = (tmp_path / "units" / "ffclip-engine.service").read_text()
    assert f"--tokens-file {tokens} --tls-cert {certs.cert} --tls-key {certs.key} --devices cuda:0,cuda:1" in unit


def test_plain_ws_to_a_tls_engine_suggests_wss(engine):
    plain = engine.url.replace("wss://", "ws://")
    with pytest.raises(ConnectionFailed) as info:
        EngineClient(plain, token=TOKEN, timeout=5).connect()
    assert "wss://" in info.value.message and "TLS" in info.value.message, info.value.message
