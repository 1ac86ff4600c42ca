"""plugin/paths.py: the per-user folders and the files that carry job ids, owners and addresses are
private from their creation (issue 30)."""

from __future__ import annotations

import os
import stat

import pytest

from ffclip.plugin import paths

pytestmark = pytest.mark.skipif(os.name == "nt", reason="POSIX modes")


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def loose_umask():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_a_private_folder_is_0700_new_or_old(tmp_path, loose_umask) -> None:
    assert _mode(paths.private_folder(tmp_path / "a" / "state")) == 0o700
    old = tmp_path / "old"
    old.mkdir(mode=0o755)
    assert _mode(paths.private_folder(old)) == 0o700


def test_open_private_creates_0600_and_narrows_an_existing_file(tmp_path, loose_umask) -> None:
    with paths.open_private(tmp_path / "new.log", "a", encoding="utf-8") as f:
        assert _mode(tmp_path / "new.log") == 0o600  # already while it is written
        f.write("x\n")
    old = tmp_path / "old.log"
    old.write_text("kept\n")
    old.chmod(0o644)
    with paths.open_private(old, "ab") as f:
        f.write(b"more\n")
    assert _mode(old) == 0o600 and old.read_text() == "kept\nmore\n"
    with paths.open_private(old, "w", encoding="utf-8") as f:
        f.write("new\n")
    assert old.read_text() == "new\n"


def test_rotate_if_larger_moves_only_a_grown_file(tmp_path) -> None:
    log = tmp_path / "engine-start.log"
    log.write_bytes(b"x" * 10)
    paths.rotate_if_larger(log, 10)
    assert log.exists()
    log.write_bytes(b"y" * 11)
    paths.rotate_if_larger(log, 10)
    assert not log.exists() and (tmp_path / "engine-start.log.1").read_bytes() == b"y" * 11
    paths.rotate_if_larger(tmp_path / "missing.log", 10)  # nothing to do, no error
