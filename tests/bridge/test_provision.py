"""`ffclip-engine serve` on an empty model store fetches the files itself: the daemon answers status
throughout (`downloading` with the bytes so far), edits wait in the queue, and what could not come
(CLIP here: open_clip's download needs the internet) ends as `missing` with the reason and the
manual route. The Drive URLs point at a local server (FFCLIP_DRIVE_URL, the `drive` fixture)."""

from __future__ import annotations

import argparse
import functools
import hashlib
import io
import json
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ffclip.bridge.domains import load_engine_backend
from ffclip.bridge.fake import FakeBackend
from ffclip.bridge.provision import Provisioner
from ffclip.bridge.testing import ServerThread
from ffclip.engine.download import DownloadError
from ffclip.engine.store import ModelStore
from ffclip.plugin.websocket import WebSocket
from tests.support.http_files import QUOTA_PAGE, Behaviour, Server

FAST = {"backoff": 0.01, "retries": 1, "stall_timeout": 5.0}
NO_INTERNET = "open_clip could not download ViT-B-32 (openai): OSError: no network"


class Client:
    """One websocket connection that keeps every status message it receives."""

    def __init__(self, url: str) -> None:
        self.ws = WebSocket.connect(url)
        self.statuses: list[dict] = []
        self.others: list[dict] = []

    def receive(self, timeout: float = 20.0) -> dict:
        message = json.loads(self.ws.recv(timeout))
        (self.statuses if message["type"] == "status" else self.others).append(message)
        return message

    def ask(self) -> dict:
        """The status now (a pushed one that arrives first is as current as the answer)."""
        self.ws.send_text(json.dumps({"type": "status"}))
        return self.wait_for(lambda m: m["type"] == "status")

    def after_loading(self, thread: ServerThread) -> dict:
        """The status once the engine has loaded (pushed statuses still in the pipe are skipped)."""
        thread.call(thread.server.loaded.wait(), timeout=60)
        self.ws.send_text(json.dumps({"type": "status"}))
        return self.wait_for(lambda m: m["type"] == "status" and m["state"] not in ("loading", "downloading"))

    def wait_for(self, predicate: Callable[[dict], bool], timeout: float = 20.0) -> dict:
        deadline = time.monotonic() + timeout
        try:
            while True:
                message = self.receive(max(0.01, deadline - time.monotonic()))
                if predicate(message):
                    return message
        except TimeoutError:
            pass
        raise AssertionError(f"no such message within {timeout} s; statuses: {self.statuses[-3:]}")

    def edit(self) -> str:
        job = uuid.uuid4().hex
        image = {"width": 32, "height": 32, "format": "rgba8"}
        self.ws.send_text(json.dumps({"type": "edit", "id": job, "prompt": "smiling", "image": image}))
        self.ws.send_binary(bytes(32 * 32 * 4))
        return job

    def close(self) -> None:
        self.ws.close()


@pytest.fixture
def no_internet_for_clip(monkeypatch: pytest.MonkeyPatch) -> None:
    import open_clip.pretrained

    def offline(*args: object, **kwargs: object) -> str:
        raise OSError("no network")  # what huggingface_hub's LocalEntryNotFoundError amounts to

    monkeypatch.setattr(open_clip.pretrained, "download_pretrained", offline)


@pytest.fixture
def engine() -> Iterator[Callable[[Provisioner], ServerThread]]:
    threads: list[ServerThread] = []

    def start(loader: Provisioner) -> ServerThread:
        thread = ServerThread(loader, download_status_interval=0.05).start(wait=False)
        threads.append(thread)
        return thread

    yield start
    for thread in threads:
        thread.stop()


def real_loader(root: Path) -> Provisioner:
    """What `serve --models ROOT` runs: fetch, then the real engine's loader."""
    load = functools.partial(load_engine_backend, "real", str(root), "cpu", "model", 1 << 20)
    return Provisioner(load, str(root), **FAST)


def test_empty_store_downloads_then_reports_only_clip_missing(
    drive: Server, tmp_path: Path, engine: Callable, no_internet_for_clip: None
) -> None:
    root = tmp_path / "models"
    ffclip_id, e4e_id = ModelStore.spec("ffclip").drive_id, ModelStore.spec("e4e").drive_id
    sizes = {"ffclip": len(drive.files[ffclip_id]), "e4e": len(drive.files[e4e_id])}
    drive.behaviour[ffclip_id].pause_at = [10_000, 20_000]  # held there until the test has looked
    drive.behaviour[e4e_id].drop_after = [50_000]  # the connection cut mid-file: resumed with Range
    thread = engine(real_loader(root))
    client = Client(thread.url)
    for offset in (10_000, 20_000):  # bytes rising, as every client sees them
        assert drive.holding.wait(20)
        drive.holding.clear()
        status = client.wait_for(lambda m, o=offset: m["type"] == "status" and m.get("download", {}).get("done") == o)
        assert status["state"] == "downloading"
        expected = {"file": "ffclip_ffhq.pt", "done": offset, "total": sizes["ffclip"], "files_left": 3}
        assert status["download"] == expected
        if offset == 10_000:
            asked = client.ask()  # a client's own question is answered while the download runs
            assert asked["state"] == "downloading" and asked["download"]["file"] == "ffclip_ffhq.pt"
            drive.resume.set()
    job = client.edit()
    assert client.wait_for(lambda m: m.get("id") == job)["type"] == "queued"  # waits, as during loading
    drive.resume.set()

    end = client.wait_for(lambda m: m.get("id") == job and m["type"] == "error", timeout=60)
    assert end["code"] == "models_missing"
    assert "clip: the engine could not download it: open_clip could not download ViT-B-32" in end["message"]
    assert "ViT-B-32.pt" in end["message"] and "ffclip-engine models import --models <models> FILE" in end["message"]
    final = client.after_loading(thread)
    assert final["state"] == "missing" and "download" not in final
    assert final["models"]["missing"] == ["clip"]
    assert final["models"]["download_errors"] == {"clip": NO_INTERNET}
    assert "openaipublic.azureedge.net" in final["models"]["manual"]["clip"]

    # the progress the clients saw: ffclip first, and each file's bytes only grow
    seen: dict[str, list[int]] = {}
    for message in client.statuses:
        if message["state"] == "downloading":
            seen.setdefault(message["download"]["file"], []).append(message["download"]["done"])
    assert next(iter(seen)) == "ffclip_ffhq.pt" and all(values == sorted(values) for values in seen.values())
    assert {10_000, 20_000} <= set(seen["ffclip_ffhq.pt"])
    # verified and recorded: the sha256 of what the server sent
    store = ModelStore(root)
    for name in ("ffclip", "e4e"):
        served = drive.files[store.spec(name).drive_id]
        assert store.index()[name]["sha256"] == hashlib.sha256(served).hexdigest()
    assert [r for path, r in drive.log if e4e_id in path and r] == ["bytes=50000-", "bytes=50000-"]  # + confirm page
    assert not any(store.spec("stylegan2").drive_id in path for path, _ in drive.log)  # not needed
    client.close()


def test_quota_page_and_a_wrong_file_end_as_missing_with_the_manual_route(
    drive: Server, tmp_path: Path, engine: Callable, no_internet_for_clip: None
) -> None:
    store = ModelStore(tmp_path / "models")
    drive.behaviour[store.spec("ffclip").drive_id] = Behaviour(html_instead=QUOTA_PAGE)
    drive.files[store.spec("e4e").drive_id] = drive.files[store.spec("ffclip").drive_id]  # not an e4e file
    thread = engine(real_loader(store.root))
    client = Client(thread.url)
    status = client.after_loading(thread)
    assert status["state"] == "missing" and status["models"]["missing"] == ["ffclip", "e4e", "clip"]
    errors, manual = status["models"]["download_errors"], status["models"]["manual"]
    assert "download quota is exceeded" in errors["ffclip"]
    assert "its layout is ffclip, not e4e" in errors["e4e"]
    for name in ("ffclip", "e4e"):
        assert f"https://drive.google.com/file/d/{store.spec(name).drive_id}/view" in manual[name]
    assert not store.present("ffclip") and not store.part_path("e4e").exists()  # nothing wrong was kept
    client.close()


def test_no_network_at_all(tmp_path: Path, engine: Callable, monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(*args: object, **kwargs: object) -> Path:
        raise DownloadError("open_clip could not download ViT-B-32 (openai): no network")

    with socket.socket() as closed:  # bound, never listening: connections to it are refused
        closed.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{closed.getsockname()[1]}/download"
        monkeypatch.setenv("FFCLIP_DRIVE_URL", url)
        monkeypatch.setattr("ffclip.engine.store.fetch_clip", offline)
        thread = engine(real_loader(tmp_path / "models"))
        thread.call(thread.server.loaded.wait(), timeout=60)
    status = thread.server.status_message()  # (the wire is the same as above)
    assert status["state"] == "missing" and status["models"]["missing"] == ["ffclip", "e4e", "clip"]
    assert f"giving up on {url}" in status["models"]["download_errors"]["e4e"]


@pytest.mark.parametrize("ffclip_file", ["official", "mapper-only"])
def test_when_everything_arrives_the_engine_loads_and_is_ready(
    drive: Server, tmp_path: Path, engine: Callable, monkeypatch: pytest.MonkeyPatch, ffclip_file: str
) -> None:
    from safetensors.torch import save_file

    from ffclip.engine.checkpoints import layouts
    from ffclip.engine.checkpoints import synthetic as S

    if ffclip_file == "mapper-only":  # then, and only then, the StyleGAN2 file is needed too
        full = S.official_size_files(1024)["ffclip"]["state_dict"]
        buffer = io.BytesIO()
        S.save({"state_dict": {k: v for k, v in full.items() if "att_mapper" in k}, "opts": {}}, buffer)
        drive.files[ModelStore.spec("ffclip").drive_id] = buffer.getvalue()

    small = {"token_embedding.weight": (10, 4), "positional_embedding": (7, 4), "visual.conv1.weight": (4, 3, 2, 2)}
    monkeypatch.setattr(layouts, "clip_shapes", lambda: small)

    def clip_from_open_clip(store: ModelStore, part: Path, out: object = None) -> Path:
        import torch

        save_file({k: torch.zeros(s) for k, s in small.items()}, str(part))
        return part

    monkeypatch.setattr("ffclip.engine.store.fetch_clip", clip_from_open_clip)
    root = tmp_path / "models"
    loaded_with: list[list[str]] = []

    def load() -> FakeBackend:  # stands in for the real engine: what was there when loading began
        loaded_with.append(sorted(p.name for p in root.iterdir() if p.suffix in (".pt", ".safetensors")))
        return FakeBackend()

    thread = engine(Provisioner(load, str(root), **FAST))
    client = Client(thread.url)
    ready = client.after_loading(thread)
    assert ready["state"] == "ready" and "download" not in ready
    expected = ["clip_vit_b_32_openai.safetensors", "e4e_ffhq_encode.pt", "ffclip_ffhq.pt"]
    if ffclip_file == "mapper-only":
        expected.append("stylegan2-ffhq-config-f.pt")
    assert loaded_with == [expected]
    assert ModelStore(root).missing() == []
    client.close()


def test_shutdown_during_a_download_stops_it_and_keeps_the_part_file(
    drive: Server, tmp_path: Path, engine: Callable, no_internet_for_clip: None
) -> None:
    root = tmp_path / "models"
    ffclip_id = ModelStore.spec("ffclip").drive_id
    drive.behaviour[ffclip_id].pause_at = [10_000]
    loader = real_loader(root)
    thread = engine(loader)
    assert drive.holding.wait(20)
    thread.stop()  # tells the loader to stop; the held response goes on and the download ends there
    drive.resume.set()
    deadline = time.monotonic() + 20
    while loader.describe() is not None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert loader.describe() is None
    store = ModelStore(root)
    assert store.part_path("ffclip").stat().st_size > 0 and not store.present("ffclip")  # kept, not adopted
    assert not any(store.spec("e4e").drive_id in path for path, _ in drive.log)  # it went no further


def test_serve_fetches_unless_told_not_to() -> None:
    from ffclip.app.cli import serve

    parser = argparse.ArgumentParser()
    serve.add_arguments(parser)
    assert isinstance(serve.make_loader(parser.parse_args([])), Provisioner)
    assert not isinstance(serve.make_loader(parser.parse_args(["--no-fetch"])), Provisioner)
    assert not isinstance(serve.make_loader(parser.parse_args(["--profile", "tiny"])), Provisioner)
