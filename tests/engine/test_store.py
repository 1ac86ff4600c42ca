"""How far the store trusts a file: the sha256 its project publishes (set per spec; here the published
digest and size are those of small synthetic files served locally), CLIP's sha256 in OpenAI's URL,
and "unverified (first seen)" where nothing is published. The Drive ids are served by the `drive`
fixture (tests/conftest.py), which leaves the synthetic files unpublished unless a test publishes them."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import pytest

from ffclip.app.cli import main
from ffclip.engine.store import (
    FIRST_SEEN,
    NOT_PUBLISHED,
    OPENAI_VIT_B_32_SHA256,
    SPEC_BY_NAME,
    VERIFIED,
    ModelStore,
    Published,
    published_in_url,
)
from tests.support.http_files import Server

FAST = {"backoff": 0.01, "progress": False}
MB = 1 << 20


def _publish(monkeypatch: pytest.MonkeyPatch, name: str, sha256: str, size: int) -> None:
    spec = dataclasses.replace(SPEC_BY_NAME[name], published=Published(sha256, size))
    monkeypatch.setitem(SPEC_BY_NAME, name, spec)


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    capsys.readouterr()
    main(["models", *args])
    return capsys.readouterr().out


def test_the_official_files_carry_their_published_digests() -> None:
    e4e, stylegan2 = ModelStore.spec("e4e").published, ModelStore.spec("stylegan2").published
    assert e4e == Published("2ace1d9a8c05c10a399bcd500b8dda118f759ff1aac89dbdab7435f2136a0999", 1_201_649_680)
    assert stylegan2 == Published("bae494ef77e32a9cd1792a81a3c167692a0e64f6bcd8b06592ff42917e2ed46e", 381_462_551)
    assert ModelStore.spec("ffclip").published is None  # the FFCLIP README publishes no digest
    url = "https://openaipublic.azureedge.net/clip/models/40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af/ViT-B-32.pt"
    assert published_in_url(url) == OPENAI_VIT_B_32_SHA256 == url.split("/")[-2]
    assert published_in_url("https://huggingface.co/timm/x/resolve/main/open_clip_model.safetensors") is None


def test_a_download_with_the_published_digest_is_verified(
    drive: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    store = ModelStore(tmp_path / "models")
    data = drive.files[store.spec("e4e").drive_id]
    _publish(monkeypatch, "e4e", hashlib.sha256(data).hexdigest(), len(data))
    store.record("e4e", {"sha256": "f" * 64, "source": "an earlier import"})  # a pin gives way to the published
    result = store.fetch("e4e", **FAST)
    assert (result.status, result.trust) == ("recorded", VERIFIED)
    assert store.index()["e4e"]["trust"] == VERIFIED
    out = _cli(capsys, "verify", "e4e", "--models", str(store.root))
    assert f"matches the recorded sha256 {result.sha256}; verified" in out
    listed = next(line for line in _cli(capsys, "list", "--models", str(store.root)).splitlines() if "e4e " in line)
    assert " verified " in listed and "unverified" not in listed


def test_a_download_differing_from_the_published_digest_is_refused_and_deleted(
    drive: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A valid-looking e4e file that is not the published one: refused before it is even unpickled,
    and deleted, so that the next fetch starts clean."""
    store = ModelStore(tmp_path / "models")
    data = drive.files[store.spec("e4e").drive_id]
    _publish(monkeypatch, "e4e", "0" * 64, len(data))
    check_file = ModelStore.check_file
    monkeypatch.setattr(ModelStore, "check_file", lambda *a: pytest.fail("a file known to be wrong was unpickled"))
    result = store.fetch("e4e", **FAST)
    assert result.status == "invalid" and not result.ok
    assert result.message.startswith(
        f"the download's sha256 {hashlib.sha256(data).hexdigest()[:16]}… differs from the published "
        "0000000000000000…: it is not the published e4e_ffhq_encode.pt, and was deleted"
    )
    assert "manual route: open https://drive.google.com/file/d/" in result.message
    assert not store.present("e4e") and not store.part_path("e4e").exists() and "e4e" not in store.index()
    monkeypatch.setattr(ModelStore, "check_file", check_file)
    _publish(monkeypatch, "e4e", hashlib.sha256(data).hexdigest(), len(data))
    assert store.fetch("e4e", **FAST).trust == VERIFIED


def test_without_a_published_digest_the_file_is_unverified_first_seen(
    drive: Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = ModelStore(tmp_path / "models")
    result = store.fetch("ffclip", **FAST)
    assert (result.status, result.trust) == ("recorded", "unverified (first seen)")
    assert store.index()["ffclip"]["trust"] == FIRST_SEEN
    out = _cli(capsys, "verify", "ffclip", "--models", str(store.root))
    assert f"ok       ffclip: matches the recorded sha256 {result.sha256}; unverified (first seen)" in out
    listed = _cli(capsys, "list", "--models", str(store.root))
    assert any("ffclip_ffhq.pt" in line and "unverified (first seen)" in line for line in listed.splitlines())


def test_the_published_size_caps_the_download(drive: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = ModelStore(tmp_path / "models")
    e4e_id = store.spec("e4e").drive_id
    data = drive.files[e4e_id]
    _publish(monkeypatch, "e4e", hashlib.sha256(data).hexdigest(), len(data))
    drive.files[e4e_id] = data + bytes(len(data) // 100 + MB + 1)  # one byte past size + 1 % + 1 MiB
    result = store.fetch("e4e", **FAST)
    assert result.status == "invalid" and "that e4e_ffhq_encode.pt can be" in result.message
    assert not store.part_path("e4e").exists() and not (store.root / "e4e_ffhq_encode.pt.part.lock").exists()
    drive.files[e4e_id] = data  # the source fixed: nothing left behind is in the way
    assert store.fetch("e4e", **FAST).trust == VERIFIED


def test_an_import_is_labelled_against_the_published_digest(official_bytes: dict[str, bytes], tmp_path: Path) -> None:
    """An import is the user vouching for the file: kept, but said not to be the published one."""
    src = tmp_path / "my_e4e.pt"
    src.write_bytes(official_bytes["e4e"])  # a synthetic file, not the published one
    store = ModelStore(tmp_path / "models")
    _, result = store.import_file(src)
    assert result.ok and result.trust == NOT_PUBLISHED == "unverified (differs from the published sha256)"
    assert store.verify("e4e").trust == NOT_PUBLISHED


def test_a_clip_url_naming_its_sha256_must_bring_that_file(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """OpenAI's CLIP URL names the file's sha256 (.../clip/models/<sha256>/ViT-B-32.pt): a mirror
    keeping that layout is held to it."""
    import torch
    from safetensors.torch import save

    from ffclip.engine.checkpoints import layouts

    small = {"token_embedding.weight": (10, 4), "positional_embedding": (7, 4), "visual.conv1.weight": (4, 3, 2, 2)}
    monkeypatch.setattr(layouts, "clip_shapes", lambda: small)
    data = save({k: torch.zeros(s) for k, s in small.items()})
    sha = hashlib.sha256(data).hexdigest()
    server.files[f"/clip/models/{'1' * 64}/ViT-B-32.pt"] = data
    server.files[f"/clip/models/{sha}/ViT-B-32.pt"] = data
    store = ModelStore(tmp_path / "models")
    wrong = store.fetch("clip", url=f"{server.base}/clip/models/{'1' * 64}/ViT-B-32.pt", **FAST)
    assert wrong.status == "invalid"
    assert f"sha256 {sha[:16]}… differs from the 1111111111111111… its URL publishes; it was deleted" in wrong.message
    assert not store.present("clip") and list(store.root.glob("*.part")) == []
    right = store.fetch("clip", url=f"{server.base}/clip/models/{sha}/ViT-B-32.pt", **FAST)
    assert (right.status, right.trust) == ("recorded", VERIFIED)
    assert store.verify("clip").trust == VERIFIED  # kept from the fetch: the store holds a conversion
