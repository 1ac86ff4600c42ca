"""The GIMP bundle (app/bundle.py, `ffclip-engine gimp-bundle`): the layout a user unzips into a plug-ins
folder, the same files `install-gimp-plugin` writes, modes that survive unzip and GIMP's .gex
installer, no one's token, byte-identical rebuilds, clear refusals of bad paths and wheels."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import stat
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from ffclip.app import bundle, install
from ffclip.app.cli import main as cli_main
from ffclip.gimp import settings as gimp_settings

STAMP = 1_790_000_000  # 2026-09-21: what SOURCE_DATE_EPOCH would give
TOKEN = "s3cret-token-of-the-developer-0123456789"


@pytest.fixture(autouse=True)
def _state_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("FFCLIP_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)


def fake_wheel(folder: Path, name: str) -> Path:
    """A small zip with a wheel's name (the bundle copies wheels as they are)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("placeholder.txt", name)
    return path


@pytest.fixture
def wheels(tmp_path) -> tuple[Path, Path]:
    version = install.source_version()
    return (
        fake_wheel(tmp_path / "wheels", f"ffclip_edit-{version}-py3-none-any.whl"),
        fake_wheel(tmp_path / "wheels", "pip-24.0-py3-none-any.whl"),
    )


def names(path: Path) -> list[str]:
    with zipfile.ZipFile(path) as zf:
        return zf.namelist()


def test_the_bundle_holds_the_plugin_folder_and_the_wheels(tmp_path, wheels):
    out = bundle.write_bundle(tmp_path / "ffclip-edit.zip", *wheels, stamp=STAMP)
    version = install.source_version()
    listed = names(out)
    assert listed == sorted(listed) and all(n.startswith("ffclip-edit/") for n in listed)
    for expected in (
        "ffclip-edit/",
        "ffclip-edit/ffclip-edit.py",
        "ffclip-edit/VERSION",
        "ffclip-edit/ffclip/plugin/client.py",
        "ffclip-edit/ffclip/gimp/edit.py",
        "ffclip-edit/ffclip/gimp/help.html",
        "ffclip-edit/ffclip/gimp/prompts.txt",
        f"ffclip-edit/wheels/ffclip_edit-{version}-py3-none-any.whl",
        "ffclip-edit/wheels/pip-24.0-py3-none-any.whl",
    ):
        assert expected in listed, expected
    assert not [n for n in listed if "__pycache__" in n or n.endswith(".pyc") or "/ffclip-edit/ffclip-edit/" in n]
    assert not [n for n in listed if n.endswith(gimp_settings.SETTINGS_NAME)]  # a bundle carries no settings
    with zipfile.ZipFile(out) as zf:
        entry = zf.getinfo("ffclip-edit/ffclip-edit.py")
        assert entry.create_system == 3 and entry.external_attr >> 16 == stat.S_IFREG | 0o755
        assert zf.getinfo("ffclip-edit/VERSION").external_attr >> 16 == stat.S_IFREG | 0o644
        assert zf.getinfo("ffclip-edit/wheels/").external_attr >> 16 == stat.S_IFDIR | 0o755
        text = zf.read("ffclip-edit/ffclip-edit.py")
        assert text.startswith(b"#!/usr/bin/env python3\n") and b"\r\n" not in text
        assert zf.read("ffclip-edit/VERSION") == f"{version}\n".encode()
        assert zf.read(f"ffclip-edit/wheels/{wheels[0].name}") == wheels[0].read_bytes()
        assert {i.date_time for i in zf.infolist()} == {(2026, 9, 21, 14, 13, 20)}


def test_the_mode_is_in_each_local_header_too(tmp_path, wheels):
    """GIMP installs a .gex by streaming it (libarchive): it sees only local headers, so the mode rides in
    the "xl" extra field there, or the entry arrives without its executable bit and GIMP skips it."""
    out = bundle.write_bundle(tmp_path / "b.zip", *wheels, stamp=STAMP)
    with zipfile.ZipFile(out) as zf:
        info = zf.getinfo("ffclip-edit/ffclip-edit.py")
    raw = out.read_bytes()
    offset = info.header_offset
    assert raw[offset : offset + 4] == b"PK\x03\x04"
    name_len, extra_len = struct.unpack("<HH", raw[offset + 26 : offset + 30])
    extra = raw[offset + 30 + name_len : offset + 30 + name_len + extra_len]
    header_id, size, bitmap, made_by, attributes = struct.unpack("<HHBHI", extra[:11])
    assert (header_id, size, bitmap & 0x05, made_by >> 8) == (0x6C78, 7, 0x05, 3)
    assert attributes >> 16 == stat.S_IFREG | 0o755


@pytest.mark.process
@pytest.mark.skipif(shutil.which("unzip") is None, reason="needs unzip")
def test_unzipped_it_is_what_install_gimp_plugin_writes(tmp_path, wheels):
    out = bundle.write_bundle(tmp_path / "ffclip-edit.zip", *wheels, stamp=STAMP)
    unzipped = tmp_path / "unzipped-plug-ins"
    unzipped.mkdir()
    done = subprocess.run(["unzip", "-q", str(out), "-d", str(unzipped)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    target = unzipped / "ffclip-edit"
    assert (target / "ffclip-edit.py").stat().st_mode & 0o777 == 0o755
    assert install.differing_files(target) == []
    assert install.installed_version(target) == install.source_version()
    installed = install.install(tmp_path / "installed-plug-ins", {})

    def tree(root: Path) -> dict[str, bytes]:
        return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}

    expected = {k: v for k, v in tree(installed).items() if k != gimp_settings.SETTINGS_NAME}
    got = {k: v for k, v in tree(target).items() if not k.startswith(f"{bundle.WHEELS}/")}
    assert got.keys() == expected.keys() and got == expected
    assert sorted(p.name for p in (target / bundle.WHEELS).iterdir()) == sorted(w.name for w in wheels)


def test_no_token_goes_into_a_bundle(tmp_path, wheels, monkeypatch):
    """Even when the developer's installed plug-in has a token, and a stray settings file sits in the
    package folder the bundle copies."""
    profile = tmp_path / "profile"
    installed = install.install(profile / "plug-ins", {"token": TOKEN, "url": "ws://127.0.0.1:9000"})
    assert TOKEN in (installed / gimp_settings.SETTINGS_NAME).read_text()
    monkeypatch.setenv("GIMP3_DIRECTORY", str(profile))
    monkeypatch.setenv("FFCLIP_TOKEN", TOKEN)
    sources = install.package_sources()
    stray = tmp_path / "gimp-copy"
    shutil.copytree(sources["gimp"], stray, ignore=shutil.ignore_patterns("__pycache__"))
    (stray / gimp_settings.SETTINGS_NAME).write_text(json.dumps({"token": TOKEN}))
    monkeypatch.setattr(install, "package_sources", lambda: {**sources, "gimp": stray})
    out = bundle.write_bundle(tmp_path / "b.zip", *wheels, stamp=STAMP)
    assert TOKEN.encode() not in out.read_bytes()
    with zipfile.ZipFile(out) as zf:
        assert not [n for n in zf.namelist() if TOKEN.encode() in zf.read(n)]
        assert not [n for n in zf.namelist() if n.endswith(gimp_settings.SETTINGS_NAME)]


def test_two_bundles_of_the_same_tree_are_byte_identical(tmp_path, wheels, monkeypatch):
    first = bundle.write_bundle(tmp_path / "1.zip", *wheels, stamp=STAMP).read_bytes()
    assert bundle.write_bundle(tmp_path / "2.zip", *wheels, stamp=STAMP).read_bytes() == first
    monkeypatch.setenv("SOURCE_DATE_EPOCH", str(STAMP))
    assert bundle.source_stamp() == STAMP
    assert bundle.write_bundle(tmp_path / "3.zip", *wheels).read_bytes() == first
    monkeypatch.delenv("SOURCE_DATE_EPOCH")
    newest = max(p.stat().st_mtime for p in install.package_sources()["gimp"].rglob("*.py"))
    assert bundle.source_stamp() >= int(newest)  # GIMP re-queries a plug-in whose entry's time changed
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "yesterday")
    with pytest.raises(bundle.BundleError, match="SOURCE_DATE_EPOCH is not a number"):
        bundle.source_stamp()


def test_bad_output_paths_are_refused_clearly(tmp_path, capsys):
    cases = {
        str(tmp_path / "missing" / "b.zip"): "the folder .*missing does not exist",
        str(tmp_path): "is a folder: give the .zip file to write",
        str(tmp_path / "b.tar"): "the output must be a .zip file",
    }
    for output, message in cases.items():
        assert cli_main(["gimp-bundle", "-o", output]) == 2
        err = capsys.readouterr().err
        assert err.startswith("gimp-bundle: ") and re.search(message, err), err
    assert cli_main(["gimp-bundle", "-o", str(tmp_path / "b.zip"), "--gex", str(tmp_path / "b.zip")]) == 2
    assert "the output must be a .gex file" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_foreign_wheels_are_refused(tmp_path):
    version = install.source_version()
    with pytest.raises(bundle.BundleError, match="is not an ffclip-edit wheel"):
        bundle.check_project_wheel(fake_wheel(tmp_path, "torch-2.0-py3-none-any.whl"))
    with pytest.raises(bundle.BundleError, match="is version 0.0.1, the plug-in is"):
        bundle.check_project_wheel(fake_wheel(tmp_path, "ffclip_edit-0.0.1-py3-none-any.whl"))
    broken = tmp_path / "b" / f"ffclip_edit-{version}-py3-none-any.whl"
    broken.parent.mkdir()
    broken.write_text("not a zip")
    with pytest.raises(bundle.BundleError, match="is not a readable wheel"):
        bundle.check_project_wheel(broken)
    with pytest.raises(bundle.BundleError, match="is not a pip wheel"):
        bundle.check_pip_wheel(fake_wheel(tmp_path, "setuptools-65.5.0-py3-none-any.whl"))
    bundled = bundle.bundled_pip_wheel()  # this Python's ensurepip copy, where it has one
    assert bundled is None or bundle.check_pip_wheel(bundled) == bundled


def test_the_gex_is_one_folder_named_by_its_appstream_id(tmp_path, wheels):
    out = bundle.write_gex(tmp_path / "ffclip-edit.gex", *wheels, stamp=STAMP)
    ext = bundle.EXTENSION_ID
    listed = names(out)
    assert all(n.startswith(f"{ext}/") for n in listed)
    plugin = [n.removeprefix(f"{ext}/") for n in listed if n.startswith(f"{ext}/ffclip-edit/")]
    assert plugin == [n for n in names(bundle.write_bundle(tmp_path / "b.zip", *wheels, stamp=STAMP))]
    with zipfile.ZipFile(out) as zf:
        metainfo = zf.read(f"{ext}/{ext}.metainfo.xml").decode()
        assert zf.getinfo(f"{ext}/ffclip-edit/ffclip-edit.py").external_attr >> 16 == stat.S_IFREG | 0o755
    assert f"<id>{ext}</id>" in metainfo and "<extends>org.gimp.GIMP</extends>" in metainfo
    assert f'<release version="{install.source_version()}" date="2026-09-21"/>' in metainfo
    assert '<value key="GIMP::plug-in-path">ffclip-edit/ffclip-edit.py</value>' in metainfo
    assert '<id version="3.0.0" compare="ge">org.gimp.GIMP</id>' in metainfo
    assert f'<url type="homepage">{bundle.HOMEPAGE}</url>' in metainfo  # AppStream 1.0 requires one


@pytest.mark.process
@pytest.mark.skipif(shutil.which("appstreamcli") is None, reason="needs appstreamcli (apt-get install appstream)")
def test_the_gex_metainfo_is_valid_appstream(tmp_path, wheels):
    out = bundle.write_gex(tmp_path / "ffclip-edit.gex", *wheels, stamp=STAMP)
    with zipfile.ZipFile(out) as zf:
        zf.extractall(tmp_path / "x")
    metainfo = tmp_path / "x" / bundle.EXTENSION_ID / f"{bundle.EXTENSION_ID}.metainfo.xml"
    done = subprocess.run(["appstreamcli", "validate", "--no-net", str(metainfo)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.slow
@pytest.mark.process
def test_the_command_builds_the_wheel_and_writes_both_files(tmp_path):
    pytest.importorskip("build")
    out, gex = tmp_path / "ffclip-edit.zip", tmp_path / "ffclip-edit.gex"
    argv = [sys.executable, "-m", "ffclip.app", "gimp-bundle", "-o", str(out), "--gex", str(gex)]
    done = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, "SOURCE_DATE_EPOCH": str(STAMP)})
    assert done.returncode == 0, done.stderr
    assert f"wrote {out}" in done.stdout and f"wrote {gex}" in done.stdout
    listed = names(out)
    wheel = f"ffclip-edit/wheels/ffclip_edit-{install.source_version()}-py3-none-any.whl"
    assert wheel in listed and [n for n in listed if n.startswith("ffclip-edit/wheels/pip-")]
    with zipfile.ZipFile(out) as zf, zipfile.ZipFile(io.BytesIO(zf.read(wheel))) as inner:
        assert "ffclip/gimp/ffclip-edit/ffclip-edit.py" in inner.namelist()


def test_the_pip_wheel_is_one_that_reports_progress_where_one_can_be_had(tmp_path, monkeypatch):
    """The set-up shows pip's bytes only from pip 24.1 on (`--progress-bar raw`): an older ensurepip
    copy is replaced by a downloaded pip, and bundled only when no newer one can be had, with a note."""
    old = fake_wheel(tmp_path / "ensurepip", "pip-23.2.1-py3-none-any.whl")
    new = fake_wheel(tmp_path / "ensurepip", "pip-24.2-py3-none-any.whl")
    downloaded = fake_wheel(tmp_path / "index", "pip-26.3-py3-none-any.whl")
    assert bundle.pip_version(old) == (23, 2, 1) and bundle.pip_version(new) == (24, 2)
    calls = []

    def download(outdir):
        calls.append(outdir)
        return downloaded

    monkeypatch.setattr(bundle, "download_pip_wheel", download)
    monkeypatch.setattr(bundle, "bundled_pip_wheel", lambda: new)
    assert bundle.pip_wheel_for_bundle(tmp_path) == (new, None) and calls == []
    monkeypatch.setattr(bundle, "bundled_pip_wheel", lambda: old)
    assert bundle.pip_wheel_for_bundle(tmp_path) == (downloaded, None) and calls == [tmp_path]

    def offline(outdir):
        raise bundle.BundleError("downloading a pip wheel failed:\nNo matching distribution found for pip>=24.1")

    monkeypatch.setattr(bundle, "download_pip_wheel", offline)
    wheel, note = bundle.pip_wheel_for_bundle(tmp_path)
    assert wheel == old and "older than 24.1 shows no download progress" in note and "--pip-wheel" in note
    monkeypatch.setattr(bundle, "bundled_pip_wheel", lambda: None)
    with pytest.raises(bundle.BundleError, match="this Python has no bundled pip wheel, and downloading"):
        bundle.pip_wheel_for_bundle(tmp_path)


def test_the_wheel_is_built_from_what_pyproject_names(tmp_path):
    """gimp-bundle builds the wheel from a clean copy of these files and folders (clean_source)."""
    tomllib = pytest.importorskip("tomllib")
    root = bundle.project_root()
    assert root is not None  # the tests run from the checkout
    config = tomllib.loads((root / "pyproject.toml").read_text())
    assert sorted(bundle.PACKAGE_FOLDERS) == sorted(set(config["tool"]["setuptools"]["package-dir"].values()))
    assert config["project"]["readme"]["file"] in bundle.BUILD_FILES
    copy = bundle.clean_source(root, tmp_path / "source")
    assert not list(copy.rglob("__pycache__")) and not list(copy.rglob("*.egg-info"))
    assert (copy / "gimp" / "ffclip-edit" / "ffclip-edit.py").is_file()
