"""Downloads and `models fetch` against a local HTTP server that misbehaves on purpose: dropped
connections, stalls, 503s, servers that ignore Range, Google Drive's virus-scan confirm page and
its quota page."""

from __future__ import annotations

import hashlib
import http.server
import io
import os
import threading
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from ffclip.engine.checkpoints import synthetic as S
from ffclip.engine.download import DownloadError, confirm_url, download, drive_url
from ffclip.engine.store import ModelStore, sha256_file


@dataclass
class Behaviour:
    drop_after: list[int] = field(default_factory=list)  # per request: close after N body bytes
    stall_after: list[int] = field(default_factory=list)  # per request: stop sending after N bytes
    fail_times: int = 0  # answer 503 this many times first
    ignore_range: bool = False
    drive_confirm: bool = False  # answer the first request with Drive's virus-scan page
    html_instead: str | None = None  # always answer this HTML page


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.files: dict[str, bytes] = {}
        self.behaviour: dict[str, Behaviour] = {}
        self.log: list[tuple[str, str | None]] = []  # (path + query, Range header)
        self.sent = 0
        self.release = threading.Event()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


VIRUS_PAGE = """<!DOCTYPE html><html><head><title>Google Drive - Virus scan warning</title></head><body>
<p>Google Drive can't scan this file for viruses.</p>
<form id="download-form" action="{action}" method="get">
<input type="submit" id="uc-download-link" value="Download anyway"/>
<input type="hidden" name="id" value="{id}"><input type="hidden" name="export" value="download">
<input type="hidden" name="confirm" value="t"><input type="hidden" name="uuid" value="5e1f-77aa">
</form></body></html>"""
QUOTA_PAGE = """<html><head><title>Google Drive - Quota exceeded</title></head><body>
Too many users have viewed or downloaded this file recently. Please try again later.</body></html>"""


class Handler(http.server.BaseHTTPRequestHandler):
    server: Server
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        url = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(url.query))
        key = query.get("id", url.path)
        self.server.log.append((self.path, self.headers.get("Range")))
        if key not in self.server.files:
            return self._send(404, b"not found", "text/plain")
        b = self.server.behaviour.setdefault(key, Behaviour())
        if b.html_instead is not None:
            return self._send(200, b.html_instead.encode(), "text/html; charset=utf-8")
        if b.fail_times > 0:
            b.fail_times -= 1
            return self._send(503, b"busy", "text/plain")
        if b.drive_confirm and not (query.get("confirm") == "t" and query.get("uuid") == "5e1f-77aa"):
            page = VIRUS_PAGE.format(action=f"{self.server.base}/download", id=key)
            return self._send(200, page.encode(), "text/html; charset=utf-8")
        self._send_file(self.server.files[key], b)

    def _send(self, code: int, body: bytes, ctype: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _send_file(self, data: bytes, b: Behaviour) -> None:
        start = 0
        rng = self.headers.get("Range")
        if rng and not b.ignore_range:
            start = int(rng.removeprefix("bytes=").split("-")[0])
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        body = data[start:]
        drop = b.drop_after.pop(0) if b.drop_after else None
        stall = b.stall_after.pop(0) if b.stall_after else None
        cut = drop if drop is not None else stall
        self.wfile.write(body[:cut] if cut is not None else body)
        self.server.sent += len(body[:cut] if cut is not None else body)
        self.wfile.flush()
        if stall is not None:
            self.server.release.wait(10)  # hold the connection open, sending nothing
        if cut is not None:
            self.close_connection = True


@pytest.fixture
def server() -> Iterator[Server]:
    srv = Server()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv
    srv.release.set()
    srv.shutdown()
    srv.server_close()


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


@pytest.fixture(scope="module")
def official_bytes() -> dict[str, bytes]:
    """Full-size synthetic FFHQ files (zero-stride tensors: tens of KB each), by store name."""
    out = {}
    for spec_name, ckpt in S.official_size_files(1024).items():
        buf = io.BytesIO()
        S.save(ckpt, buf)
        out[spec_name] = buf.getvalue()
    return out


@pytest.fixture
def drive(server: Server, official_bytes: dict[str, bytes], monkeypatch: pytest.MonkeyPatch) -> Server:
    """The store's Drive ids served locally, behind the virus-scan confirm page."""
    monkeypatch.setenv("FFCLIP_DRIVE_URL", f"{server.base}/download")
    for spec_name, data in official_bytes.items():
        drive_id = ModelStore.spec(spec_name).drive_id
        server.files[drive_id] = data
        server.behaviour[drive_id] = Behaviour(drive_confirm=True)
    return server


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

    from ffclip.engine.checkpoints import layouts
    from ffclip.engine.cli import main

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
    from ffclip.engine.cli import main

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
