"""The service files of `ffclip-engine service install` (bridge/service.py) with hostile arguments: each one
reaches the engine as itself, read back by the rules of the program that reads the file (systemd,
launchd, cmd.exe then the MS C runtime), or is refused before anything is written."""

from __future__ import annotations

import plistlib
import re
import subprocess
import sys

import pytest

from ffclip.bridge.service import (
    ServiceFileError,
    exec_start,
    launchd_plist,
    other_system_instructions,
    schtasks_command,
    unit_text,
)
from tests.support.daemon import run_cli

PYTHON = "/usr/bin/python3"
INJECTION = "/tmp/a\nExecStartPre=/bin/touch /tmp/pwned"
HOSTILE = [
    PYTHON,
    "-m",
    "ffclip.app",
    "serve",
    "--models",
    '/tmp/100%/$HOME/x y"z\\w',
    "--host",
    "%h",
    "--devices",
    "${PATH}",
    "$PATH",
    "'single'",
    ";",
    "\\;",
    "back\\",
    "é ü",
]
UNWRITABLE = ["\n", "\r", "\x00", "\t", "\x1b", "\x7f", "\x85", "\udcff"]


# --------------------------------------------------------------------------- systemd


def systemd_words(value: str) -> list[str]:
    """What systemd makes of an ExecStart= value: specifiers on the whole line, then words (systemd.syntax
    "Quoting", C escapes), then `$$` in each word. A specifier or variable left over fails the test."""
    value = re.sub(r"%(.?)", _percent, value)
    words: list[str] = []
    word: str | None = None
    quote: str | None = None
    i = 0
    while i < len(value):
        c = value[i]
        if c == "\\":
            assert value[i + 1 : i + 2] in ("\\", '"', "'"), value[i:]
            word, i = (word or "") + value[i + 1], i + 2
            continue
        if quote:
            quote, word = (None, word) if c == quote else (quote, word + c)
        elif c in "\"'":
            quote, word = c, word or ""
        elif c in " \t":
            if word is not None:
                words.append(word)
            word = None
        else:
            word = (word or "") + c
        i += 1
    assert quote is None, value
    words += [] if word is None else [word]
    return [re.sub(r"\$(.?)", _dollar, w) for w in words]


def _percent(match: re.Match) -> str:
    if match.group(1) != "%":
        pytest.fail(f"systemd would expand the specifier %{match.group(1)} in {match.string!r}")
    return "%"


def _dollar(match: re.Match) -> str:
    if match.group(1) != "$":
        pytest.fail(f"systemd would expand the variable in {match.string!r}")
    return "$"


def test_hostile_arguments_reach_the_engine_as_themselves():
    unit = unit_text(HOSTILE)
    exec_lines = [line for line in unit.splitlines() if line.startswith("Exec")]
    assert len(exec_lines) == 1 and exec_lines[0].startswith("ExecStart=")
    assert systemd_words(exec_lines[0].removeprefix("ExecStart=")) == HOSTILE


@pytest.mark.parametrize("char", UNWRITABLE)
def test_a_control_character_is_refused_rather_than_written(char):
    with pytest.raises(ServiceFileError, match="cannot write"):
        unit_text([PYTHON, "serve", "--models", INJECTION.replace("\n", char)])


def test_the_log_path_in_the_comment_cannot_add_a_directive(monkeypatch):
    monkeypatch.setenv("FFCLIP_STATE_DIR", "/tmp/x\nExecStartPre=/bin/touch /tmp/pwned")
    with pytest.raises(ServiceFileError):
        unit_text([PYTHON, "serve"])


@pytest.mark.parametrize("program", ["python3", "-/usr/bin/python3", "/opt/$x/python3"])
def test_the_program_is_a_literal_absolute_path(program):
    with pytest.raises(ServiceFileError, match="absolute program path"):
        exec_start([program, "serve"])


@pytest.mark.process
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="service install writes a unit on Linux only")
def test_service_install_refuses_a_newline_and_writes_nothing(tmp_path):
    unit_dir = tmp_path / "units"
    result = run_cli("service", "install", "--models", INJECTION, "--unit-dir", str(unit_dir), "--no-systemctl")
    assert result.returncode == 2 and "cannot write" in result.stderr
    assert not (unit_dir / "ffclip-engine.service").exists()
    assert "ExecStartPre" not in result.stdout


@pytest.mark.process
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="service install writes a unit on Linux only")
def test_service_install_writes_hostile_paths_as_themselves(tmp_path):
    models, token_file = tmp_path / '100%/$HOME/x y"z\\w', tmp_path / "%h ${T}.tok"
    result = run_cli(
        "service", "install", "--print", "--models", str(models), "--token-file", str(token_file), "--port", "8777"
    )
    assert result.returncode == 0, result.stderr
    line = next(line for line in result.stdout.splitlines() if line.startswith("ExecStart="))
    words = systemd_words(line.removeprefix("ExecStart="))
    assert words[words.index("--models") + 1] == str(models.resolve())
    assert words[words.index("--token-file") + 1] == str(token_file.resolve())


# --------------------------------------------------------------------------- launchd


PLIST_HOSTILE = [PYTHON, "--models", "/tmp/</string><string>evil", "a&amp;b", "<!-- x -->", "]]>", "'\"", "é"]


def test_the_plist_gives_back_the_exact_arguments():
    text = launchd_plist(PLIST_HOSTILE)
    assert "<string>evil" not in text
    agent = plistlib.loads(text.encode("utf-8"))
    assert agent["ProgramArguments"] == PLIST_HOSTILE and agent["Label"] == "org.ffclip.engine"
    instructions = other_system_instructions(PLIST_HOSTILE, "install", platform="darwin")
    xml = instructions[instructions.index("<?xml") : instructions.index("</plist>") + len("</plist>")]
    assert plistlib.loads(xml.encode("utf-8"))["ProgramArguments"] == PLIST_HOSTILE


@pytest.mark.parametrize("char", ["\r", "\x01", "\x00", "\ufffe", "\udcff"])
def test_the_plist_refuses_what_xml_cannot_hold(char):
    with pytest.raises(ServiceFileError):
        launchd_plist([PYTHON, "--models", f"/tmp/a{char}b"])


# --------------------------------------------------------------------------- Windows


def cmd_typed(line: str) -> str:
    """What cmd.exe passes on from a typed line: `"` toggles quoting (backslash or not); outside quotes a
    `^` escapes the next character and an unescaped operator fails the test; `%` fails it anywhere."""
    out: list[str] = []
    quoted, i = False, 0
    while i < len(line):
        c = line[i]
        assert c != "%", line
        if c == '"':
            quoted = not quoted
        elif not quoted and c == "^":
            c, i = line[i + 1], i + 1
        elif not quoted and c in "&|<>()":
            pytest.fail(f"cmd.exe acts on {c!r} in {line!r}")
        out.append(c)
        i += 1
    return "".join(out)


def ms_argv(line: str) -> list[str]:
    """The MS C runtime's split of a command line (CommandLineToArgvW): 2n backslashes and `"` give n
    backslashes and toggle quoting, 2n+1 give n and a literal `"`; other backslashes are literal."""
    args: list[str] = []
    arg: list[str] | None = None
    quoted, i = False, 0
    while i < len(line):
        c = line[i]
        if c == "\\":
            n = len(line[i:]) - len(line[i:].lstrip("\\"))
            quote_follows = line[i + n : i + n + 1] == '"'
            arg = (arg or []) + ["\\" * (n // 2 if quote_follows else n)]
            i += n
            if quote_follows and n % 2:
                arg.append('"')
                i += 1
            continue
        if c == '"':
            quoted, arg = not quoted, arg or []
        elif c in " \t" and not quoted:
            if arg is not None:
                args.append("".join(arg))
            arg = None
        else:
            arg = (arg or []) + [c]
        i += 1
    return args + ([] if arg is None else ["".join(arg)])


WINDOWS_HOSTILE = [
    r"C:\Program Files\Python 3.12\python.exe",
    "-m",
    "ffclip.app",
    "serve",
    "--models",
    "C:\\Users\\Tom & Jerry\\models (new)\\",
    "--host",
    "a|b",
    "--devices",
    "x^y<z>",
    "--tls-cert",
    "C:\\tls\\",
    "two  spaces",
]


def test_the_scheduled_task_runs_the_exact_arguments():
    for line in (
        schtasks_command(WINDOWS_HOSTILE),
        other_system_instructions(WINDOWS_HOSTILE, "install", platform="win32").split("\n  ", 1)[1],
    ):
        argv = ms_argv(cmd_typed(line))
        assert argv[:7] == ["schtasks", "/Create", "/TN", "FFCLIP-Engine", "/SC", "ONLOGON", "/TR"]
        assert len(argv) == 8
        assert ms_argv(argv[7]) == WINDOWS_HOSTILE


@pytest.mark.parametrize("part", ['C:\\a"b', "C:\\100%\\x", "%PATH%", "C:\\a\nb", "C:\\a\x00b"])
def test_the_scheduled_task_refuses_what_cmd_or_schtasks_cannot_pass(part):
    with pytest.raises(ServiceFileError):
        schtasks_command([WINDOWS_HOSTILE[0], "--models", part])


def test_the_parsers_of_this_file_agree_with_the_standard_library():
    """ms_argv is the inverse of subprocess.list2cmdline (which follows the MS rules), so a pass above
    is not a shared mistake of the code and its test."""
    for args in (WINDOWS_HOSTILE, ['a\\"b', "c\\\\", "", 'q"', "\\\\x"]):
        assert ms_argv(subprocess.list2cmdline(args)) == args
