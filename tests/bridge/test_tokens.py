"""Named tokens (`serve --tokens-file F`, issue 15): one per artist, revocable by editing the file,
the log names the owner and never the token, the comparison stays constant-time."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from pathlib import Path

import numpy as np
import pytest

from ffclip.bridge import tokens as tk
from ffclip.bridge.fake import FakeBackend
from ffclip.bridge.testing import running_server
from ffclip.plugin.client import EngineClient
from ffclip.plugin.protocol import EditParams, EngineError, ImageSpec
from ffclip.plugin.websocket import ConnectionClosed, WebSocket
from tests.support.daemon import run_cli

ALICE = "alice-token-Zr1-8mWqkU2c0d9yq3rX"
BOB = "bob-token-b2ZxQ9t7W1y3N5e8R0a6L4"
BOB2 = "bob-new-token-Q9t7W1y3N5e8R0a6L"
PHOTO = np.random.default_rng(5).integers(0, 256, (48, 64, 4), dtype=np.uint8)


def write(path: Path, text: str) -> None:
    """Replace the file the way editors do (a new inode), so the change is always visible."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def bearer(token: str) -> str:
    return f"Bearer {token}"


# --------------------------------------------------------------------------- the file


def test_tokens_file_rules_name_the_line_never_the_token():
    assert set(tk.parse_tokens(f"# team\n\nalice {ALICE}\nbob\t{BOB}  \n")) == {"alice", "bob"}
    cases = {
        f"alice {ALICE} extra": "line 1: expected 'NAME TOKEN'",
        f"al/ice {ALICE}": "line 1: a name is",
        "alice short": "shorter than 16",
        f"alice {ALICE}\nalice {BOB}": "line 2: its name is already on line 1",
        f"alice {ALICE}\nbob {ALICE}": "line 2: its token is already on line 1",
        f"{ALICE} alice": "line 1: the token (the second word: NAME comes first) is shorter",  # columns swapped
        f"bob {BOB}\n{ALICE} alice-0123456789abcd\n{ALICE} other-0123456789abcd": "line 3: its name is already",
    }
    for text, expected in cases.items():
        with pytest.raises(tk.TokensFileError) as info:
            tk.parse_tokens(text)
        assert expected in str(info.value)
        assert ALICE not in str(info.value) and BOB not in str(info.value)


def test_identify_compares_every_entry_in_constant_time(monkeypatch):
    book = tk.TokenBook(tk.parse_tokens(f"alice {ALICE}\nbob {BOB}\ncarol {BOB2}"))
    assert book.identify(bearer(ALICE)).owner == "alice" and book.identify(bearer(BOB2)).owner == "carol"
    for header in (None, "", ALICE, f"Basic {ALICE}", bearer(ALICE[:-1]), bearer(ALICE + "x")):
        assert book.identify(header) is None
    calls = []
    real = tk.hmac.compare_digest
    monkeypatch.setattr(tk.hmac, "compare_digest", lambda a, b: calls.append(len(a)) or real(a, b))
    for header in (bearer(ALICE), bearer(BOB2), bearer("nobody-0123456789abcdef")):
        calls.clear()
        book.identify(header)
        assert calls == [32, 32, 32]  # every entry, equal-length digests, whichever matched (or none)


def test_token_and_name_lengths_at_their_limits():
    assert tk.MIN_TOKEN_LENGTH == 16  # docs/deployment.md: at least 16 characters
    assert tk.parse_tokens("a " + "t" * 16) == {"a": tk.token_digest("t" * 16)}
    with pytest.raises(tk.TokensFileError, match="line 1: the token .* is shorter than 16 characters"):
        tk.parse_tokens("a " + "t" * 15)
    assert set(tk.parse_tokens("n" * 64 + " " + ALICE)) == {"n" * 64}
    with pytest.raises(tk.TokensFileError, match="a name is"):
        tk.parse_tokens("n" * 65 + " " + ALICE)
    with pytest.raises(tk.TokensFileError, match="line 3: expected 'NAME TOKEN' \\(two words\\), got 1"):
        tk.parse_tokens(f"# team\nalice {ALICE}\nbob")  # comments count as lines


def test_an_identity_is_held_while_its_owner_keeps_the_same_token():
    book = tk.TokenBook(tk.parse_tokens(f"alice {ALICE}\nbob {BOB}"))
    alice = book.identify(bearer(ALICE))
    assert alice == tk.Identity("alice", tk.token_digest(ALICE)) and book.holds(alice)
    assert not book.holds(tk.Identity("alice", tk.token_digest(BOB)))  # bob's token under alice's name
    assert not book.holds(tk.Identity("carol", tk.token_digest(ALICE)))  # nobody of that name
    assert book.identify(bearer(f" {BOB}\t")).owner == "bob"  # blanks around the token: HTTP trims them
    assert tk.TokenBook.single("x").identify("Bearer x") == tk.Identity(tk.SINGLE_OWNER, tk.token_digest("x"))
    with pytest.raises(dataclasses.FrozenInstanceError):  # a session's identity cannot be rewritten
        alice.owner = "bob"


def test_from_file_names_what_is_wrong(tmp_path):
    missing = tmp_path / "none"
    with pytest.raises(tk.TokensFileError) as info:
        tk.TokenBook.from_file(missing)
    assert str(info.value) == f"cannot read the tokens file {missing}: No such file or directory"
    binary = tmp_path / "binary"
    binary.write_bytes(b"alice \xff\xfe")
    with pytest.raises(tk.TokensFileError, match=f"cannot read the tokens file {binary}: 'utf-8' codec"):
        tk.TokenBook.from_file(binary)
    empty = tmp_path / "empty"
    empty.write_text("# nobody yet\n\n")
    with pytest.raises(tk.TokensFileError, match="names nobody"):
        tk.TokenBook.from_file(empty)
    write(empty, f"alice {ALICE}\n")
    assert tk.TokenBook.from_file(empty).owners == ["alice"]


def test_refresh_reports_every_change_and_fails_closed(tmp_path, caplog):
    """refresh() is True exactly when the accepted tokens changed: the server then closes the
    connections whose token went, also when the file breaks (everyone's did)."""
    path = tmp_path / "tokens"
    write(path, f"alice {ALICE}\nbob {BOB}\n")
    book = tk.TokenBook.from_file(path)
    assert book.refresh() is False and tk.TokenBook.single(ALICE).refresh() is False
    write(path, f"alice {ALICE}\nbob {BOB}\n")  # rewritten, the same tokens
    with caplog.at_level(logging.INFO, logger="ffclip.bridge"):
        assert book.refresh() is False
        assert "re-read" not in caplog.text
        write(path, f"bob {BOB2}\ncarol {ALICE}\n")
        assert book.refresh() is True
    assert "tokens file re-read: 2 tokens; added carol; revoked alice; changed bob" in caplog.text
    assert book.owners == ["bob", "carol"] and book.error is None
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="ffclip.bridge"):
        write(path, f"bob {BOB2}\ndave {BOB}\n")
        assert book.refresh() is True
    assert "tokens file re-read: 2 tokens; added dave; revoked carol; changed none" in caplog.text
    for text, line in (
        (f"bob {BOB}\ndave {BOB2}\n", "2 tokens; added none; revoked none; changed bob, dave"),  # each way
        (f"bob {BOB}\ndave {BOB2}\nerin {ALICE}\n", "3 tokens; added erin; revoked none; changed none"),
        (f"bob {BOB2}\ndave {BOB}\n", "2 tokens; added none; revoked erin; changed bob, dave"),
    ):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="ffclip.bridge"):
            write(path, text)
            assert book.refresh() is True
        assert f"tokens file re-read: {line}" in caplog.text
    write(path, f"bob {BOB2}\ndave\n")  # half-edited: nobody, until it is fixed
    assert book.refresh() is True and book.owners == [] and "line 2" in book.error
    assert book.identify(bearer(BOB2)) is None
    write(path, "dave\n")  # still broken: nothing more changes
    assert book.refresh() is False and "line 1" in book.error
    path.unlink()
    assert book.refresh() is False and book.error.startswith(f"cannot read {path}")
    write(path, f"bob {BOB2}\n")
    assert book.refresh() is True and book.owners == ["bob"] and book.error is None


@pytest.mark.parametrize(("mode", "warned"), [(0o600, False), (0o400, False), (0o640, True), (0o604, True)])
def test_a_tokens_file_others_can_read_is_warned_about(tmp_path, caplog, mode, warned):
    path = tmp_path / "tokens"
    write(path, f"alice {ALICE}\n")
    path.chmod(mode)
    with caplog.at_level(logging.WARNING, logger="ffclip.bridge"):
        tk.TokenBook.from_file(path)
    assert ("readable by other users: chmod 600 it" in caplog.text) == warned


@pytest.mark.process
def test_serve_refuses_an_unusable_tokens_file(tmp_path):
    missing = run_cli("serve", "--port", "0", "--fake-engine", "--tokens-file", str(tmp_path / "none"))
    assert missing.returncode == 2 and "cannot read the tokens file" in missing.stderr
    bad = tmp_path / "tokens"
    bad.write_text(f"alice {ALICE}\nbob short\n")
    refused = run_cli("serve", "--port", "0", "--fake-engine", "--tokens-file", str(bad))
    assert refused.returncode == 2 and "line 2: the token (the second word" in refused.stderr
    empty = tmp_path / "empty"
    empty.write_text("# nobody yet\n")
    assert "names nobody" in run_cli("serve", "--port", "0", "--fake-engine", "--tokens-file", str(empty)).stderr
    both = run_cli("serve", "--port", "0", "--fake-engine", "--tokens-file", str(bad), "--token", "x")
    assert both.returncode == 2 and "not both" in both.stderr


# --------------------------------------------------------------------------- the engine


@pytest.fixture()
def team(tmp_path):
    path = tmp_path / "tokens"
    write(path, f"alice {ALICE}\nbob {BOB}\n")
    book = tk.TokenBook.from_file(path)
    with running_server(lambda: FakeBackend(0.0), tokens=book, tokens_interval=0.05) as server:
        yield server, path


def _connect(url: str, token: str) -> WebSocket:
    ws = WebSocket.connect(url, headers={"Authorization": bearer(token)})
    greeting = json.loads(ws.recv(10))
    assert greeting["type"] == "status", greeting
    return ws


def _refused(url: str, token: str) -> bool:
    with pytest.raises(EngineError) as info:
        EngineClient(url, token=token, timeout=5).connect()
    return info.value.code == "unauthorized"


def test_the_log_names_the_owner_never_the_token(team, caplog):
    server, _ = team
    with caplog.at_level(logging.INFO, logger="ffclip.bridge"):
        for token in (ALICE, BOB):
            with EngineClient(server.url, token=token, timeout=10) as client:
                assert client.last_status["auth"] is True and client.last_status["users"] == 2
                client.edit(EditParams.single("smiling"), PHOTO.tobytes(), ImageSpec(64, 48))
        assert _refused(server.url, "wrong-token-0123456789")
    text = caplog.text
    assert "connected as alice" in text and "connected as bob" in text and "queued as bob" in text
    assert "client(s) whose token is not accepted" in text
    assert ALICE not in text and BOB not in text and "wrong-token" not in text


def test_a_wrong_token_and_a_missing_one_are_told_apart(team, caplog):
    server, _ = team
    with caplog.at_level(logging.INFO, logger="ffclip.bridge"):
        with pytest.raises(EngineError) as wrong:
            EngineClient(server.url, token="wrong-token-0123456789", timeout=5).connect()
        with pytest.raises(EngineError) as missing:
            EngineClient(server.url, token=None, timeout=5).connect()
    assert wrong.value.code == missing.value.code == "unauthorized"
    assert "does not accept the token sent" in wrong.value.message, wrong.value.message
    assert "needs a token" in missing.value.message, missing.value.message
    assert "client(s) without a token" in caplog.text
    assert "client(s) whose token is not accepted" in caplog.text


def test_removing_a_line_revokes_at_once_and_closes_open_connections(team):
    server, path = team
    alice, bob = _connect(server.url, ALICE), _connect(server.url, BOB)
    write(path, f"alice {ALICE}\n")  # bob leaves the team
    message = json.loads(bob.recv(10))
    assert message["type"] == "error" and message["code"] == "unauthorized"
    with pytest.raises(ConnectionClosed) as closed:
        bob.recv(10)
    assert closed.value.code == 1008
    assert _refused(server.url, BOB)
    alice.send_text('{"type": "status"}')  # alice is not disturbed
    assert json.loads(alice.recv(10))["type"] == "status"
    write(path, f"alice {ALICE}\nbob {BOB2}\n")  # bob comes back with a new token
    deadline = time.monotonic() + 5
    while True:
        try:
            with EngineClient(server.url, token=BOB2, timeout=5) as client:
                assert client.last_status["users"] == 2
            break
        except EngineError:
            assert time.monotonic() < deadline, "the new token was never accepted"
            time.sleep(0.05)
    assert _refused(server.url, BOB)  # the old one stays revoked
    alice.close()


def test_changing_a_token_revokes_the_old_one(team):
    server, path = team
    bob = _connect(server.url, BOB)
    write(path, f"alice {ALICE}\nbob {BOB2}\n")
    assert json.loads(bob.recv(10))["code"] == "unauthorized"
    assert _refused(server.url, BOB)
    with EngineClient(server.url, token=BOB2, timeout=5):
        pass
    bob.close()  # read the engine's close: an unanswered closing handshake holds the server's stop 10 s


def test_a_broken_or_missing_file_refuses_everyone_until_fixed(team):
    server, path = team
    write(path, f"alice {ALICE}\nbob\n")  # half-edited
    assert _refused(server.url, ALICE)
    path.unlink()
    assert _refused(server.url, ALICE)
    write(path, f"alice {ALICE}\n")
    with EngineClient(server.url, token=ALICE, timeout=5) as client:
        assert client.last_status["users"] == 1
