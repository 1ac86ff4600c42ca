"""`ffclip-engine install-gimp-plugin`'s token: where it comes from (--token, --token-file, $FFCLIP_TOKEN),
that it is never printed, and that the settings file holding it is for the user's eyes only."""

from __future__ import annotations

import json
import os
import stat

import pytest

from ffclip.app.cli import main

TOKEN = "s3cret-TOKEN-4f9a"


@pytest.fixture(autouse=True)
def _no_token_in_the_environment(monkeypatch):
    monkeypatch.delenv("FFCLIP_TOKEN", raising=False)


def install(dest, *options: str) -> int:
    return main(["install-gimp-plugin", "--dest", str(dest), *options])


def saved(dest) -> dict:
    return json.loads((dest / "ffclip-edit" / "ffclip-edit.json").read_text(encoding="utf-8"))


def token_file(tmp_path, text: str = f"  {TOKEN}\n"):
    path = tmp_path / "token"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("source", ["--token", "--token-file", "FFCLIP_TOKEN", "saved"])
def test_a_dry_run_never_prints_the_token(tmp_path, monkeypatch, capsys, source):
    dest = tmp_path / "plug-ins"
    options = {"--token": ["--token", TOKEN], "--token-file": ["--token-file", str(token_file(tmp_path))]}
    if source == "FFCLIP_TOKEN":
        monkeypatch.setenv("FFCLIP_TOKEN", TOKEN)
    if source == "saved":  # installed earlier: the dry run shows the settings it would keep
        assert install(dest, "--token-file", str(token_file(tmp_path))) == 0
    capsys.readouterr()
    assert install(dest, "--dry-run", *options.get(source, [])) == 0
    out, err = capsys.readouterr()
    assert TOKEN not in out + err
    assert "'token': '<hidden>'" in out


@pytest.mark.parametrize("source", ["--token-file", "FFCLIP_TOKEN"])
def test_the_token_from_a_file_or_the_environment_is_saved_for_the_user_alone(tmp_path, monkeypatch, capsys, source):
    dest = tmp_path / "plug-ins"
    if source == "FFCLIP_TOKEN":
        monkeypatch.setenv("FFCLIP_TOKEN", TOKEN)
        assert install(dest) == 0
    else:
        assert install(dest, "--token-file", str(token_file(tmp_path))) == 0
    assert saved(dest)["token"] == TOKEN
    out, err = capsys.readouterr()
    assert TOKEN not in out + err and "process list" not in err
    if os.name == "posix":  # the settings file holds a secret: no one else may read it
        mode = (dest / "ffclip-edit" / "ffclip-edit.json").stat().st_mode
        assert stat.S_IMODE(mode) & 0o077 == 0, oct(mode)


def test_the_options_come_before_the_environment(tmp_path, monkeypatch):
    dest = tmp_path / "plug-ins"
    monkeypatch.setenv("FFCLIP_TOKEN", "from-the-environment")
    assert install(dest, "--token-file", str(token_file(tmp_path))) == 0
    assert saved(dest)["token"] == TOKEN
    assert install(dest, "--token", "from-the-command-line") == 0
    assert saved(dest)["token"] == "from-the-command-line"
    assert install(dest, "--token", "") == 0  # '' clears the saved token
    assert saved(dest)["token"] is None
    with pytest.raises(SystemExit) as both:
        install(dest, "--token", "x", "--token-file", str(token_file(tmp_path)))
    assert both.value.code == 2


def test_a_token_on_the_command_line_is_warned_about(tmp_path, capsys):
    assert install(tmp_path / "plug-ins", "--token", TOKEN) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "process list" in err[0] and "--token-file" in err[0] and "FFCLIP_TOKEN" in err[0]


@pytest.mark.parametrize("content", [None, " \n"])
def test_a_missing_or_empty_token_file_installs_nothing(tmp_path, capsys, content):
    dest, path = tmp_path / "plug-ins", tmp_path / "token"
    if content is not None:
        path.write_text(content, encoding="utf-8")
    assert install(dest, "--token-file", str(path)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(path) in err[0]
    assert not dest.exists()
