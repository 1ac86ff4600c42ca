"""Downloads and `models fetch` against a local HTTP server that misbehaves on purpose: dropped
connections, stalls, 503s, servers that ignore Range, Google Drive's virus-scan confirm page and
its quota page; and one that tries what the downloader must refuse (other schemes, a downgrade to
http, more bytes than the file can be)."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import http.cookiejar
import http.server
import io
import os
import ssl
import threading
import urllib.error
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ffclip.engine.checkpoints import synthetic as S
from ffclip.engine.download import (
    MAX_UNKNOWN_SIZE,
    DownloadError,
    _opener,
    confirm_url,
    download,
    drive_url,
    size_cap,
)
from ffclip.engine.store import SPEC_BY_NAME, ModelStore, Published, sha256_file
from tests.support.certs import Certs, make_certs
from tests.support.http_files import QUOTA_PAGE, VIRUS_PAGE, Behaviour, Server

# the fixtures `server` (a local HTTP server, tests/support/http_files.py) and `drive` (the store's Drive ids
# served by it, official-layout files behind the virus-scan page) come from tests/conftest.py

FAST = {"backoff": 0.01, "progress": False}
MB = 1 << 20


def _payload(n: int) -> bytes:
    return os.urandom(n)


def test_plain_download(server: Server, tmp_path: Path) -> None:
    server.files["/f.bin"] = data = _payload(3 * MB)
    result = download(f"{server.base}/f.bin", tmp_path / "f.bin.part", **FAST)
    assert (tmp_path / "f.bin.part").read_bytes() == data
    assert (result.size, result.resumed_from, result.attempts, result.received) == (3 * MB, 0, 1, 3 * MB)


def test_dropped_connection_resumes_with_range(server: Server, tmp_path: Path) -> None:
    """3 MiB, the connection cut at 1 MiB and at 2.5 MiB: two Range requests, no byte sent twice."""
    server.files["/f.bin"] = data = _payload(3 * MB)
    server.behaviour["/f.bin"] = Behaviour(drop_after=[MB, 3 * MB // 2])
    result = download(f"{server.base}/f.bin", tmp_path / "f.part", **FAST)
    assert (tmp_path / "f.part").read_bytes() == data
    assert [r for _, r in server.log] == [None, f"bytes={MB}-", f"bytes={MB * 5 // 2}-"]
    assert result.attempts == 3 and result.received == 3 * MB and server.sent == 3 * MB


def test_part_file_from_an_earlier_run_is_resumed(server: Server, tmp_path: Path) -> None:
    server.files["/f.bin"] = data = _payload(2 * MB)
    part = tmp_path / "f.part"
    part.write_bytes(data[: MB + 123])
    result = download(f"{server.base}/f.bin", part, **FAST)
    assert part.read_bytes() == data
    assert result.resumed_from == MB + 123 and result.received == MB - 123
    assert server.log[0][1] == f"bytes={MB + 123}-"


def test_complete_part_file_answered_416(server: Server, tmp_path: Path) -> None:
    server.files["/f.bin"] = data = _payload(1000)
    part = tmp_path / "f.part"
    part.write_bytes(data)
    assert download(f"{server.base}/f.bin", part, **FAST).received == 0
    assert part.read_bytes() == data


def test_server_ignoring_range_restarts_cleanly(server: Server, tmp_path: Path) -> None:
    server.files["/f.bin"] = data = _payload(MB)
    server.behaviour["/f.bin"] = Behaviour(ignore_range=True)
    part = tmp_path / "f.part"
    part.write_bytes(b"stale bytes from somewhere else")
    download(f"{server.base}/f.bin", part, **FAST)
    assert part.read_bytes() == data


def test_stall_timeout_then_resume(server: Server, tmp_path: Path) -> None:
    server.files["/f.bin"] = data = _payload(2 * MB)
    server.behaviour["/f.bin"] = Behaviour(stall_after=[300_000])
    result = download(f"{server.base}/f.bin", tmp_path / "f.part", stall_timeout=0.5, **FAST)
    assert (tmp_path / "f.part").read_bytes() == data
    assert server.log[1][1] == "bytes=300000-" and result.attempts == 2


def test_transient_errors_are_retried_then_given_up(server: Server, tmp_path: Path) -> None:
    server.files["/f.bin"] = data = _payload(1000)
    server.behaviour["/f.bin"] = Behaviour(fail_times=2)
    assert download(f"{server.base}/f.bin", tmp_path / "a.part", retries=2, **FAST).attempts == 3
    assert (tmp_path / "a.part").read_bytes() == data
    server.behaviour["/f.bin"] = Behaviour(fail_times=10)
    with pytest.raises(DownloadError, match="giving up .* after 3 attempts"):
        download(f"{server.base}/f.bin", tmp_path / "b.part", retries=2, **FAST)
    with pytest.raises(DownloadError, match="HTTP 404"):
        download(f"{server.base}/missing", tmp_path / "c.part", **FAST)


def test_drive_virus_scan_page_is_confirmed(server: Server, tmp_path: Path) -> None:
    server.files["FILEID"] = data = _payload(MB)
    server.behaviour["FILEID"] = Behaviour(drive_confirm=True)
    download(drive_url("FILEID", f"{server.base}/download"), tmp_path / "f.part", **FAST)
    assert (tmp_path / "f.part").read_bytes() == data
    second = urllib.parse.parse_qs(urllib.parse.urlsplit(server.log[1][0]).query)
    assert second == {"id": ["FILEID"], "export": ["download"], "confirm": ["t"], "uuid": ["5e1f-77aa"]}


def test_drive_quota_page_is_never_saved(server: Server, tmp_path: Path) -> None:
    server.files["FILEID"] = _payload(10)
    server.behaviour["FILEID"] = Behaviour(html_instead=QUOTA_PAGE)
    with pytest.raises(DownloadError, match="download quota is exceeded.*nothing was saved"):
        download(drive_url("FILEID", f"{server.base}/download"), tmp_path / "f.part", **FAST)
    assert not (tmp_path / "f.part").exists()


def test_old_style_confirm_link() -> None:
    page = '<a href="/uc?export=download&amp;confirm=Ab3_x&amp;id=XYZ">Download anyway</a>'
    url = confirm_url(page, "https://drive.google.com/uc?export=download&id=XYZ")
    assert url == "https://drive.google.com/uc?export=download&id=XYZ&confirm=Ab3_x"
    assert confirm_url(QUOTA_PAGE, "https://x/") is None


def test_progress_bar_on_a_stream(server: Server, tmp_path: Path) -> None:
    server.files["/f.bin"] = _payload(MB)
    err = io.StringIO()
    download(f"{server.base}/f.bin", tmp_path / "f.part", label="f.bin", stream=err, backoff=0.01)
    assert "f.bin: 100% 1.0 MB" in err.getvalue()


# --- `models fetch` end to end ------------------------------------------------------------------


def test_fetch_downloads_verifies_and_records(drive: Server, tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models")
    e4e_id = store.spec("e4e").drive_id
    drive.behaviour[e4e_id].drop_after = [50_000]
    for name in ("stylegan2", "e4e", "ffclip"):
        result = store.fetch(name, **FAST)
        assert result.status == "recorded", result.message
        data = drive.files[store.spec(name).drive_id]
        assert result.sha256 == hashlib.sha256(data).hexdigest() == sha256_file(store.path(name))
        assert not store.part_path(name).exists()
    index = store.index()
    assert index["e4e"]["info"] == {"stylegan_size": 1024, "n_latent": 18, "decoder": True}
    assert index["ffclip"]["source"].startswith("fetch: FFCLIP README")
    ranges = [r for path, r in drive.log if e4e_id in path and r]
    assert ranges == ["bytes=50000-", "bytes=50000-"]  # the resume went through the confirm page again
    assert store.fetch("e4e", **FAST).message == "already in the store"


def test_fetch_rejects_a_wrong_file_and_drops_it(drive: Server, tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models")
    # the e4e id serving the FFCLIP file: a valid checkpoint, but not what the entry needs
    drive.files[store.spec("e4e").drive_id] = drive.files[store.spec("ffclip").drive_id]
    result = store.fetch("e4e", **FAST)
    assert result.status == "invalid" and "its layout is ffclip, not e4e" in result.message
    assert not store.present("e4e") and not store.part_path("e4e").exists()


def test_fetch_reports_quota_page_with_manual_link(drive: Server, tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models")
    drive.behaviour[store.spec("ffclip").drive_id] = Behaviour(html_instead=QUOTA_PAGE)
    result = store.fetch("ffclip", **FAST)
    assert result.status == "invalid" and "quota" in result.message
    assert f"https://drive.google.com/file/d/{store.spec('ffclip').drive_id}/view" in result.message
    assert not store.present("ffclip") and not store.part_path("ffclip").exists()


def test_fetch_refuses_a_download_that_differs_from_the_recorded_hash(drive: Server, tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models")
    assert store.fetch("stylegan2", **FAST).ok
    store.path("stylegan2").unlink()
    sg_id = store.spec("stylegan2").drive_id
    ckpt = S.official_size_files(1024)["stylegan2"]
    ckpt["latent_avg"] = ckpt["latent_avg"] + 1  # still valid, different bytes
    buf = io.BytesIO()
    S.save(ckpt, buf)
    drive.files[sg_id] = buf.getvalue()
    result = store.fetch("stylegan2", **FAST)
    assert result.status == "changed" and "left at" in result.message
    assert not store.present("stylegan2") and store.part_path("stylegan2").exists()


def test_fetch_cli_shows_the_licence_and_fetches_clip_through_open_clip(
    drive: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import open_clip.pretrained
    import torch
    from safetensors.torch import save_file

    from ffclip.app.cli import main
    from ffclip.engine.checkpoints import layouts

    small = {"token_embedding.weight": (10, 4), "positional_embedding": (7, 4), "visual.conv1.weight": (4, 3, 2, 2)}
    monkeypatch.setattr(layouts, "clip_shapes", lambda: small)
    calls = []

    def fake_download(cfg: dict, prefer_hf_hub: bool = True, cache_dir: str | None = None) -> str:
        calls.append((cfg.get("hf_hub"), cache_dir))
        target = Path(cache_dir) / "blobs" / "open_clip_model.safetensors"
        target.parent.mkdir(parents=True)
        save_file({k: torch.zeros(s) for k, s in small.items()}, str(target))
        return str(target)

    monkeypatch.setattr(open_clip.pretrained, "download_pretrained", fake_download)
    root = tmp_path / "models"
    assert main(["models", "fetch", "--models", str(root), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "NVIDIA Source Code License-NC: non-commercial use only" in out
    assert out.count("sha256 recorded") == 3  # ffclip, e4e, clip: the FFCLIP file carries its generator
    assert calls == [("timm/vit_base_patch32_clip_224.openai/", str(root / ".cache" / "open_clip"))]
    store = ModelStore(root)
    assert store.missing() == [] and not (root / ".cache" / "open_clip").exists()
    assert not store.present("stylegan2") and not any(store.spec("stylegan2").drive_id in p for p, _ in drive.log)
    assert main(["models", "verify", "--models", str(root)]) == 0
    assert capsys.readouterr().out.count("matches the recorded sha256") == 3


def test_a_second_fetch_of_the_same_file_stops_at_once(drive: Server, tmp_path: Path) -> None:
    from ffclip.engine.store import _exclusive

    store = ModelStore(tmp_path / "models")
    store.root.mkdir(parents=True)
    with _exclusive(store.part_path("ffclip")):
        result = store.fetch("ffclip", **FAST)
    assert result.status == "invalid" and "another process is downloading ffclip_ffhq.pt" in result.message
    assert drive.log == []
    assert store.fetch("ffclip", **FAST).ok and not (store.root / "ffclip_ffhq.pt.part.lock").exists()


def test_fetch_brings_stylegan2_only_after_a_mapper_only_ffclip_file(
    drive: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from ffclip.app.cli import main

    full = S.official_size_files(1024)["ffclip"]
    mapper = {k: v for k, v in full["state_dict"].items() if k.startswith("module.att_mapper.")}
    buf = io.BytesIO()
    S.save({"state_dict": mapper, "opts": {}}, buf)
    drive.files[ModelStore.spec("ffclip").drive_id] = buf.getvalue()

    def offline(*args: object, **kwargs: object) -> Path:
        raise DownloadError("open_clip could not download ViT-B-32 (openai): offline")

    monkeypatch.setattr("ffclip.engine.store.fetch_clip", offline)
    root = tmp_path / "models"
    assert main(["models", "fetch", "--models", str(root), "--quiet", "--retries", "0"]) == 1  # clip failed
    out = capsys.readouterr().out
    order = [line.split(":")[0] for line in out.splitlines() if " -> " in line]
    assert order == ["ffclip", "stylegan2", "e4e", "clip"]
    store = ModelStore(root)
    assert store.present("stylegan2") and store.index()["stylegan2"]["sha256"]
    assert store.missing() == ["clip"]


def test_fetch_from_a_mirror(
    server: Server,
    official_bytes: dict[str, bytes],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from ffclip.app.cli import main

    # the mirror's file stands for the published one: its sha256 is checked all the same
    published = Published(hashlib.sha256(official_bytes["e4e"]).hexdigest(), len(official_bytes["e4e"]))
    monkeypatch.setitem(SPEC_BY_NAME, "e4e", dataclasses.replace(SPEC_BY_NAME["e4e"], published=published))
    server.files["/mirror/e4e.pt"] = official_bytes["e4e"]
    server.behaviour["/mirror/e4e.pt"] = Behaviour(drop_after=[40_000])
    root = tmp_path / "models"
    url = f"{server.base}/mirror/e4e.pt"
    assert main(["models", "fetch", "e4e", "--from", url, "--models", str(root), "--quiet"]) == 0
    store = ModelStore(root)
    assert store.index()["e4e"]["source"] == f"fetch: {url}"
    assert store.index()["e4e"]["sha256"] == hashlib.sha256(official_bytes["e4e"]).hexdigest()
    assert store.index()["e4e"]["trust"] == "verified" and "; verified" in capsys.readouterr().out
    assert [r for _, r in server.log] == [None, "bytes=40000-"]  # resumed from the mirror too
    assert main(["models", "fetch", "e4e", "ffclip", "--from", url, "--models", str(root)]) == 2
    assert "--from URL takes exactly one model NAME" in capsys.readouterr().err


# --- what the downloader refuses: other schemes, a downgrade, more bytes than the file can be ---


class _Scripted(http.server.BaseHTTPRequestHandler):
    """Answers each path with the test's (status, headers, body), over HTTP/1.0: a body without
    Content-Length ends when the connection closes."""

    server: _ScriptedServer

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self.server.log.append(self.path)
        status, headers, body = self.server.routes.get(self.path, (404, {}, b""))
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        with contextlib.suppress(ConnectionError):  # the downloader hangs up on a body it refuses
            self.wfile.write(body)


class _ScriptedServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        super().__init__(("127.0.0.1", 0), _Scripted)
        self.routes: dict[str, tuple[int, dict[str, str], bytes]] = {}
        self.log: list[str] = []
        if tls is not None:
            self.socket = tls.wrap_socket(self.socket, server_side=True)
        self.base = f"{'https' if tls else 'http'}://127.0.0.1:{self.server_address[1]}"


@pytest.fixture
def scripted() -> Iterator[Callable[..., _ScriptedServer]]:
    servers: list[_ScriptedServer] = []

    def start(tls: ssl.SSLContext | None = None) -> _ScriptedServer:
        servers.append(srv := _ScriptedServer(tls))
        threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return srv

    yield start
    for srv in servers:
        srv.shutdown()
        srv.server_close()


def _confirm_page(action: str) -> str:
    return VIRUS_PAGE.format(action=action, id="FILEID")


def test_a_confirm_form_action_to_a_local_file_is_refused(server: Server, tmp_path: Path) -> None:
    """The audit's case: a "virus scan" page whose form posts to file:// saved a local file."""
    secret = tmp_path / "secret.txt"
    secret.write_text("not for the store")
    server.files["FILEID"] = b"unused"
    server.behaviour["FILEID"] = Behaviour(html_instead=_confirm_page(secret.as_uri()))
    with pytest.raises(DownloadError, match=r"refused a confirmation page's link to file:///.*the file: scheme is not"):
        download(drive_url("FILEID", f"{server.base}/download"), tmp_path / "f.part", **FAST)
    assert not (tmp_path / "f.part").exists() and len(server.log) == 1


def test_the_opener_cannot_open_other_schemes_even_past_the_checks(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("not for the store")
    opener = _opener(frozenset({"http", "https"}), http.cookiejar.CookieJar())
    for url in (secret.as_uri(), "data:text/plain,hello", "ftp://127.0.0.1:9/x"):
        with pytest.raises(urllib.error.URLError, match="unknown url type"):
            opener.open(url, timeout=1)


def test_a_source_of_another_scheme_is_refused(tmp_path: Path) -> None:
    for url in ("file:///etc/passwd", "ftp://127.0.0.1/x.pt", "data:application/octet-stream,xx"):
        scheme = url.split(":")[0]
        with pytest.raises(DownloadError, match=f"refused a download from {scheme}:.*the {scheme}: scheme is not"):
            download(url, tmp_path / "f.part", **FAST)
    result = ModelStore(tmp_path / "models").fetch("e4e", url="file:///etc/passwd", **FAST)
    assert result.status == "invalid" and result.message.startswith("refused a download from file:///etc/passwd")


def test_a_redirect_to_ftp_is_refused(scripted: Callable[..., _ScriptedServer], tmp_path: Path) -> None:
    """urllib's own redirect handler follows ftp: (and build_opener could open it)."""
    srv = scripted()
    srv.routes["/f.bin"] = (302, {"Location": "ftp://127.0.0.1:9/f.bin", "Content-Length": "0"}, b"")
    with pytest.raises(DownloadError, match=r"refused a redirect to ftp://127\.0\.0\.1:9/f\.bin: the ftp: scheme"):
        download(f"{srv.base}/f.bin", tmp_path / "f.part", **FAST)
    assert srv.log == ["/f.bin"] and not (tmp_path / "f.part").exists()


def test_a_redirect_within_http_is_followed(scripted: Callable[..., _ScriptedServer], tmp_path: Path) -> None:
    srv = scripted()
    srv.routes["/old"] = (301, {"Location": "/new", "Content-Length": "0"}, b"")
    srv.routes["/new"] = (200, {"Content-Length": "5"}, b"bytes")
    download(f"{srv.base}/old", tmp_path / "f.part", **FAST)
    assert (tmp_path / "f.part").read_bytes() == b"bytes" and srv.log == ["/old", "/new"]


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.mark.process  # the certificates come from openssl
def test_an_https_download_is_never_downgraded_to_http(
    scripted: Callable[..., _ScriptedServer], certs: Certs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(certs.ca))  # urllib's default context trusts the test CA
    plain, secure = scripted(), scripted(certs.server_context())
    plain.routes["/f.bin"] = (200, {"Content-Length": "4"}, b"data")
    secure.routes["/f.bin"] = (200, {"Content-Length": "4"}, b"data")
    download(f"{secure.base}/f.bin", tmp_path / "ok.part", **FAST)  # https itself goes through
    assert (tmp_path / "ok.part").read_bytes() == b"data"

    secure.routes["/moved"] = (302, {"Location": f"{plain.base}/f.bin", "Content-Length": "0"}, b"")
    with pytest.raises(DownloadError, match=r"refused a redirect to http://.*never downgraded to http:"):
        download(f"{secure.base}/moved", tmp_path / "a.part", **FAST)
    page = _confirm_page(f"{plain.base}/f.bin").encode()
    secure.routes["/page"] = (200, {"Content-Type": "text/html", "Content-Length": str(len(page))}, page)
    with pytest.raises(DownloadError, match=r"refused a confirmation page's link to http://.*never downgraded"):
        download(f"{secure.base}/page", tmp_path / "b.part", **FAST)
    assert plain.log == [] and not (tmp_path / "a.part").exists() and not (tmp_path / "b.part").exists()


def test_a_stream_without_length_is_stopped_at_the_cap(
    scripted: Callable[..., _ScriptedServer], tmp_path: Path
) -> None:
    """No Content-Length to refuse up front: the bytes are counted as they come, and the .part file
    goes, so that the next try (here: the server fixed) starts clean."""
    srv = scripted()
    srv.routes["/f.bin"] = (200, {"Content-Type": "application/octet-stream"}, _payload(3 * MB))
    part = tmp_path / "f.part"
    with pytest.raises(DownloadError, match=r"stopped at [\d,]+ bytes: more than the 2,097,152 that f can be"):
        download(f"{srv.base}/f.bin", part, max_bytes=2 * MB, **FAST)
    assert not part.exists() and len(srv.log) == 1  # stopped for good, not retried
    srv.routes["/f.bin"] = (200, {}, data := _payload(MB))
    assert download(f"{srv.base}/f.bin", part, max_bytes=2 * MB, **FAST).resumed_from == 0
    assert part.read_bytes() == data


def test_a_length_over_the_cap_is_refused_before_reading(
    scripted: Callable[..., _ScriptedServer], tmp_path: Path
) -> None:
    srv = scripted()
    srv.routes["/f.bin"] = (200, {"Content-Length": str(5 * MB)}, _payload(5 * MB))
    seen: list[tuple[int, int | None]] = []
    with pytest.raises(DownloadError, match=r"announces 5,242,880 bytes, more than the 1,048,576 .* nothing was read"):
        download(f"{srv.base}/f.bin", tmp_path / "f.part", max_bytes=MB, on_progress=lambda *a: seen.append(a), **FAST)
    assert seen == [(0, None)] and not (tmp_path / "f.part").exists()  # not a byte of the body taken


def test_size_cap() -> None:
    assert size_cap(100 * MB) == 101 * MB + MB and size_cap(0) == MB
    assert size_cap(None) == MAX_UNKNOWN_SIZE == 4 << 30
